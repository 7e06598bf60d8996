/**
 * Management authentication: `Authorization: Bearer <MANAGEMENT_TOKEN>` (constant-time comparison, the messages of
 * docs/management-api.md), or — for the admin UI — a session cookie, with the session's CSRF token required on every
 * state-changing method, or a project key (`Bearer lpk-…`, src/token/ProjectKeys.ts). Every refusal is audited as
 * `management.auth` / `denied` with the client IP — never with what was presented — aggregated per client IP, reason
 * and minute (src/audit/AuditLog.ts `recordDenial`).
 *
 * The middleware provides who is calling (`CurrentCaller`). A project key passes only on the endpoints the API
 * definition annotates with `ProjectKeyAccess` (the handlers then keep it to its own project); anywhere else it is
 * 403 `forbidden` before the handler runs.
 *
 * A wrong `Authorization` header — management token or project key — counts against the client IP's brute-force limit
 * (authThrottle.ts); an address over the limit is answered 429 by `throttled` before any comparison (App.ts calls it
 * first for every request that could reach one).
 */
import { HttpRouter, HttpServerRequest } from "@effect/platform"
import { Context, Effect, Layer, Option, Redacted } from "effect"
import { type Caller, ManagementApi, ManagementAuth, projectKeyScopes, routeKey } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { constantTimeEqual, constantTimeMatcher } from "../crypto/constantTime.js"
import { PROJECT_KEY_PREFIX } from "../crypto/ProjectKey.js"
import { AuditActions, projectKeyActor } from "../domain/audit.js"
import { Forbidden, Unauthorized } from "../domain/errors.js"
import { ProjectKeys } from "../token/ProjectKeys.js"
import { auditDenial, currentClientIp } from "./auditing.js"
import { AuthThrottle } from "./authThrottle.js"
import { jsonError } from "./fallback.js"
import { AdminSessions, CSRF_HEADER, SESSION_COOKIE } from "./session.js"

export class ManagementToken
  extends Context.Tag("llm-proxy/ManagementToken")<ManagementToken, Redacted.Redacted<string>>()
{}

const PREFIX = "Bearer "
const SAFE_METHODS = new Set(["GET", "HEAD", "OPTIONS"])

export const TOO_MANY_ATTEMPTS = "too many failed authentication attempts"
export const INVALID_PROJECT_KEY = "invalid or revoked project key"
export const PROJECT_KEY_FORBIDDEN = "a project key may only manage the tokens of its own project"

/** The 403 of whatever a project key may not do. */
export const forbidden = (error: string = PROJECT_KEY_FORBIDDEN) => new Forbidden({ error, code: "forbidden" })

const MANAGEMENT: Caller = { _tag: "management" }

/** The project key in `Authorization: Bearer lpk-…`, or undefined when the header carries anything else. */
export const presentedProjectKey = (header: string | undefined): string | undefined => {
  if (header === undefined || !header.startsWith(PREFIX)) return undefined
  const credential = header.slice(PREFIX.length).trim()
  return credential.startsWith(PROJECT_KEY_PREFIX) ? credential : undefined
}

const matchers = new WeakMap<Redacted.Redacted<string>, (presented: string) => boolean>()

const matcherOf = (expected: Redacted.Redacted<string>) => {
  let match = matchers.get(expected)
  if (match === undefined) {
    match = constantTimeMatcher(Redacted.value(expected))
    matchers.set(expected, match)
  }
  return match
}

