/**
 * Window rate limits per token and per project (the `rate_limit_*` columns; when both are set both apply), on the
 * @effect/experimental RateLimiter. The store is chosen in src/Layers.ts: its in-memory store (one instance;
 * synchronous, so the check costs no await) or Redis (`RATE_LIMIT_BACKEND=redis`, limits shared by every instance;
 * the experimental package's Redis script on a client owned here, see `layerRedisStore`).
 *
 * Token-per-minute limits (`rate_limit.tokens`) are windows of LLM tokens aligned to multiples of the window's
 * length: a request is refused while its window's tokens are used up, and an answer's tokens are debited from the
 * current window when its usage is known (`debitTokens`, never waiting). They live in the same store: a Map here, or
 * Redis keys read with one MGET per request and increased with INCRBY.
 */
import { RateLimiter } from "@effect/experimental"
import { Context, Duration, Effect, Exit, Layer, Runtime } from "effect"
import type { Redis } from "ioredis"
import { ioredis } from "../redisClient.js"
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
   * Consumes one request of each configured limit: the verdict, undefined = allowed. A store failure (Redis down, or
   * no answer within 250 ms) allows the request (fail-open, the default) or refuses it (`Unavailable`, fail-closed);
   * either way it is counted and logged (at most one line per 10 s). It never fails.
   */
  readonly check: (
    tokenId: string,
    tokenLimit: RateLimitRow | null,
    projectId: string,
    projectLimit: RateLimitRow | null
  ) => Effect.Effect<Verdict>
  /**
   * For plain Node code on the data plane: the verdict now when it is known without waiting (no limit set, or the
   * in-memory store), else the Effect that finds it (the Redis store), which the caller runs.
   */
  readonly unsafeCheck: (
    tokenId: string,
    tokenLimit: RateLimitRow | null,
    projectId: string,
    projectLimit: RateLimitRow | null
  ) => Verdict | Effect.Effect<Verdict>
  /**
   * Debits an answer's LLM tokens from the token-per-minute windows of the token and its project (those with
   * `rate_limit.tokens`). Synchronous on the memory store; on Redis it sends the increments and returns. Never fails
   * (a store failure is counted and logged like a check's).
   */
  readonly debitTokens: (
    tokenId: string,
    tokenLimit: RateLimitRow | null,
    projectId: string,
    projectLimit: RateLimitRow | null,
    tokens: number
  ) => void
  /** Checks that failed because the store did not answer, since start. */
  readonly storeFailures: () => number
}

/** The current token-per-minute window of a token or project: `key` names the limit, `index` the window. */
export interface TokenWindow {
  readonly scope: "token" | "project"
  /** `tpm:<scope>:<id>|<window ms>`. */
  readonly key: string
  /** Which window (multiples of its length since the epoch). */
  readonly index: number
  readonly limit: number
  readonly windowMs: number
}

/** Where token-per-minute windows are kept. */
export interface TokenWindows {
  /** Tokens used in each window (0 when it has none), synchronously or as an Effect. */
  readonly used: (
    windows: ReadonlyArray<TokenWindow>
  ) => ReadonlyArray<number> | Effect.Effect<ReadonlyArray<number>, { readonly message: string }>
  /** Adds tokens to the windows (a store that expires keys keeps each for two window lengths). */
  readonly add: (windows: ReadonlyArray<TokenWindow>, tokens: number) => void | Promise<void>
}

/** An in-memory TokenWindows: one entry per key, swept when its window ended. */
export const memoryTokenWindows = () => {
  const windows = new Map<string, { index: number; used: number }>()
  const windows_: TokenWindows = {
    used: (ws) => {
      const out: Array<number> = []
      for (const tw of ws) {
        const w = windows.get(tw.key)
        out.push(w !== undefined && w.index === tw.index ? w.used : 0)
      }
      return out
    },
    add: (ws, tokens) => {
      for (const tw of ws) {
        const w = windows.get(tw.key)
        if (w !== undefined && w.index === tw.index) w.used += tokens
        else if (w === undefined || w.index < tw.index) windows.set(tw.key, { index: tw.index, used: tokens })
      }
    }
  }
  /** Drops windows older than the one containing `now` for their length (stored as `key|windowMs`). */
  const sweep = (now: number): number => {
    for (const [key, w] of windows) {
      const windowMs = Number(key.slice(key.lastIndexOf("|") + 1))
      if (!(windowMs > 0) || w.index < Math.floor(now / windowMs)) windows.delete(key)
    }
    return windows.size
  }
  return { windows: windows_, sweep, size: () => windows.size }
}

/**
 * The key of each limit row, as last built: a row comes from the token cache, the same object request after request,
 * so its key string is built (and hashed by the Map) once, not per request.
 */
