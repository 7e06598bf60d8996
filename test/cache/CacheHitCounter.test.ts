/** Batched cache_hit_count on real SQLite and PostgreSQL. */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Exit, Option, Scope, TestClock } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import * as CacheHitCounter from "../../src/cache/CacheHitCounter.js"
import { Store } from "../../src/store/Store.js"
import { postgresUrl } from "../support/databases.js"
import { freshStore } from "../store/backends.js"

const NOW = "2024-05-06T07:08:09.123Z"

const tokens = (n: number) =>
  Effect.gen(function*() {
    const store = yield* Store
    const project = yield* store.createProject({
      id: randomUUID(),
      name: `p-${randomUUID()}`,
      apiKey: "k",
      apiKeyHint: "k",
      provider: "openai",
      now: NOW
    })
    return yield* Effect.forEach(Array.from({ length: n }), () =>
      store.createToken({
        id: randomUUID(),
        tokenHash: randomBytes(32).toString("hex"),
        tokenHint: "sk-abcd****wxyz",
        projectId: project.id,
        expiresAt: "2099-01-01T00:00:00.000Z",
        maxRequests: 3,
        now: NOW
      }))
  })

const hitsOf = (id: string) =>
  Effect.flatMap(Store, (s) => s.getToken(id)).pipe(Effect.map((t) => Option.getOrThrow(t)))

for (const dialect of ["sqlite", "postgres"] as const) {
  describe.skipIf(dialect === "postgres" && !postgresUrl)(`CacheHitCounter on ${dialect}`, () => {
    layer(freshStore(dialect), { timeout: 60_000 })((it) => {
      it.effect("writes hits in batches every second, leaving request_count alone", () =>
        Effect.gen(function*() {
          const [a, b] = yield* tokens(2)
          const scope = yield* Scope.make()
          const counter = yield* CacheHitCounter.make.pipe(Scope.extend(scope))
          for (let i = 0; i < 5; i++) counter.record(a!.id)
          counter.record(b!.id)
          expect((yield* hitsOf(a!.id)).cacheHitCount).toBe(0)
          yield* TestClock.adjust(CacheHitCounter.FLUSH_INTERVAL)
          yield* Effect.yieldNow()
          // the flush runs on a background fiber: wait until it has written
          yield* Effect.repeat(hitsOf(a!.id), { until: (t) => t.cacheHitCount === 5, times: 1000 })
          expect(yield* hitsOf(a!.id)).toMatchObject({ cacheHitCount: 5, requestCount: 0 })
          expect((yield* hitsOf(b!.id)).cacheHitCount).toBe(1)
          // what is pending at shutdown is written too
          counter.record(b!.id)
          yield* Scope.close(scope, Exit.void)
          expect((yield* hitsOf(b!.id)).cacheHitCount).toBe(2)
          expect(counter.dropped()).toBe(0)
        }))

      it.effect("bounds the tokens pending at once: beyond that, hits are dropped and counted", () =>
        Effect.gen(function*() {
          const counter = yield* CacheHitCounter.make
          for (let i = 0; i < CacheHitCounter.MAX_PENDING_TOKENS; i++) counter.record(randomUUID())
          counter.record(randomUUID())
          counter.record(randomUUID())
          expect(counter.dropped()).toBe(2)
          yield* counter.flush
          counter.record(randomUUID())
          expect(counter.dropped()).toBe(2)
        }).pipe(Effect.scoped))
    })
  })
}
