/**
 * Admin session lifetime rules on the database they live in (a real SQLite file; PostgreSQL when DATABASE_URL is
 * set), with the clock injected (TestClock): idle and absolute expiry, the idle deadline refreshed at most once a
 * minute, expired rows removed by the periodic sweep, the row count bounded, and nothing usable stored.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, Option, TestClock } from "effect"
import { createHash } from "node:crypto"
import { AdminSessions, csrfTokenOf, layer as adminSessionsLayer, type SessionOptions } from "../../src/http/session.js"
import { type Dialect, migrateUp } from "../../src/store/migrations.js"
import * as AdminSessionStore from "../../src/store/sessions.js"
import { clientFor, freshLocation } from "../store/backends.js"
import { postgresUrl } from "../support/databases.js"

const MINUTE = 60_000

const options = (overrides: Partial<SessionOptions> = {}): Partial<SessionOptions> => ({
  idleMs: 30 * MINUTE,
  absoluteMs: 12 * 60 * MINUTE,
  refreshMs: MINUTE,
  max: 1000,
  pruneIntervalMs: 10 * MINUTE,
  ...overrides
})

/** AdminSessions on a fresh migrated database of the dialect, plus the SqlClient to look at the rows. */
const sessionsOn = (dialect: Dialect, overrides: Partial<SessionOptions> = {}) =>
  Effect.gen(function*() {
    const location = yield* freshLocation(dialect)
    const client = yield* Layer.build(clientFor(dialect, location))
    yield* Effect.provide(migrateUp(dialect), client)
    const ctx = yield* Layer.build(
      adminSessionsLayer(options(overrides)).pipe(
        Layer.provide(AdminSessionStore.layer),
        Layer.provide(Layer.succeedContext(client))
      )
    )
    const sql = Context.get(client, SqlClient.SqlClient)
    const rows = sql<
      { id_hash: string; created_ms: unknown; last_seen_ms: unknown }
    >`SELECT * FROM admin_sessions ORDER BY created_ms`.pipe(
      Effect.map((rs) =>
        rs.map((r) => ({ idHash: r.id_hash, createdMs: Number(r.created_ms), lastSeenMs: Number(r.last_seen_ms) }))
      )
    )
    return { sessions: Context.get(ctx, AdminSessions), rows }
  })

