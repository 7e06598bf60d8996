/**
 * Window rate limits per token and per project (the `rate_limit_*` columns; when both are set both apply), on the
 * @effect/experimental RateLimiter. The store is chosen in src/Layers.ts: in-memory (one instance; synchronous, so
 * the check costs no await) or Redis (`RATE_LIMIT_BACKEND=redis`, limits shared by every instance).
 */
import { RateLimiter } from "@effect/experimental"
import { Context, Duration, Effect, Exit, Layer, Runtime } from "effect"
import { Redis } from "ioredis"
import type { RateLimitRow } from "../store/Store.js"

export interface Exceeded {
  readonly scope: "token" | "project"
  readonly retryAfterSeconds: number
}

/** The store could not be asked and RATE_LIMIT_FAILURE_MODE=closed: the request is refused with 503. */
export const Unavailable = "unavailable" as const

export type Verdict = Exceeded | typeof Unavailable | undefined

export interface RateLimitsShape {
  /**
   * Consumes one request of each configured limit. undefined = allowed; a Promise only with the Redis store.
   * A store failure (Redis down, 1 s command timeout) allows the request (fail-open, the default) or refuses it
   * (`Unavailable`, fail-closed); either way it is counted and logged (at most one line per 10 s).
   */
  readonly check: (
    tokenId: string,
    tokenLimit: RateLimitRow | null,
    projectId: string,
    projectLimit: RateLimitRow | null
  ) => Verdict | Promise<Verdict>
  /** Checks that failed because the store did not answer, since start. */
  readonly storeFailures: () => number
}

export class RateLimits extends Context.Tag("llm-proxy/RateLimits")<RateLimits, RateLimitsShape>() {}

const consumeBoth = (
  limiter: RateLimiter.RateLimiter,
  onStoreFailure: (e: { readonly message: string }) => Effect.Effect<Verdict>,
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
          ? Effect.succeed<Verdict>({
            scope,
            retryAfterSeconds: Math.max(1, Math.ceil(Duration.toMillis(e.retryAfter) / 1000))
          })
          : onStoreFailure(e)
      )
    )
  return Effect.gen(function*(): Effect.fn.Return<Verdict> {
    if (tokenLimit !== null) {
      const t = yield* one("token", `token:${tokenId}`, tokenLimit)
      // A store failure on the token's limit: the project's is not asked (the answer would be the same).
      if (t !== undefined) return t
    }
    if (projectLimit !== null) return yield* one("project", `project:${projectId}`, projectLimit)
    return undefined
  })
}

export type FailureMode = "open" | "closed"

const make = (mode: "sync" | "async", failureMode: FailureMode) =>
  Effect.gen(function*() {
    const limiter = yield* RateLimiter.RateLimiter
    const runtime = yield* Effect.runtime<never>()
    const runSyncExit = Runtime.runSyncExit(runtime)
    const runPromise = Runtime.runPromise(runtime)
    let failures = 0
    let loggedAt = 0
    const onStoreFailure = (e: { readonly message: string }) =>
      Effect.suspend(() => {
        failures++
        const verdict: Verdict = failureMode === "closed" ? Unavailable : undefined
        const now = Date.now()
        if (now - loggedAt < 10_000) return Effect.succeed(verdict)
        loggedAt = now
        return Effect.as(
          Effect.logWarning(
            `rate limiter store failed; requests are ${failureMode === "closed" ? "refused (503)" : "allowed"} while it fails`,
            e.message,
            `failures so far: ${failures}`
          ),
          verdict
        )
      })
    const service: RateLimitsShape = {
      check: (tokenId, tokenLimit, projectId, projectLimit) => {
        if (tokenLimit === null && projectLimit === null) return undefined
        const effect = consumeBoth(limiter, onStoreFailure, tokenId, tokenLimit, projectId, projectLimit)
        if (mode === "async") return runPromise(effect)
        const exit = runSyncExit(effect)
        return Exit.isSuccess(exit) ? exit.value : undefined
      },
      storeFailures: () => failures
    }
    return service
  })

export const memory: Layer.Layer<RateLimits> = Layer.effect(RateLimits, make("sync", "open")).pipe(
  Layer.provide(RateLimiter.layer),
  Layer.provide(RateLimiter.layerStoreMemory)
)

/**
 * The fixed-window script of @effect/experimental's Redis store (RateLimiter/Redis.ts), on a client of our own:
 * theirs has no `error` listener, so while Redis is down ioredis writes "Unhandled error event" to stderr on every
 * reconnection attempt, and its `quit()` on shutdown waits for a server that is not there.
 */
const FIXED_WINDOW = `
local key = KEYS[1]
local tokens = tonumber(ARGV[1])
local refillms = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local current = tonumber(redis.call("GET", key))

if not current then
  local nextpttl = refillms * tokens
  redis.call("SET", key, tokens, "PX", nextpttl)
  return { tokens, nextpttl }
end

local currentpttl = tonumber(redis.call("PTTL", key) or "0")
local next = current + tokens
if limit and next > limit then
  return { next, currentpttl }
end

local nextpttl = currentpttl + (refillms * tokens)
redis.call("SET", key, next, "PX", nextpttl)
return { next, nextpttl }
`

type FixedWindowClient = Redis & {
  fixedWindow: (key: string, tokens: number, refillMs: number, limit: number | undefined) => Promise<[number, number]>
}

const redisStore = (url: string, prefix: string) =>
  Layer.scoped(
    RateLimiter.RateLimiterStore,
    Effect.gen(function*() {
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => {
          const c = new Redis(url, {
            maxRetriesPerRequest: 1,
            enableOfflineQueue: true,
            // A Redis that does not answer costs a request at most this long before the failure mode applies.
            commandTimeout: 1000
          }) as FixedWindowClient
          // Failures surface (counted, logged) through the commands that fail; the connection's own errors are
          // expected while Redis is down and retried by ioredis.
          c.on("error", () => {})
          c.defineCommand("fixedWindow", { lua: FIXED_WINDOW, numberOfKeys: 1, readOnly: false })
          return c
        }),
        (c) => Effect.sync(() => c.disconnect())
      )
      const fail = (message: string, cause?: unknown) => new RateLimiter.RateLimitStoreError({ message, cause })
      return RateLimiter.RateLimiterStore.of({
        fixedWindow: (o) =>
          Effect.tryPromise({
            try: () => client.fixedWindow(`${prefix}${o.key}`, o.tokens, Duration.toMillis(o.refillRate), o.limit),
            catch: (cause) => fail("rate limiter store (Redis) did not answer", cause)
          }),
        tokenBucket: () => Effect.fail(fail("token-bucket limits are not used"))
      })
    })
  )

export const redis = (url: string, failureMode: FailureMode = "open", prefix = "llm-proxy:ratelimit:"): Layer.Layer<RateLimits> =>
  Layer.effect(RateLimits, make("async", failureMode)).pipe(
    Layer.provide(RateLimiter.layer),
    Layer.provide(redisStore(url, prefix))
  )
