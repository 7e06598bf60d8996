/**
 * UsageRecorder: per-token counters (requests of unlimited tokens, `last_used_at`, prompt/completion tokens,
 * cache hits) gathered in memory by the request path — a synchronous map update — and written in one
 * transaction per interval by a background fiber. The last batch is written when the scope closes (shutdown).
 * Bounded: beyond MAX_PENDING distinct tokens per interval further updates are dropped and counted.
 *
 * Updates that carry `rollup` also feed the per-hour usage rollups (table usage_hourly, read by the dashboard):
 * every answered request — limited, unlimited or cache hit — counts there, written by the same flush.
 *
 * Updates that carry `spend` (an answer's cost and LLM tokens, src/spend) add to what the token and its project spent
 * (`spent_usd`, `tokens_used` and the UTC day's and month's counters budgets read), in the same flush.
 */
import { Cause, Context, Duration, Effect, Layer, Schedule } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { deltaOf } from "../spend/periods.js"
import { type HourlyUsage, type SpendDelta, Store, type UsageDelta } from "../store/Store.js"
import { hourOf } from "../store/usage.js"

export interface UsageUpdate {
  /** Count one request (unlimited tokens only: limited ones were counted by their quota update). */
  readonly request?: boolean
  readonly promptTokens?: number
  readonly completionTokens?: number
  readonly cacheHit?: boolean
  /** ms since epoch of the use. */
  readonly at: number
  /** The answered request, for the per-hour rollups (and the project that `spend` is added to). */
  readonly rollup?: { readonly projectId: string; readonly status: number }
  /** What the answer cost (USD; 0 for a model without a price) and its LLM tokens. */
  readonly spend?: {
    readonly costUsd: number
    readonly tokens: number
    /** Already charged to the token and project (budgets, src/spend/Budgets.ts): counted in the rollups only. */
    readonly written?: boolean
  }
}

export interface UsageRecorderShape {
  readonly record: (tokenId: string, update: UsageUpdate) => void
  /** Writes what is pending now (tests, shutdown). */
  readonly flush: Effect.Effect<void>
  readonly dropped: () => number
  readonly pending: () => number
}

export class UsageRecorder extends Context.Tag("llm-proxy/UsageRecorder")<UsageRecorder, UsageRecorderShape>() {}

export const MAX_PENDING = 100_000

interface Pending {
  requests: number
  promptTokens: number
  completionTokens: number
  cacheHits: number
  lastUsedAt: number
}

