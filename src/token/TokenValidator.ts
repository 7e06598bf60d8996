/**
 * TokenValidator: what a proxy token grants, served from memory so a warm token costs no database query.
 *
 * - `cached(hash)` is synchronous: the hot path of a request with a warm token never awaits.
 * - `load(hash)` reads token + project in one query (and decrypts the project's key once), then caches the result.
 *   It is an Effect that fails with `TokenLoadError`; the data plane runs it through its one runtime bridge
 *   (src/proxy/ProxyHandler.ts) only on a cache miss.
 * - Every management mutation yields `invalidate` (a token, or a project's tokens) after its commit, so the very
 *   next request on this instance re-reads the row (the data plane uses the synchronous `unsafeInvalidate`). A
 *   generation counter stops a load that raced with an invalidation from caching the state it read before the change.
 *   Entries also expire after TOKEN_CACHE_TTL, the bound on how stale another instance can be.
 * - Verdicts (inactive, expired, project inactive) are decided per request from the cached entry and the clock.
 * - Across instances (PostgreSQL LISTEN/NOTIFY in PostgresInvalidation.ts, or Redis pub/sub here) the cache is
 *   trusted only while the invalidation subscription is live: while it is down every request re-reads the
 *   database, and when it is back the whole cache is dropped (messages sent in the gap are lost).
 * - While the database is unreachable a token loaded less than TOKEN_CACHE_STALE_TTL ago keeps being served from
 *   the entry it has (never one that was invalidated); tokens not in memory get 503.
 */
import { Context, Effect, Fiber, Layer, Option, Redacted, Runtime, Schema } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import type { KeyState, RoutedKey } from "../proxy/keys.js"
import { type ModelScope, modelScopeOf } from "../proxy/modelScope.js"
import { ioredis } from "../redisClient.js"
import { type BudgetRow, type RateLimitRow, Store, StoreError } from "../store/Store.js"

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
  /** Budgets of the token and its project (absent: none). */
  readonly tokenBudget?: BudgetRow
  readonly projectBudget?: BudgetRow
  readonly provider: string
  /**
   * The project's keys that decrypt, in their order (a key that does not is left out and logged; none at all is
   * answered 503 upstream_auth_error).
   */
  readonly keys: ReadonlyArray<GrantKey>
  /** The models the project's and the token's `allowed_models` both admit, compiled; null = any (no check at all). */
  readonly models: ModelScope | null
  /** The token's labels, for events, the access log and `inject_user`. */
  readonly name: string | null
  readonly user: string | null
  readonly metadata: Readonly<Record<string, string>> | null
}

/** A decrypted project key, as the data plane routes over it (src/proxy/keys.ts). */
export interface GrantKey extends RoutedKey {
  readonly apiKey: Redacted.Redacted<string>
}

interface Entry {
  readonly grant: TokenGrant
  readonly loadedAt: number
}

export interface TokenValidatorShape {
  /**
   * The cached grant for a token hash, if fresh; null when the hash is known not to exist (a token cannot be
   * presented before it is created, so remembering misses is safe); undefined = ask `load`. Synchronous: the data
   * plane's fast path.
   */
  readonly cached: (hash: string, nowMs: number) => TokenGrant | null | undefined
  /**
   * Reads the grant from the store and caches it; undefined when no such token exists. Concurrent loads of one
   * hash share a single query. While the database fails, a grant loaded less than TOKEN_CACHE_STALE_TTL ago (and
   * not invalidated since) is the answer; otherwise `TokenLoadError`.
   */
  readonly load: (hash: string) => Effect.Effect<TokenGrant | undefined, TokenLoadError>
  /**
   * Drops what is cached of a token, of a project's tokens or of everything here at once, and announces it to the
   * other instances (`settled` waits until the announcement is out).
   */
  readonly invalidate: (what: Invalidation) => Effect.Effect<void>
  /** For plain Node code on the data plane (a quota update found the token or project changed): `invalidate`, now. */
  readonly unsafeInvalidate: (what: Invalidation) => void
  /**
   * Completes when every invalidation issued so far has reached the shared channel (or failed, or 1 s passed).
   * The management API waits for it before answering, so a client that then calls another instance finds it applied.
   */
  readonly settled: Effect.Effect<void>
  /** False while cross-instance invalidations may be missed (Redis subscription down): the cache is not used. */
  readonly trusted: () => boolean
  readonly stats: () => {
    readonly size: number
    readonly hits: number
    readonly loads: number
    /** Requests answered from an entry past its TTL because the database failed. */
    readonly staleServed: number
  }
}