const keys = new WeakMap<RateLimitRow, { readonly scope: string; readonly id: string; readonly key: string }>()

const keyOf = (scope: "token" | "project", id: string, l: RateLimitRow, windowMs: number): string => {
  const known = keys.get(l)
  if (known !== undefined && known.scope === scope && known.id === id) return known.key
  const key = `tpm:${scope}:${id}|${windowMs}`
  keys.set(l, { scope, id, key })
  return key
}

/** A scope's token window at `now`. */
const tokenWindow = (scope: "token" | "project", id: string, l: RateLimitRow, now: number): TokenWindow => {
  const windowMs = l.windowSeconds * 1000
  return { scope, key: keyOf(scope, id, l, windowMs), index: Math.floor(now / windowMs), limit: l.tokens!, windowMs }
}

const tokenLimited = (l: RateLimitRow | null): l is RateLimitRow =>
  l !== null && l.tokens !== null && l.tokens !== undefined

const windowsOf = (
  tokenId: string,
  tokenLimit: RateLimitRow | null,
  projectId: string,
  projectLimit: RateLimitRow | null,
  now: number
): ReadonlyArray<TokenWindow> => {
  const ws: Array<TokenWindow> = []
  if (tokenLimited(tokenLimit)) ws.push(tokenWindow("token", tokenId, tokenLimit, now))
  if (tokenLimited(projectLimit)) ws.push(tokenWindow("project", projectId, projectLimit, now))
  return ws
}

/** The first window (token before project) whose tokens are used up at `now`, as a verdict. */
const tokensVerdict = (
  ws: ReadonlyArray<TokenWindow>,
  used: ReadonlyArray<number>,
  now: number
): Exceeded | undefined => {
  for (let i = 0; i < ws.length; i++) {
    const w = ws[i]!
    if ((used[i] ?? 0) >= w.limit) {
      return { scope: w.scope, retryAfterSeconds: Math.max(1, Math.ceil(((w.index + 1) * w.windowMs - now) / 1000)) }
    }
  }
  return undefined
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
  const one = (scope: "token" | "project", key: string, l: RateLimitRow & { readonly requests: number }) =>
    limiter.consume({ key, limit: l.requests, window: Duration.seconds(l.windowSeconds), algorithm: "fixed-window" })
      .pipe(
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
    if (tokenLimit !== null && tokenLimit.requests !== null) {
      const t = yield* one("token", `token:${tokenId}`, { ...tokenLimit, requests: tokenLimit.requests })
      // A store failure on the token's limit: the project's is not asked (the answer would be the same).
      if (t !== undefined) return t
    }
    if (projectLimit !== null && projectLimit.requests !== null) {
      return yield* one("project", `project:${projectId}`, { ...projectLimit, requests: projectLimit.requests })
    }
    return undefined
  })
}

const requestLimited = (l: RateLimitRow | null) => l !== null && l.requests !== null

export type FailureMode = "open" | "closed"