export const make = Effect.gen(function*() {
  const store = yield* Store
  const config = yield* AppConfig
  let pending = new Map<string, Pending>()
  type Mutable<T> = { -readonly [K in keyof T]: T[K] }
  // hour (ISO) → token id → what to add. The request path finds the current hour's map without formatting or
  // concatenating anything (~0.1 µs per request, measured); rollups are one more Map update.
  let hourly = new Map<string, Map<string, Mutable<HourlyUsage>>>()
  let hourlySize = 0
  let dropped = 0
  // scope:id:day → spend to add (one entry per token and project and UTC day).
  let spending = new Map<string, { -readonly [K in keyof SpendDelta]: SpendDelta[K] }>()
  let lastHourStart = -1
  let lastHourIso = ""
  let lastHourMap: Map<string, Mutable<HourlyUsage>> | undefined

  const hourMap = (hour: string) => {
    let m = hourly.get(hour)
    if (m === undefined) {
      m = new Map()
      hourly.set(hour, m)
    }
    return m
  }

  const currentHourMap = (at: number) => {
    const start = at - (at % 3_600_000)
    if (start !== lastHourStart || lastHourMap === undefined) {
      lastHourStart = start
      lastHourIso = hourOf(start)
      lastHourMap = hourMap(lastHourIso)
    }
    return lastHourMap
  }

  const mergeHourly = (m: Map<string, Mutable<HourlyUsage>>, h: HourlyUsage) => {
    const seen = m.get(h.tokenId)
    if (seen === undefined) {
      if (hourlySize >= MAX_PENDING) {
        dropped++
        return
      }
      hourlySize++
      m.set(h.tokenId, { ...h })
      return
    }
    seen.requests += h.requests
    seen.cacheHits += h.cacheHits
    seen.errors += h.errors
    seen.promptTokens += h.promptTokens
    seen.completionTokens += h.completionTokens
    seen.costUsd = (seen.costUsd ?? 0) + (h.costUsd ?? 0)
  }

  const addSpending = (d: SpendDelta) => {
    const key = `${d.scope}:${d.id}:${d.dayStart}`
    const seen = spending.get(key)
    if (seen !== undefined) {
      seen.costUsd += d.costUsd
      seen.tokens += d.tokens
      return
    }
    if (spending.size >= MAX_PENDING) {
      dropped++
      return
    }
    spending.set(key, { ...d })
  }

  const merge = (
    tokenId: string,
    requests: number,
    prompt: number,
    completion: number,
    cacheHits: number,
    at: number
  ) => {
    let p = pending.get(tokenId)
    if (p === undefined) {
      if (pending.size >= MAX_PENDING) {
        dropped++
        return
      }
      p = { requests: 0, promptTokens: 0, completionTokens: 0, cacheHits: 0, lastUsedAt: 0 }
      pending.set(tokenId, p)
    }
    p.requests += requests
    p.promptTokens += prompt
    p.completionTokens += completion
    p.cacheHits += cacheHits
    if (at > p.lastUsedAt) p.lastUsedAt = at
  }

  const flushHourly = Effect.suspend(() => {
    if (hourlySize === 0) return Effect.void
    const batch = [...hourly.values()].flatMap((m) => [...m.values()])
    hourly = new Map()
    hourlySize = 0
    lastHourMap = undefined
    return store.addHourlyUsage(batch).pipe(
      Effect.catchAll((e) =>
        Effect.zipRight(
          Effect.logWarning("usage rollups not written; retrying with the next batch", e.message),
          Effect.sync(() => batch.forEach((h) => mergeHourly(hourMap(h.hour), h)))
        )
      )
    )
  })

  const flushTokens = Effect.suspend(() => {
    if (pending.size === 0) return Effect.void
    const batch = pending
    pending = new Map()
    const deltas: Array<UsageDelta> = []
    for (const [tokenId, p] of batch) {
      deltas.push({
        tokenId,
        requests: p.requests,
        promptTokens: p.promptTokens,
        completionTokens: p.completionTokens,
        cacheHits: p.cacheHits,
        // Only real requests move last_used_at (a cache hit or late usage of a limited token was already stamped).
        lastUsedAt: p.lastUsedAt > 0 ? new Date(p.lastUsedAt).toISOString() : null
      })
    }
    return store.addUsage(deltas).pipe(
      Effect.catchAll((e) =>
        Effect.zipRight(
          Effect.logWarning("usage counters not written; retrying with the next batch", e.message),
          Effect.sync(() => {
            for (const [tokenId, p] of batch) {
              merge(tokenId, p.requests, p.promptTokens, p.completionTokens, p.cacheHits, p.lastUsedAt)
            }
          })
        )
      )
    )
  })

  const flushSpend = Effect.suspend(() => {
    if (spending.size === 0) return Effect.void
    // The store writes older days first (a period's counters restart with the first delta of a newer one).
    const batch = [...spending.values()]
    spending = new Map()
    return store.addSpend(batch).pipe(
      Effect.catchAll((e) =>
        Effect.zipRight(
          Effect.logWarning("spend not written; retrying with the next batch", e.message),
          Effect.sync(() => batch.forEach(addSpending))
        )
      )
    )
  })

  // A span only when there is something to write: an idle instance does not trace a flush every interval.
  const flush = Effect.suspend(() =>
    pending.size + spending.size + hourlySize === 0
      ? Effect.void
      : Effect.zipRight(Effect.zipRight(flushTokens, flushSpend), flushHourly).pipe(
        Effect.withSpan("UsageRecorder.flush")
      )
  )

  // A flush that dies (a defect: database failures are retried above) is logged, and the next one runs: the loop
  // never stops writing counters for the life of the process.
  yield* Effect.forkScoped(
    Effect.repeat(
      flush.pipe(
        Effect.catchAllDefect((defect) => Effect.logError("usage flush failed", Cause.pretty(Cause.die(defect))))
      ),
      Schedule.spaced(Duration.millis(config.usageFlushIntervalMs))
    )
  )
  yield* Effect.addFinalizer(() => flush)

  const service: UsageRecorderShape = {
    record: (tokenId, u) => {
      merge(
        tokenId,
        u.request === true ? 1 : 0,
        u.promptTokens ?? 0,
        u.completionTokens ?? 0,
        u.cacheHit === true ? 1 : 0,
        u.request === true ? u.at : 0
      )
      if (u.rollup !== undefined) {
        const m = currentHourMap(u.at)
        mergeHourly(m, {
          hour: lastHourIso,
          projectId: u.rollup.projectId,
          tokenId,
          requests: 1,
          cacheHits: u.cacheHit === true ? 1 : 0,
          errors: u.rollup.status >= 400 ? 1 : 0,
          promptTokens: u.promptTokens ?? 0,
          completionTokens: u.completionTokens ?? 0,
          costUsd: u.spend?.costUsd ?? 0
        })
      }
      if (u.spend !== undefined && u.spend.written !== true && u.rollup !== undefined) {
        addSpending(deltaOf("token", tokenId, u.spend.costUsd, u.spend.tokens, u.at))
        addSpending(deltaOf("project", u.rollup.projectId, u.spend.costUsd, u.spend.tokens, u.at))
      }
    },
    flush,
    dropped: () => dropped,
    pending: () => pending.size + spending.size
  }
  return service
})

export const layer: Layer.Layer<UsageRecorder, never, Store | AppConfig> = Layer.scoped(UsageRecorder, make)