export class TokenValidator extends Context.Tag("llm-proxy/TokenValidator")<TokenValidator, TokenValidatorShape>() {}

export const MAX_ENTRIES = 10_000

/** The store did not answer a token lookup (and no recent grant could stand in). `cause` is for the log only. */
export class TokenLoadError extends Schema.TaggedError<TokenLoadError>()("TokenLoadError", {
  cause: StoreError
}) {
  override get message() {
    return "token lookup failed"
  }
}

/**
 * How invalidations reach other instances: not at all (one instance), PostgreSQL LISTEN/NOTIFY or a Redis pub/sub
 * channel.
 */
export interface InvalidationChannel {
  readonly publish: (message: Invalidation) => void
  /**
   * Registers the handler for messages other instances published, and `reset`, called when the subscription is
   * back after a gap (everything cached may be stale).
   */
  readonly subscribe: (apply: (message: Invalidation) => void, reset: () => void) => void
  /** True while messages from other instances are being received. */
  readonly live: () => boolean
  /** Resolves when every publish so far is done (see `pendingPublishes`); never rejects. */
  readonly settled: () => Promise<void>
}

export type Invalidation =
  | { readonly kind: "token"; readonly id: string }
  | { readonly kind: "project"; readonly id: string }
  | { readonly kind: "all" }

const ignore = () => undefined

/**
 * The publishes still on their way, for `settled`: it resolves when every one issued so far has been taken by the
 * shared channel (or failed), or after `waitMs` at most. It never rejects.
 */
export const pendingPublishes = (waitMs = 1000) => {
  const inflight = new Set<Promise<unknown>>()
  return {
    add: (publish: Promise<unknown>) => {
      const p = publish.then(ignore, ignore)
      inflight.add(p)
      void p.finally(() => inflight.delete(p))
    },
    settled: (): Promise<void> => {
      if (inflight.size === 0) return Promise.resolve()
      return Promise.race([
        Promise.all(inflight).then(() => undefined),
        new Promise<void>((r) => setTimeout(r, waitMs).unref())
      ])
    }
  }
}

const localOnly: InvalidationChannel = {
  publish: () => {},
  subscribe: () => {},
  live: () => true,
  settled: () => Promise.resolve()
}

