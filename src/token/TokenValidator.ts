/**
 * TokenValidator: what a proxy token grants, served from memory so a warm token costs no database query.
 *
 * - `cached(hash)` is synchronous: the hot path of a request with a warm token never awaits.
 * - `load(hash)` reads token + project in one query (and decrypts the project's key once), then caches the result.
 * - Every management mutation calls `invalidateToken` / `invalidateProject` after its commit, so the very next
 *   request on this instance re-reads the row. A generation counter stops a load that raced with an invalidation
 *   from caching the state it read before the change. Entries also expire after TOKEN_CACHE_TTL, the bound on how
 *   stale another instance can be.
 * - Verdicts (inactive, expired, project inactive) are decided per request from the cached entry and the clock.
 */
import { Context, Effect, Layer, Option, Redacted, Runtime } from "effect"
import { Redis } from "ioredis"
import { AppConfig } from "../config/AppConfig.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { type RateLimitRow, Store, type StoreError } from "../store/Store.js"

export interface TokenGrant {
  readonly tokenId: string
  readonly projectId: string
  /** ms since epoch; null = never expires. */
  readonly expiresAtMs: number | null
  readonly isActive: boolean
  /** null = unlimited (counted in batches); a number = atomic quota per request. */
  readonly maxRequests: number | null
  readonly tokenRateLimit: RateLimitRow | null
  readonly projectActive: boolean
  readonly projectRateLimit: RateLimitRow | null
  readonly provider: string
  /** The decrypted provider key; None when it cannot be decrypted (answered 503 upstream_auth_error). */
  readonly apiKey: Option.Option<Redacted.Redacted<string>>
}

interface Entry {
  readonly grant: TokenGrant
  readonly loadedAt: number
}

export interface TokenValidatorShape {
  /**
   * The cached grant for a token hash, if fresh; null when the hash is known not to exist (a token cannot be
   * presented before it is created, so remembering misses is safe); undefined = ask `load`. Synchronous.
   */
  readonly cached: (hash: string, nowMs: number) => TokenGrant | null | undefined
  /**
   * Reads the grant from the store and caches it; undefined when no such token exists. Concurrent loads of one
   * hash share a single query.
   */
  readonly load: (hash: string) => Promise<TokenGrant | undefined>
  readonly invalidateToken: (tokenId: string) => void
  readonly invalidateProject: (projectId: string) => void
  readonly invalidateAll: () => void
  readonly stats: () => { readonly size: number; readonly hits: number; readonly loads: number }
}

export class TokenValidator extends Context.Tag("llm-proxy/TokenValidator")<TokenValidator, TokenValidatorShape>() {}

export const MAX_ENTRIES = 10_000

export class TokenLoadError extends Error {
  constructor(override readonly cause: StoreError) {
    super("token lookup failed")
  }
}

/** How invalidations reach other instances: not at all (one instance), or a Redis pub/sub channel. */
export interface InvalidationChannel {
  readonly publish: (message: Invalidation) => void
  /** Registers the handler for messages other instances published. */
  readonly subscribe: (apply: (message: Invalidation) => void) => void
}

export type Invalidation =
  | { readonly kind: "token"; readonly id: string }
  | { readonly kind: "project"; readonly id: string }
  | { readonly kind: "all" }

const localOnly: InvalidationChannel = { publish: () => {}, subscribe: () => {} }

