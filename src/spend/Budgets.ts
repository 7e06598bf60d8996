/**
 * Budgets (`max_cost_usd`, `max_tokens` per `budget_period`) of tokens and their projects: the check before a request
 * goes upstream, and the charge of its answer.
 *
 * Only tokens with a budget, or whose project has one, come here: the path of every other token stays as it was
 * (synchronous, no database). For those that do, the check reads what the token and its project spent (one query,
 * src/store: `spendOf`) and adds what this instance charged but has not written yet; the charge of an answer is
 * written at once (not batched) so that every instance sees it.
 *
 * Overshoot: a request is admitted while the budget is not used up, and its cost is known only when its answer ends.
 * The requests that can overshoot a budget are those already admitted when it is reached — the requests in flight,
 * on every instance — plus, on other instances, those admitted before they see its last charge: while it is being
 * written (charges are written in groups, one write at a time) and for up to READ_TTL_MS after (a read of what was
 * spent serves the checks of that long). docs/spend.md says so.
 */
import { Context, Duration, Effect, Layer, Option, Runtime, Schedule } from "effect"
import { type BudgetRow, NOTHING_SPENT, type SpendDelta, type SpendRow, Store, type StoreError } from "../store/Store.js"
import { addSpent, deltaOf, exhausted, hasBudget, spentIn } from "./periods.js"

export interface BudgetExceeded {
  readonly scope: "token" | "project"
  readonly limit: "max_cost_usd" | "max_tokens"
  readonly budget: BudgetRow
}

export interface BudgetsShape {
  /** Whether a token (with its project) has a budget to check. */
  readonly applies: (tokenBudget: BudgetRow | undefined, projectBudget: BudgetRow | undefined) => boolean
  /** The budget used up, if any, at `nowMs` (token first, then project). */
  readonly check: (
    tokenId: string,
    tokenBudget: BudgetRow | undefined,
    projectId: string,
    projectBudget: BudgetRow | undefined,
    nowMs: number
  ) => Effect.Effect<BudgetExceeded | undefined, StoreError>
  /** Charges an answer to a token and its project at once (written in the background, retried; never fails). */
  readonly charge: (tokenId: string, projectId: string, costUsd: number, tokens: number, atMs: number) => void
  /** Charges written so far are visible to every instance; this waits for those pending here (tests, shutdown). */
  readonly settled: Effect.Effect<void>
}

/** How long a read of what was spent serves further checks (other instances' charges show after at most this). */
export const READ_TTL_MS = 50
/** How long written charges are kept to be added to reads that began before their write (well above READ_TTL_MS). */
const RECENT_MS = 250

export class Budgets extends Context.Tag("llm-proxy/Budgets")<Budgets, BudgetsShape>() {}

const applies = (t: BudgetRow | undefined, p: BudgetRow | undefined) =>
  (t !== undefined && hasBudget(t)) || (p !== undefined && hasBudget(p))

