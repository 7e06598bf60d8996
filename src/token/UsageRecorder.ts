/**
 * UsageRecorder: per-token counters (requests of unlimited tokens, `last_used_at`, prompt/completion tokens,
 * cache hits) gathered in memory by the request path — a synchronous map update — and written in one
 * transaction per interval by a background fiber. The last batch is written when the scope closes (shutdown).
 * Bounded: beyond MAX_PENDING distinct tokens per interval further updates are dropped and counted.
 *
 * Updates that carry `rollup` also feed the per-hour usage rollups (table usage_hourly, read by the dashboard):
 * every answered request — limited, unlimited or cache hit — counts there, written by the same flush.
 */
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { type HourlyUsage, Store, type UsageDelta } from "../store/Store.js"
import { hourOf } from "../store/usage.js"

export interface UsageUpdate {
  /** Count one request (unlimited tokens only: limited ones were counted by their quota update). */
  readonly request?: boolean
  readonly promptTokens?: number
  readonly completionTokens?: number
  readonly cacheHit?: boolean
  /** ms since epoch of the use. */
  readonly at: number
  /** The answered request, for the per-hour rollups. */
  readonly rollup?: { readonly projectId: string; readonly status: number }
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
  let hourly = new Map<string, HourlyUsage>()
  let dropped = 0

  const mergeHourly = (h: HourlyUsage) => {
    const key = `${h.hour}|${h.tokenId}`
    const seen = hourly.get(key)
    if (seen === undefined) {
      if (hourly.size >= MAX_PENDING) {
        dropped++
        return
      }
      hourly.set(key, h)
      return
    }
    hourly.set(key, {
      ...seen,
      requests: seen.requests + h.requests,
      cacheHits: seen.cacheHits + h.cacheHits,
      errors: seen.errors + h.errors,
      promptTokens: seen.promptTokens + h.promptTokens,
      completionTokens: seen.completionTokens + h.completionTokens
    })
  }

  const merge = (tokenId: string, requests: number, prompt: number, completion: number, cacheHits: number, at: number) => {
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
    if (hourly.size === 0) return Effect.void
    const batch = [...hourly.values()]
    hourly = new Map()
    return store.addHourlyUsage(batch).pipe(
      Effect.catchAll((e) =>
        Effect.zipRight(
          Effect.logWarning("usage rollups not written; retrying with the next batch", e.message),
          Effect.sync(() => batch.forEach(mergeHourly))
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
            for (const [tokenId, p] of batch) merge(tokenId, p.requests, p.promptTokens, p.completionTokens, p.cacheHits, p.lastUsedAt)
          })
        )
      )
    )
  })

  const flush = Effect.zipRight(flushTokens, flushHourly)

  yield* Effect.forkScoped(
    Effect.repeat(flush, Schedule.spaced(Duration.millis(config.usageFlushIntervalMs)))
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
        mergeHourly({
          hour: hourOf(u.at),
          projectId: u.rollup.projectId,
          tokenId,
          requests: 1,
          cacheHits: u.cacheHit === true ? 1 : 0,
          errors: u.rollup.status >= 400 ? 1 : 0,
          promptTokens: u.promptTokens ?? 0,
          completionTokens: u.completionTokens ?? 0
        })
      }
    },
    flush,
    dropped: () => dropped,
    pending: () => pending.size
  }
  return service
})

export const layer: Layer.Layer<UsageRecorder, never, Store | AppConfig> = Layer.scoped(UsageRecorder, make)
