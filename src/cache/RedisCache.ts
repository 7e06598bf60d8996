/**
 * Redis ResponseCache (ioredis): one binary value per entry under `REDIS_CACHE_KEY_PREFIX` + key, written with
 * `SET … PX <remaining lifetime>` so Redis frees it on expiry. Several proxy instances pointed at the same Redis
 * share entries.
 *
 * An outage degrades to misses: commands are not queued while disconnected (`enableOfflineQueue: false`) and
 * time out after `commandTimeout`, every failure is counted, and the outage is logged once when it starts and
 * once when Redis answers again. Only purge reports it (503), because an operator waits for that answer.
 */
import { Clock, Effect, Layer, Runtime } from "effect"
import type { CacheConfig } from "../config/AppConfig.js"
import { ioredis } from "../redisClient.js"
import {
  type CachedResponse,
  entrySize,
  type HeaderList,
  purgeMatches,
  type PurgeSelector,
  SCOPE_HASH_LENGTH,
  URL_HASH_LENGTH
} from "./policy.js"
import { CacheCounters, CacheUnavailable, ResponseCache, type ResponseCacheShape } from "./ResponseCache.js"

export interface RedisCacheOptions {
  readonly url: string
  /** Milliseconds a command may take before it counts as failed (a miss). */
  readonly commandTimeoutMs?: number
  /** How long start-up waits for the first connection before carrying on degraded. */
  readonly connectWaitMs?: number
}

interface Meta {
  readonly s: number
  readonly h: HeaderList
  readonly t: number
  readonly x: number
  readonly v: HeaderList
}

/** `[u32 length of meta JSON][meta JSON][body]`: binary-safe and one allocation to decode. */
export const encodeEntry = (e: CachedResponse): Buffer => {
  const meta: Meta = { s: e.status, h: e.headers, t: e.storedAt, x: e.expiresAt, v: e.vary }
  const json = Buffer.from(JSON.stringify(meta), "utf8")
  const out = Buffer.allocUnsafe(4 + json.length + e.body.byteLength)
  out.writeUInt32BE(json.length, 0)
  json.copy(out, 4)
  out.set(e.body, 4 + json.length)
  return out
}

const isPairs = (v: unknown): v is HeaderList =>
  Array.isArray(v) &&
  v.every((p) => Array.isArray(p) && p.length === 2 && typeof p[0] === "string" && typeof p[1] === "string")

/** The entry, or undefined for a value this program did not write (it is then ignored and overwritten). */
export const decodeEntry = (buf: Buffer): CachedResponse | undefined => {
  if (buf.length < 4) return undefined
  const n = buf.readUInt32BE(0)
  if (4 + n > buf.length) return undefined
  try {
    const m = JSON.parse(buf.subarray(4, 4 + n).toString("utf8")) as Partial<Meta>
    if (
      typeof m.s !== "number" || typeof m.t !== "number" || typeof m.x !== "number" || !isPairs(m.h) || !isPairs(m.v)
    ) {
      return undefined
    }
    return { status: m.s, headers: m.h, storedAt: m.t, expiresAt: m.x, vary: m.v, body: buf.subarray(4 + n) }
  } catch {
    return undefined
  }
}

const escapeGlob = (s: string) => s.replace(/[*?[\]\\]/g, (c) => `\\${c}`)

/** The SCAN pattern covering a purge selector (keys are then checked exactly with `purgeMatches`). */
export const scanPattern = (prefix: string, selector: PurgeSelector): string => {
  const p = escapeGlob(prefix)
  switch (selector._tag) {
    case "Exact":
      return `${p}${selector.urlHash}${selector.scope ?? ""}*`
    case "Prefix":
      return `${p}${selector.prefix}*`
    case "All":
      return selector.scope === undefined ? `${p}*` : `${p}${"?".repeat(URL_HASH_LENGTH)}${selector.scope}*`
  }
}

/** How long the data plane skips Redis after a failed command before one request tries again. */
export const PROBE_INTERVAL_MS = 1000

const KEY_LENGTH = URL_HASH_LENGTH + SCOPE_HASH_LENGTH + 32

