/**
 * The in-memory rate-limit store (src/token/RateLimits.ts): it answers exactly as @effect/experimental's memory
 * store does, and windows that ended are swept, so a long-running instance does not keep one entry per token it ever
 * limited.
 */
import { RateLimiter } from "@effect/experimental"
import { describe, expect, it } from "@effect/vitest"
import { Context, Duration, Effect, Layer, TestClock } from "effect"
import * as RateLimits from "../../src/token/RateLimits.js"

const reference = Effect.map(Layer.build(RateLimiter.layerStoreMemory), Context.get(RateLimiter.RateLimiterStore))

describe("memory rate-limit store", () => {
  it.scoped("gives the same counts and TTLs as @effect/experimental's memory store on a random sequence", () =>
    Effect.gen(function*() {
      const ours = RateLimits.makeMemoryStore()
      const theirs = yield* reference
      let seed = 42
      const rand = (n: number) => {
        seed = (seed * 1103515245 + 12345) % 2 ** 31
        return seed % n
      }
      for (let i = 0; i < 400; i++) {
        const options = {
          key: `k${rand(5)}`,
          tokens: 1,
          refillRate: Duration.millis(100 * (1 + rand(3))),
          limit: 1 + rand(4)
        }
        expect(yield* ours.fixedWindow(options)).toEqual(yield* theirs.fixedWindow(options))
        yield* TestClock.adjust(Duration.millis(rand(250)))
      }
    }))

  it.effect("sweeps windows that ended and keeps the ones still running", () =>
    Effect.gen(function*() {
      const { fixedWindow, size, sweep } = RateLimits.makeMemoryStore()
      for (let i = 0; i < 1000; i++) {
        yield* fixedWindow({ key: `token:${i}`, tokens: 1, refillRate: Duration.seconds(1), limit: 10 })
      }
      yield* fixedWindow({ key: "token:long", tokens: 1, refillRate: Duration.minutes(10), limit: 10 })
      expect(size()).toBe(1001)
      yield* TestClock.adjust(Duration.seconds(2))
      expect(sweep(2_000)).toBe(1)
      // The surviving window still counts: a second request in it is the second.
      expect((yield* fixedWindow({ key: "token:long", tokens: 1, refillRate: Duration.minutes(10), limit: 10 }))[0])
        .toBe(2)
      // A swept key starts a fresh window, as it would have anyway.
      expect((yield* fixedWindow({ key: "token:7", tokens: 1, refillRate: Duration.seconds(1), limit: 10 }))[0]).toBe(1)
    }))

  it.scoped("RateLimits.layerMemory keeps limiting across its periodic sweep", () =>
    Effect.gen(function*() {
      const limits = yield* RateLimits.RateLimits
      const limit = { requests: 1, windowSeconds: 600 }
      expect(yield* limits.check("t", limit, "p", null)).toBeUndefined()
      expect(yield* limits.check("t", limit, "p", null)).toMatchObject({ scope: "token" })
      yield* TestClock.adjust(Duration.millis(RateLimits.SWEEP_MS + 1))
      // Still inside the 10-minute window after a sweep ran: still refused.
      expect(yield* limits.check("t", limit, "p", null)).toMatchObject({ scope: "token" })
      yield* TestClock.adjust(Duration.minutes(10))
      expect(yield* limits.check("t", limit, "p", null)).toBeUndefined()
    }).pipe(Effect.provide(RateLimits.layerMemory)))

  it.scoped("the data plane's unsafeCheck answers the memory store's verdict synchronously, sharing its windows", () =>
    Effect.gen(function*() {
      const limits = yield* RateLimits.RateLimits
      const limit = { requests: 2, windowSeconds: 600 }
      expect(limits.unsafeCheck("t", null, "p", null)).toBeUndefined()
      expect(limits.unsafeCheck("t", limit, "p", null)).toBeUndefined()
      expect(yield* limits.check("t", limit, "p", null)).toBeUndefined()
      // The third request of the window, whichever way it is asked.
      expect(limits.unsafeCheck("t", limit, "p", null)).toMatchObject({ scope: "token", retryAfterSeconds: 600 })
      expect(limits.unsafeCheck("t", null, "p", limit)).toBeUndefined()
      expect(limits.unsafeCheck("t", null, "p", limit)).toBeUndefined()
      expect(limits.unsafeCheck("t", null, "p", limit)).toMatchObject({ scope: "project" })
    }).pipe(Effect.provide(RateLimits.layerMemory)))
})