/** The bearer check itself, shared by the HttpApi middleware and the fallback that answers 405s. */
export const checkAuthorization = (
  header: string | undefined,
  expected: Redacted.Redacted<string>
): Unauthorized | undefined => {
  if (header === undefined || !header.startsWith(PREFIX) || header.slice(PREFIX.length).trim() === "") {
    return new Unauthorized({ error: "missing or invalid Authorization header" })
  }
  return matcherOf(expected)(header.slice(PREFIX.length))
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
  Effect.map(
    throttleWait(action),
    (wait) =>
      wait === 0
        ? undefined
        : jsonError(429, TOO_MANY_ATTEMPTS, { code: "too_many_attempts" }, { "retry-after": String(wait) })
  )

/** Seconds the current request's client must wait before it may try (audited when more than 0); 0: it may now. */
export const throttleWait = (action: string) =>
  Effect.gen(function*() {
    const throttle = yield* AuthThrottle
    const wait = yield* throttle.retryAfter(yield* currentClientIp)
    if (wait > 0) yield* auditDenial({ action, reason: TOO_MANY_ATTEMPTS })
    return wait
  })

const deny = <E extends Unauthorized | Forbidden>(failure: E) =>
  Effect.zipRight(auditDenial({ action: AuditActions.managementAuth, reason: failure.error }), Effect.fail(failure))

/** A wrong credential presented: counted towards the client IP's brute-force limit. */
const countFailure = Effect.flatMap(AuthThrottle, (t) => Effect.flatMap(currentClientIp, t.failed))

/**
 * The live project key `key` is, or a refusal counted like a wrong management token (401, and towards the brute-force
 * limit). A database failure is a 500, not a refusal.
 */
export const authenticateProjectKey = (key: string) =>
  Effect.gen(function*() {
    const keys = yield* ProjectKeys
    const grant = yield* Effect.orDie(keys.authenticate(key))
    if (Option.isSome(grant)) {
      return { _tag: "project_key", keyId: grant.value.keyId, projectId: grant.value.projectId } satisfies Caller
    }
    yield* countFailure
    return yield* deny(new Unauthorized({ error: INVALID_PROJECT_KEY, code: "invalid_project_key" }))
  })

/** What authentication reads of a request. */
export interface Credentials {
  readonly authorization: string | undefined
  /** The admin UI's session cookie. */
  readonly sessionId: string | undefined
  readonly method: string
  /** The CSRF header that goes with a session on a state-changing method. */
  readonly csrf: string | undefined
}

/** Who presents these credentials: the management token (or a live admin session), or a project key. */
export const authenticateWith = (presented: Credentials) =>
  Effect.gen(function*() {
    const expected = yield* ManagementToken
    const header = presented.authorization
    const sessionId = presented.sessionId
    // An explicit Authorization header always decides; the cookie is only the admin UI's way in.
    if (header === undefined && sessionId !== undefined) {
      const sessions = yield* AdminSessions
      // A database failure is a 500, not a signed-out user.
      const session = yield* Effect.orDie(sessions.touch(sessionId))
      if (Option.isNone(session)) {
        return yield* deny(new Unauthorized({ error: "session expired or invalid", code: "session_expired" }))
      }
      if (SAFE_METHODS.has(presented.method)) return MANAGEMENT
      if (constantTimeEqual(presented.csrf ?? "", session.value.csrf)) return MANAGEMENT
      return yield* deny(new Forbidden({ error: "missing or invalid CSRF token", code: "csrf_failed" }))
    }
    const projectKey = presentedProjectKey(header)
    if (projectKey !== undefined) return yield* authenticateProjectKey(projectKey)
    const failure = checkAuthorization(header, expected)
    if (failure === undefined) return MANAGEMENT
    // A missing header is no guess; anything presented that is wrong counts towards the limit.
    if (header !== undefined) yield* countFailure
    return yield* deny(failure)
  })

/** Who presents the current request (`authenticateWith` its headers and cookie). */
export const authenticate = Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) =>
  authenticateWith({
    authorization: request.headers.authorization,
    sessionId: request.cookies[SESSION_COOKIE],
    method: request.method,
    csrf: request.headers[CSRF_HEADER]
  }))

/** What a project key may do where: read from the API definition (`ProjectKeyAccess`), once. */
const scopes = projectKeyScopes(ManagementApi)

/** A project key on an endpoint it may not call: 403, counted into the aggregated `management.auth` denials. */
const refuseOutOfScope = (caller: Extract<Caller, { _tag: "project_key" }>) =>
  Effect.zipRight(
    auditDenial({
      action: AuditActions.managementAuth,
      actor: projectKeyActor(caller.keyId),
      reason: PROJECT_KEY_FORBIDDEN
    }),
    Effect.fail(forbidden())
  )

/** Admits a project key where the API definition lets one in (`route`: `routeKey` of an endpoint), else 403. */
const admit = (caller: Caller, route: string | undefined): Effect.Effect<Caller, Forbidden, AuditLog> => {
  if (caller._tag === "management") return Effect.succeed(caller)
  const scope = route === undefined ? undefined : scopes.get(route)
  return scope !== undefined && Option.isSome(scope) ? Effect.succeed(caller) : refuseOutOfScope(caller)
}

/** The middleware: who is calling, and — for a project key — whether this endpoint admits one at all. */
export const authorize = Effect.gen(function*() {
  const caller = yield* authenticate
  if (caller._tag === "management") return caller
  const route = yield* Effect.serviceOption(HttpRouter.RouteContext)
  return yield* admit(caller, Option.getOrUndefined(Option.map(route, (r) => routeKey(r.route.method, r.route.path))))
})

/** `authorize` outside the router: the credentials presented for the endpoint `route` (`routeKey`). */
export const authorizeWith = (presented: Credentials, route: string) =>
  Effect.flatMap(authenticateWith(presented), (caller) => admit(caller, route))

export const layer = Layer.effect(
  ManagementAuth,
  Effect.map(
    Effect.context<ManagementToken | AdminSessions | AuditLog | AuthThrottle | ProjectKeys>(),
    (context) =>
      ManagementAuth.of({
        // The platform's bearer decoder slices any header; we re-read it to tell "missing" from "wrong".
        bearer: () => Effect.provide(authorize, context)
      })
  )
)
