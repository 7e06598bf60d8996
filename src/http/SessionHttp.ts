/**
 * `/manage/session`: admin UI login, current session, logout (design in session.ts). A wrong token at login counts
 * against the client IP's brute-force limit (authThrottle.ts; App.ts answers 429 once it is reached); logout of a live
 * session needs its CSRF token, like every other state-changing request.
 */
import { HttpApiBuilder, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Option, Redacted } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { Forbidden, Unauthorized } from "../domain/errors.js"
import type { SessionInfo } from "../domain/models.js"
import { AuditActions, AuditActors } from "../domain/audit.js"
import { auditDenial, auditRequest } from "./auditing.js"
import { failedAttempt, ManagementToken } from "./auth.js"
import { readJson } from "./body.js"
import { type AdminSession, AdminSessions, type AdminSessionsShape, CSRF_HEADER, SESSION_COOKIE } from "./session.js"

const COOKIE_PATH = "/manage"

const info = (sessions: AdminSessionsShape, s: AdminSession): SessionInfo => ({
  authenticated: true,
  csrf_token: s.csrf,
  expires_at: new Date(sessions.expiresAt(s)).toISOString()
})

/** Behind a TLS-terminating proxy the cookie must be Secure; on plain http a Secure cookie would never come back. */
const isHttps = (request: HttpServerRequest.HttpServerRequest) =>
  (request.headers["x-forwarded-proto"] ?? "").split(",")[0]?.trim().toLowerCase() === "https"

/** `admin.login` / `admin.logout` in the audit log (never with what was presented). */
const auditSession = (action: "admin.login" | "admin.logout") =>
  auditRequest({
    action: action === "admin.login" ? AuditActions.adminLogin : AuditActions.adminLogout,
    actor: AuditActors.admin,
    outcome: "success",
    details: { origin: "admin-ui" }
  })

export const SessionLive = HttpApiBuilder.group(ManagementApi, "session", (handlers) =>
  Effect.gen(function*() {
    const sessions = yield* AdminSessions
    const expected = yield* ManagementToken
    return handlers
      .handleRaw("login", ({ request }) =>
        Effect.gen(function*() {
          // Read by hand like the other JSON bodies, so a malformed body is a 400, never a 500.
          const body = yield* readJson(request, 16 * 1024)
          const token = (body as { token?: unknown } | null)?.token
          if (typeof token !== "string" || token === "" || !constantTimeEqual(token, Redacted.value(expected))) {
            yield* failedAttempt(AuditActions.adminLogin, "invalid management token")
            return yield* new Unauthorized({ error: "invalid management token" })
          }
          const session = yield* Effect.orDie(sessions.create)
          yield* auditSession("admin.login")
          return HttpServerResponse.unsafeJson(info(sessions, session)).pipe(
            HttpServerResponse.unsafeSetCookie(SESSION_COOKIE, session.id, {
              httpOnly: true,
              sameSite: "strict",
              secure: isHttps(request),
              path: COOKIE_PATH
            }),
            HttpServerResponse.setHeader("cache-control", "no-store")
          )
        }))
      .handle("current", () =>
        Effect.gen(function*() {
          const request = yield* HttpServerRequest.HttpServerRequest
          const id = request.cookies[SESSION_COOKIE]
          const session = id === undefined ? Option.none() : yield* Effect.orDie(sessions.touch(id))
          const body: SessionInfo = Option.match(session, {
            onNone: () => ({ authenticated: false }),
            onSome: (s) => info(sessions, s)
          })
          return HttpServerResponse.unsafeJson(body).pipe(HttpServerResponse.setHeader("cache-control", "no-store"))
        }))
      .handle("logout", () =>
        Effect.gen(function*() {
          const request = yield* HttpServerRequest.HttpServerRequest
          const id = request.cookies[SESSION_COOKIE]
          if (id !== undefined) {
            const live = yield* Effect.orDie(sessions.touch(id))
            // Another site must not be able to sign the user out: a live session ends only with its CSRF token.
            // (An unknown or expired one has nothing to protect; its cookie is cleared below.)
            if (Option.isSome(live)) {
              if (!constantTimeEqual(request.headers[CSRF_HEADER] ?? "", live.value.csrf)) {
                yield* auditDenial({ action: AuditActions.adminLogout, reason: "missing or invalid CSRF token" })
                return yield* new Forbidden({ error: "missing or invalid CSRF token", code: "csrf_failed" })
              }
              yield* Effect.orDie(sessions.destroy(id))
              yield* auditSession("admin.logout")
            }
          }
          return HttpServerResponse.empty({ status: 204 }).pipe(
            HttpServerResponse.expireCookie(SESSION_COOKIE, { path: COOKIE_PATH, httpOnly: true, sameSite: "strict" })
          )
        }))
  }))
