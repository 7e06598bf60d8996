/**
 * `/manage/session`: admin UI login, current session, logout (design in session.ts). A wrong token at login counts
 * against the client IP's brute-force limit (authThrottle.ts; App.ts answers 429 once it is reached); logout of a live
 * session needs its CSRF token, like every other state-changing request. Only the management token signs in: a
 * project key — as the login's token or in `Authorization` on any of these — is 403 `forbidden`.
 */
import { HttpApiBuilder, HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Effect, Either, Option, Redacted } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { PROJECT_KEY_PREFIX } from "../crypto/ProjectKey.js"
import { AuditActions, AuditActors, projectKeyActor } from "../domain/audit.js"
import { Forbidden, Unauthorized } from "../domain/errors.js"
import { Login, type SessionInfo } from "../domain/models.js"
import { decodePayload } from "../domain/validation.js"
import { auditDenial, auditRequest } from "./auditing.js"
import { authenticateProjectKey, failedAttempt, forbidden, ManagementToken, presentedProjectKey } from "./auth.js"
import { readJson } from "./body.js"
import { type AdminSession, AdminSessions, type AdminSessionsShape, CSRF_HEADER, SESSION_COOKIE } from "./session.js"

const COOKIE_PATH = "/manage"

const decodeLogin = decodePayload(Login)

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

const NO_SIGN_IN = "a project key cannot sign in to the admin UI"

/** A live project key presented for the admin UI: 403 (audited under the key); a dead one is a failed attempt (401). */
const refuseProjectKey = (key: string, action: string) =>
  Effect.gen(function*() {
    const who = yield* authenticateProjectKey(key)
    yield* auditDenial({ action, actor: projectKeyActor(who.keyId), reason: NO_SIGN_IN })
    return yield* forbidden(NO_SIGN_IN)
  })

/** The session endpoints answer the admin UI only: `Authorization: Bearer lpk-…` on them is refused. */
const noProjectKeyHeader = (action: string) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const key = presentedProjectKey(request.headers.authorization)
    if (key !== undefined) return yield* refuseProjectKey(key, action)
  })

export const layer = HttpApiBuilder.group(ManagementApi, "session", (handlers) =>
  Effect.gen(function*() {
    const sessions = yield* AdminSessions
    const expected = yield* ManagementToken
    return handlers
      .handleRaw("login", ({ request }) =>
        Effect.gen(function*() {
          yield* noProjectKeyHeader(AuditActions.adminLogin)
          // Read by hand like the other JSON bodies, so a malformed body is a 400, never a 500. Any JSON is a login
          // attempt: one without a string `token` is a wrong token, and counts as one.
          const body = yield* readJson(request, 16 * 1024)
          const token = Either.getOrUndefined(decodeLogin(body))?.token
          if (token !== undefined && token.startsWith(PROJECT_KEY_PREFIX)) {
            yield* refuseProjectKey(token, AuditActions.adminLogin)
          }
          if (token === undefined || token === "" || !constantTimeEqual(token, Redacted.value(expected))) {
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
          yield* noProjectKeyHeader(AuditActions.managementAuth)
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
          yield* noProjectKeyHeader(AuditActions.adminLogout)
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
