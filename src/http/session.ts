/**
 * Admin UI sessions (server-side). Logging in with the management token yields a random session id in an
 * `HttpOnly; SameSite=Strict` cookie (plus `Secure` behind HTTPS) scoped to /manage, and a CSRF token the page keeps
 * in memory and sends as `X-CSRF-Token` on every state-changing request. The management token itself never leaves
 * the login request: not in the cookie, not in browser storage.
 *
 * Sessions live in this process's memory (bounded); they end on logout, after `idleMs` without use, after
 * `absoluteMs` in any case, and when the server restarts. Behind a load balancer with several instances, route
 * /manage/session and the UI's API calls stickily, or log in per instance.
 */
import { Clock, Context, Effect, Layer, Option } from "effect"
import { randomBytes } from "node:crypto"

export const SESSION_COOKIE = "llm_proxy_session"
export const CSRF_HEADER = "x-csrf-token"

export interface AdminSession {
  readonly id: string
  readonly csrf: string
  readonly createdMs: number
  lastSeenMs: number
}

export interface AdminSessionsShape {
  readonly idleMs: number
  readonly create: Effect.Effect<AdminSession>
  /** The live session with this id, its idle timer restarted; None when unknown or expired. */
  readonly touch: (id: string) => Effect.Effect<Option.Option<AdminSession>>
  readonly destroy: (id: string) => Effect.Effect<void>
  /** When the session ends if it is not used again. */
  readonly expiresAt: (s: AdminSession) => number
}

export class AdminSessions extends Context.Tag("llm-proxy/AdminSessions")<AdminSessions, AdminSessionsShape>() {}

export interface SessionOptions {
  readonly idleMs: number
  readonly absoluteMs: number
  /** Oldest sessions are dropped beyond this many. */
  readonly max: number
}

export const defaultSessionOptions: SessionOptions = { idleMs: 30 * 60_000, absoluteMs: 12 * 3_600_000, max: 1000 }

const secret = () => randomBytes(32).toString("base64url")

export const makeAdminSessions = (options: SessionOptions = defaultSessionOptions): AdminSessionsShape => {
  // Insertion order = creation order, so the first key is the oldest.
  const sessions = new Map<string, AdminSession>()
  const expiresAt = (s: AdminSession) => Math.min(s.lastSeenMs + options.idleMs, s.createdMs + options.absoluteMs)
  return {
    idleMs: options.idleMs,
    expiresAt,
    create: Effect.map(Clock.currentTimeMillis, (now) => {
      for (const [id, s] of sessions) if (expiresAt(s) <= now) sessions.delete(id)
      while (sessions.size >= options.max) sessions.delete(sessions.keys().next().value as string)
      const session: AdminSession = { id: secret(), csrf: secret(), createdMs: now, lastSeenMs: now }
      sessions.set(session.id, session)
      return session
    }),
    touch: (id) =>
      Effect.map(Clock.currentTimeMillis, (now) => {
        const s = sessions.get(id)
        if (s === undefined) return Option.none()
        if (expiresAt(s) <= now) {
          sessions.delete(id)
          return Option.none()
        }
        s.lastSeenMs = now
        return Option.some(s)
      }),
    destroy: (id) => Effect.sync(() => void sessions.delete(id))
  }
}

export const AdminSessionsLive = (options?: SessionOptions) =>
  Layer.sync(AdminSessions, () => makeAdminSessions(options))
