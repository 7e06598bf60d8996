/**
 * Budget periods (pure): `total` since creation, or the UTC calendar `day` / `month`. What a token or project spent
 * in the current period is read from its day / month counters, which count only while their start is the current
 * period's (a counter whose start is older is from a finished period: nothing spent yet in this one).
 */
import type { BudgetPeriod, BudgetRow, SpendDelta, SpendRow } from "../store/Store.js"

const DAY_MS = 86_400_000

/** First instant (epoch ms) of the UTC day containing `ms`. */
export const dayStartOf = (ms: number): number => ms - (((ms % DAY_MS) + DAY_MS) % DAY_MS)

/** The last day asked about and its month: checks and charges ask about the same day all day (no Date each time). */
let lastDay = NaN
let lastMonth = NaN

/** First instant (epoch ms) of the UTC month containing `ms`. */
export const monthStartOf = (ms: number): number => {
  const day = dayStartOf(ms)
  if (day === lastDay) return lastMonth
  const d = new Date(ms)
  lastMonth = Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), 1)
  lastDay = day
  return lastMonth
}

/** First instant after the period containing `ms`; undefined for `total`. */
export const periodEndOf = (period: BudgetPeriod, ms: number): number | undefined => {
  if (period === "day") return dayStartOf(ms) + DAY_MS
  if (period === "month") {
    const d = new Date(ms)
    return Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + 1, 1)
  }
  return undefined
}

export interface PeriodUsage {
  readonly costUsd: number
  readonly tokens: number
}

/** What `s` says was spent in the `period` containing `nowMs`. */
export const spentIn = (s: SpendRow, period: BudgetPeriod, nowMs: number): PeriodUsage => {
  if (period === "day") {
    return s.dayStart === dayStartOf(nowMs) ? { costUsd: s.dayCostUsd, tokens: s.dayTokens } : { costUsd: 0, tokens: 0 }
  }
  if (period === "month") {
    return s.monthStart === monthStartOf(nowMs)
      ? { costUsd: s.monthCostUsd, tokens: s.monthTokens }
      : { costUsd: 0, tokens: 0 }
  }
  return { costUsd: s.spentUsd, tokens: s.tokensUsed }
}

/** `s` with `costUsd` and `tokens` spent at `atMs` added (the same arithmetic as the store's `addSpend`). */
export const addSpent = (s: SpendRow, costUsd: number, tokens: number, atMs: number): SpendRow => {
  const day = dayStartOf(atMs)
  const month = monthStartOf(atMs)
  const dayNew = s.dayStart === null || s.dayStart < day
  const monthNew = s.monthStart === null || s.monthStart < month
  return {
    spentUsd: s.spentUsd + costUsd,
    tokensUsed: s.tokensUsed + tokens,
    dayStart: dayNew ? day : s.dayStart,
    dayCostUsd: dayNew ? costUsd : s.dayStart === day ? s.dayCostUsd + costUsd : s.dayCostUsd,
    dayTokens: dayNew ? tokens : s.dayStart === day ? s.dayTokens + tokens : s.dayTokens,
    monthStart: monthNew ? month : s.monthStart,
    monthCostUsd: monthNew ? costUsd : s.monthStart === month ? s.monthCostUsd + costUsd : s.monthCostUsd,
    monthTokens: monthNew ? tokens : s.monthStart === month ? s.monthTokens + tokens : s.monthTokens
  }
}

/** The delta `addSpend` writes for spend at `atMs`. */
export const deltaOf = (
  scope: SpendDelta["scope"],
  id: string,
  costUsd: number,
  tokens: number,
  atMs: number
): SpendDelta => ({
  scope,
  id,
  costUsd,
  tokens,
  dayStart: dayStartOf(atMs),
  monthStart: monthStartOf(atMs)
})

/** Which of a budget's limits the usage has reached, if any. */
export const exhausted = (b: BudgetRow, used: PeriodUsage): "max_cost_usd" | "max_tokens" | undefined =>
  b.maxCostUsd !== null && used.costUsd >= b.maxCostUsd
    ? "max_cost_usd"
    : b.maxTokens !== null && used.tokens >= b.maxTokens
    ? "max_tokens"
    : undefined

export const hasBudget = (b: BudgetRow): boolean => b.maxCostUsd !== null || b.maxTokens !== null
