/**
 * The brute-force limit on management authentication. Each client IP (src/audit/clientIp.ts, through
 * TRUSTED_PROXIES) may fail `maxFailures` times within `windowMs` — a wrong `Authorization` on any /manage request, or
 * a wrong token at `POST /manage/session`; after that its attempts are answered 429 with `Retry-After` until the window
 * that began with its first failure ends, before the token is even compared. Successes do not count.
 *
 * With `RATE_LIMIT_BACKEND=redis` the counts live in Redis (`llm-proxy:mgmt-auth:<ip>`), shared by every instance;
 * while Redis is unreachable or does not answer within 250 ms, this instance's own counts apply (start-up waits up to
 * 2 s for the first connection). Otherwise they are per instance, in a map of
 * at most MAX_TRACKED addresses (windows that ended are swept first, then the oldest entry goes).
 */
import { Clock, Context, Effect, Layer, Runtime } from "effect"
import type { Redis } from "ioredis"
import { ioredis } from "../redisClient.js"

export interface AuthThrottleOptions {
  readonly maxFailures: number
  readonly windowMs: number
}

export interface AuthThrottleShape {
  readonly options: AuthThrottleOptions
  /** Seconds until `ip` may try again; 0 when it may now. */
  readonly retryAfter: (ip: string) => Effect.Effect<number>
  /** Counts one failed attempt of `ip`. */
  readonly failed: (ip: string) => Effect.Effect<void>
}

export class AuthThrottle extends Context.Tag("llm-proxy/AuthThrottle")<AuthThrottle, AuthThrottleShape>() {}

export const MAX_TRACKED = 10_000

const seconds = (ms: number) => Math.max(1, Math.ceil(ms / 1000))

export const makeMemoryThrottle = (options: AuthThrottleOptions, maxTracked = MAX_TRACKED): AuthThrottleShape => {
  // Insertion order: the first key is the one whose window began longest ago.
  const windows = new Map<string, { count: number; endsAt: number }>()
  const live = (ip: string, now: number) => {
    const w = windows.get(ip)
    if (w === undefined || w.endsAt > now) return w
    windows.delete(ip)
    return undefined
  }
  return {
    options,
    retryAfter: (ip) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const w = live(ip, now)
        return w !== undefined && w.count >= options.maxFailures ? seconds(w.endsAt - now) : 0
      }),
    failed: (ip) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const w = live(ip, now)
        if (w !== undefined) {
          w.count++
          return
        }
        if (windows.size >= maxTracked) {
          for (const [key, v] of windows) if (v.endsAt <= now) windows.delete(key)
          if (windows.size >= maxTracked) windows.delete(windows.keys().next().value as string)
        }
        windows.set(ip, { count: 1, endsAt: now + options.windowMs })
      })
  }
}

export const layerMemory = (options: AuthThrottleOptions): Layer.Layer<AuthThrottle> =>
  Layer.sync(AuthThrottle, () => makeMemoryThrottle(options))

// One failure: count it, starting the window with the first. Returns nothing the caller needs.
const FAILED = `
local n = redis.call("INCR", KEYS[1])
if n == 1 then redis.call("PEXPIRE", KEYS[1], ARGV[1]) end
return n
`

// Milliseconds until the address may try again (0 = now).
const RETRY_AFTER = `
local n = tonumber(redis.call("GET", KEYS[1]) or "0")
if n < tonumber(ARGV[1]) then return 0 end
local ttl = redis.call("PTTL", KEYS[1])
if ttl < 0 then return 0 end
return ttl
`

interface ThrottleRedis extends Redis {
  authFailed(key: string, windowMs: number): Promise<number>
  authRetryAfter(key: string, maxFailures: number): Promise<number>
}

export const REDIS_PREFIX = "llm-proxy:mgmt-auth:"

export const layerRedis = (
  url: string,
  options: AuthThrottleOptions,
  prefix = REDIS_PREFIX
): Layer.Layer<AuthThrottle> =>
  Layer.scoped(
    AuthThrottle,
    Effect.gen(function*() {
      const local = makeMemoryThrottle(options)
      const { Redis } = yield* ioredis
      const client = yield* Effect.acquireRelease(
        // No offline queue: while Redis is away a command fails at once and the local counts apply.
        Effect.sync(() => new Redis(url, { maxRetriesPerRequest: 1, enableOfflineQueue: false }) as ThrottleRedis),
        (c) => Effect.sync(() => c.disconnect())
      )
      const runtime = yield* Effect.runtime<never>()
      let loggedAt = 0
      const warn = (message: string) => {
        const now = Date.now()
        if (now - loggedAt < 10_000) return
        loggedAt = now
        Runtime.runFork(runtime)(
          Effect.logWarning(
            `management auth throttle (Redis): ${message}; counting failed attempts on this instance meanwhile`
          )
        )
      }
      client.on("error", (e: Error) => warn(e.message))
      // Commands fail at once while disconnected; give the first connection a moment so start-up counts in Redis.
      yield* Effect.async<void>((resume) => {
        const done = () => {
          clearTimeout(timer)
          client.off("ready", done)
          resume(Effect.void)
        }
        const timer = setTimeout(done, 2_000)
        client.once("ready", done)
      })
      client.defineCommand("authFailed", { lua: FAILED, numberOfKeys: 1 })
      client.defineCommand("authRetryAfter", { lua: RETRY_AFTER, numberOfKeys: 1, readOnly: true })
      const ask = <A>(call: () => Promise<A>, fallback: Effect.Effect<A>) =>
        Effect.tryPromise(call).pipe(
          Effect.timeoutFail({ duration: "250 millis", onTimeout: () => new Error("timed out after 250 ms") }),
          Effect.catchAll((e) => Effect.zipRight(Effect.sync(() => warn(e.message)), fallback))
        )
      const shape: AuthThrottleShape = {
        options,
        retryAfter: (ip) =>
          ask(
            () => client.authRetryAfter(prefix + ip, options.maxFailures).then((ms) => (ms > 0 ? seconds(ms) : 0)),
            local.retryAfter(ip)
          ),
        // Counted here too, so an outage does not reset what this instance saw.
        failed: (ip) =>
          Effect.zipRight(
            local.failed(ip),
            ask(() => client.authFailed(prefix + ip, options.windowMs).then(() => undefined), Effect.void)
          )
      }
      return shape
    })
  )