const make = (mode: "sync" | "async", failureMode: FailureMode, windows: TokenWindows) =>
  Effect.gen(function*() {
    const limiter = yield* RateLimiter.RateLimiter
    const clock = yield* Effect.clock
    const runtime = yield* Effect.runtime<never>()
    const runSyncExit = Runtime.runSyncExit(runtime)
    const runFork = Runtime.runFork(runtime)
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
            `rate limiter store failed; requests are ${
              failureMode === "closed" ? "refused (503)" : "allowed"
            } while it fails`,
            e.message,
            `failures so far: ${failures}`
          ),
          verdict
        )
      })
    /** The token-per-minute verdict (before any request is counted: a request refused for tokens uses none). */
    const tokensCheck = (ws: ReadonlyArray<TokenWindow>, now: number): Verdict | Effect.Effect<Verdict> => {
      if (ws.length === 0) return undefined
      const used = windows.used(ws)
      if (!Effect.isEffect(used)) return tokensVerdict(ws, used as ReadonlyArray<number>, now)
      return Effect.matchEffect(used, {
        onFailure: onStoreFailure,
        onSuccess: (u) => Effect.succeed(tokensVerdict(ws, u, now))
      })
    }
    const check: RateLimitsShape["check"] = (tokenId, tokenLimit, projectId, projectLimit) => {
      const consume = requestLimited(tokenLimit) || requestLimited(projectLimit)
        ? consumeBoth(limiter, onStoreFailure, tokenId, tokenLimit, projectId, projectLimit)
        : Effect.succeed<Verdict>(undefined)
      const effect = Effect.suspend(() => {
        const now = clock.unsafeCurrentTimeMillis()
        const t = tokensCheck(windowsOf(tokenId, tokenLimit, projectId, projectLimit, now), now)
        if (!Effect.isEffect(t)) return t === undefined ? consume : Effect.succeed(t)
        return Effect.flatMap(t, (v) => (v === undefined ? consume : Effect.succeed(v)))
      })
      return mode === "sync" ? effect : effect.pipe(
        // A slow or unreachable Redis must not hold requests: after 250 ms the failure mode applies.
        Effect.timeoutTo({
          duration: "250 millis",
          onSuccess: (r) => Effect.succeed(r),
          onTimeout: () => onStoreFailure({ message: "timed out after 250 ms" })
        }),
        Effect.flatten
      )
    }
    const service: RateLimitsShape = {
      check,
      unsafeCheck: (tokenId, tokenLimit, projectId, projectLimit) => {
        if (tokenLimit === null && projectLimit === null) return undefined
        if (mode === "async") return check(tokenId, tokenLimit, projectId, projectLimit)
        // The memory store answers synchronously, so the request goes on without waiting; token windows are read
        // without running an Effect.
        const now = clock.unsafeCurrentTimeMillis()
        const t = tokensCheck(windowsOf(tokenId, tokenLimit, projectId, projectLimit, now), now)
        if (t !== undefined) return t
        if (!requestLimited(tokenLimit) && !requestLimited(projectLimit)) return undefined
        const exit = runSyncExit(consumeBoth(limiter, onStoreFailure, tokenId, tokenLimit, projectId, projectLimit))
        return Exit.isSuccess(exit) ? exit.value : undefined
      },
      debitTokens: (tokenId, tokenLimit, projectId, projectLimit, tokens) => {
        if (tokens <= 0 || (!tokenLimited(tokenLimit) && !tokenLimited(projectLimit))) return
        const ws = windowsOf(tokenId, tokenLimit, projectId, projectLimit, clock.unsafeCurrentTimeMillis())
        const done = windows.add(ws, tokens)
        if (done !== undefined) {
          done.catch((e: Error) =>
            runFork(Effect.asVoid(onStoreFailure({ message: `token window update failed: ${e.message}` })))
          )
        }
      },
      storeFailures: () => failures
    }
    return service
  })

/**
 * The in-memory fixed-window store: the same counting as @effect/experimental's `layerStoreMemory`, whose map keeps
 * every key it ever saw (one per rate-limited token and project, for the life of the process). Here windows that
 * ended are swept every `SWEEP_MS`, which changes no answer: an ended window counts as a fresh one anyway.
 */
export const SWEEP_MS = 60_000

export const makeMemoryStore = () => {
  const windows = new Map<string, { count: number; expiresAt: number }>()
  const fixedWindow: RateLimiter.RateLimiterStore["Type"]["fixedWindow"] = (options) =>
    Effect.clockWith((clock) =>
      Effect.sync(() => {
        const refillMs = Duration.toMillis(options.refillRate)
        const now = clock.unsafeCurrentTimeMillis()
        let w = windows.get(options.key)
        if (w === undefined || w.expiresAt <= now) {
          w = { count: 0, expiresAt: now }
          windows.set(options.key, w)
        }
        if (options.limit !== undefined && w.count + options.tokens > options.limit) {
          return [w.count + options.tokens, w.expiresAt - now] as const
        }
        w.count += options.tokens
        w.expiresAt += refillMs * options.tokens
        return [w.count, w.expiresAt - now] as const
      })
    )
  /** Drops the windows that ended by `now`; returns how many are left. */
  const sweep = (now: number): number => {
    for (const [key, w] of windows) if (w.expiresAt <= now) windows.delete(key)
    return windows.size
  }
  return { fixedWindow, sweep, size: () => windows.size }
}

const memoryStore = Layer.scoped(
  RateLimiter.RateLimiterStore,
  Effect.gen(function*() {
    // @effect/experimental's own memory store, provided below (so it lives exactly as long as this one): its token
    // bucket stands in for ours, which RateLimits never uses (fixed windows only).
    const experimental = yield* RateLimiter.RateLimiterStore
    const { fixedWindow, sweep } = makeMemoryStore()
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
      Effect.sleep(Duration.millis(SWEEP_MS)),
      Effect.clockWith((clock) => Effect.sync(() => sweep(clock.unsafeCurrentTimeMillis())))
    )))
    return RateLimiter.RateLimiterStore.of({ fixedWindow, tokenBucket: experimental.tokenBucket })
  })
).pipe(Layer.provide(RateLimiter.layerStoreMemory))

