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
 * on every instance — plus, on other instances, those admitted in the few milliseconds its last charge takes to be
 * written. docs/spend.md says so.
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

export class Budgets extends Context.Tag("llm-proxy/Budgets")<Budgets, BudgetsShape>() {}

const applies = (t: BudgetRow | undefined, p: BudgetRow | undefined) =>
  (t !== undefined && hasBudget(t)) || (p !== undefined && hasBudget(p))

export const make = Effect.gen(function*() {
  const store = yield* Store
  const runFork = Runtime.runFork(yield* Effect.runtime<never>())
  /** Charges not written yet, per `token:<id>` / `project:<id>`, each with the time it was spent. */
  const pending = new Map<string, Array<{ costUsd: number; tokens: number; atMs: number }>>()
  let writing = 0
  let idle: Array<() => void> = []

  const withPending = (key: string, s: SpendRow): SpendRow => {
    const mine = pending.get(key)
    if (mine === undefined) return s
    let out = s
    for (const c of mine) out = addSpent(out, c.costUsd, c.tokens, c.atMs)
    return out
  }

  const unpend = (key: string, entry: { costUsd: number; tokens: number; atMs: number }) => {
    const list = pending.get(key)
    if (list === undefined) return
    const i = list.indexOf(entry)
    if (i !== -1) list.splice(i, 1)
    if (list.length === 0) pending.delete(key)
  }

  const check: BudgetsShape["check"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) =>
    Effect.map(store.spendOf(tokenId), (found) => {
      const spent = Option.getOrElse(found, () => ({ token: NOTHING_SPENT, project: NOTHING_SPENT }))
      if (tokenBudget !== undefined && hasBudget(tokenBudget)) {
        const used = spentIn(withPending(`token:${tokenId}`, spent.token), tokenBudget.period, nowMs)
        const limit = exhausted(tokenBudget, used)
        if (limit !== undefined) return { scope: "token" as const, limit, budget: tokenBudget }
      }
      if (projectBudget !== undefined && hasBudget(projectBudget)) {
        const used = spentIn(withPending(`project:${projectId}`, spent.project), projectBudget.period, nowMs)
        const limit = exhausted(projectBudget, used)
        if (limit !== undefined) return { scope: "project" as const, limit, budget: projectBudget }
      }
      return undefined
    })

  const charge: BudgetsShape["charge"] = (tokenId, projectId, costUsd, tokens, atMs) => {
    if (costUsd <= 0 && tokens <= 0) return
    const entry = { costUsd, tokens, atMs }
    const keys = [`token:${tokenId}`, `project:${projectId}`]
    for (const key of keys) {
      const list = pending.get(key)
      if (list === undefined) pending.set(key, [entry])
      else list.push(entry)
    }
    const deltas: ReadonlyArray<SpendDelta> = [
      deltaOf("token", tokenId, costUsd, tokens, atMs),
      deltaOf("project", projectId, costUsd, tokens, atMs)
    ]
    writing++
    runFork(
      store.addSpend(deltas).pipe(
        // Kept pending (so still counted here) while the database does not take it; given up after about a minute.
        Effect.retry(Schedule.intersect(Schedule.exponential(Duration.millis(50)), Schedule.recurs(10))),
        Effect.catchAll((e) => Effect.logError("spend of an answer not written (budgets)", e.message)),
        Effect.ensuring(Effect.sync(() => {
          for (const key of keys) unpend(key, entry)
          writing--
          if (writing === 0) {
            const waiters = idle
            idle = []
            for (const w of waiters) w()
          }
        }))
      )
    )
  }

  const settled = Effect.async<void>((resume) => {
    if (writing === 0) return resume(Effect.void)
    idle.push(() => resume(Effect.void))
  })

  yield* Effect.addFinalizer(() => settled)
  return { applies, check, charge, settled } satisfies BudgetsShape
})

export const layer: Layer.Layer<Budgets, never, Store> = Layer.scoped(Budgets, make)
