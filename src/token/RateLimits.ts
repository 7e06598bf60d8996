/**
 * Window rate limits per token and per project (the `rate_limit_*` columns; when both are set both apply), on the
 * @effect/experimental RateLimiter. The store is chosen in src/Layers.ts: in-memory (one instance; synchronous, so
 * the check costs no await) or Redis (`RATE_LIMIT_BACKEND=redis`, limits shared by every instance).
 */
import { RateLimiter } from "@effect/experimental"
import * as RedisRateLimiter from "@effect/experimental/RateLimiter/Redis"
import { Context, Duration, Effect, Exit, Layer, Runtime } from "effect"
import type { RateLimitRow } from "../store/Store.js"

export interface Exceeded {
  readonly scope: "token" | "project"
  readonly retryAfterSeconds: number
}

export interface RateLimitsShape {
  /**
   * Consumes one request of each configured limit. undefined = allowed; a Promise only with the Redis store.
   * A store failure allows the request (and is logged): the limiter must not take the proxy down.
   */
  readonly check: (
    tokenId: string,
    tokenLimit: RateLimitRow | null,
    projectId: string,
    projectLimit: RateLimitRow | null
  ) => Exceeded | undefined | Promise<Exceeded | undefined>
}

export class RateLimits extends Context.Tag("llm-proxy/RateLimits")<RateLimits, RateLimitsShape>() {}

const consumeBoth = (
  limiter: RateLimiter.RateLimiter,
  tokenId: string,
  tokenLimit: RateLimitRow | null,
  projectId: string,
  projectLimit: RateLimitRow | null
) => {
  const one = (scope: "token" | "project", key: string, l: RateLimitRow) =>
    limiter.consume({ key, limit: l.requests, window: Duration.seconds(l.windowSeconds), algorithm: "fixed-window" }).pipe(
      Effect.as<Exceeded | undefined>(undefined),
      Effect.catchAll((e) =>
        e instanceof RateLimiter.RateLimitExceeded
          ? Effect.succeed<Exceeded | undefined>({
            scope,
            retryAfterSeconds: Math.max(1, Math.ceil(Duration.toMillis(e.retryAfter) / 1000))
          })
          : Effect.as(Effect.logWarning("rate limiter store failed; request allowed", e.message), undefined)
      )
    )
  return Effect.gen(function*(): Effect.fn.Return<Exceeded | undefined> {
    if (tokenLimit !== null) {
      const t = yield* one("token", `token:${tokenId}`, tokenLimit)
      if (t !== undefined) return t
    }
    if (projectLimit !== null) return yield* one("project", `project:${projectId}`, projectLimit)
    return undefined
  })
}

const make = (mode: "sync" | "async") =>
  Effect.gen(function*() {
    const limiter = yield* RateLimiter.RateLimiter
    const runtime = yield* Effect.runtime<never>()
    const runSyncExit = Runtime.runSyncExit(runtime)
    const runPromise = Runtime.runPromise(runtime)
    const service: RateLimitsShape = {
      check: (tokenId, tokenLimit, projectId, projectLimit) => {
        if (tokenLimit === null && projectLimit === null) return undefined
        const effect = consumeBoth(limiter, tokenId, tokenLimit, projectId, projectLimit)
        if (mode === "async") return runPromise(effect)
        const exit = runSyncExit(effect)
        return Exit.isSuccess(exit) ? exit.value : undefined
      }
    }
    return service
  })

export const memory: Layer.Layer<RateLimits> = Layer.effect(RateLimits, make("sync")).pipe(
  Layer.provide(RateLimiter.layer),
  Layer.provide(RateLimiter.layerStoreMemory)
)

export const redis = (url: string, prefix = "llm-proxy:ratelimit:"): Layer.Layer<RateLimits> =>
  Layer.effect(RateLimits, make("async")).pipe(
    Layer.provide(RateLimiter.layer),
    Layer.provide(
      Layer.unwrapEffect(Effect.sync(() => {
        const u = new URL(url)
        return RedisRateLimiter.layerStore({
          host: u.hostname,
          port: Number(u.port || 6379),
          ...(u.username ? { username: decodeURIComponent(u.username) } : {}),
          ...(u.password ? { password: decodeURIComponent(u.password) } : {}),
          ...(u.pathname.length > 1 ? { db: Number(u.pathname.slice(1)) } : {}),
          ...(u.protocol === "rediss:" ? { tls: {} } : {}),
          prefix,
          maxRetriesPerRequest: 1,
          enableOfflineQueue: true
        })
      }))
    )
  )