export const make = Effect.gen(function*() {
  const store = yield* Store
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  /**
   * Charges not written yet, per `token:<id>` / `project:<id>` and UTC day (first instant): summed, so that a check
   * costs the same however many answers are pending.
   */
  type Sum = { costUsd: number; tokens: number; count: number }
  const pending = new Map<string, Map<number, Sum>>()
  let writing = 0
  let idle: Array<() => void> = []
  /**
   * Charges written, per key, one entry per write and day with the number of the write (`seq`): a read that began
   * before that write may not hold them, so they are added to it. Kept for RECENT_MS (reads serve READ_TTL_MS).
   */
  const recent = new Map<string, Array<{ day: number; costUsd: number; tokens: number; seq: number; writtenAt: number }>>()
  let seq = 0
  /**
   * Reads of what was spent and writes of charges never overlap on this instance (many reads at once, or one write):
   * a read then knows exactly which writes it saw — those done before it began (`seq`) — so nothing this instance
   * charged is counted twice or missed, whatever order the database runs concurrent statements in. A write waiting
   * for reads to end holds back new reads (and a read waiting for a write, the next write), so neither starves.
   */
  let readers = 0
  let writeWaiting = false
  let readWaiters: Array<() => void> = []

  /** `s` as read when `readSeq` writes were done, plus what this instance charged since (written or not). */
  const withPending = (key: string, s: SpendRow, readSeq: number): SpendRow => {
    let out = s
    const mine = pending.get(key)
    if (mine !== undefined) for (const [day, c] of mine) out = addSpent(out, c.costUsd, c.tokens, day)
    const done = recent.get(key)
    if (done !== undefined) {
      // Newest first, up to the read: summed per day before they are added (writes come every millisecond or so).
      let day = -1
      let cost = 0
      let tokens = 0
      for (let i = done.length - 1; i >= 0; i--) {
        const c = done[i]!
        if (c.seq <= readSeq) break
        if (c.day !== day) {
          if (day !== -1) out = addSpent(out, cost, tokens, day)
          day = c.day
          cost = 0
          tokens = 0
        }
        cost += c.costUsd
        tokens += c.tokens
      }
      if (day !== -1) out = addSpent(out, cost, tokens, day)
    }
    return out
  }

  const pend = (key: string, day: number, costUsd: number, tokens: number) => {
    let days = pending.get(key)
    if (days === undefined) pending.set(key, days = new Map())
    const sum = days.get(day)
    if (sum === undefined) days.set(day, { costUsd, tokens, count: 1 })
    else {
      sum.costUsd += costUsd
      sum.tokens += tokens
      sum.count++
    }
  }

  /** A written batch: its charges leave `pending` for `recent`. */
  const written = (batch: ReadonlyArray<{ readonly keys: ReadonlyArray<string>; readonly day: number; readonly costUsd: number; readonly tokens: number }>, doneSeq: number, now: number) => {
    const sums = new Map<string, { key: string; day: number; costUsd: number; tokens: number }>()
    for (const q of batch) {
      for (const key of q.keys) {
        const days = pending.get(key)
        const sum = days?.get(q.day)
        if (sum !== undefined) {
          sum.costUsd -= q.costUsd
          sum.tokens -= q.tokens
          if (--sum.count === 0) days!.delete(q.day)
          if (days!.size === 0) pending.delete(key)
        }
        const id = `${key}|${q.day}`
        const agg = sums.get(id)
        if (agg === undefined) sums.set(id, { key, day: q.day, costUsd: q.costUsd, tokens: q.tokens })
        else {
          agg.costUsd += q.costUsd
          agg.tokens += q.tokens
        }
      }
    }
    for (const [key, list] of recent) {
      const kept = list.filter((c) => now - c.writtenAt < RECENT_MS)
      if (kept.length === 0) recent.delete(key)
      else if (kept.length !== list.length) recent.set(key, kept)
    }
    for (const a of sums.values()) {
      const item = { day: a.day, costUsd: a.costUsd, tokens: a.tokens, seq: doneSeq, writtenAt: now }
      const list = recent.get(a.key)
      if (list === undefined) recent.set(a.key, [item])
      else list.push(item)
    }
  }

  // What a token and its project spent, as last read, for READ_TTL_MS: at a high rate of requests one query serves
  // many. What this instance charged since the read began is added to it (pending, or written since: `recent`).
  /** Waits while a write is in flight or waiting, then counts this read (released with `endRead`). */
  const startRead = Effect.async<void>((resume) => {
    if (writing === 0 && !writeWaiting) {
      readers++
      return resume(Effect.void)
    }
    // Counted by the write that releases it.
    readWaiters.push(() => resume(Effect.void))
  })
  const endRead = Effect.sync(() => {
    if (--readers === 0 && writeWaiting) {
      writeWaiting = false
      writeQueued()
    }
  })

  type Read = { readonly at: number; readonly seq: number; readonly spent: { token: SpendRow; project: SpendRow } }
  const reads = new Map<string, Read>()
  const read = (tokenId: string, nowMs: number): Effect.Effect<Read, StoreError> => {
    const seen = reads.get(tokenId)
    if (seen !== undefined && nowMs - seen.at < READ_TTL_MS && nowMs >= seen.at) return Effect.succeed(seen)
    let startSeq = 0
    const query = Effect.suspend(() => {
      startSeq = seq
      return store.spendOf(tokenId)
    })
    return Effect.map(Effect.acquireUseRelease(startRead, () => query, () => endRead), (found) => {
      const spent = Option.getOrElse(found, () => ({ token: NOTHING_SPENT, project: NOTHING_SPENT }))
      if (reads.size >= 10_000) reads.clear()
      const r = { at: nowMs, seq: startSeq, spent }
      reads.set(tokenId, r)
      return r
    })
  }

  const check: BudgetsShape["check"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) =>
    Effect.map(read(tokenId, nowMs), ({ seq: readSeq, spent }) => {
      if (tokenBudget !== undefined && hasBudget(tokenBudget)) {
        const used = spentIn(withPending(`token:${tokenId}`, spent.token, readSeq), tokenBudget.period, nowMs)
        const limit = exhausted(tokenBudget, used)
        if (limit !== undefined) return { scope: "token" as const, limit, budget: tokenBudget }
      }
      if (projectBudget !== undefined && hasBudget(projectBudget)) {
        const used = spentIn(withPending(`project:${projectId}`, spent.project, readSeq), projectBudget.period, nowMs)
        const limit = exhausted(projectBudget, used)
        if (limit !== undefined) return { scope: "project" as const, limit, budget: projectBudget }
      }
      return undefined
    })

  // Charges are written in groups: one write at a time, of everything charged since the previous one began (so at
  // a high rate of answers the database sees one transaction per write, not one per answer).
  let queued: Array<{
    readonly keys: ReadonlyArray<string>
    readonly day: number
    readonly costUsd: number
    readonly tokens: number
    readonly deltas: ReadonlyArray<SpendDelta>
  }> = []

  const wake = () => {
    const waiters = idle
    idle = []
    for (const w of waiters) w()
  }

  const writeQueued = (): void => {
    const batch = queued
    queued = []
    writing = 1
    // Deltas of one token or project and day are summed: one UPDATE each.
    const merged = new Map<string, { -readonly [K in keyof SpendDelta]: SpendDelta[K] }>()
    for (const q of batch) {
      for (const d of q.deltas) {
        const key = `${d.scope}:${d.id}:${d.dayStart}`
        const seen = merged.get(key)
        if (seen === undefined) merged.set(key, { ...d })
        else {
          seen.costUsd += d.costUsd
          seen.tokens += d.tokens
        }
      }
    }
    const deltas = [...merged.values()].sort((a, b) => a.dayStart - b.dayStart)
    runFork(
      store.addSpend(deltas).pipe(
        // Kept pending (so still counted here) while the database does not take it; given up after about a minute.
        Effect.retry(Schedule.intersect(Schedule.exponential(Duration.millis(50)), Schedule.recurs(10))),
        Effect.catchAll((e) => Effect.logError("spend of answers not written (budgets)", e.message)),
        Effect.ensuring(Effect.sync(() => {
          written(batch, ++seq, Date.now())
          writing = 0
          if (readWaiters.length > 0) {
            // Reads held back by this write go first; the next write waits for them.
            const waiters = readWaiters
            readWaiters = []
            readers += waiters.length
            if (queued.length > 0) writeWaiting = true
            for (const w of waiters) w()
            if (!writeWaiting) wake()
            return
          }
          if (queued.length > 0) return writeQueued()
          wake()
        }))
      )
    )
  }

  const charge: BudgetsShape["charge"] = (tokenId, projectId, costUsd, tokens, atMs) => {
    if (costUsd <= 0 && tokens <= 0) return
    const keys = [`token:${tokenId}`, `project:${projectId}`]
    const token = deltaOf("token", tokenId, costUsd, tokens, atMs)
    for (const key of keys) pend(key, token.dayStart, costUsd, tokens)
    queued.push({ keys, day: token.dayStart, costUsd, tokens, deltas: [token, deltaOf("project", projectId, costUsd, tokens, atMs)] })
    if (writing === 0 && !writeWaiting) {
      if (readers > 0) writeWaiting = true
      else writeQueued()
    }
  }

  const settled = Effect.async<void>((resume) => {
    if (writing === 0 && !writeWaiting) return resume(Effect.void)
    idle.push(() => resume(Effect.void))
  })

  yield* Effect.addFinalizer(() => settled)
  return { applies, check, charge, settled } satisfies BudgetsShape
})

export const layer: Layer.Layer<Budgets, never, Store> = Layer.scoped(Budgets, make)
