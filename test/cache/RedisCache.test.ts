import { afterAll, beforeAll, describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Logger, LogLevel, TestClock } from "effect"
import { Redis } from "ioredis"
import { type CachedResponse, parsePurge, planRequest } from "../../src/cache/policy.js"
import * as RedisCache from "../../src/cache/RedisCache.js"
import { ResponseCache, type ResponseCacheShape } from "../../src/cache/ResponseCache.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { testCacheConfig } from "../support/server.js"
import { startTcpProxy, type TcpProxy } from "../support/tcpProxy.js"

const P1 = "11111111-1111-4111-8111-111111111111"
const P2 = "22222222-2222-4222-8222-222222222222"
const prefix = `llmproxy:test:cache:${crypto.randomUUID()}:`
const config = testCacheConfig({ backend: "redis", redisKeyPrefix: prefix, maxObjectBytes: 4_096, maxBytes: 8_192 })

const keyFor = (path: string, projectId = P1) => {
  const plan = planRequest({ method: "GET", path, query: "", headers: {}, projectId })
  if (plan._tag !== "Lookup") throw new Error("not cacheable")
  return plan.key
}

const entryAt = (now: number, body = "{\"ok\":true}", ttlMs = 60_000): CachedResponse => ({
  status: 203,
  headers: [["content-type", "application/json"], ["etag", "\"v1\""], ["link", "<a>"], ["link", "<b>"]],
  body: new TextEncoder().encode(body),
  storedAt: now,
  expiresAt: now + ttlMs,
  vary: [["x-tenant", "t1"]]
})

const selector = (body: unknown) => {
  const parsed = parsePurge(body)
  if (!parsed.ok) throw new Error(parsed.error)
  return parsed.selector
}

