/**
 * Auditing for HTTP handlers. The app (App.ts) works out once per request who is asking (client IP through
 * TRUSTED_PROXIES, user agent) and its request and correlation ids, and keeps them in a FiberRef; handlers then
 * record events with `audited` (one event per call, success or failure) or `auditRequest` (one explicit event).
 *
 * For other engineers: the admin UI records `admin.login` / `admin.logout` with
 * `auditRequest({ action: AuditActions.adminLogin, actor: AuditActors.admin, outcome: "success" })`, and the cache
 * purge handler wraps its work in `audited(AuditActions.cachePurge, (note) => ...)`, putting `purge_type`, `prefix`
 * or `method`/`url`, and `deleted` into `note.details`.
 */
import { HttpServerRequest } from "@effect/platform"
import { Cause, Context, Effect, Exit, FiberRef, Option, Predicate } from "effect"
import { type Caller, CurrentCaller } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { clientIpOf, type TrustedProxies } from "../audit/clientIp.js"
import { uuidv7 } from "../crypto/uuidv7.js"
import { AuditActors, type AuditEntry, type Outcome, projectKeyActor } from "../domain/audit.js"

export interface RequestMeta {
  readonly requestId: string
  readonly correlationId: string
  readonly clientIp: string | undefined
  readonly userAgent: string | undefined
  readonly method: string
  readonly path: string
  /** `X-Admin-Origin: 1`: the request came from the admin UI. */
  readonly fromAdminUi: boolean
}

export const currentRequestMeta = FiberRef.unsafeMake<RequestMeta | undefined>(undefined)

const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** A client's X-Request-ID / X-Correlation-ID is kept when it is short and safe, else replaced. */
export const requestIdOf = (header: string | undefined): string =>
  header !== undefined && SAFE_ID.test(header) ? header : uuidv7()

/** What a request's audit fields are read from: node:http's request, or the platform's wrapper of it. */
export interface RequestHead {
  readonly headers: Readonly<Record<string, string | ReadonlyArray<string> | undefined>>
  readonly method: string
  readonly url: string
}

const header = (head: RequestHead, name: string): string | undefined => {
  const v = head.headers[name]
  return typeof v === "string" ? v : undefined
}

export const requestMetaFrom = (head: RequestHead, peer: string | undefined, trusted: TrustedProxies): RequestMeta => {
  const requestId = requestIdOf(header(head, "x-request-id"))
  const correlation = header(head, "x-correlation-id")
  const clientIp = clientIpOf(peer, header(head, "x-forwarded-for"), trusted)
  const viaTrustedProxy = peer !== undefined && !trusted.isEmpty && trusted.contains(peer)
  const forwardedAgent = viaTrustedProxy ? header(head, "x-forwarded-user-agent") : undefined
  return {
    requestId,
    correlationId: correlation !== undefined && SAFE_ID.test(correlation) ? correlation : requestId,
    clientIp,
    userAgent: forwardedAgent ?? header(head, "user-agent"),
    method: head.method,
    path: head.url.split("?")[0] ?? "/",
    fromAdminUi: header(head, "x-admin-origin") === "1"
  }
}

export const requestMetaOf = (request: HttpServerRequest.HttpServerRequest, trusted: TrustedProxies): RequestMeta =>
  requestMetaFrom(request, Option.getOrUndefined(request.remoteAddress), trusted)

const fieldsOf = (m: RequestMeta | undefined): Partial<AuditEntry> =>
  m === undefined ? {} : {
    requestId: m.requestId,
    correlationId: m.correlationId,
    clientIp: m.clientIp,
    userAgent: m.userAgent,
    method: m.method,
    path: m.path
  }

/** The request's fields of an audit event. */
export const requestFields = Effect.map(FiberRef.get(currentRequestMeta), fieldsOf)

export interface RequestAuditEvent {
  readonly action: string
  readonly outcome: Outcome
  readonly actor?: string
  readonly reason?: string
  readonly projectId?: string
  readonly tokenId?: string
  readonly details?: Record<string, unknown>
}

const actorOf = (caller: Option.Option<Caller>): string =>
  Option.isSome(caller) && caller.value._tag === "project_key"
    ? projectKeyActor(caller.value.keyId)
    : AuditActors.managementApi

