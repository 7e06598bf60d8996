/**
 * Budgets (`max_cost_usd`, `max_tokens` per `budget_period`) of tokens and their projects: the check before a request
 * goes upstream, and the charge of its answer.
 *
 * Only tokens with a budget, or whose project has one, come here: the path of every other token stays as it was
 * (synchronous, no database). For those that do, the check reads what the token and its project spent (one query,
 * src/store: `spendOf`, which serves the checks of READ_TTL_MS: between reads the check is synchronous,
 * `unsafeCheck`) and adds what this instance charged but has not written yet; the charge of an answer is written
 * right away, not with the batched usage counters, so that every instance sees it: one write at a time, of every
 * charge since the previous write, and while answers end continuously at most one write per WRITE_GAP_MS (a write
 * per answer cost more than the proxying itself at saturation: docs/performance.md). This instance's reads and writes
 * take turns (`readTurn`), so a read holds exactly the writes done before it began: its charges are neither missed nor
 * counted twice.
 *
 * Overshoot: a request is admitted while the budget is not used up, and its cost is known only when its answer ends.
 * The requests that can overshoot a budget are those already admitted when it is reached — the requests in flight,
 * on every instance — plus, on other instances, those admitted before they see its last charge: while it waits for
 * its write (up to WRITE_GAP_MS) and is written, and for up to READ_TTL_MS after (a read of what was spent serves
 * the checks of that long). docs/spend.md says so.
 */
import { Context, Deferred, Duration, Effect, FiberId, Layer, Option, Runtime, Schedule } from "effect"
import {
  type BudgetRow,
  NOTHING_SPENT,
  type SpendDelta,
  type SpendRow,
  Store,
  type StoreError
} from "../store/Store.js"
import { addSpent, dayStartOf, deltaOf, exhausted, hasBudget, spentIn } from "./periods.js"

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
  /**
   * For plain Node code on the data plane: `check`'s verdict now when a read of what was spent serves it (one
   * READ_TTL_MS old at most), else the Effect that reads it, which the caller runs.
   */
  readonly unsafeCheck: (
    tokenId: string,
    tokenBudget: BudgetRow | undefined,
    projectId: string,
    projectBudget: BudgetRow | undefined,
    nowMs: number
  ) => BudgetExceeded | undefined | Effect.Effect<BudgetExceeded | undefined, StoreError>
  /** Charges an answer to a token and its project at once (written in the background, retried; never fails). */
  readonly charge: (tokenId: string, projectId: string, costUsd: number, tokens: number, atMs: number) => void
  /** Charges written so far are visible to every instance; this waits for those pending here (tests, shutdown). */
  readonly settled: Effect.Effect<void>
}

/** How long a read of what was spent serves further checks (other instances' charges show after at most this). */
export const READ_TTL_MS = 50
/**
 * The least time between the starts of two writes of charges: while answers end continuously, their charges are
 * written together every WRITE_GAP_MS; a charge after a quiet spell is written at once.
 */
export const WRITE_GAP_MS = 50
/** How long written charges are kept to be added to reads that began before their write (well above READ_TTL_MS). */
const RECENT_MS = 250