describe.skipIf(!redisUrl)("Redis ResponseCache (real Redis)", () => {
  afterAll(() => flushRedisPrefix(redisUrl!, prefix))

  it("encodes entries losslessly and rejects foreign values", () => {
    const e = entryAt(1_000, "binary \u0000\u00ff")
    const decoded = RedisCache.decodeEntry(RedisCache.encodeEntry(e))!
    expect({ ...decoded, body: Buffer.from(decoded.body) }).toEqual({ ...e, body: Buffer.from(e.body) })
    expect(RedisCache.decodeEntry(Buffer.from("no"))).toBeUndefined()
    expect(RedisCache.decodeEntry(Buffer.from([0, 0, 0, 99, 1]))).toBeUndefined()
    expect(RedisCache.decodeEntry(Buffer.concat([Buffer.from([0, 0, 0, 2]), Buffer.from("{}")]))).toBeUndefined()
    expect(RedisCache.decodeEntry(Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.from("{")]))).toBeUndefined()
  })

  it("scans with patterns that cannot match more than the selector", () => {
    expect(RedisCache.scanPattern("p*:", selector({ all: true }))).toBe("p\\*:*")
    expect(RedisCache.scanPattern("p:", selector({ all: true, project_id: P1 }))).toMatch(/^p:\?{32}[0-9a-f]{16}\*$/)
    expect(RedisCache.scanPattern("p:", selector({ prefix: "abc" }))).toBe("p:abc*")
    expect(RedisCache.scanPattern("p:", selector({ method: "GET", url: "/x", project_id: P1 }))).toMatch(
      /^p:[0-9a-f]{48}\*$/
    )
  })

  it.scoped("stores with a TTL under the prefix, shares entries between instances, and expires them", () =>
    Effect.gen(function*() {
      const a = yield* RedisCache.make(config, { url: redisUrl! })
      const b = yield* RedisCache.make(config, { url: redisUrl! })
      const key = keyFor("/v1/models")
      const now = yield* TestClockNow
      expect(yield* a.set(key, entryAt(now))).toBe(true)
      const got = yield* b.get(key)
      expect(got?.status).toBe(203)
      expect(got?.headers).toEqual(entryAt(now).headers)
      expect(got?.vary).toEqual([["x-tenant", "t1"]])
      expect(new TextDecoder().decode(got!.body)).toBe("{\"ok\":true}")
      const pttl = yield* withRaw((r) => r.pttl(prefix + key))
      expect(pttl).toBeGreaterThan(0)
      expect(pttl).toBeLessThanOrEqual(60_000)
      // not served after its lifetime even before Redis drops it
      yield* TestClock.adjust("61 seconds")
      expect(yield* b.get(key)).toBeUndefined()
      // too large or already expired: not written
      expect(yield* a.set(keyFor("/big"), entryAt(0, "x".repeat(5_000)))).toBe(false)
      expect(yield* a.set(keyFor("/old"), entryAt(0))).toBe(false)
      expect(yield* a.stats).toMatchObject({ backend: "redis", stores: 1, errors: 0 })
    }))

  it.scoped("purges exactly, by prefix, per project and everything, across instances", () =>
    Effect.gen(function*() {
      const a = yield* RedisCache.make(config, { url: redisUrl! })
      const b = yield* RedisCache.make(config, { url: redisUrl! })
      const now = yield* TestClockNow
      const keys = [
        keyFor("/v1/models", P1),
        keyFor("/v1/models", P2),
        keyFor("/v1/other", P1),
        keyFor("/v1/other", P2)
      ]
      const fill = Effect.forEach(keys, (k) => a.set(k, entryAt(now)))
      yield* fill
      expect(yield* b.purge(selector({ method: "GET", url: "/v1/models" }))).toBe(2)
      expect(yield* b.get(keys[0]!)).toBeUndefined()
      expect(yield* b.get(keys[2]!)).toBeDefined()
      expect(yield* b.purge(selector({ prefix: keys[2]!.slice(0, 40) }))).toBe(1)
      expect(yield* b.purge(selector({ all: true, project_id: P2 }))).toBe(1)
      yield* fill
      expect(yield* b.purge(selector({ all: true }))).toBe(4)
      expect(yield* b.delete(keys[0]!)).toBe(false)
      yield* a.set(keys[0]!, entryAt(now))
      expect(yield* b.delete(keys[0]!)).toBe(true)
    }))

  it.scoped("the data-plane lookup and store work without an Effect per call", () =>
    Effect.gen(function*() {
      const cache = yield* RedisCache.make(config, { url: redisUrl! })
      const key = keyFor("/fast")
      const now = Date.now()
      cache.store(key, entryAt(now), now)
      let got: CachedResponse | undefined
      for (let i = 0; i < 50 && got === undefined; i++) got = yield* Effect.promise(async () => cache.lookup(key, now))
      expect(got?.status).toBe(203)
      expect(yield* Effect.promise(async () => cache.lookup(key, now + 60_000))).toBeUndefined()
      cache.remove(key)
      let gone = false
      for (let i = 0; i < 50 && !gone; i++) {
        gone = (yield* Effect.promise(async () => cache.lookup(key, now))) === undefined
      }
      expect(gone).toBe(true)
    }))

  it.scoped("ignores a value it did not write", () =>
    Effect.gen(function*() {
      const cache = yield* RedisCache.make(config, { url: redisUrl! })
      const key = keyFor("/foreign")
      yield* withRaw((r) => r.set(prefix + key, "garbage", "PX", 10_000))
      expect(yield* cache.get(key)).toBeUndefined()
    }))

  describe("outage", () => {
    let proxy: TcpProxy
    beforeAll(async () => {
      const target = new URL(redisUrl!)
      proxy = await startTcpProxy(target.hostname, Number(target.port || 6379))
    })
    afterAll(() => proxy.close())

    it.scopedLive("degrades to misses (counted, logged once), then recovers", () =>
      Effect.gen(function*() {
        const logs: Array<string> = []
        const captured = Logger.replace(
          Logger.defaultLogger,
          Logger.make(({ message }) => logs.push(String(Array.isArray(message) ? message.join(" ") : message)))
        )
        const ctx = yield* Layer.build(
          RedisCache.layer(config, { url: proxy.url("redis"), commandTimeoutMs: 500 }).pipe(Layer.provide(captured))
        )
        const cache: ResponseCacheShape = Context.get(ctx, ResponseCache)
        const key = keyFor("/v1/outage")
        const now = Date.now()
        expect(yield* cache.set(key, entryAt(now))).toBe(true)
        expect(yield* cache.get(key)).toBeDefined()

        yield* Effect.promise(() => proxy.stop())
        for (let i = 0; i < 5; i++) {
          expect(yield* cache.get(key)).toBeUndefined()
          expect(yield* cache.set(key, entryAt(now))).toBe(false)
        }
        // the data plane does not knock on a dead Redis for every request: one probe per interval at most
        const before = (yield* cache.stats).errors
        for (let i = 0; i < 20; i++) {
          expect(yield* Effect.promise(async () => cache.lookup(key, now))).toBeUndefined()
          cache.store(key, entryAt(now), now)
        }
        expect((yield* cache.stats).errors - before).toBeLessThanOrEqual(2)
        const purge = yield* Effect.exit(cache.purge(selector({ all: true })))
        expect(Exit.isFailure(purge)).toBe(true)
        const down = yield* cache.stats
        expect(down.errors).toBeGreaterThanOrEqual(11)
        expect(logs.filter((l) => l.includes("unavailable"))).toHaveLength(1)

        yield* Effect.promise(() => proxy.start())
        // ioredis reconnects on its own (backoff ≤ 2 s); the first successful command ends the outage.
        let back: CachedResponse | undefined
        for (let i = 0; i < 100 && back === undefined; i++) {
          back = yield* cache.get(key)
          if (back === undefined) yield* Effect.sleep("100 millis")
        }
        expect(back).toBeDefined()
        expect(yield* Effect.promise(async () => cache.lookup(key, now))).toBeDefined()
        expect(logs.filter((l) => l.includes("available again"))).toHaveLength(1)
        expect(logs.filter((l) => l.includes("unavailable"))).toHaveLength(1)
      }).pipe(Effect.provide(Logger.minimumLogLevel(LogLevelAll))))

    it.scopedLive("starts degraded when Redis is unreachable, without failing", () =>
      Effect.gen(function*() {
        yield* Effect.promise(() => proxy.stop())
        const cache = yield* RedisCache.make(config, {
          url: proxy.url("redis"),
          connectWaitMs: 200,
          commandTimeoutMs: 200
        }).pipe(
          Effect.provide(Logger.remove(Logger.defaultLogger))
        )
        expect(yield* cache.get(keyFor("/x"))).toBeUndefined()
        expect((yield* cache.stats).errors).toBeGreaterThanOrEqual(1)
        yield* Effect.promise(() => proxy.start())
      }))
  })
})

const LogLevelAll = LogLevel.All
const TestClockNow = Effect.clockWith((c) => c.currentTimeMillis)

const withRaw = <A>(f: (r: Redis) => Promise<A>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => new Redis(redisUrl!)),
    (r) => Effect.promise(() => f(r)),
    (r) => Effect.promise(() => r.quit())
  )
