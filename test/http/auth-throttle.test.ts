/**
 * The brute-force limit on management authentication: per client IP, 10 failed attempts (wrong bearers, wrong login
 * tokens) a minute, then 429 with Retry-After before any comparison, audited as one event per address and minute;
 * successes do not count; shared by every instance through Redis (RATE_LIMIT_BACKEND=redis, needs REDIS_URL), per
 * instance otherwise and while Redis is unreachable; a MANAGEMENT_TOKEN under 32 characters stops start-up.
 */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option, Redacted, TestClock } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { makeMemoryThrottle } from "../../src/http/authThrottle.js"
import { redisUrl } from "../support/databases.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { Client } from "./harness.js"

describe("the throttle's counting", () => {
  it.effect("10 failures within the window block the address until the window ends; other addresses are free", () =>
    Effect.gen(function*() {
      const throttle = makeMemoryThrottle({ maxFailures: 10, windowMs: 60_000 })
      for (let i = 0; i < 9; i++) yield* throttle.failed("198.51.100.1")
      expect(yield* throttle.retryAfter("198.51.100.1")).toBe(0)
      yield* TestClock.adjust(Duration.seconds(20))
      yield* throttle.failed("198.51.100.1")
      expect(yield* throttle.retryAfter("198.51.100.1")).toBe(40)
      expect(yield* throttle.retryAfter("198.51.100.2")).toBe(0)
      yield* TestClock.adjust(Duration.seconds(39))
      expect(yield* throttle.retryAfter("198.51.100.1")).toBe(1)
      yield* TestClock.adjust(Duration.seconds(1))
      expect(yield* throttle.retryAfter("198.51.100.1")).toBe(0)
      // A new window starts with the next failure.
      yield* throttle.failed("198.51.100.1")
      expect(yield* throttle.retryAfter("198.51.100.1")).toBe(0)
    }))

  it.effect("tracks a bounded number of addresses: ended windows go first, then the oldest", () =>
    Effect.gen(function*() {
      const throttle = makeMemoryThrottle({ maxFailures: 1, windowMs: 60_000 }, 3)
      for (const ip of ["a", "b", "c"]) yield* throttle.failed(ip)
      yield* throttle.failed("d")
      expect(yield* throttle.retryAfter("a")).toBe(0)
      expect([yield* throttle.retryAfter("b"), yield* throttle.retryAfter("c"), yield* throttle.retryAfter("d")])
        .toEqual([60, 60, 60])
      yield* TestClock.adjust(Duration.seconds(61))
      yield* throttle.failed("e")
      expect(yield* throttle.retryAfter("e")).toBe(60)
    }))
})

const attackerIp = () => `203.0.113.${1 + Math.floor(Math.random() * 250)}`

/** A server that believes X-Forwarded-For from the test client, so each test can be its own address. */
const serverFor = (overrides: Parameters<typeof testConfig>[1] = {}) => {
  const path = join(tmpdir(), `llm-proxy-throttle-${randomUUID()}.db`)
  return {
    path,
    start: () => startServer(testConfig({ _tag: "sqlite", path }, { trustedProxies: ["127.0.0.1"], ...overrides })),
    cleanup: () => {
      for (const suffix of ["", "-wal", "-shm"]) rmSync(path + suffix, { force: true })
    }
  }
}

