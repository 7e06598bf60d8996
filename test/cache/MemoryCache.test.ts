import { describe, expect, it } from "@effect/vitest"
import { Effect, TestClock } from "effect"
import * as MemoryCache from "../../src/cache/MemoryCache.js"
import { type CachedResponse, entrySize, parsePurge, planRequest } from "../../src/cache/policy.js"
import * as ResponseCache from "../../src/cache/ResponseCache.js"
import { testCacheConfig } from "../support/server.js"

const P1 = "11111111-1111-4111-8111-111111111111"
const P2 = "22222222-2222-4222-8222-222222222222"

const keyFor = (path: string, projectId = P1) => {
  const plan = planRequest({ method: "GET", path, query: "", headers: {}, projectId })
  if (plan._tag !== "Lookup") throw new Error("not cacheable")
  return plan.key
}

const entryOf = (bodyBytes: number, now: number, ttlMs = 60_000): CachedResponse => ({
  status: 200,
  headers: [["content-type", "application/json"]],
  body: new Uint8Array(bodyBytes),
  storedAt: now,
  expiresAt: now + ttlMs,
  vary: []
})

const config = testCacheConfig({ maxBytes: 20_000, maxObjectBytes: 2_000 })

describe("in-memory ResponseCache", () => {
  it.scoped("stays within HTTP_CACHE_MAX_BYTES when filled past it, evicting the oldest entries", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      const size = entrySize(entryOf(1_000, 0))
      const keys = Array.from({ length: 100 }, (_, i) => keyFor(`/v1/models/${i}`))
      for (const key of keys) expect(yield* cache.set(key, entryOf(1_000, 0))).toBe(true)
      const stats = yield* cache.stats
      expect(stats.bytes).toBeLessThanOrEqual(config.maxBytes)
      expect(stats.entries).toBe(Math.floor(config.maxBytes / size))
      expect(stats.evictions).toBe(100 - stats.entries)
      expect(stats.stores).toBe(100)
      // the oldest are gone, the newest are there
      expect(yield* cache.get(keys[0]!)).toBeUndefined()
      expect(yield* cache.get(keys[99]!)).toBeDefined()
    }))

  it.scoped("evicts the least recently used, not the least recently stored", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(
        testCacheConfig({ maxBytes: 3 * entrySize(entryOf(500, 0)), maxObjectBytes: 2_000 })
      )
      const [a, b, c, d] = ["/a", "/b", "/c", "/d"].map((p) => keyFor(p))
      yield* cache.set(a!, entryOf(500, 0))
      yield* cache.set(b!, entryOf(500, 0))
      yield* cache.set(c!, entryOf(500, 0))
      expect(yield* cache.get(a!)).toBeDefined() // a is now the most recently used
      yield* cache.set(d!, entryOf(500, 0))
      expect(yield* cache.get(a!)).toBeDefined()
      expect(yield* cache.get(b!)).toBeUndefined()
      expect((yield* cache.stats).evictions).toBe(1)
    }))

  it.scoped("refuses an entry over HTTP_CACHE_MAX_OBJECT_BYTES (and one already expired)", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      const key = keyFor("/big")
      expect(yield* cache.set(key, entryOf(2_000, 0))).toBe(false)
      expect(yield* cache.set(key, entryOf(10, -120_000))).toBe(false)
      expect(yield* cache.get(key)).toBeUndefined()
      expect((yield* cache.stats).bytes).toBe(0)
    }))

  it.scoped("expired entries are not served and are freed by the sweep", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      const [a, b] = [keyFor("/a"), keyFor("/b")]
      yield* cache.set(a, entryOf(100, 0, 10_000))
      yield* cache.set(b, entryOf(100, 0, 10_000))
      expect(yield* cache.get(a)).toBeDefined()
      yield* TestClock.adjust("10 seconds")
      expect(yield* cache.get(a)).toBeUndefined()
      expect((yield* cache.stats).entries).toBe(1) // b is still held: nobody read it
      yield* TestClock.adjust(MemoryCache.SWEEP_INTERVAL)
      const stats = yield* cache.stats
      expect(stats).toMatchObject({ entries: 0, bytes: 0, expired: 2 })
    }))

  it.scoped("purges exactly, by prefix, per project and everything", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      const keys = [
        keyFor("/v1/models", P1),
        keyFor("/v1/models", P2),
        keyFor("/v1/other", P1),
        keyFor("/v1/other", P2)
      ]
      const fill = Effect.forEach(keys, (k) => cache.set(k, entryOf(10, 0)))
      const purge = (body: unknown) => {
        const parsed = parsePurge(body)
        if (!parsed.ok) throw new Error(parsed.error)
        return cache.purge(parsed.selector)
      }
      yield* fill
      expect(yield* purge({ method: "GET", url: "/v1/models" })).toBe(2)
      expect(yield* purge({ method: "GET", url: "/v1/models" })).toBe(0)
      expect(yield* purge({ prefix: keys[2]!.slice(0, 50) })).toBe(1)
      expect(yield* purge({ all: true, project_id: P2 })).toBe(1)
      yield* fill
      expect(yield* purge({ all: true })).toBe(4)
      expect((yield* cache.stats).bytes).toBe(0)
      expect(yield* cache.delete(keys[0]!)).toBe(false)
    }))

  it.scoped("the data-plane lookup and store are synchronous and honour expiry", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      const key = keyFor("/fast")
      cache.store(key, entryOf(10, 1_000, 1_000), 1_500)
      expect(cache.lookup(key, 1_999)).toMatchObject({ status: 200 })
      expect(cache.lookup(key, 2_000)).toBeUndefined()
      cache.store(key, entryOf(10, 1_000, 1_000), 2_500) // already expired: not stored
      expect(cache.lookup(key, 1_500)).toBeUndefined()
      cache.store(key, entryOf(10, 1_000, 1_000), 1_500)
      cache.remove(key)
      expect(cache.lookup(key, 1_500)).toBeUndefined()
    }))

  it.scoped("counts what the request path reports", () =>
    Effect.gen(function*() {
      const cache = yield* MemoryCache.make(config)
      cache.count("hit")
      cache.count("hit")
      cache.count("miss")
      cache.count("bypass")
      expect(yield* cache.stats).toMatchObject({ backend: "in-memory", hits: 2, misses: 1, bypass: 1, errors: 0 })
    }))
})

describe("disabled ResponseCache (HTTP_CACHE_ENABLED=false)", () => {
  it.effect("looks up nothing, stores nothing, counts nothing", () =>
    Effect.gen(function*() {
      const cache = yield* ResponseCache.ResponseCache
      expect(cache.enabled).toBe(false)
      const key = keyFor("/off")
      expect(yield* cache.set(key, entryOf(10, 0))).toBe(false)
      cache.store(key, entryOf(10, 0), 0)
      cache.count("hit")
      cache.remove(key)
      expect(yield* cache.get(key)).toBeUndefined()
      expect(cache.lookup(key, 0)).toBeUndefined()
      expect(yield* cache.delete(key)).toBe(false)
      expect(yield* cache.purge({ _tag: "All", scope: undefined })).toBe(0)
      expect(yield* cache.stats).toEqual({
        backend: "disabled",
        hits: 0,
        misses: 0,
        bypass: 0,
        stores: 0,
        evictions: 0,
        expired: 0,
        bytes: 0,
        entries: 0,
        errors: 0
      })
    }).pipe(Effect.provide(ResponseCache.layerDisabled(testCacheConfig({ enabled: false })))))
})
