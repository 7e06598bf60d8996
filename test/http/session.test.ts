/** Admin session lifetime rules, on the TestClock. */
import { describe, expect, it } from "@effect/vitest"
import { Duration, Effect, Option, TestClock } from "effect"
import { makeAdminSessions } from "../../src/http/session.js"

describe("admin sessions", () => {
  it.effect("expire after the idle timeout; each use restarts it", () =>
    Effect.gen(function*() {
      const sessions = makeAdminSessions({ idleMs: 60_000, absoluteMs: 600_000, max: 10 })
      const s = yield* sessions.create
      yield* TestClock.adjust(Duration.millis(59_000))
      expect(Option.isSome(yield* sessions.touch(s.id))).toBe(true)
      yield* TestClock.adjust(Duration.millis(59_000))
      expect(Option.isSome(yield* sessions.touch(s.id))).toBe(true)
      yield* TestClock.adjust(Duration.millis(60_000))
      expect(Option.isNone(yield* sessions.touch(s.id))).toBe(true)
      expect(Option.isNone(yield* sessions.touch("unknown"))).toBe(true)
    }))

  it.effect("end at the absolute lifetime however busy they are", () =>
    Effect.gen(function*() {
      const sessions = makeAdminSessions({ idleMs: 60_000, absoluteMs: 150_000, max: 10 })
      const s = yield* sessions.create
      for (let i = 0; i < 2; i++) {
        yield* TestClock.adjust(Duration.millis(50_000))
        expect(Option.isSome(yield* sessions.touch(s.id))).toBe(true)
      }
      expect(sessions.expiresAt(s)).toBe(150_000)
      yield* TestClock.adjust(Duration.millis(50_000))
      expect(Option.isNone(yield* sessions.touch(s.id))).toBe(true)
    }))

  it.effect("are bounded: the oldest is dropped, and logout destroys one", () =>
    Effect.gen(function*() {
      const sessions = makeAdminSessions({ idleMs: 60_000, absoluteMs: 600_000, max: 2 })
      const a = yield* sessions.create
      const b = yield* sessions.create
      const c = yield* sessions.create
      expect(Option.isNone(yield* sessions.touch(a.id))).toBe(true)
      expect(Option.isSome(yield* sessions.touch(b.id))).toBe(true)
      yield* sessions.destroy(b.id)
      expect(Option.isNone(yield* sessions.touch(b.id))).toBe(true)
      expect(Option.isSome(yield* sessions.touch(c.id))).toBe(true)
      expect(a.id).not.toBe(c.id)
      expect(a.csrf).not.toBe(a.id)
    }))
})