describe("the brute-force limit over HTTP", () => {
  it.live("wrong logins: 10 × 401, then 429 with Retry-After even for the right token; audited once per minute", () =>
    Effect.promise(async () => {
      const db = serverFor()
      const server = await db.start()
      try {
        const api = new Client(server.url, server.token)
        const from = { "x-forwarded-for": attackerIp() }
        const login = (token: string) => api.post("/manage/session", { token }, { auth: null, headers: from })
        for (let i = 0; i < 10; i++) expect((await login(`wrong-${i}`)).status).toBe(401)
        const refused = await login(server.token)
        expect(refused.status).toBe(429)
        expect(refused.json).toEqual({ error: "too many failed authentication attempts", code: "too_many_attempts" })
        expect(Number(refused.headers.get("retry-after"))).toBeGreaterThanOrEqual(59)
        expect(refused.headers.get("set-cookie")).toBeNull()
        for (let i = 0; i < 20; i++) expect((await login(`wrong-${i}`)).status).toBe(429)
        // Bearers from that address wait too; an already signed-in browser there is no guess and goes on working.
        expect((await api.get("/manage/projects", { headers: from })).status).toBe(429)
        const session = await api.post("/manage/session", { token: server.token }, { auth: null })
        const cookie = session.headers.getSetCookie()[0]!.split(";")[0]!
        expect((await api.get("/manage/projects", { auth: null, headers: { ...from, cookie } })).status).toBe(200)

        const { events } = (await api.get(`/manage/audit?client_ip=${from["x-forwarded-for"]}`)).json
        expect(
          events.filter((e: any) => e.outcome === "denied").map((e: any) => [e.action, e.outcome, e.reason, e.count])
            .sort()
        ).toEqual([
          ["admin.login", "denied", "invalid management token", 10],
          ["admin.login", "denied", "too many failed authentication attempts", 21],
          ["management.auth", "denied", "too many failed authentication attempts", 1]
        ])
      } finally {
        await server.close()
        db.cleanup()
      }
    }))

  it.live("successes do not count; a missing header is no attempt; the limit and window are settings", () =>
    Effect.promise(async () => {
      const db = serverFor({ managementAuthMaxFailures: 3, managementAuthWindowMs: 30_000 })
      const server = await db.start()
      try {
        const api = new Client(server.url, server.token)
        const from = { "x-forwarded-for": attackerIp() }
        expect((await api.get("/manage/projects", { auth: "Bearer nope-1", headers: from })).status).toBe(401)
        expect((await api.get("/manage/projects", { auth: "Basic bm9wZQ==", headers: from })).status).toBe(401)
        for (let i = 0; i < 20; i++) {
          expect((await api.get("/manage/projects", { headers: from })).status).toBe(200)
          expect((await api.get("/manage/projects", { auth: null, headers: from })).status).toBe(401)
        }
        expect((await api.get("/manage/projects", { auth: "Bearer nope-3", headers: from })).status).toBe(401)
        const blocked = await api.get("/manage/projects", { headers: from })
        expect(blocked.status).toBe(429)
        // The window is the setting's (its end is tested on the clock above).
        expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(10)
        expect(Number(blocked.headers.get("retry-after"))).toBeLessThanOrEqual(30)
      } finally {
        await server.close()
        db.cleanup()
      }
    }))

  it.live("a MANAGEMENT_TOKEN shorter than 32 characters stops start-up with a message naming it", () =>
    Effect.promise(async () => {
      const db = serverFor({ managementToken: Option.some(Redacted.make("x".repeat(31))) })
      await expect(db.start()).rejects.toThrow(/MANAGEMENT_TOKEN must be at least 32 characters \(it has 31\)/)
      db.cleanup()
    }))
})

describe.skipIf(!redisUrl)("the brute-force limit shared through Redis", () => {
  const started: Array<TestServer> = []
  const cleanups: Array<() => void> = []
  const start = async (overrides: Parameters<typeof testConfig>[1]) => {
    const db = serverFor(overrides)
    cleanups.push(db.cleanup)
    const s = await db.start()
    started.push(s)
    return s
  }

  it.live("failures on one instance count on the other (RATE_LIMIT_BACKEND=redis)", () =>
    Effect.promise(async () => {
      try {
        const token = Option.some(Redacted.make(`shared-${randomBytes(24).toString("base64url")}`))
        const a = await start({ rateLimitBackend: "redis", managementToken: token })
        const b = await start({ rateLimitBackend: "redis", managementToken: token })
        const from = { "x-forwarded-for": `192.0.2.${1 + Math.floor(Math.random() * 250)}` }
        const onA = new Client(a.url, a.token)
        const onB = new Client(b.url, b.token)
        for (let i = 0; i < 5; i++) {
          expect((await onA.get("/manage/tokens", { auth: `Bearer a-${i}`, headers: from })).status).toBe(401)
          expect((await onB.post("/manage/session", { token: `b-${i}` }, { auth: null, headers: from })).status).toBe(
            401
          )
        }
        expect((await onA.get("/manage/tokens", { headers: from })).status).toBe(429)
        expect((await onB.get("/manage/tokens", { headers: from })).status).toBe(429)
      } finally {
        await Promise.all(started.splice(0).map((s) => s.close()))
        cleanups.splice(0).forEach((f) => f())
      }
    }))

  it.live("while Redis does not answer, each instance counts on its own", () =>
    Effect.promise(async () => {
      try {
        const s = await start({ rateLimitBackend: "redis", redisUrl: "redis://127.0.0.1:9" })
        const api = new Client(s.url, s.token)
        const from = { "x-forwarded-for": attackerIp() }
        for (let i = 0; i < 10; i++) {
          expect((await api.get("/manage/tokens", { auth: `Bearer x-${i}`, headers: from })).status).toBe(401)
        }
        expect((await api.get("/manage/tokens", { headers: from })).status).toBe(429)
      } finally {
        await Promise.all(started.splice(0).map((s) => s.close()))
        cleanups.splice(0).forEach((f) => f())
      }
    }), 30_000)
})
