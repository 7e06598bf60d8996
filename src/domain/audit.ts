/**
 * The audit log's model: what a recorded event holds (AuditRecord), what callers hand in (AuditEntry), and the
 * wire shapes of `GET /manage/audit` (the Go llm-proxy's field names, so existing clients keep working: docs/audit.md).
 */
import { Either, Schema } from "effect"
import { CursorPagination, Pagination, Timestamp } from "./models.js"
import { parseTimestamp } from "./validation.js"

export const OUTCOMES = ["success", "failure", "denied", "error"] as const
export type Outcome = (typeof OUTCOMES)[number]

/** Every action this build emits (docs/audit.md says when). */
export const AuditActions = {
  projectList: "project.list",
  projectCreate: "project.create",
  projectRead: "project.read",
  projectUpdate: "project.update",
  projectDelete: "project.delete",
  projectKeyCreate: "project_key.create",
  projectKeyList: "project_key.list",
  projectKeyRevoke: "project_key.revoke",
  tokenCreate: "token.create",
  tokenList: "token.list",
  tokenRead: "token.read",
  tokenUpdate: "token.update",
  tokenRevoke: "token.revoke",
  tokenRevokeBatch: "token.revoke_batch",
  tokenValidate: "token.validate",
  auditList: "audit.list",
  auditShow: "audit.show",
  cachePurge: "cache.purge",
  managementAuth: "management.auth",
  adminLogin: "admin.login",
  adminLogout: "admin.logout",
  proxyRequest: "proxy_request"
} as const

export const AuditActors = {
  managementApi: "management_api",
  admin: "admin",
  anonymous: "anonymous",
  proxy: "proxy",
  system: "system"
} as const

/** The actor of what a project key did: `project_key:<its id>`. */
export const projectKeyActor = (keyId: string) => `project_key:${keyId}`

/** What a caller records. `id` and `timestamp` are assigned by the AuditLog. Never put a secret in here. */
export interface AuditEntry {
  readonly action: string
  readonly actor: string
  readonly outcome: Outcome
  readonly projectId?: string | undefined
  /** The token's real `id` (joinable with tokens.id), never the secret. */
  readonly tokenId?: string | undefined
  readonly requestId?: string | undefined
  readonly correlationId?: string | undefined
  readonly clientIp?: string | undefined
  readonly method?: string | undefined
  readonly path?: string | undefined
  readonly userAgent?: string | undefined
  /** Why it failed or was denied (a fixed, client-safe message). */
  readonly reason?: string | undefined
  /** Action-specific facts, stored as the JSON `metadata`. */
  readonly details?: Readonly<Record<string, unknown>> | undefined
}

/** A recorded event, as the sinks store it. */
export interface AuditRecord extends AuditEntry {
  readonly id: string
  readonly timestamp: string
  /** How many denials an aggregated event stands for (AuditLog.recordDenial); absent = 1. */
  readonly count?: number | undefined
}

export const AuditEvent = Schema.Struct({
  id: Schema.String,
  timestamp: Timestamp,
  action: Schema.String,
  actor: Schema.String.annotations({
    description: "Who acted: `management_api` (the management token, or the admin UI signed in with it), " +
      "`project_key:<id>` (a project key), `admin` (sign-in and sign-out), `anonymous` (a refused credential), " +
      "`proxy` (the data plane), `system`"
  }),
  outcome: Schema.Literal(...OUTCOMES),
  project_id: Schema.optional(Schema.String),
  token_id: Schema.optional(Schema.String.annotations({ description: "The token's id (joinable), never the secret" })),
  request_id: Schema.optional(Schema.String),
  correlation_id: Schema.optional(Schema.String),
  client_ip: Schema.optional(Schema.String),
  method: Schema.optional(Schema.String),
  path: Schema.optional(Schema.String),
  user_agent: Schema.optional(Schema.String),
  reason: Schema.optional(Schema.String),
  metadata: Schema.optional(Schema.String.annotations({ description: "JSON text of the action's details" })),
  count: Schema.optional(Schema.Number.annotations({
    description:
      "How many requests the event stands for: denials are aggregated per client IP, reason and minute; 1 for every other event"
  }))
}).annotations({ identifier: "AuditEvent" })
export type AuditEvent = typeof AuditEvent.Type

export { Pagination }

