/**
 * Spend in the admin UI (docs/spend.md): what a token or project spent, and a bar per budget showing how much of it
 * is used in the current period. Bars are native `<progress>` elements (no inline styles: they work under the CSP).
 */
import type { Project, Token } from "../../src/domain/models.js"
import { field, h } from "./dom.js"
import { formatNumber, time } from "./format.js"

/** USD with the digits small amounts need. */
export const formatUsd = (n: number) =>
  `$${n >= 100 ? n.toFixed(2) : n >= 1 ? n.toFixed(4).replace(/0{1,2}$/, "") : n === 0 ? "0" : n.toFixed(6)}`

const PERIOD = { total: "in total", day: "today (UTC)", month: "this month (UTC)" } as const

const bar = (label: string, used: number, max: number, text: string) =>
  h(
    "div",
    { class: "budget" },
    h("progress", { max: String(max), value: String(Math.min(used, max)), "aria-label": label }),
    h(
      "span",
      { class: used >= max ? "budget-used-up" : "muted" },
      text,
      used >= max ? " — used up: requests are refused" : ""
    )
  )

/** "Spent" and "Budget" rows for a token's or project's details. */
export const spendRows = (x: Project | Token): Array<readonly [string, HTMLElement | string]> => {
  const rows: Array<readonly [string, HTMLElement | string]> = [
    ["Spent", `${formatUsd(x.spent_usd)} · ${formatNumber(x.tokens_used)} tokens since creation`]
  ]
  if (x.max_cost_usd === null && x.max_tokens === null) {
    rows.push(["Budget", "None"])
    return rows
  }
  const period = PERIOD[x.budget_period]
  const bars: Array<HTMLElement> = []
  if (x.max_cost_usd !== null) {
    bars.push(
      bar(
        "USD budget used",
        x.period_spent_usd,
        x.max_cost_usd,
        `${formatUsd(x.period_spent_usd)} of ${formatUsd(x.max_cost_usd)} ${period}`
      )
    )
  }
  if (x.max_tokens !== null) {
    bars.push(
      bar(
        "Token budget used",
        x.period_tokens_used,
        x.max_tokens,
        `${formatNumber(x.period_tokens_used)} of ${formatNumber(x.max_tokens)} tokens ${period}`
      )
    )
  }
  if (x.period_ends_at !== null) bars.push(h("small", { class: "muted" }, "Starts again ", time(x.period_ends_at)))
  rows.push(["Budget", h("div", { class: "budgets" }, bars)])
  return rows
}

export interface BudgetValue {
  readonly max_cost_usd: number | null
  readonly max_tokens: number | null
  readonly budget_period: "total" | "day" | "month"
}

/** The budget inputs of a token or project form; blank = no budget. */
export const budgetFields = (current: Project | Token | undefined) => {
  const cost = h("input", {
    name: "max_cost_usd",
    type: "number",
    min: 0,
    step: "any",
    inputmode: "decimal",
    placeholder: "No USD budget",
    value: current?.max_cost_usd != null ? String(current.max_cost_usd) : ""
  })
  const tokens = h("input", {
    name: "max_tokens",
    type: "number",
    min: 1,
    step: 1,
    inputmode: "numeric",
    placeholder: "No token budget",
    value: current?.max_tokens != null ? String(current.max_tokens) : ""
  })
  const period = h(
    "select",
    { name: "budget_period" },
    (["total", "day", "month"] as const).map((p) =>
      h(
        "option",
        { value: p, selected: (current?.budget_period ?? "total") === p },
        p === "total" ? "in total" : `per ${p} (UTC)`
      )
    )
  )
  const element = [
    field("Budget (USD)", cost, "Blank: none. Requests are refused (429 budget_exceeded) once it is spent."),
    field("Budget (tokens)", tokens, "Input + output tokens. Blank: none."),
    field("Budget period", period)
  ]
  const value = (): BudgetValue => ({
    max_cost_usd: cost.value.trim() === "" ? null : Number(cost.value),
    max_tokens: tokens.value.trim() === "" ? null : Number(tokens.value),
    budget_period: period.value as BudgetValue["budget_period"]
  })
  return { element, value }
}
