/**
 * The `redis` health check: one small ioredis connection of its own that answers PING. Required for readiness only
 * when a layer that needs it fails requests without it (rate limits with RATE_LIMIT_FAILURE_MODE=closed); the others
 * degrade (the cache misses, invalidations fall back to the TTL), so Redis being down then shows as `degraded`.
 * The Redis Streams event bus has its own check (`event_bus`, src/observability/eventChecks.ts).
 */
import { Effect, Layer } from "effect"
import { ioredis } from "../redisClient.js"
import { Health } from "./Health.js"

export const redisCheck = (
  url: string,
  usedBy: ReadonlyArray<string>,
  required = false
): Layer.Layer<never, never, Health> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const health = yield* Health
    const { Redis } = yield* ioredis
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
      required,
      check: Effect.tryPromise({
        try: () => client.ping(),
        catch: () => new Error(client.status === "ready" ? "PING failed" : `not connected (${client.status})`)
      }).pipe(Effect.as({ used_by: usedBy.join(",") }))
    })
  }))