export const make = (channel: InvalidationChannel = localOnly) =>
  Effect.gen(function*() {
    const store = yield* Store
    const cipher = yield* KeyCipher
    const config = yield* AppConfig
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    const ttl = config.tokenCacheTtlMs
    // Entries are kept past their TTL (but never served from `cached`) for as long as they may stand in for a
    // database that does not answer.
    const keep = Math.max(ttl, config.tokenCacheStaleTtlMs)
    const entries = new Map<string, Entry>()
    /** Hashes with no token, and when that was read (bounded like `entries`). */
    const missing = new Map<string, number>()
    /** One load per hash at a time: it runs in a fiber of its own, which every caller for that hash joins. */
    const inflight = new Map<string, Fiber.RuntimeFiber<TokenGrant | undefined, TokenLoadError>>()
    let generation = 0
    let hits = 0
    let loads = 0
    let staleServed = 0

    const drop = (predicate: (g: TokenGrant) => boolean) => {
      generation++
      // Requests after an invalidation must not join a load that may have read the old row.
      inflight.clear()
      for (const [hash, e] of entries) if (predicate(e.grant)) entries.delete(hash)
    }

    const read = (hash: string) =>
      Effect.gen(function*() {
        const row = yield* store.getTokenAuth(hash)
        if (Option.isNone(row)) return undefined
        const r = row.value
        const keys: Array<GrantKey> = []
        for (let index = 0; index < r.apiKeys.length; index++) {
          const stored = r.apiKeys[index]!
          const key = yield* Effect.option(cipher.decrypt(stored.key))
          if (Option.isNone(key) || key.value === "") {
            yield* Effect.logWarning(
              `project ${r.projectId}: its key ${index} cannot be decrypted (wrong ENCRYPTION_KEY?)`
            )
            continue
          }
          keys.push({
            id: stored.id,
            index,
            slot: keys.length,
            provider: stored.provider ?? r.provider,
            weight: stored.weight,
            apiKey: Redacted.make(key.value),
            state: undefined as KeyState | undefined
          })
        }
        const grant: TokenGrant = {
          tokenId: r.tokenId,
          projectId: r.projectId,
          expiresAtMs: r.expiresAt === null ? null : Date.parse(r.expiresAt),
          isActive: r.isActive,
          maxRequests: r.maxRequests,
          tokenRateLimit: r.tokenRateLimit,
          projectActive: r.projectActive,
          projectRateLimit: r.projectRateLimit,
          tokenBudget: r.tokenBudget,
          projectBudget: r.projectBudget,
          provider: r.provider,
          keys,
          models: modelScopeOf(r.projectAllowedModels, r.tokenAllowedModels),
          name: r.name,
          user: r.user,
          metadata: r.metadata
        }
        return grant
      })

    const remember = <V>(map: Map<string, V>, key: string, value: V) => {
      map.delete(key)
      if (map.size >= MAX_ENTRIES) {
        // Oldest first (insertion order).
        const oldest = map.keys().next()
        if (!oldest.done) map.delete(oldest.value)
      }
      map.set(key, value)
    }

    /** Reads the grant and caches it, unless an invalidation came in meanwhile (generation counter). */
    const readAndCache = (hash: string): Effect.Effect<TokenGrant | undefined, TokenLoadError> =>
      Effect.suspend(() => {
        const startedAt = generation
        loads++
        return Effect.matchEffect(read(hash), {
          // The database does not answer: a token validated recently (and not invalidated since) keeps working.
          onFailure: (cause) =>
            Effect.suspend(() => {
              const e = entries.get(hash)
              if (e !== undefined && Date.now() - e.loadedAt < config.tokenCacheStaleTtlMs) {
                staleServed++
                return Effect.succeed(e.grant)
              }
              return Effect.fail(new TokenLoadError({ cause }))
            }),
          onSuccess: (grant) =>
            Effect.sync(() => {
              if (grant === undefined) entries.delete(hash)
              if (ttl > 0 && startedAt === generation) {
                if (grant === undefined) remember(missing, hash, Date.now())
                else remember(entries, hash, { grant, loadedAt: Date.now() })
              }
              return grant
            })
        })
      })

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
    channel.subscribe(apply, () => apply({ kind: "all" }))
    const live = channel.live

    const unsafeInvalidate = (m: Invalidation) => {
      apply(m)
      channel.publish(m)
    }

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
        const age = nowMs - e.loadedAt
        if (age >= ttl || !live()) {
          if (age >= keep) entries.delete(hash)
          return undefined
        }
        hits++
        return e.grant
      },
      load: (hash) =>
        Effect.suspend(() => {
          const pending = inflight.get(hash)
          if (pending !== undefined) return Fiber.join(pending)
          // The fiber starts at once and may even finish before runFork returns (SQLite answers synchronously).
          const fiber = runFork(readAndCache(hash))
          if (fiber.unsafePoll() === null) {
            inflight.set(hash, fiber)
            fiber.addObserver(() => {
              if (inflight.get(hash) === fiber) inflight.delete(hash)
            })
          }
          return Fiber.join(fiber)
        }),
      invalidate: Effect.fn("TokenValidator.invalidate")(function*(what: Invalidation) {
        yield* Effect.annotateCurrentSpan("llm_proxy.token_cache.invalidation", what.kind)
        unsafeInvalidate(what)
      }),
      unsafeInvalidate,
      // The channel's promise never rejects (publish failures are logged, and it gives up after 1 s).
      settled: Effect.promise(channel.settled).pipe(Effect.withSpan("TokenValidator.settled")),
      trusted: live,
      stats: () => ({ size: entries.size, hits, loads, staleServed })
    }
    return service
  })

