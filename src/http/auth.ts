/**
 * Management authentication: `Authorization: Bearer <MANAGEMENT_TOKEN>` (reference §2.2 messages, constant-time
 * comparison), or — for the admin UI — a session cookie, with the session's CSRF token required on every
 * state-changing method. Every refusal is audited as `management.auth` / `denied` with the client IP — never with
 * what was presented — aggregated per client IP, reason and minute (src/audit/AuditLog.ts `recordDenial`).
 *
 * A wrong `Authorization` header counts against the client IP's brute-force limit (authThrottle.ts); an address over
 * the limit is answered 429 by `throttled` before any comparison (App.ts calls it first for every request that could
 * reach one).
 */
import { HttpServerRequest } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { ManagementAuth } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { AuditActions } from "../domain/audit.js"
import { Forbidden, Unauthorized } from "../domain/errors.js"
import { auditDenial, currentClientIp } from "./auditing.js"
import { AuthThrottle } from "./authThrottle.js"
import { jsonError } from "./fallback.js"
import { AdminSessions, CSRF_HEADER, SESSION_COOKIE } from "./session.js"

export class ManagementToken extends Context.Tag("llm-proxy/ManagementToken")<ManagementToken, Redacted.Redacted<string>>() {}

const PREFIX = "Bearer "
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"])

export const TOO_MANY_ATTEMPTS = "too many failed authentication attempts"

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

/** One failed guess of the current request's client: audited (aggregated) and counted against its limit. */
export const failedAttempt = (action: string, reason: string) =>
  Effect.gen(function*() {
    const throttle = yield* AuthThrottle
    yield* throttle.failed(yield* currentClientIp)
    yield* auditDenial({ action, reason })
  })

/**
 * The 429 for a client over the brute-force limit, or undefined when it may try. Audited once per client IP and
 * minute however many attempts it makes.
 */
export const throttled = (action: string) =>
  Effect.gen(function*() {
    const throttle = yield* AuthThrottle
    const wait = yield* throttle.retryAfter(yield* currentClientIp)
    if (wait === 0) return undefined
    yield* auditDenial({ action, reason: TOO_MANY_ATTEMPTS })
    return jsonError(429, TOO_MANY_ATTEMPTS, { code: "too_many_attempts" }, { "retry-after": String(wait) })
  })

export const authorize = Effect.gen(function*() {
  const expected = yield* ManagementToken
  const request = yield* HttpServerRequest.HttpServerRequest
  const header = request.headers.authorization
  const sessionId = request.cookies[SESSION_COOKIE]
  const deny = <E extends Unauthorized | Forbidden>(failure: E) =>
    Effect.zipRight(auditDenial({ action: AuditActions.managementAuth, reason: failure.error }), Effect.fail(failure))
  // An explicit Authorization header always decides; the cookie is only the admin UI's way in.
  if (header === undefined && sessionId !== undefined) {
    const sessions = yield* AdminSessions
    // A database failure is a 500, not a signed-out user.
    const session = yield* Effect.orDie(sessions.touch(sessionId))
    if (Option.isNone(session)) {
      return yield* deny(new Unauthorized({ error: "session expired or invalid", code: "session_expired" }))
    }
    if (SAFE_METHODS.has(request.method)) return
    if (constantTimeEqual(request.headers[CSRF_HEADER] ?? "", session.value.csrf)) return
    return yield* deny(new Forbidden({ error: "missing or invalid CSRF token", code: "csrf_failed" }))
  }
  const failure = checkAuthorization(header, expected)
  if (failure === undefined) return
  // A missing header is no guess; anything presented that is wrong counts towards the limit.
  if (header !== undefined) yield* Effect.flatMap(AuthThrottle, (t) => Effect.flatMap(currentClientIp, t.failed))
  return yield* deny(failure)
})

export const ManagementAuthLive = Layer.effect(
  ManagementAuth,
  Effect.map(Effect.context<ManagementToken | AdminSessions | AuditLog | AuthThrottle>(), (context) =>
    ManagementAuth.of({
      // The platform's bearer decoder slices any header; we re-read it to tell "missing" from "wrong".
      bearer: () => Effect.provide(authorize, context)
    }))
)