export const make = (config: CacheConfig, options: RedisCacheOptions) =>
  Effect.gen(function*() {
    const counters = new CacheCounters()
    const prefix = config.redisKeyPrefix
    const { Redis } = yield* ioredis
    const redis = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const client = new Redis(options.url, {
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          commandTimeout: options.commandTimeoutMs ?? 1000,
          connectTimeout: 2000,
          retryStrategy: (times) => Math.min(100 * times, 2000),
          lazyConnect: false
        })
        // Connection errors are reported through the failing commands (logged once per outage); an unhandled
        // "error" event would crash the process.
        client.on("error", () => {})
        return client
      }),
      (client) => Effect.promise(() => client.quit().catch(() => client.disconnect()))
    )

    // Start-up waits briefly for the connection so the first requests are not misses by accident; an unreachable
    // Redis does not stop the proxy.
    const ready = yield* Effect.async<boolean>((resume) => {
      if (redis.status === "ready") return resume(Effect.succeed(true))
      const timer = setTimeout(() => done(false), options.connectWaitMs ?? 2000)
      const onReady = () => done(true)
      function done(ok: boolean) {
        clearTimeout(timer)
        redis.off("ready", onReady)
        resume(Effect.succeed(ok))
      }
      redis.on("ready", onReady)
    })

    let down = false
    // After a failure the data plane leaves Redis alone for PROBE_INTERVAL_MS (answering misses at once), then lets
    // one request probe: a Redis that hangs instead of refusing costs one command timeout per interval, not one per
    // request.
    let skipUntil = 0
    const failed = (operation: string) => (cause: unknown) =>
      Effect.suspend(() => {
        counters.errors++
        skipUntil = Date.now() + PROBE_INTERVAL_MS
        if (down) return Effect.void
        down = true
        const reason = cause instanceof Error ? cause.message : String(cause)
        return Effect.logWarning(
          `Redis response cache unavailable (${operation}: ${reason}); serving misses until it is back`
        )
      })
    const succeeded = Effect.suspend(() => {
      skipUntil = 0
      if (!down) return Effect.void
      down = false
      return Effect.logInfo("Redis response cache is available again")
    })
    if (!ready) yield* failed("connect")(new Error(`no connection to ${new URL(options.url).host}`))

    const run = <A>(operation: string, f: () => Promise<A>) =>
      Effect.tryPromise({ try: f, catch: (e) => e }).pipe(
        Effect.tap(() => succeeded),
        Effect.tapError(failed(operation))
      )

    const scanKeys = (selector: PurgeSelector) =>
      Effect.gen(function*() {
        const pattern = scanPattern(prefix, selector)
        let cursor = "0"
        let deleted = 0
        do {
          const [next, keys] = yield* run("purge", () => redis.scan(cursor, "MATCH", pattern, "COUNT", 1000))
          cursor = next
          const selected = keys.filter((k) => {
            const key = k.slice(prefix.length)
            return key.length === KEY_LENGTH && purgeMatches(selector, key)
          })
          if (selected.length > 0) deleted += yield* run("purge", () => redis.unlink(...selected))
        } while (cursor !== "0")
        return deleted
      })

    const getAt = (key: string, now: number) =>
      run("get", () => redis.getBuffer(prefix + key)).pipe(
        Effect.map((buf) => {
          if (buf === null) return undefined
          const entry = decodeEntry(buf)
          return entry === undefined || now >= entry.expiresAt ? undefined : entry
        }),
        Effect.orElseSucceed(() => undefined)
      )

    const setAt = (key: string, entry: CachedResponse, now: number) => {
      const ttl = entry.expiresAt - now
      if (ttl <= 0 || entrySize(entry) > config.maxObjectBytes) return Effect.succeed(false)
      return run("set", () => redis.set(prefix + key, encodeEntry(entry), "PX", ttl)).pipe(
        Effect.map(() => {
          counters.stores++
          return true
        }),
        Effect.orElseSucceed(() => false)
      )
    }

    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)

    const service: ResponseCacheShape = {
      enabled: true,
      backend: "redis",
      config,
      get: (key) => Effect.flatMap(Clock.currentTimeMillis, (now) => getAt(key, now)),
      set: (key, entry) => Effect.flatMap(Clock.currentTimeMillis, (now) => setAt(key, entry, now)),
      // The data plane talks to ioredis directly (no fiber per request); only a change of state is logged, through
      // the same Effects as the control plane.
      lookup: (key, now) => {
        if (skipUntil !== 0) {
          if (Date.now() < skipUntil) return undefined
          skipUntil = Date.now() + PROBE_INTERVAL_MS
        }
        return redis.getBuffer(prefix + key).then(
          (buf) => {
            if (down) runFork(succeeded)
            if (buf === null) return undefined
            const entry = decodeEntry(buf)
            return entry === undefined || now >= entry.expiresAt ? undefined : entry
          },
          (e: unknown) => {
            runFork(failed("get")(e))
            return undefined
          }
        )
      },
      store: (key, entry, now) => {
        const ttl = entry.expiresAt - now
        if (ttl <= 0 || entrySize(entry) > config.maxObjectBytes || (skipUntil !== 0 && Date.now() < skipUntil)) return
        redis.set(prefix + key, encodeEntry(entry), "PX", ttl).then(
          () => {
            counters.stores++
            if (down) runFork(succeeded)
          },
          (e: unknown) => void runFork(failed("set")(e))
        )
      },
      remove: (key) => void runFork(Effect.ignore(run("delete", () => redis.unlink(prefix + key)))),
      delete: (key) =>
        run("delete", () => redis.unlink(prefix + key)).pipe(
          Effect.map((n) => n > 0),
          Effect.orElseSucceed(() => false)
        ),
      purge: (selector) =>
        scanKeys(selector).pipe(
          Effect.mapError(() => new CacheUnavailable({ message: "the Redis response cache is unavailable" }))
        ),
      count: (event) => counters.count(event),
      stats: Effect.sync(() => counters.snapshot("redis", 0, 0))
    }
    return service
  })

export const layer = (config: CacheConfig, options: RedisCacheOptions): Layer.Layer<ResponseCache> =>
  Layer.scoped(ResponseCache, make(config, options))
