/**
 * Admin UI sessions (server-side). Logging in with the management token yields a random session id (256 bits) in an
 * `HttpOnly; SameSite=Strict` cookie (plus `Secure` behind HTTPS) scoped to /manage, and a CSRF token the page keeps
 * in memory and sends as `X-CSRF-Token` on every state-changing request, logout included. The management token itself
 * never leaves the login request: not in the cookie, not in browser storage.
 *
 * Sessions are rows of the database (`admin_sessions`, src/store/sessions.ts), so every instance behind a load
 * balancer knows them and a restart signs nobody out. What is stored cannot be used to sign in: the row is keyed by the
 * SHA-256 of the session id, and the CSRF token is not stored at all — it is an HMAC of the session id, so only a
 * holder of the cookie can compute it.
 *
 * A session ends on logout, after `idleMs` without use, after `absoluteMs` in any case. Use is recorded at most once
 * per `refreshMs` (a minute), so a busy UI costs one indexed read per request and one write a minute; the idle
 * deadline is therefore exact to that minute. Expired rows are deleted every `pruneIntervalMs` and by each login.
 */
import { Clock, Context, Duration, Effect, Layer, Option, Schedule } from "effect"
import { createHash, createHmac, randomBytes } from "node:crypto"
import { AdminSessionStore } from "../store/sessions.js"
import type { StoreError } from "../store/Store.js"

export const SESSION_COOKIE = "llm_proxy_session"
export const CSRF_HEADER = "x-csrf-token"

export interface AdminSession {
  /** The cookie value: known only from the login answer or the request that carries it. */
  readonly id: string
  readonly csrf: string
  readonly createdMs: number
  /** Last recorded use (refreshed at most once per `refreshMs`). */
  readonly lastSeenMs: number
}

export interface AdminSessionsShape {
  readonly idleMs: number
  readonly create: Effect.Effect<AdminSession, StoreError>
  /** The live session with this id, its use recorded; None when unknown or expired. */
  readonly touch: (id: string) => Effect.Effect<Option.Option<AdminSession>, StoreError>
  readonly destroy: (id: string) => Effect.Effect<void, StoreError>
  /** When the session ends if it is not used again. */
  readonly expiresAt: (s: AdminSession) => number
}

export class AdminSessions extends Context.Tag("llm-proxy/AdminSessions")<AdminSessions, AdminSessionsShape>() {}

export interface SessionOptions {
  readonly idleMs: number
  readonly absoluteMs: number
  /** Use is written to the database at most this often per session. */
  readonly refreshMs: number
  /** The oldest sessions are deleted beyond this many. */
  readonly max: number
  readonly pruneIntervalMs: number
}

export const defaultSessionOptions: SessionOptions = {
  idleMs: 30 * 60_000,
  absoluteMs: 12 * 3_600_000,
  refreshMs: 60_000,
  max: 1000,
  pruneIntervalMs: 10 * 60_000
}

/** 32 random bytes, base64url: the only form a session id takes. */
const ID_FORMAT = /^[A-Za-z0-9_-]{43}$/

export const hashSessionId = (id: string): string => createHash("sha256").update(id).digest("hex")

export const csrfTokenOf = (id: string): string =>
  createHmac("sha256", id).update("llm-proxy admin CSRF token").digest("base64url")

export const makeAdminSessions = (options: SessionOptions = defaultSessionOptions) =>
  Effect.gen(function*() {
    const store = yield* AdminSessionStore
    const expiresAt = (s: { readonly createdMs: number; readonly lastSeenMs: number }) =>
      Math.min(s.lastSeenMs + options.idleMs, s.createdMs + options.absoluteMs)
    const prune = (now: number) => store.deleteExpired(now - options.idleMs, now - options.absoluteMs)
    const sessions: AdminSessionsShape = {
      idleMs: options.idleMs,
      expiresAt,
      create: Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        yield* prune(now)
        const id = randomBytes(32).toString("base64url")
        yield* store.insert({ idHash: hashSessionId(id), createdMs: now, lastSeenMs: now })
        yield* store.keepNewest(options.max)
        return { id, csrf: csrfTokenOf(id), createdMs: now, lastSeenMs: now }
      }),
      touch: (id) =>
        Effect.gen(function*() {
          if (!ID_FORMAT.test(id)) return Option.none()
          const idHash = hashSessionId(id)
          const row = yield* store.get(idHash)
          if (Option.isNone(row)) return Option.none()
          const now = yield* Clock.currentTimeMillis
          if (expiresAt(row.value) <= now) {
            yield* store.delete(idHash)
            return Option.none()
          }
          let lastSeenMs = row.value.lastSeenMs
          if (now - lastSeenMs >= options.refreshMs) {
            yield* store.touch(idHash, now)
            lastSeenMs = now
          }
          return Option.some({ id, csrf: csrfTokenOf(id), createdMs: row.value.createdMs, lastSeenMs })
        }),
      destroy: (id) => (ID_FORMAT.test(id) ? store.delete(hashSessionId(id)) : Effect.void)
    }
    // Expired rows go away even when nobody logs in: at start, then every pruneIntervalMs.
    yield* Clock.currentTimeMillis.pipe(
      Effect.flatMap(prune),
      Effect.catchAll((e) => Effect.logWarning("could not delete expired admin sessions; retrying later", e.message)),
      Effect.repeat(Schedule.fixed(Duration.millis(options.pruneIntervalMs))),
      Effect.forkScoped
    )
    return sessions
  })

/** Needs the admin session table (src/store/sessions.ts) on the SqlClient in context. */
export const layer = (options?: Partial<SessionOptions>) =>
  Layer.scoped(AdminSessions, makeAdminSessions({ ...defaultSessionOptions, ...options }))