/** Who acted, as the audit log names them: the caller the management auth identified (`management_api` without one). */
export const currentActor = Effect.map(Effect.serviceOption(CurrentCaller), actorOf)

/**
 * Records one event about the current request (request ids, client IP and user agent filled in). Read from the fiber
 * in one step: it runs once per management request, in `audited`'s exit handler, where each step costs more.
 */
export const auditRequest = (event: RequestAuditEvent) =>
  Effect.flatMap(AuditLog, (audit) =>
    Effect.withFiberRuntime<void>((fiber) => {
      const meta = fiber.getFiberRef(currentRequestMeta)
      const details = meta?.fromAdminUi ? { ...event.details, origin: "admin-ui" } : event.details
      return audit.record({
        ...fieldsOf(meta),
        actor: event.actor ?? actorOf(Context.getOption(fiber.currentContext, CurrentCaller)),
        action: event.action,
        outcome: event.outcome,
        ...(event.reason !== undefined ? { reason: event.reason } : {}),
        ...(event.projectId !== undefined ? { projectId: event.projectId } : {}),
        ...(event.tokenId !== undefined ? { tokenId: event.tokenId } : {}),
        ...(details !== undefined ? { details } : {})
      })
    }))

/**
 * Counts a refused authentication of the current request into its aggregated audit event (one per client IP, reason
 * and minute, with a count: src/audit/AuditLog.ts `recordDenial`), so a stranger cannot grow the log at will.
 */
export const auditDenial = (event: Omit<RequestAuditEvent, "outcome">) =>
  Effect.gen(function*() {
    const audit = yield* AuditLog
    const fields = yield* requestFields
    const meta = yield* FiberRef.get(currentRequestMeta)
    const details = meta?.fromAdminUi ? { ...event.details, origin: "admin-ui" } : event.details
    audit.recordDenial({
      ...fields,
      actor: event.actor ?? AuditActors.anonymous,
      action: event.action,
      outcome: "denied",
      ...(event.reason !== undefined ? { reason: event.reason } : {}),
      ...(details !== undefined ? { details } : {})
    })
  })

/** The current request's client IP, as the audit log records it ("unknown" when there is no peer address). */
export const currentClientIp = Effect.map(FiberRef.get(currentRequestMeta), (m) => m?.clientIp ?? "unknown")

/** What a handler learns while it runs and wants in its event. */
export interface AuditNote {
  projectId?: string
  tokenId?: string
  readonly details: Record<string, unknown>
}

const outcomeOf = (error: unknown): { outcome: Outcome; reason: string; validation: boolean } => {
  if (
    !Predicate.hasProperty(error, "_tag") || !Predicate.hasProperty(error, "error") || typeof error.error !== "string"
  ) {
    return { outcome: "error", reason: "internal error", validation: false }
  }
  switch (error._tag) {
    case "BadRequest":
      return { outcome: "failure", reason: error.error, validation: true }
    case "NotFound":
    case "Conflict":
    case "PayloadTooLarge":
      return { outcome: "failure", reason: error.error, validation: false }
    case "Forbidden":
    case "Unauthorized":
      return { outcome: "denied", reason: error.error, validation: false }
  }
  return { outcome: "error", reason: error.error, validation: false }
}

/**
 * Runs `body` and records exactly one `action` event for it: `success`, or `failure` / `denied` / `error` with the
 * client-facing error message as `reason` (400s also as `details.validation_error`, docs/behaviour.md #111).
 */
export const audited = <A, E, R>(action: string, body: (note: AuditNote) => Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    const note: AuditNote = { details: {} }
    return body(note).pipe(
      Effect.onExit((exit) => {
        const base = {
          action,
          ...(note.projectId !== undefined ? { projectId: note.projectId } : {}),
          ...(note.tokenId !== undefined ? { tokenId: note.tokenId } : {})
        }
        if (Exit.isSuccess(exit)) return auditRequest({ ...base, outcome: "success", details: note.details })
        const { outcome, reason, validation } = Cause.isInterruptedOnly(exit.cause)
          ? { outcome: "error" as const, reason: "request aborted", validation: false }
          : outcomeOf(Option.getOrUndefined(Cause.failureOption(exit.cause)))
        return auditRequest({
          ...base,
          outcome,
          reason,
          details: validation ? { ...note.details, validation_error: reason } : note.details
        })
      })
    )
  })