const suite = (dialect: Dialect) => {
  it.scoped("expire 30 minutes after the last use; use keeps them alive", () =>
    Effect.gen(function*() {
      const { sessions } = yield* sessionsOn(dialect)
      const s = yield* sessions.create
      yield* TestClock.adjust(Duration.minutes(29))
      expect(Option.isSome(yield* sessions.touch(s.id))).toBe(true)
      yield* TestClock.adjust(Duration.minutes(29))
      expect(Option.isSome(yield* sessions.touch(s.id))).toBe(true)
      yield* TestClock.adjust(Duration.minutes(30))
      expect(Option.isNone(yield* sessions.touch(s.id))).toBe(true)
      expect(Option.isNone(yield* sessions.touch("A".repeat(43)))).toBe(true)
      expect(Option.isNone(yield* sessions.touch("not a session id"))).toBe(true)
    }))

  it.scoped("end 12 hours after sign-in however busy they are", () =>
    Effect.gen(function*() {
      const { sessions } = yield* sessionsOn(dialect)
      const s = yield* sessions.create
      for (let i = 0; i < 47; i++) {
        yield* TestClock.adjust(Duration.minutes(15))
        expect(Option.isSome(yield* sessions.touch(s.id)), `after ${(i + 1) * 15} minutes`).toBe(true)
      }
      const live = Option.getOrThrow(yield* sessions.touch(s.id))
      expect(sessions.expiresAt(live)).toBe(12 * 60 * MINUTE)
      yield* TestClock.adjust(Duration.minutes(15))
      expect(Option.isNone(yield* sessions.touch(s.id))).toBe(true)
    }))

  it.scoped("record use at most once a minute: touches in between write nothing", () =>
    Effect.gen(function*() {
      const { rows, sessions } = yield* sessionsOn(dialect)
      const s = yield* sessions.create
      for (let seconds = 10; seconds < 60; seconds += 10) {
        yield* TestClock.adjust(Duration.seconds(10))
        yield* sessions.touch(s.id)
        expect((yield* rows)[0]!.lastSeenMs, `after ${seconds} s`).toBe(0)
      }
      yield* TestClock.adjust(Duration.seconds(15))
      yield* sessions.touch(s.id)
      expect((yield* rows)[0]!.lastSeenMs).toBe(65_000)
      // The idle deadline follows what was recorded.
      yield* TestClock.adjust(Duration.seconds(30))
      expect(sessions.expiresAt(Option.getOrThrow(yield* sessions.touch(s.id)))).toBe(65_000 + 30 * MINUTE)
    }))

  it.scoped("store only the SHA-256 of the id: neither the id nor the CSRF token is in the table", () =>
    Effect.gen(function*() {
      const { rows, sessions } = yield* sessionsOn(dialect)
      const s = yield* sessions.create
      expect(s.id).toMatch(/^[A-Za-z0-9_-]{43}$/)
      expect(s.csrf).toBe(csrfTokenOf(s.id))
      expect(s.csrf).not.toBe(s.id)
      const stored = yield* rows
      expect(stored).toEqual([{ idHash: createHash("sha256").update(s.id).digest("hex"), createdMs: 0, lastSeenMs: 0 }])
      expect(JSON.stringify(stored)).not.toContain(s.id)
      expect(JSON.stringify(stored)).not.toContain(s.csrf)
      // The CSRF token cannot be computed from what is stored.
      expect(csrfTokenOf(stored[0]!.idHash)).not.toBe(s.csrf)
    }))

  it.scoped("expired rows are deleted by the periodic sweep, and logout deletes one", () =>
    Effect.gen(function*() {
      const { rows, sessions } = yield* sessionsOn(dialect)
      // The sweep runs on its own fiber, every 10 minutes of the (test) clock: the clock moves 10 minutes at a time
      // and each sweep's delete is given real time to finish before the next move.
      const advance = (minutes: number) =>
        Effect.forEach(Array.from({ length: minutes / 10 }), () =>
          Effect.zipRight(
            TestClock.adjust(Duration.minutes(10)),
            Effect.promise(() => new Promise((r) => setTimeout(r, 100)))
          ))
      const a = yield* sessions.create
      yield* advance(20)
      const b = yield* sessions.create
      const c = yield* sessions.create
      expect(yield* rows).toHaveLength(3)
      yield* sessions.destroy(c.id)
      expect(Option.isNone(yield* sessions.touch(c.id))).toBe(true)
      // 40 minutes: `a` has been idle 40 minutes (the sweeps at 30 and 40 see it), `b` only 20.
      yield* advance(20)
      let left = yield* rows
      for (let i = 0; i < 100 && left.length > 1; i++) {
        yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 20)))
        left = yield* rows
      }
      expect(left.map((r) => r.createdMs)).toEqual([20 * MINUTE])
      expect(Option.isNone(yield* sessions.touch(a.id))).toBe(true)
      expect(Option.isSome(yield* sessions.touch(b.id))).toBe(true)
    }))

  it.scoped("are bounded: beyond `max`, signing in deletes the oldest", () =>
    Effect.gen(function*() {
      const { rows, sessions } = yield* sessionsOn(dialect, { max: 2 })
      const a = yield* sessions.create
      yield* TestClock.adjust(Duration.seconds(1))
      const b = yield* sessions.create
      yield* TestClock.adjust(Duration.seconds(1))
      const c = yield* sessions.create
      expect(yield* rows).toHaveLength(2)
      expect(Option.isNone(yield* sessions.touch(a.id))).toBe(true)
      expect(Option.isSome(yield* sessions.touch(b.id))).toBe(true)
      expect(Option.isSome(yield* sessions.touch(c.id))).toBe(true)
    }))
}

describe("admin sessions on SQLite", () => suite("sqlite"))
if (postgresUrl) describe("admin sessions on PostgreSQL", () => suite("postgres"))
else {describe.skip("admin sessions on PostgreSQL (skipped: DATABASE_URL not set)", () =>
    it("needs DATABASE_URL", () => {}))}
