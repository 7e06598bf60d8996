/**
 * ResponseCache: where cached responses live. One interface, three layers chosen in src/Layers.ts from
 * `HTTP_CACHE_ENABLED` / `HTTP_CACHE_BACKEND`: disabled, in-memory (bounded LRU, MemoryCache.ts) and Redis
 * (RedisCache.ts). What is cached and how it is served is decided by the pure functions in policy.ts.
 *
 * Storage never fails the request path: a backend problem is a miss (or a skipped store), counted in `errors`.
 * Only `purge`, which an operator waits for, reports an unavailable backend.
 */
import { Context, Effect, Layer, Schema } from "effect"
import type { CacheConfig } from "../config/AppConfig.js"
import type { CachedResponse, PurgeSelector } from "./policy.js"

export class CacheUnavailable extends Schema.TaggedError<CacheUnavailable>()("CacheUnavailable", {
  message: Schema.String
}) {}

export type CacheBackend = "disabled" | "in-memory" | "redis"

/** Counters for /metrics. `bytes` and `entries` are what the in-memory layer holds now (0 for Redis). */
export interface CacheStats {
  readonly backend: CacheBackend
  /** Served from the cache (including 304s to conditional requests and revalidated entries). */
  readonly hits: number
  /** Looked up, nothing usable found: forwarded. */
  readonly misses: number
  /** Not looked up at all (method, `no-store`, POST without opt-in) or not servable. */
  readonly bypass: number
  readonly stores: number
  /** Entries removed to stay within HTTP_CACHE_MAX_BYTES. */
  readonly evictions: number
  /** Entries dropped because their lifetime ended. */
  readonly expired: number
  readonly bytes: number
  readonly entries: number
  /** Backend operations that failed (each one answered as a miss or a skipped store). */
  readonly errors: number
}

export type CountedEvent = "hit" | "miss" | "bypass"

/** Mutable counters shared by a layer and the request path (plain increments: no allocation per request). */
export class CacheCounters {
  hits = 0
  misses = 0
  bypass = 0
  stores = 0
  evictions = 0
  expired = 0
  errors = 0

  count(event: CountedEvent): void {
    if (event === "hit") this.hits++
    else if (event === "miss") this.misses++
    else this.bypass++
  }

  snapshot(backend: CacheBackend, bytes: number, entries: number): CacheStats {
    return {
      backend,
      hits: this.hits,
      misses: this.misses,
      bypass: this.bypass,
      stores: this.stores,
      evictions: this.evictions,
      expired: this.expired,
      bytes,
      entries,
      errors: this.errors
    }
  }
}

export interface ResponseCacheShape {
  readonly enabled: boolean
  readonly backend: CacheBackend
  readonly config: CacheConfig
  /** The fresh entry under `key`, or undefined (absent, expired, backend down). Never fails. */
  readonly get: (key: string) => Effect.Effect<CachedResponse | undefined>
  /** Stores an entry until its `expiresAt`; false when it was not stored (too large, expired, backend down). */
  readonly set: (key: string, entry: CachedResponse) => Effect.Effect<boolean>
  readonly delete: (key: string) => Effect.Effect<boolean>
  /** Deletes every selected entry; the number deleted. */
  readonly purge: (selector: PurgeSelector) => Effect.Effect<number, CacheUnavailable>
  /**
   * The data plane's lookup (no Effect per request): synchronous for the in-memory layer, a Promise for Redis.
   * Never throws or rejects.
   */
  readonly lookup: (key: string, now: number) => CachedResponse | undefined | Promise<CachedResponse | undefined>
  /** The data plane's store: fire and forget (a failure is counted, never raised). */
  readonly store: (key: string, entry: CachedResponse, now: number) => void
  /** The data plane's delete: fire and forget. */
  readonly remove: (key: string) => void
  /** Counts what the request path decided (hit / miss / bypass). Synchronous and allocation-free. */
  readonly count: (event: CountedEvent) => void
  readonly stats: Effect.Effect<CacheStats>
}

export class ResponseCache extends Context.Tag("llm-proxy/ResponseCache")<ResponseCache, ResponseCacheShape>() {}

/** `HTTP_CACHE_ENABLED=false`: nothing is looked up or stored; purge answers "caching is disabled". */
export const layerDisabled = (config: CacheConfig): Layer.Layer<ResponseCache> =>
  Layer.sync(ResponseCache, (): ResponseCacheShape => {
    const counters = new CacheCounters()
    return {
      enabled: false,
      backend: "disabled",
      config,
      get: () => Effect.succeed(undefined),
      set: () => Effect.succeed(false),
      delete: () => Effect.succeed(false),
      purge: () => Effect.succeed(0),
      lookup: () => undefined,
      store: () => {},
      remove: () => {},
      count: () => {},
      stats: Effect.sync(() => counters.snapshot("disabled", 0, 0))
    }
  })
