/**
 * Management-token authentication (reference §2.2 messages, constant-time comparison). Every refusal is audited
 * as `management.auth` / `denied` with the client IP — never with what was presented.
 */
import { HttpServerRequest } from "@effect/platform"
import { Context, Effect, Layer, Redacted } from "effect"
import { ManagementAuth } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { AuditActions, AuditActors } from "../domain/audit.js"
import { Unauthorized } from "../domain/errors.js"
import { auditRequest } from "./auditing.js"

export class ManagementToken extends Context.Tag("llm-proxy/ManagementToken")<ManagementToken, Redacted.Redacted<string>>() {}

const PREFIX = "Bearer "

/** The check itself, shared by the HttpApi middleware and the fallback that answers 405s. */
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
  const failure = checkAuthorization(request.headers.authorization, expected)
  if (failure) {
    yield* auditRequest({
      action: AuditActions.managementAuth,
      actor: AuditActors.anonymous,
      outcome: "denied",
      reason: failure.error
    })
    return yield* failure
  }
})

export const ManagementAuthLive = Layer.effect(
  ManagementAuth,
  Effect.gen(function*() {
    const expected = yield* ManagementToken
    const audit = yield* AuditLog
    return ManagementAuth.of({
      // The platform's bearer decoder slices any header; we re-read it to tell "missing" from "wrong".
      bearer: () => authorize.pipe(Effect.provideService(ManagementToken, expected), Effect.provideService(AuditLog, audit))
    })
  })
)
