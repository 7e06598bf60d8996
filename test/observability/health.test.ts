/**
 * /health and /ready with real dependencies: SQLite and PostgreSQL up, PostgreSQL going away (dropped database →
 * not ready), Redis configured but unreachable (degraded, still ready), Redis reachable.
 */
import { it } from "@effect/vitest"
import { Effect, Fiber, Redacted, TestClock } from "effect"
import { afterAll, describe, expect } from "vitest"
import packageJson from "../../package.json" with { type: "json" }
import { Health, make as makeHealth } from "../../src/observability/Health.js"
import { backends } from "../http/harness.js"
import { createTestDatabase, postgresUrl, redisUrl } from "../support/databases.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

const sqlite = backends.find((b) => b.name === "sqlite")!

const probe = async (server: TestServer) => {
  const h = await fetch(`${server.url}/health`)
  const r = await fetch(`${server.url}/ready`)
  return { health: h.status, body: await h.json() as any, ready: r.status, readyText: await r.text() }
}

describe("GET /health and /ready", () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c()
  })

  it("SQLite up: ok, per-dependency state and latency, ready", async () => {
    const backend = await sqlite.create()
    const server = await startServer(testConfig(backend.database))
    cleanups.push(() => backend.cleanup(), () => server.close())
    const p = await probe(server)
    expect(p.health).toBe(200)
    expect(p.body).toMatchObject({
      status: "ok",
      version: packageJson.version,
      checks: { database: { status: "up", required: true, driver: "sqlite" } }
    })
    expect(typeof p.body.checks.database.latency_ms).toBe("number")
    expect(typeof p.body.uptime_seconds).toBe("number")
    expect(Date.parse(p.body.timestamp)).not.toBeNaN()
    expect(p.body.ready).toBeUndefined()
    expect([p.ready, p.readyText]).toEqual([200, "ready"])
    expect((await fetch(`${server.url}/live`)).status).toBe(200)
  })

  it("Redis configured but unreachable: degraded, still ready (the proxy keeps serving)", async () => {
    const backend = await sqlite.create()
    const server = await startServer(
      testConfig(backend.database, { rateLimitBackend: "redis", redisUrl: "redis://127.0.0.1:1" })
    )
    cleanups.push(() => backend.cleanup())
    const p = await probe(server).finally(() => server.close())
    expect(p.health).toBe(200)
    expect(p.body.status).toBe("degraded")
    expect(p.body.checks.redis).toMatchObject({ status: "down", required: false })
    expect(p.body.checks.redis.error).toMatch(/not connected|PING failed/)
    expect(p.body.checks.database.status).toBe("up")
    expect(p.ready).toBe(200)
  })

  it.skipIf(!redisUrl)("Redis reachable: up with its latency", async () => {
    const backend = await sqlite.create()
    const server = await startServer(testConfig(backend.database, { rateLimitBackend: "redis", redisUrl: redisUrl! }))
    cleanups.push(() => backend.cleanup(), () => server.close())
    // The health connection is opened at start-up; give it its first round trip.
    let p = await probe(server)
    for (let i = 0; i < 40 && p.body.checks.redis.status !== "up"; i++) {
      await new Promise((r) => setTimeout(r, 50))
      p = await probe(server)
    }
    expect(p.body.status).toBe("ok")
    expect(p.body.checks.redis).toMatchObject({ status: "up", required: false, used_by: "rate_limits" })
  })

  it.skipIf(!postgresUrl)(
    "PostgreSQL going away: /health 503 with the database down, /ready 503; no URL or password shown",
    async () => {
      const db = await createTestDatabase()
      let dropped = false
      cleanups.push(async () => {
        if (!dropped) await db.drop()
      })
      const server = await startServer(testConfig({ _tag: "postgres", url: Redacted.make(db.url), poolSize: 2 }))
      cleanups.push(() => server.close())
      const up = await probe(server)
      expect(up.body.checks.database).toMatchObject({ status: "up", driver: "postgres" })
      expect(up.ready).toBe(200)
      await db.drop()
      dropped = true
      const down = await probe(server)
      expect(down.health).toBe(503)
      expect(down.body.status).toBe("down")
      expect(down.body.checks.database.status).toBe("down")
      expect(typeof down.body.checks.database.error).toBe("string")
      expect(JSON.stringify(down.body)).not.toContain(db.url)
      expect(JSON.stringify(down.body)).not.toContain("postgres:postgres")
      expect([down.ready, down.readyText]).toEqual([503, "not ready"])
    }
  )
})

describe("Health service", () => {
  it.effect("times out a hanging check and hides credentials in error messages", () =>
    Effect.gen(function*() {
      const h = yield* Health
      h.register({ name: "slow", required: false, check: Effect.never })
      h.register({
        name: "leaky",
        required: false,
        check: Effect.fail(new Error("connect to redis://user:pw@host:6379 failed"))
      })
      h.register({ name: "tagged", required: true, check: Effect.fail({ _tag: "StoreError" }) })
      h.register({ name: "tagged", required: true, check: Effect.void })
      // The hanging check's time runs out on the test clock.
      const running = yield* Effect.fork(h.report)
      yield* TestClock.adjust("1 minute")
      const report = yield* Fiber.join(running)
      expect(report.checks["slow"]).toMatchObject({ status: "down", error: "timed out" })
      expect(report.checks["leaky"]!.error).toBe("connect to <redacted>@host:6379 failed")
      // A re-registered check replaces the first one.
      expect(report.checks["tagged"]!.status).toBe("up")
      expect(report).toMatchObject({ status: "degraded", ready: true })
    }).pipe(Effect.provideServiceEffect(Health, makeHealth("test"))))
})