/** A write the database did not take is tried again (built once: building it per write showed in profiles). */
const retrySchedule = Schedule.intersect(Schedule.exponential(Duration.millis(50)), Schedule.recurs(10))

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
  const recent = new Map<
    string,
    Array<{ day: number; costUsd: number; tokens: number; seq: number; writtenAt: number }>
  >()
  let seq = 0

  /** `s` as read when `readSeq` writes were done, plus what this instance charged since (written or not). */
  const withPending = (key: string, s: SpendRow, readSeq: number): SpendRow => {
    let out = s
    const mine = pending.get(key)
    if (mine !== undefined) {
      for (const [day, c] of mine) if (c.costUsd > 0 || c.tokens > 0) out = addSpent(out, c.costUsd, c.tokens, day)
    }
    const done = recent.get(key)
    if (done !== undefined) {
      // Newest first, up to the read: summed per day before they are added (a read may be older than several writes).
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

  /** Adds a charge to the sums of `key` and `day` in `into` (`pending`, or the charges waiting for their write). */
  const pend = (into: Map<string, Map<number, Sum>>, key: string, day: number, costUsd: number, tokens: number) => {
    let days = into.get(key)
    if (days === undefined) into.set(key, days = new Map())
    const sum = days.get(day)
    if (sum === undefined) days.set(day, { costUsd, tokens, count: 1 })
    else {
      sum.costUsd += costUsd
      sum.tokens += tokens
      sum.count++
    }
  }

  /** A written batch (sums per key and day): its charges leave `pending` for `recent`. */
  const written = (batch: Map<string, Map<number, Sum>>, doneSeq: number, now: number) => {
    for (const [key, list] of recent) {
      const kept = list.filter((c) => now - c.writtenAt < RECENT_MS)
      if (kept.length === 0) recent.delete(key)
      else if (kept.length !== list.length) recent.set(key, kept)
    }
    for (const [key, days] of batch) {
      const mine = pending.get(key)
      for (const [day, q] of days) {
        const sum = mine?.get(day)
        if (sum !== undefined) {
          sum.costUsd -= q.costUsd
          sum.tokens -= q.tokens
          // Counted, not compared with 0: sums of floating-point costs need not come back to exactly 0.
          sum.count -= q.count
          if (sum.count === 0) mine!.delete(day)
          if (mine!.size === 0) pending.delete(key)
        }
        const item = { day, costUsd: q.costUsd, tokens: q.tokens, seq: doneSeq, writtenAt: now }
        const list = recent.get(key)
        if (list === undefined) recent.set(key, [item])
        else list.push(item)
      }
    }
  }

  // What a token and its project spent, as last read, for READ_TTL_MS: at a high rate of requests one query serves
  // many. What this instance charged since the read began is added to it (pending, or written since: `recent`).
  type Read = { readonly at: number; readonly seq: number; readonly spent: { token: SpendRow; project: SpendRow } }
  const reads = new Map<string, Read>()
  /** Reads under way, per token: the checks that miss meanwhile wait for the same query instead of each sending one. */
  const reading = new Map<string, Deferred.Deferred<Read, StoreError>>()
  /**
   * Reads and writes of this instance take turns: reads (any number at once) wait while a write is in flight or
   * due (`writeWanted`: a write waits for the reads in flight, and new reads wait for it, so neither starves).
   */
  let readsInFlight = 0
  let readWaiters: Array<() => void> = []
  let writeWanted = false
  const readTurn = Effect.async<void>((resume) => {
    if (writing === 0 && !writeWanted) {
      readsInFlight++
      return resume(Effect.void)
    }
    const go = () => resume(Effect.void)
    readWaiters.push(go)
    // Interrupted while waiting: not counted in flight, never started.
    return Effect.sync(() => {
      readWaiters = readWaiters.filter((w) => w !== go)
    })
  })
  const readDone = Effect.sync(() => {
    if (--readsInFlight === 0 && writeWanted) {
      writeWanted = false
      schedule()
    }
  })

  const fresh = (tokenId: string, nowMs: number): Read | undefined => {
    const seen = reads.get(tokenId)
    return seen !== undefined && nowMs - seen.at < READ_TTL_MS && nowMs >= seen.at ? seen : undefined
  }
  const read = (tokenId: string, nowMs: number): Effect.Effect<Read, StoreError> =>
    Effect.suspend(() => {
      const seen = fresh(tokenId, nowMs)
      if (seen !== undefined) return Effect.succeed(seen)
      const under = reading.get(tokenId)
      if (under !== undefined) return Deferred.await(under)
      const done = Deferred.unsafeMake<Read, StoreError>(FiberId.none)
      reading.set(tokenId, done)
      return Effect.acquireUseRelease(
        readTurn,
        () =>
          Effect.suspend(() => {
            // No write of this instance is in flight while a read is (`readTurn`): the read holds exactly the writes
            // numbered up to `seq` — on a database with a pool of connections, a write in flight could commit before
            // or after a read's snapshot, and either guess would count its charges twice or not at all.
            const startSeq = seq
            return Effect.map(store.spendOf(tokenId), (found) => {
              const spent = Option.getOrElse(found, () => ({ token: NOTHING_SPENT, project: NOTHING_SPENT }))
              if (reads.size >= 10_000) reads.clear()
              const r = { at: nowMs, seq: startSeq, spent }
              reads.set(tokenId, r)
              return r
            })
          }),
        () => readDone
      ).pipe(Effect.onExit((exit) =>
        Effect.sync(() => {
          if (reading.get(tokenId) === done) reading.delete(tokenId)
          Deferred.unsafeDone(done, exit)
        })
      ))
    })

  const verdict = (
    { seq: readSeq, spent }: Read,
    tokenId: string,
    tokenBudget: BudgetRow | undefined,
    projectId: string,
    projectBudget: BudgetRow | undefined,
    nowMs: number
  ): BudgetExceeded | undefined => {
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
  }

  const unsafeCheck: BudgetsShape["unsafeCheck"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) => {
    const seen = fresh(tokenId, nowMs)
    if (seen !== undefined) return verdict(seen, tokenId, tokenBudget, projectId, projectBudget, nowMs)
    return Effect.map(read(tokenId, nowMs), (r) => verdict(r, tokenId, tokenBudget, projectId, projectBudget, nowMs))
  }

  const check: BudgetsShape["check"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) =>
    Effect.map(read(tokenId, nowMs), (r) => verdict(r, tokenId, tokenBudget, projectId, projectBudget, nowMs))

  // Charges are written in groups: one write at a time, of everything charged since the previous one began, and
  // while answers end continuously one write per WRITE_GAP_MS at most (so at a high rate of answers the database
  // sees a few transactions a second, not one per answer: each costs far more CPU than the checks).
  // Summed per `token:<id>` / `project:<id>` and day, like `pending` (one UPDATE each).
  let queued = new Map<string, Map<number, Sum>>()

  const wake = () => {
    const waiters = idle
    idle = []
    for (const w of waiters) w()
  }

  /** When the last write began (performance.now()), and the timer of the next while it waits for WRITE_GAP_MS. */
  let lastWriteAt = -Infinity
  let timer: ReturnType<typeof setTimeout> | undefined
  /** Set by `settled`: what is queued is written without waiting for WRITE_GAP_MS, until nothing is left. */
  let flushing = false

  /**
   * Writes what is queued now, or when WRITE_GAP_MS have passed since the last write began (at once for `settled`),
   * once the reads in flight are done.
   */
  function schedule(): void {
    if (writing !== 0 || queued.size === 0) return
    if (!flushing) {
      if (timer !== undefined) return
      const wait = lastWriteAt + WRITE_GAP_MS - performance.now()
      if (wait > 0) {
        timer = setTimeout(() => {
          timer = undefined
          schedule()
        }, wait)
        return
      }
    }
    if (readsInFlight > 0) {
      writeWanted = true
      return
    }
    writeQueued()
  }

  const writeQueued = (): void => {
    if (timer !== undefined) {
      clearTimeout(timer)
      timer = undefined
    }
    const batch = queued
    queued = new Map()
    writing = 1
    lastWriteAt = performance.now()
    const deltas: Array<SpendDelta> = []
    for (const [key, days] of batch) {
      const colon = key.indexOf(":")
      const scope = key.slice(0, colon) as SpendDelta["scope"]
      for (const [day, q] of days) deltas.push(deltaOf(scope, key.slice(colon + 1), q.costUsd, q.tokens, day))
    }
    deltas.sort((a, b) => a.dayStart - b.dayStart)
    runFork(
      store.addSpend(deltas).pipe(
        // Kept pending (so still counted here) while the database does not take it; given up after about a minute.
        Effect.retry(retrySchedule),
        Effect.catchAll((e) => Effect.logError("spend of answers not written (budgets)", e.message)),
        Effect.ensuring(Effect.sync(() => {
          written(batch, ++seq, Date.now())
          writing = 0
          // The reads that waited for this write go first (in flight from now, so the next write waits for them).
          const waiting = readWaiters
          readWaiters = []
          readsInFlight += waiting.length
          for (const go of waiting) go()
          // What was charged meanwhile waits for its turn; `settled` waiters wait for it too.
          if (queued.size > 0) return schedule()
          flushing = false
          wake()
        }))
      )
    )
  }

  const charge: BudgetsShape["charge"] = (tokenId, projectId, costUsd, tokens, atMs) => {
    if (costUsd <= 0 && tokens <= 0) return
    const day = dayStartOf(atMs)
    const tokenKey = `token:${tokenId}`
    const projectKey = `project:${projectId}`
    pend(pending, tokenKey, day, costUsd, tokens)
    pend(pending, projectKey, day, costUsd, tokens)
    pend(queued, tokenKey, day, costUsd, tokens)
    pend(queued, projectKey, day, costUsd, tokens)
    schedule()
  }

  const settled = Effect.async<void>((resume) => {
    if (writing === 0 && queued.size === 0) return resume(Effect.void)
    idle.push(() => resume(Effect.void))
    flushing = true
    schedule()
  })

  yield* Effect.addFinalizer(() => settled)
  return { applies, check, unsafeCheck, charge, settled } satisfies BudgetsShape
})

export const layer: Layer.Layer<Budgets, never, Store> = Layer.scoped(Budgets, make)
