/**
 * ProjectKeys: which project key (`lpk-…`) a management request presents.
 *
 * - A key is read from the store by its SHA-256 on every request that presents one — one indexed lookup, on the
 *   management plane only. Nothing is cached, so a revocation is refused from the next request on, on every instance
 *   of the database, whatever INVALIDATION_BACKEND says (several instances may share one SQLite file without any
 *   invalidation channel).
 * - `last_used_at` is written at most once a minute per key and instance (and the statement itself skips a row
 *   written less than a minute ago), never once per request.
 */
import { Clock, Context, Effect, Layer, Option } from "effect"
import { hashProjectKey, isProjectKeyFormat } from "../crypto/ProjectKey.js"
import { Store, type StoreError } from "../store/Store.js"

/** What a live project key may act for. */
export interface ProjectKeyGrant {
  readonly keyId: string
  readonly projectId: string
}

export interface ProjectKeysShape {
  /** The live key `key` is, or None (unknown, revoked, not even of the format). */
  readonly authenticate: (key: string) => Effect.Effect<Option.Option<ProjectKeyGrant>, StoreError>
}

export class ProjectKeys extends Context.Tag("llm-proxy/ProjectKeys")<ProjectKeys, ProjectKeysShape>() {}

/** How often `last_used_at` is written at most. */
export const LAST_USED_EVERY_MS = 60_000
const MAX_TOUCHED = 10_000

export const make = Effect.gen(function*() {
  const store = yield* Store
  /** Per key id: when this instance last wrote its `last_used_at`. */
  const touched = new Map<string, number>()

  const touch = (grant: ProjectKeyGrant, now: number) => {
    const last = touched.get(grant.keyId)
    if (last !== undefined && now - last < LAST_USED_EVERY_MS) return Effect.void
    touched.delete(grant.keyId)
    if (touched.size >= MAX_TOUCHED) {
      const oldest = touched.keys().next()
      if (!oldest.done) touched.delete(oldest.value)
    }
    touched.set(grant.keyId, now)
    // A failed write is logged, never the request's failure: it is a statistic.
    return store.touchProjectKey(
      grant.keyId,
      new Date(now).toISOString(),
      new Date(now - LAST_USED_EVERY_MS).toISOString()
    ).pipe(
      Effect.catchAll((e) => Effect.logWarning("project key last_used_at not written", e.detail))
    )
  }

  const service: ProjectKeysShape = {
    authenticate: Effect.fn("ProjectKeys.authenticate")(function*(key: string) {
      if (!isProjectKeyFormat(key)) return Option.none<ProjectKeyGrant>()
      const row = yield* store.getProjectKeyByHash(hashProjectKey(key))
      const grant = Option.map(
        Option.filter(row, (k) => k.revokedAt === null),
        (k): ProjectKeyGrant => ({ keyId: k.id, projectId: k.projectId })
      )
      if (Option.isSome(grant)) yield* touch(grant.value, yield* Clock.currentTimeMillis)
      return grant
    })
  }
  return service
})

export const layer: Layer.Layer<ProjectKeys, never, Store> = Layer.effect(ProjectKeys, make)
