/**
 * The `redis` health check: one small ioredis connection of its own that answers PING. Not required for
 * readiness — every Redis-backed layer degrades (rate limits allow, the cache misses, the bus buffers/drops) rather
 * than failing requests — so Redis being down shows as `degraded`, not `not ready`.
 */
import { Effect, Layer } from "effect"
import { Redis } from "ioredis"
import { Health } from "./Health.js"

export const redisCheck = (url: string, usedBy: ReadonlyArray<string>): Layer.Layer<never, never, Health> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const health = yield* Health
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const c = new Redis(url, {
          lazyConnect: true,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          connectTimeout: 2_000,
          retryStrategy: (times) => Math.min(times * 500, 5_000)
        })
        // Connection errors surface as a failed check, not as unhandled 'error' events.
        c.on("error", () => {})
        c.connect().catch(() => {})
        return c
      }),
      (c) => Effect.sync(() => c.disconnect())
    )
    health.register({
      name: "redis",
      required: false,
      check: Effect.tryPromise({
        try: () => client.ping(),
        catch: () => new Error(client.status === "ready" ? "PING failed" : `not connected (${client.status})`)
      }).pipe(Effect.as({ used_by: usedBy.join(",") }))
    })
  }))
