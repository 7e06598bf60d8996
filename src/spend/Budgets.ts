/**
 * Budgets (`max_cost_usd`, `max_tokens` per `budget_period`) of tokens and their projects: the check before a request
 * goes upstream, and the charge of its answer.
 *
 * Only tokens with a budget, or whose project has one, come here: the path of every other token stays as it was
 * (synchronous, no database). For those that do, the check reads what the token and its project spent (one query,
 * src/store: `spendOf`, which serves the checks of `readTtlMs` (`timingsFor`: per database): between reads the check is synchronous,
 * `unsafeCheck`) and adds what this instance charged but has not written yet; the charge of an answer is written
 * right away, not with the batched usage counters, so that every instance sees it: one write at a time, of every
 * charge since the previous write, and while answers end continuously at most one write per writeGapMs (a write
 * per answer cost more than the proxying itself at saturation: docs/performance.md). This instance's reads and writes
 * take turns (`readTurn`), so a read holds exactly the writes done before it began: its charges are neither missed nor
 * counted twice.
 *
 * Overshoot: a request is admitted while the budget is not used up, and its cost is known only when its answer ends.
 * The requests that can overshoot a budget are those already admitted when it is reached — the requests in flight,
 * on every instance — plus, on other instances, those admitted before they see its last charge: while it waits for
 * its write (up to writeGapMs) and is written, and for up to readTtlMs after (a read of what was spent serves
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
   * readTtlMs old at most), else the Effect that reads it, which the caller runs.
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

export interface Timings {
  /** How long a read of what was spent serves further checks (other instances' charges show after at most this). */
  readonly readTtlMs: number
  /**
   * The least time between the starts of two writes of charges: while answers end continuously, their charges are
   * written together every writeGapMs; a charge after a quiet spell is written at once.
   */
  readonly writeGapMs: number
  /** How long written charges are kept to be added to reads that began before their write (well above readTtlMs). */
  readonly recentMs: number
}

/**
 * PostgreSQL: several instances share the budgets, and each sees the others' charges within about 100 ms.
 * SQLite: one instance (docs/deployment.md). Every change of what was spent is one of its own charges, which it adds
 * to its reads itself, so reads and writes are rarer: a write a second at most, like the batched usage counters
 * (USAGE_FLUSH_INTERVAL's default), and a read a second per budgeted token. Each read or write costs about as much as
 * the proxying of several hundred requests (docs/performance.md). A second process on the same file would see this
 * one's charges within about 2 s.
 */
export const timingsFor = (dialect: "sqlite" | "postgres"): Timings =>
  dialect === "postgres"
    ? { readTtlMs: 50, writeGapMs: 50, recentMs: 250 }
    : { readTtlMs: 1_000, writeGapMs: 1_000, recentMs: 5_000 }

/** A write the database did not take is tried again (built once: building it per write showed in profiles). */
const retrySchedule = Schedule.intersect(Schedule.exponential(Duration.millis(50)), Schedule.recurs(10))

export class Budgets extends Context.Tag("llm-proxy/Budgets")<Budgets, BudgetsShape>() {}

type Scope = SpendDelta["scope"]
const SCOPES: ReadonlyArray<Scope> = ["token", "project"]
const isEmpty = (s: { readonly token: Map<string, unknown>; readonly project: Map<string, unknown> }) =>
  s.token.size === 0 && s.project.size === 0

const applies = (t: BudgetRow | undefined, p: BudgetRow | undefined) =>
  (t !== undefined && hasBudget(t)) || (p !== undefined && hasBudget(p))