export const AuditPage = Schema.Struct({
  events: Schema.Array(AuditEvent),
  pagination: Schema.Union(Pagination, CursorPagination).annotations({
    description: "Pagination with `page`; CursorPagination with `cursor`"
  })
}).annotations({ identifier: "AuditPage" })
export type AuditPage = typeof AuditPage.Type

const param = (description: string) => Schema.optional(Schema.String.annotations({ description }))

/** Query of `GET /manage/audit`. Strings on the wire; validated by the handler so errors read well. */
export const ListAuditParams = Schema.Struct({
  action: param("Exact action, e.g. token.create"),
  actor: param("Exact actor"),
  outcome: param("success, failure, denied or error"),
  project_id: param("Exact project id"),
  token_id: param("Exact token id"),
  client_ip: param("Exact client IP"),
  request_id: param("Exact request id"),
  correlation_id: param("Exact correlation id"),
  method: param("Exact HTTP method"),
  path: param("Exact request path"),
  search: param(
    "Case-insensitive substring of request_id, correlation_id, client_ip, action, actor, method, path, reason or metadata"
  ),
  start_time: param("RFC 3339; events at or after"),
  end_time: param("RFC 3339; events at or before"),
  page: param("1-based page (default 1)"),
  page_size: param("1..100 (default 20)"),
  cursor: param(
    "next_cursor or prev_cursor of an earlier page, `last` for the last page, empty for the first: cursor paging"
  )
})
export type ListAuditParams = typeof ListAuditParams.Type

/** A validated `GET /manage/audit` query. */
export interface AuditQuery {
  readonly exact: Readonly<Partial<Record<ExactFilter, string>>>
  readonly search?: string
  /** Canonical ISO strings, both inclusive. */
  readonly startTime?: string
  readonly endTime?: string
  readonly page: number
  readonly pageSize: number
}

export const EXACT_FILTERS = [
  "action",
  "actor",
  "outcome",
  "project_id",
  "token_id",
  "client_ip",
  "request_id",
  "correlation_id",
  "method",
  "path"
] as const
export type ExactFilter = (typeof EXACT_FILTERS)[number]

export const PAGE_SIZE_DEFAULT = 20
export const PAGE_SIZE_MAX = 100
const FILTER_MAX = 1024

const positiveInt = (
  name: string,
  raw: string | undefined,
  fallback: number,
  max: number
): Either.Either<number, string> => {
  if (raw === undefined || raw === "") return Either.right(fallback)
  if (!/^\d{1,9}$/.test(raw) || Number(raw) < 1 || Number(raw) > max) {
    return Either.left(`${name} must be an integer between 1 and ${max}`)
  }
  return Either.right(Number(raw))
}

export const validateAuditQuery = (params: ListAuditParams): Either.Either<AuditQuery, string> =>
  Either.gen(function*() {
    const exact: Partial<Record<ExactFilter, string>> = {}
    for (const key of EXACT_FILTERS) {
      const value = params[key]
      if (value === undefined || value === "") continue
      if (value.length > FILTER_MAX) return yield* Either.left(`${key} must be at most ${FILTER_MAX} characters`)
      exact[key] = value
    }
    if (exact.outcome !== undefined && !(OUTCOMES as ReadonlyArray<string>).includes(exact.outcome)) {
      return yield* Either.left(`outcome must be one of ${OUTCOMES.join(", ")}`)
    }
    if (exact.method !== undefined) exact.method = exact.method.toUpperCase()
    const search = params.search === undefined || params.search === "" ? undefined : params.search
    if (search !== undefined && search.length > FILTER_MAX) {
      return yield* Either.left(`search must be at most ${FILTER_MAX} characters`)
    }
    const time = (name: "start_time" | "end_time") => {
      const raw = params[name]
      if (raw === undefined || raw === "") return Either.right(undefined)
      const parsed = parseTimestamp(raw)
      return parsed === undefined ? Either.left(`${name} must be an RFC 3339 timestamp`) : Either.right(parsed)
    }
    const startTime = yield* time("start_time")
    const endTime = yield* time("end_time")
    if (startTime !== undefined && endTime !== undefined && startTime > endTime) {
      return yield* Either.left("start_time must not be after end_time")
    }
    const page = yield* positiveInt("page", params.page, 1, 1_000_000)
    const pageSize = yield* positiveInt("page_size", params.page_size, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX)
    return {
      exact,
      ...(search !== undefined ? { search } : {}),
      ...(startTime !== undefined ? { startTime } : {}),
      ...(endTime !== undefined ? { endTime } : {}),
      page,
      pageSize
    }
  })