export const layerMemory: Layer.Layer<RateLimits> = Layer.scoped(
  RateLimits,
  Effect.gen(function*() {
    const { sweep, windows } = memoryTokenWindows()
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
      Effect.sleep(Duration.millis(SWEEP_MS)),
      Effect.clockWith((clock) => Effect.sync(() => sweep(clock.unsafeCurrentTimeMillis())))
    )))
    return yield* make("sync", "open", windows)
  })
).pipe(
  Layer.provide(RateLimiter.layer),
  Layer.provide(memoryStore)
)

// The fixed-window script of @effect/experimental/RateLimiter/Redis, run on a client we own: that store's client has
// no error listener (ioredis prints every reconnect failure) and is closed with `quit`, which waits forever behind
// commands queued while Redis is down — so a Redis outage would spam stderr and hang shutdown.
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

interface RedisWithFixedWindow extends Redis {
  fixedWindow(key: string, tokens: number, refillMillis: number, limit?: number): Promise<[number, number]>
}

/** Token windows on Redis: `<prefix><key>:<window index>`, read with one MGET, added to with INCRBY + PEXPIRE. */
export const redisTokenWindows = (client: Redis, prefix: string): TokenWindows => ({
  used: (ws) =>
    Effect.tryPromise({
      try: () => client.mget(...ws.map((w) => `${prefix}${w.key}:${w.index}`)),
      catch: (e) => ({ message: `Redis MGET failed: ${(e as Error).message}` })
    }).pipe(Effect.map((values) => values.map((v) => (v === null ? 0 : Number(v) || 0)))),
  add: (ws, tokens) => {
    const pipeline = client.pipeline()
    for (const w of ws) {
      const key = `${prefix}${w.key}:${w.index}`
      pipeline.incrby(key, Math.round(tokens))
      pipeline.pexpire(key, w.windowMs * 2)
    }
    return pipeline.exec().then((results) => {
      const failed = results?.find(([err]) => err !== null)
      if (failed !== undefined) throw failed[0]
    })
  }
})

/** A Redis client that logs its first failure and keeps quiet until it is back. */
const quietRedis = (url: string, what: string) =>
  Effect.gen(function*() {
    const { Redis } = yield* ioredis
    const client = yield* Effect.acquireRelease(
      Effect.sync(() => new Redis(url, { maxRetriesPerRequest: 1 })),
      (c) => Effect.sync(() => c.disconnect())
    )
    const runtime = yield* Effect.runtime<never>()
    let down = false
    client.on("error", (e: Error) => {
      if (!down) Runtime.runFork(runtime)(Effect.logWarning(`${what} (Redis): ${e.message}`))
      down = true
    })
    client.on("ready", () => void (down = false))
    return client
  })

/** A RateLimiterStore on Redis (fixed window only, the algorithm RateLimits uses). */
export const layerRedisStore = (url: string, prefix: string): Layer.Layer<RateLimiter.RateLimiterStore> =>
  Layer.scoped(
    RateLimiter.RateLimiterStore,
    Effect.gen(function*() {
      const { Redis } = yield* ioredis
      const client = yield* Effect.acquireRelease(
        Effect.sync(() => new Redis(url, { maxRetriesPerRequest: 1 }) as RedisWithFixedWindow),
        (c) => Effect.sync(() => c.disconnect())
      )
      const runtime = yield* Effect.runtime<never>()
      let down = false
      client.on("error", (e: Error) => {
        if (!down) Runtime.runFork(runtime)(Effect.logWarning(`rate limiter store (Redis): ${e.message}`))
        down = true
      })
      client.on("ready", () => void (down = false))
      client.defineCommand("fixedWindow", { lua: FIXED_WINDOW, numberOfKeys: 1, readOnly: false })
      return RateLimiter.RateLimiterStore.of({
        fixedWindow: (options) =>
          Effect.tryPromise({
            try: () =>
              client.fixedWindow(
                `${prefix}${options.key}`,
                options.tokens,
                Duration.toMillis(options.refillRate),
                options.limit
              ),
            catch: (cause) =>
              new RateLimiter.RateLimitStoreError({ message: "Redis fixed-window command failed", cause })
          }),
        tokenBucket: () =>
          Effect.fail(new RateLimiter.RateLimitStoreError({ message: "token bucket is not used by llm-proxy" }))
      })
    })
  )

export const layerRedis = (
  url: string,
  failureMode: FailureMode = "open",
  prefix = "llm-proxy:ratelimit:"
): Layer.Layer<RateLimits> =>
  Layer.scoped(
    RateLimits,
    Effect.flatMap(quietRedis(url, "token rate limits"), (client) =>
      make("async", failureMode, redisTokenWindows(client, prefix)))
  ).pipe(
    Layer.provide(RateLimiter.layer),
    Layer.provide(layerRedisStore(url, prefix))
  )