export const make = (channel: InvalidationChannel = localOnly) => Effect.gen(function*() {
  const store = yield* Store
  const cipher = yield* KeyCipher
  const config = yield* AppConfig
  const runtime = yield* Effect.runtime<never>()
  const runPromise = Runtime.runPromise(runtime)
  const ttl = config.tokenCacheTtlMs
  const entries = new Map<string, Entry>()
  /** Hashes with no token, and when that was read (bounded like `entries`). */
  const missing = new Map<string, number>()
  const inflight = new Map<string, Promise<TokenGrant | undefined>>()
  let generation = 0
  let hits = 0
  let loads = 0

  const drop = (predicate: (g: TokenGrant) => boolean) => {
    generation++
    // Requests after an invalidation must not join a load that may have read the old row.
    inflight.clear()
    for (const [hash, e] of entries) if (predicate(e.grant)) entries.delete(hash)
  }

  const loadEffect = (hash: string) =>
    Effect.gen(function*() {
      const row = yield* store.getTokenAuth(hash)
      if (Option.isNone(row)) return undefined
      const r = row.value
      const key = yield* Effect.option(cipher.decrypt(r.apiKey))
      const grant: TokenGrant = {
        tokenId: r.tokenId,
        projectId: r.projectId,
        expiresAtMs: r.expiresAt === null ? null : Date.parse(r.expiresAt),
        isActive: r.isActive,
        maxRequests: r.maxRequests,
        tokenRateLimit: r.tokenRateLimit,
        projectActive: r.projectActive,
        projectRateLimit: r.projectRateLimit,
        provider: r.provider,
        apiKey: Option.map(Option.filter(key, (k) => k !== ""), Redacted.make)
      }
      return grant
    })

  const remember = <V>(map: Map<string, V>, key: string, value: V) => {
    if (map.size >= MAX_ENTRIES) {
      // Oldest first (insertion order).
      const oldest = map.keys().next()
      if (!oldest.done) map.delete(oldest.value)
    }
    map.set(key, value)
  }

  const apply = (m: Invalidation) => {
    if (m.kind === "token") drop((g) => g.tokenId === m.id)
    else if (m.kind === "project") drop((g) => g.projectId === m.id)
    else {
      generation++
      inflight.clear()
      entries.clear()
      missing.clear()
    }
  }
  channel.subscribe(apply)

  const service: TokenValidatorShape = {
    cached: (hash, nowMs) => {
      const e = entries.get(hash)
      if (e === undefined) {
        const m = missing.get(hash)
        if (m === undefined) return undefined
        if (nowMs - m >= ttl) {
          missing.delete(hash)
          return undefined
        }
        return null
      }
      if (nowMs - e.loadedAt >= ttl) {
        entries.delete(hash)
        return undefined
      }
      hits++
      return e.grant
    },
    load: (hash) => {
      const pending = inflight.get(hash)
      if (pending !== undefined) return pending
      const startedAt = generation
      loads++
      const settle = () => {
        if (inflight.get(hash) === promise) inflight.delete(hash)
      }
      const promise: Promise<TokenGrant | undefined> = runPromise(Effect.either(loadEffect(hash))).then((result) => {
        settle()
        if (result._tag === "Left") throw new TokenLoadError(result.left)
        const grant = result.right
        if (ttl > 0 && startedAt === generation) {
          if (grant === undefined) remember(missing, hash, Date.now())
          else remember(entries, hash, { grant, loadedAt: Date.now() })
        }
        return grant
      }, (e: unknown) => {
        settle()
        throw e
      })
      inflight.set(hash, promise)
      return promise
    },
    invalidateToken: (tokenId) => {
      apply({ kind: "token", id: tokenId })
      channel.publish({ kind: "token", id: tokenId })
    },
    invalidateProject: (projectId) => {
      apply({ kind: "project", id: projectId })
      channel.publish({ kind: "project", id: projectId })
    },
    invalidateAll: () => {
      apply({ kind: "all" })
      channel.publish({ kind: "all" })
    },
    stats: () => ({ size: entries.size, hits, loads })
  }
  return service
})

/** One instance: invalidations apply locally. */
export const layer: Layer.Layer<TokenValidator, never, Store | KeyCipher | AppConfig> = Layer.effect(TokenValidator, make())

const CHANNEL = "llm-proxy:token-invalidations"

/**
 * Several instances: every invalidation is also published on a Redis channel and applied by the other instances
 * when it arrives (milliseconds); TOKEN_CACHE_TTL stays the bound if a message is lost. If Redis is unreachable the
 * proxy keeps serving and logs a warning.
 */
export const layerRedis = (url: string): Layer.Layer<TokenValidator, never, Store | KeyCipher | AppConfig> =>
  Layer.scoped(
    TokenValidator,
    Effect.gen(function*() {
      const instance = crypto.randomUUID()
      const options = { lazyConnect: false, maxRetriesPerRequest: 1, enableOfflineQueue: true }
      const [pub, sub] = yield* Effect.acquireRelease(
        Effect.sync(() => [new Redis(url, options), new Redis(url, options)] as const),
        ([a, b]) => Effect.promise(() => Promise.all([a.quit().catch(() => a.disconnect()), b.quit().catch(() => b.disconnect())]))
      )
      const runtime = yield* Effect.runtime<never>()
      const warn = (m: string) => Runtime.runFork(runtime)(Effect.logWarning(m))
      let warned = false
      const onError = (e: Error) => {
        if (!warned) warn(`token invalidation channel (Redis): ${e.message}`)
        warned = true
      }
      pub.on("error", onError)
      sub.on("error", onError)
      const channel: InvalidationChannel = {
        publish: (m) => void pub.publish(CHANNEL, JSON.stringify({ ...m, from: instance })).catch(onError),
        subscribe: (apply) => {
          sub.on("message", (_c: string, text: string) => {
            try {
              const m = JSON.parse(text) as Invalidation & { from?: string }
              if (m.from !== instance) apply(m)
            } catch {
              // not ours
            }
          })
          void sub.subscribe(CHANNEL).catch(onError)
        }
      }
      return yield* make(channel)
    })
  )

/** The verdict on a grant at `nowMs`: undefined = admitted (so far), else why not. */
export type Refusal = "token_inactive" | "token_expired" | "project_inactive"

export const judge = (g: TokenGrant, nowMs: number): Refusal | undefined => {
  if (!g.isActive) return "token_inactive"
  if (g.expiresAtMs !== null && nowMs >= g.expiresAtMs) return "token_expired"
  if (!g.projectActive) return "project_inactive"
  return undefined
}
