/**
 * CacheHitCounter: per-token `cache_hit_count`, off the request path. A hit is one Map increment; a background
 * fiber writes the sums every second (and once more at shutdown) in one transaction. Distinct tokens pending at
 * once are bounded; beyond that, hits are dropped and counted rather than letting memory grow.
 */
import { Context, Duration, Effect, Layer, Schedule } from "effect"
import { Store } from "../store/Store.js"

export const FLUSH_INTERVAL = Duration.seconds(1)
export const MAX_PENDING_TOKENS = 10_000

export interface CacheHitCounterShape {
  /** Counts one cache hit for the token. Synchronous, never fails. */
  readonly record: (tokenId: string) => void
  /** Writes what is pending now (also run every FLUSH_INTERVAL and at shutdown). */
  readonly flush: Effect.Effect<void>
  /** Hits dropped because too many tokens were pending, or because the database refused the write. */
  readonly dropped: () => number
}

export class CacheHitCounter extends Context.Tag("llm-proxy/CacheHitCounter")<CacheHitCounter, CacheHitCounterShape>() {}

export const make = Effect.gen(function*() {
  const store = yield* Store
  let pending = new Map<string, number>()
  let dropped = 0

  const flush = Effect.suspend(() => {
    if (pending.size === 0) return Effect.void
    const batch = pending
    pending = new Map()
    const hits = [...batch].map(([tokenId, count]) => ({ tokenId, count }))
    return store.addCacheHits(hits).pipe(
      Effect.catchAll((e) =>
        Effect.sync(() => {
          dropped += hits.reduce((n, h) => n + h.count, 0)
        }).pipe(Effect.zipRight(Effect.logWarning(`could not record ${hits.length} tokens' cache hits: ${e.message}`)))
      )
    )
  })

  yield* Effect.addFinalizer(() => flush)
  yield* Effect.forkScoped(Effect.repeat(flush, Schedule.spaced(FLUSH_INTERVAL)))

  return CacheHitCounter.of({
    record: (tokenId) => {
      const n = pending.get(tokenId)
      if (n !== undefined) pending.set(tokenId, n + 1)
      else if (pending.size < MAX_PENDING_TOKENS) pending.set(tokenId, 1)
      else dropped++
    },
    flush,
    dropped: () => dropped
  })
})

export const layer: Layer.Layer<CacheHitCounter, never, Store> = Layer.scoped(CacheHitCounter, make)
