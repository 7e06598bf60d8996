/**
 * In-memory ResponseCache: an LRU (lru-cache) bounded by HTTP_CACHE_MAX_BYTES in total and
 * HTTP_CACHE_MAX_OBJECT_BYTES per entry, sizes measured by `entrySize`. Expired entries are dropped when read and
 * by a sweep every 30 s, so memory held by dead entries is freed even when nobody asks for them again.
 */
import { Clock, Duration, Effect, Layer, Schedule } from "effect"
import { LRUCache } from "lru-cache"
import type { CacheConfig } from "../config/AppConfig.js"
import { type CachedResponse, entrySize, purgeMatches, type PurgeSelector } from "./policy.js"
import { CacheCounters, ResponseCache, type ResponseCacheShape } from "./ResponseCache.js"

export const SWEEP_INTERVAL = Duration.seconds(30)

export const make = (config: CacheConfig) =>
  Effect.gen(function*() {
    const counters = new CacheCounters()
    const lru = new LRUCache<string, CachedResponse>({
      maxSize: config.maxBytes,
      maxEntrySize: config.maxObjectBytes,
      sizeCalculation: entrySize,
      dispose: (_value, _key, reason) => {
        if (reason === "evict") counters.evictions++
      }
    })

    const deleteWhere = (predicate: (key: string, entry: CachedResponse) => boolean): number => {
      const doomed: Array<string> = []
      lru.forEach((entry, key) => {
        if (predicate(key, entry)) doomed.push(key)
      })
      for (const key of doomed) lru.delete(key)
      return doomed.length
    }

    /** Drops every expired entry; the number dropped. */
    const sweep = Effect.map(Clock.currentTimeMillis, (now) => {
      const n = deleteWhere((_k, e) => now >= e.expiresAt)
      counters.expired += n
      return n
    })

    yield* Effect.forkScoped(Effect.repeat(sweep, Schedule.spaced(SWEEP_INTERVAL)))

    const lookup = (key: string, now: number) => {
      const entry = lru.get(key)
      if (entry === undefined) return undefined
      if (now >= entry.expiresAt) {
        lru.delete(key)
        counters.expired++
        return undefined
      }
      return entry
    }

    const store = (key: string, entry: CachedResponse, now: number) => {
      if (entry.expiresAt <= now || entrySize(entry) > config.maxObjectBytes) return false
      lru.set(key, entry)
      const stored = lru.peek(key) === entry
      if (stored) counters.stores++
      return stored
    }

    const service: ResponseCacheShape & { readonly sweep: Effect.Effect<number> } = {
      enabled: true,
      backend: "in-memory",
      config,
      get: (key) => Effect.map(Clock.currentTimeMillis, (now) => lookup(key, now)),
      set: (key, entry) => Effect.map(Clock.currentTimeMillis, (now) => store(key, entry, now)),
      lookup,
      store: (key, entry, now) => void store(key, entry, now),
      remove: (key) => void lru.delete(key),
      delete: (key) => Effect.sync(() => lru.delete(key)),
      purge: (selector: PurgeSelector) => Effect.sync(() => deleteWhere((key) => purgeMatches(selector, key))),
      count: (event) => counters.count(event),
      stats: Effect.sync(() => counters.snapshot("in-memory", lru.calculatedSize, lru.size)),
      sweep
    }
    return service
  })

export const layer = (config: CacheConfig): Layer.Layer<ResponseCache> => Layer.scoped(ResponseCache, make(config))
