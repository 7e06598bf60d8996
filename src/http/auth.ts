/**
 * Management authentication: `Authorization: Bearer <MANAGEMENT_TOKEN>` (reference §2.2 messages, constant-time
 * comparison), or — for the admin UI — a session cookie, with the session's CSRF token required on every
 * state-changing method. Every refusal is audited as `management.auth` / `denied` with the client IP — never with
 * what was presented.
 */
import { HttpServerRequest } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { ManagementAuth } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { AuditActions, AuditActors } from "../domain/audit.js"
import { Forbidden, Unauthorized } from "../domain/errors.js"
import { auditRequest } from "./auditing.js"
import { AdminSessions, CSRF_HEADER, SESSION_COOKIE } from "./session.js"

export class ManagementToken extends Context.Tag("llm-proxy/ManagementToken")<ManagementToken, Redacted.Redacted<string>>() {}

const PREFIX = "Bearer "
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"])

/** The bearer check itself, shared by the HttpApi middleware and the fallback that answers 405s. */
export const checkAuthorization = (
  header: string | undefined,
  expected: Redacted.Redacted<string>
): Unauthorized | undefined => {
  if (header === undefined || !header.startsWith(PREFIX) || header.slice(PREFIX.length).trim() === "") {
    return new Unauthorized({ error: "missing or invalid Authorization header" })
  }
  return constantTimeEqual(header.slice(PREFIX.length), Redacted.value(expected))
    ? undefined
    : new Unauthorized({ error: "invalid management token" })
}

export const authorize = Effect.gen(function*() {
  const expected = yield* ManagementToken
  const request = yield* HttpServerRequest.HttpServerRequest
  const header = request.headers.authorization
  const sessionId = request.cookies[SESSION_COOKIE]
  const deny = <E extends Unauthorized | Forbidden>(failure: E) =>
    Effect.zipRight(
      auditRequest({ action: AuditActions.managementAuth, actor: AuditActors.anonymous, outcome: "denied", reason: failure.error }),
      Effect.fail(failure)
    )
  // An explicit Authorization header always decides; the cookie is only the admin UI's way in.
  if (header === undefined && sessionId !== undefined) {
    const sessions = yield* AdminSessions
    const session = yield* sessions.touch(sessionId)
    if (Option.isNone(session)) {
      return yield* deny(new Unauthorized({ error: "session expired or invalid", code: "session_expired" }))
    }
    if (SAFE_METHODS.has(request.method)) return
    if (constantTimeEqual(request.headers[CSRF_HEADER] ?? "", session.value.csrf)) return
    return yield* deny(new Forbidden({ error: "missing or invalid CSRF token", code: "csrf_failed" }))
  }
  const failure = checkAuthorization(header, expected)
  if (failure) return yield* deny(failure)
})

export const ManagementAuthLive = Layer.effect(
  ManagementAuth,
  Effect.map(Effect.context<ManagementToken | AdminSessions | AuditLog>(), (context) =>
    ManagementAuth.of({
      // The platform's bearer decoder slices any header; we re-read it to tell "missing" from "wrong".
      bearer: () => Effect.provide(authorize, context)
    }))
)