/** One instance: invalidations apply locally. */
export const layer: Layer.Layer<TokenValidator, never, Store | KeyCipher | AppConfig> = Layer.effect(
  TokenValidator,
  make()
)

const CHANNEL = "llm-proxy:token-invalidations"

/**
 * Several instances: every invalidation is also published on a Redis channel and applied by the other instances
 * when it arrives (milliseconds). While the subscription is down (Redis unreachable, connection lost) the cache is
 * not trusted — every request re-reads the database — and when it is back the whole cache is dropped, so no message
 * lost in the gap can leave a stale grant. The proxy keeps serving throughout and logs the outage once.
 */
export const layerRedis = (url: string): Layer.Layer<TokenValidator, never, Store | KeyCipher | AppConfig> =>
  Layer.scoped(
    TokenValidator,
    Effect.gen(function*() {
      const instance = crypto.randomUUID()
      // The subscriber queues its SUBSCRIBE until connected and re-subscribes after reconnects; while it is not
      // subscribed the cache is bypassed (`live`).
      const { Redis } = yield* ioredis
      const [pub, sub] = yield* Effect.acquireRelease(
        Effect.sync(() =>
          [
            new Redis(url, { maxRetriesPerRequest: 1, commandTimeout: 1000 }),
            new Redis(url, { maxRetriesPerRequest: null, enableOfflineQueue: true })
          ] as const
        ),
        // disconnect, not quit: quit waits behind commands queued while Redis is unreachable, i.e. forever.
        ([a, b]) =>
          Effect.sync(() => {
            a.disconnect()
            b.disconnect()
          })
      )
      const runtime = yield* Effect.runtime<never>()
      const log = (level: "warn" | "info", m: string) =>
        Runtime.runFork(runtime)(level === "warn" ? Effect.logWarning(m) : Effect.logInfo(m))
      let warned = false
      const onError = (e: Error) => {
        if (!warned) {
          log("warn", `token invalidation channel (Redis): ${e.message}; the token cache is bypassed until it is back`)
        }
        warned = true
      }
      pub.on("error", onError)
      sub.on("error", onError)
      let subscribed = false
      let everSubscribed = false
      const down = () => {
        subscribed = false
      }
      sub.on("close", down)
      sub.on("end", down)
      sub.on("reconnecting", down)
      const pending = pendingPublishes()
      const channel: InvalidationChannel = {
        publish: (m) => pending.add(pub.publish(CHANNEL, JSON.stringify({ ...m, from: instance })).catch(onError)),
        subscribe: (apply, reset) => {
          sub.on("message", (_c: string, text: string) => {
            try {
              const m = JSON.parse(text) as Invalidation & { from?: string }
              if (m.from !== instance) apply(m)
            } catch {
              // not ours
            }
          })
          const join = () =>
            void sub.subscribe(CHANNEL).then(() => {
              if (everSubscribed) {
                reset()
                log("info", "token invalidation channel (Redis) is back; token cache cleared")
              }
              everSubscribed = true
              warned = false
              subscribed = true
            }, onError)
          // "ready" on the first connection and after every reconnection.
          sub.on("ready", join)
        },
        live: () => subscribed,
        settled: pending.settled
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