/** Budgets on the Store, with the timings of its database unless `timings` are given (tests). */
export const make = (timings?: Timings) =>
  Effect.gen(function*() {
    const store = yield* Store
    const { readTtlMs, recentMs, writeGapMs } = timings ?? timingsFor(store.dialect)
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    /**
     * Charges not written yet, per scope, id and UTC day (first instant): summed, so that a check costs the same however
     * many answers are pending. Kept per scope by id (the id strings of the cached token rows: no key is built per
     * request).
     */
    type Sum = { costUsd: number; tokens: number; count: number }
    type Sums = { readonly token: Map<string, Map<number, Sum>>; readonly project: Map<string, Map<number, Sum>> }
    const sums = (): Sums => ({ token: new Map(), project: new Map() })
    const pending = sums()
    let writing = 0
    let idle: Array<() => void> = []
    /**
     * Charges written, per scope and id, one entry per write and day with the number of the write (`seq`): a read that
     * began before that write may not hold them, so they are added to it. Kept for recentMs (reads serve readTtlMs).
     */
    type Written = { day: number; costUsd: number; tokens: number; seq: number; writtenAt: number }
    const recent = { token: new Map<string, Array<Written>>(), project: new Map<string, Array<Written>>() }
    let seq = 0

    /** `s` as read when `readSeq` writes were done, plus what this instance charged since (written or not). */
    const withPending = (scope: Scope, id: string, s: SpendRow, readSeq: number): SpendRow => {
      let out = s
      const mine = pending[scope].get(id)
      if (mine !== undefined) {
        for (const [day, c] of mine) if (c.costUsd > 0 || c.tokens > 0) out = addSpent(out, c.costUsd, c.tokens, day)
      }
      const done = recent[scope].get(id)
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

    /** Adds a charge to the sums of `id` and `day` in `into` (`pending`, or the charges waiting for their write). */
    const pend = (into: Map<string, Map<number, Sum>>, id: string, day: number, costUsd: number, tokens: number) => {
      let days = into.get(id)
      if (days === undefined) into.set(id, days = new Map())
      const sum = days.get(day)
      if (sum === undefined) days.set(day, { costUsd, tokens, count: 1 })
      else {
        sum.costUsd += costUsd
        sum.tokens += tokens
        sum.count++
      }
    }

    /** A written batch (sums per scope, id and day): its charges leave `pending` for `recent`. */
    const written = (batch: Sums, doneSeq: number, now: number) => {
      for (const scope of SCOPES) {
        const done = recent[scope]
        for (const [id, list] of done) {
          const kept = list.filter((c) => now - c.writtenAt < recentMs)
          if (kept.length === 0) done.delete(id)
          else if (kept.length !== list.length) done.set(id, kept)
        }
        const waiting = pending[scope]
        for (const [id, days] of batch[scope]) {
          const mine = waiting.get(id)
          for (const [day, q] of days) {
            const sum = mine?.get(day)
            if (sum !== undefined) {
              sum.costUsd -= q.costUsd
              sum.tokens -= q.tokens
              // Counted, not compared with 0: sums of floating-point costs need not come back to exactly 0.
              sum.count -= q.count
              if (sum.count === 0) mine!.delete(day)
              if (mine!.size === 0) waiting.delete(id)
            }
            const item = { day, costUsd: q.costUsd, tokens: q.tokens, seq: doneSeq, writtenAt: now }
            const list = done.get(id)
            if (list === undefined) done.set(id, [item])
            else list.push(item)
          }
        }
      }
    }

    // What a token and its project spent, as last read, for readTtlMs: at a high rate of requests one query serves
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
      return seen !== undefined && nowMs - seen.at < readTtlMs && nowMs >= seen.at ? seen : undefined
    }
    /** What a token and its project spent: the last read while fresh (unless `renew`), else a read (one at a time). */
    const read = (tokenId: string, nowMs: number, renew = false): Effect.Effect<Read, StoreError> =>
      Effect.suspend(() => {
        const seen = renew ? undefined : fresh(tokenId, nowMs)
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
        const used = spentIn(withPending("token", tokenId, spent.token, readSeq), tokenBudget.period, nowMs)
        const limit = exhausted(tokenBudget, used)
        if (limit !== undefined) return { scope: "token" as const, limit, budget: tokenBudget }
      }
      if (projectBudget !== undefined && hasBudget(projectBudget)) {
        const used = spentIn(withPending("project", projectId, spent.project, readSeq), projectBudget.period, nowMs)
        const limit = exhausted(projectBudget, used)
        if (limit !== undefined) return { scope: "project" as const, limit, budget: projectBudget }
      }
      return undefined
    }

    /**
     * Under steady traffic a token's next read is started in the background once the last one is half readTtlMs old, so
     * that it is there before that one expires: checks do not wait for the database (on PostgreSQL a read is a round
     * trip, and every check waiting for it was an Effect run). Reads still serve checks for readTtlMs at most; a check
     * after that (the first of a token, or after a quiet spell, or while the database is slow) waits for a read.
     */
    const refreshAfterMs = readTtlMs / 2
    const refresh = (tokenId: string, nowMs: number) => {
      // A failed read is not reported here: the check that finds the last read expired reads itself and answers its
      // failure (503).
      if (!reading.has(tokenId)) runFork(Effect.ignore(read(tokenId, nowMs, true)))
    }

    const unsafeCheck: BudgetsShape["unsafeCheck"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) => {
      const seen = fresh(tokenId, nowMs)
      if (seen !== undefined) {
        if (nowMs - seen.at >= refreshAfterMs) refresh(tokenId, nowMs)
        return verdict(seen, tokenId, tokenBudget, projectId, projectBudget, nowMs)
      }
      return Effect.map(read(tokenId, nowMs), (r) => verdict(r, tokenId, tokenBudget, projectId, projectBudget, nowMs))
    }

    const check: BudgetsShape["check"] = (tokenId, tokenBudget, projectId, projectBudget, nowMs) =>
      Effect.map(read(tokenId, nowMs), (r) => verdict(r, tokenId, tokenBudget, projectId, projectBudget, nowMs))

    // Charges are written in groups: one write at a time, of everything charged since the previous one began, and
    // while answers end continuously one write per writeGapMs at most (so at a high rate of answers the database
    // sees a few transactions a second, not one per answer: each costs far more CPU than the checks).
    // Summed per scope, id and day, like `pending` (one UPDATE each).
    let queued = sums()

    const wake = () => {
      const waiters = idle
      idle = []
      for (const w of waiters) w()
    }

    /** When the last write began (performance.now()), and the timer of the next while it waits for writeGapMs. */
    let lastWriteAt = -Infinity
    let timer: ReturnType<typeof setTimeout> | undefined
    /** Set by `settled`: what is queued is written without waiting for writeGapMs, until nothing is left. */
    let flushing = false

    /**
     * Writes what is queued now, or when writeGapMs have passed since the last write began (at once for `settled`),
     * once the reads in flight are done.
     */
    function schedule(): void {
      if (writing !== 0 || isEmpty(queued)) return
      if (!flushing) {
        if (timer !== undefined) return
        const wait = lastWriteAt + writeGapMs - performance.now()
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
      queued = sums()
      writing = 1
      lastWriteAt = performance.now()
      const deltas: Array<SpendDelta> = []
      for (const scope of SCOPES) {
        for (const [id, days] of batch[scope]) {
          for (const [day, q] of days) deltas.push(deltaOf(scope, id, q.costUsd, q.tokens, day))
        }
      }
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
            if (!isEmpty(queued)) return schedule()
            flushing = false
            wake()
          }))
        )
      )
    }

    const charge: BudgetsShape["charge"] = (tokenId, projectId, costUsd, tokens, atMs) => {
      if (costUsd <= 0 && tokens <= 0) return
      const day = dayStartOf(atMs)
      pend(pending.token, tokenId, day, costUsd, tokens)
      pend(pending.project, projectId, day, costUsd, tokens)
      pend(queued.token, tokenId, day, costUsd, tokens)
      pend(queued.project, projectId, day, costUsd, tokens)
      schedule()
    }

    const settled = Effect.async<void>((resume) => {
      if (writing === 0 && isEmpty(queued)) return resume(Effect.void)
      idle.push(() => resume(Effect.void))
      flushing = true
      schedule()
    })

    yield* Effect.addFinalizer(() => settled)
    return { applies, check, unsafeCheck, charge, settled } satisfies BudgetsShape
  })

export const layer: Layer.Layer<Budgets, never, Store> = Layer.scoped(Budgets, make())

/** Budgets with the given timings whatever the database (tests of the reads' and writes' interplay). */
export const layerWith = (timings: Timings): Layer.Layer<Budgets, never, Store> => Layer.scoped(Budgets, make(timings))
