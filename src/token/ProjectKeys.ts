/**
 * ProjectKeys: which project key (`lpk-…`) a management request presents, with the same guarantees as the token
 * cache (TokenValidator.ts):
 *
 * - A key is read from the store by its SHA-256 and kept in memory for TOKEN_CACHE_TTL, but only while the
 *   invalidation channel is live (`trusted()`); otherwise every request reads the database.
 * - Revoking a key (`revoked`) drops it here and announces `{kind: "project_key"}` on the token cache's channel
 *   (PostgreSQL NOTIFY or Redis pub/sub), whose `settled` the management API awaits: on PostgreSQL every instance
 *   listening on the database has applied it before the revocation is answered, so a client calling any instance next
 *   is refused. A load that raced the revocation does not cache what it read (generation counter).
 * - `last_used_at` is written at most once a minute per key and instance (and the statement itself skips a row
 *   written less than a minute ago), never once per request.
 */
import { Clock, Context, Effect, Layer, Option } from "effect"
import { AppConfig } from "../config/AppConfig.js"
import { hashProjectKey, isProjectKeyFormat } from "../crypto/ProjectKey.js"
import { Store, type StoreError } from "../store/Store.js"
import { TokenValidator } from "./TokenValidator.js"

/** What a live project key may act for. */
export interface ProjectKeyGrant {
  readonly keyId: string
  readonly projectId: string
}

export interface ProjectKeysShape {
  /** The live key `key` is, or None (unknown, revoked, not even of the format). */
  readonly authenticate: (key: string) => Effect.Effect<Option.Option<ProjectKeyGrant>, StoreError>
  /** After the store revoked key `id`: dropped here, announced to every instance, and waited for (`settled`). */
  readonly revoked: (id: string) => Effect.Effect<void>
}

export class ProjectKeys extends Context.Tag("llm-proxy/ProjectKeys")<ProjectKeys, ProjectKeysShape>() {}

/** How often `last_used_at` is written at most. */
export const LAST_USED_EVERY_MS = 60_000
const MAX_ENTRIES = 10_000

export const make = Effect.gen(function*() {
  const store = yield* Store
  const validator = yield* TokenValidator
  const ttl = (yield* AppConfig).tokenCacheTtlMs
  const entries = new Map<string, { readonly grant: ProjectKeyGrant; readonly loadedAt: number }>()
  /** Per key id: when this instance last wrote its `last_used_at`. */
  const touched = new Map<string, number>()
  let generation = 0

  validator.onInvalidation((m) => {
    if (m.kind === "project_key") {
      generation++
      for (const [hash, e] of entries) if (e.grant.keyId === m.id) entries.delete(hash)
    } else if (m.kind === "all") {
      generation++
      entries.clear()
    }
  })

  const remember = <V>(map: Map<string, V>, key: string, value: V) => {
    map.delete(key)
    if (map.size >= MAX_ENTRIES) {
      const oldest = map.keys().next()
      if (!oldest.done) map.delete(oldest.value)
    }
    map.set(key, value)
  }

  const load = (hash: string, now: number) =>
    Effect.suspend(() => {
      const startedAt = generation
      return Effect.map(store.getProjectKeyByHash(hash), (row) => {
        const live = Option.filter(row, (k) => k.revokedAt === null)
        const grant = Option.map(live, (k): ProjectKeyGrant => ({ keyId: k.id, projectId: k.projectId }))
        if (Option.isSome(grant) && ttl > 0 && startedAt === generation) remember(entries, hash, { grant: grant.value, loadedAt: now })
        return grant
      })
    })

  const touch = (grant: ProjectKeyGrant, now: number) => {
    const last = touched.get(grant.keyId)
    if (last !== undefined && now - last < LAST_USED_EVERY_MS) return Effect.void
    remember(touched, grant.keyId, now)
    // A failed write is logged, never the request's failure: it is a statistic.
    return store.touchProjectKey(grant.keyId, new Date(now).toISOString(), new Date(now - LAST_USED_EVERY_MS).toISOString()).pipe(
      Effect.catchAll((e) => Effect.logWarning("project key last_used_at not written", e.detail))
    )
  }

  const service: ProjectKeysShape = {
    authenticate: (key) =>
      Effect.gen(function*() {
        if (!isProjectKeyFormat(key)) return Option.none()
        const now = yield* Clock.currentTimeMillis
        const hash = hashProjectKey(key)
        const cached = entries.get(hash)
        const grant = cached !== undefined && now - cached.loadedAt < ttl && validator.trusted()
          ? Option.some(cached.grant)
          : yield* load(hash, now)
        if (Option.isSome(grant)) yield* touch(grant.value, now)
        return grant
      }),
    revoked: (id) => Effect.zipRight(validator.invalidate({ kind: "project_key", id }), validator.settled)
  }
  return service
})

export const layer: Layer.Layer<ProjectKeys, never, Store | TokenValidator | AppConfig> = Layer.effect(ProjectKeys, make)
