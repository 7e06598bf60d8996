/**
 * The management API as one HttpApi definition. The server (src/http), the CLI client and the OpenAPI document
 * are all derived from it, so they cannot drift apart.
 */
import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiMiddleware, HttpApiSchema, HttpApiSecurity, OpenApi } from "@effect/platform"
import { Schema } from "effect"
import { AuditEvent, AuditPage, ListAuditParams } from "../domain/audit.js"
import {
  BadRequestWire,
  ConflictWire,
  ForbiddenWire,
  InternalErrorWire,
  NotFoundWire,
  PayloadTooLargeWire,
  ServiceUnavailableWire,
  TooManyRequestsWire,
  UnauthorizedWire
} from "../domain/errors.js"
import {
  BulkRevokeResult,
  CachePurge,
  CachePurgeResult,
  CreateProject,
  CreateToken,
  ListProjectsParams,
  ListTokensParams,
  Login,
  Project,
  ProjectPage,
  SessionInfo,
  Token,
  TokenCounts,
  TokenCountsParams,
  TokenCreated,
  TokenPage,
  UpdateProject,
  UpdateToken,
  UsageParams,
  UsageSeries
} from "../domain/models.js"
import { VERSION } from "../version.js"

/**
 * `Authorization: Bearer <MANAGEMENT_TOKEN>` on every management endpoint — or the admin UI's session cookie, with
 * `X-CSRF-Token` on state-changing requests (403 `csrf_failed` without it).
 */
export class ManagementAuth extends HttpApiMiddleware.Tag<ManagementAuth>()("ManagementAuth", {
  failure: Schema.Union(UnauthorizedWire, ForbiddenWire),
  security: { bearer: HttpApiSecurity.bearer }
}) {}

const IdPath = Schema.Struct({ id: Schema.String })

export const ProjectsApi = HttpApiGroup.make("projects")
  .add(
    HttpApiEndpoint.get("list", "/projects")
      .setUrlParams(ListProjectsParams)
      .addSuccess(Schema.Union(Schema.Array(Project), ProjectPage))
      .annotate(
        OpenApi.Description,
        "Without page/page_size: every (matching) project as an array, ordered by name. With either: one ProjectPage."
      )
  )
  .add(
    HttpApiEndpoint.post("create", "/projects")
      .setPayload(CreateProject)
      .addSuccess(Project, { status: 201 })
      .addError(ConflictWire)
  )
  .add(HttpApiEndpoint.get("get", "/projects/:id").setPath(IdPath).addSuccess(Project).addError(NotFoundWire))
  .add(
    HttpApiEndpoint.patch("update", "/projects/:id")
      .setPath(IdPath)
      .setPayload(UpdateProject)
      .addSuccess(Project)
      .addError(NotFoundWire)
      .addError(ConflictWire)
  )
  .add(
    HttpApiEndpoint.post("revokeTokens", "/projects/:id/tokens/revoke")
      .setPath(IdPath)
      .addSuccess(BulkRevokeResult)
      .addError(NotFoundWire)
  )
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Projects")

export const TokensApi = HttpApiGroup.make("tokens")
  .add(
    HttpApiEndpoint.get("list", "/tokens")
      .setUrlParams(ListTokensParams)
      .addSuccess(Schema.Union(Schema.Array(Token), TokenPage))
      .annotate(
        OpenApi.Description,
        "Newest first. With page_size or cursor: one TokenPage. Without: an array of at most 10000 tokens " +
          "(`X-Truncated: true` when more match; page through them with page_size and cursor)."
      )
  )
  .add(
    HttpApiEndpoint.get("counts", "/tokens/counts")
      .setUrlParams(TokenCountsParams)
      .addSuccess(TokenCounts)
      .annotate(OpenApi.Description, "How many tokens are active, expired and revoked now (each counted up to 10000)")
  )
  .add(
    HttpApiEndpoint.post("create", "/tokens")
      .setPayload(CreateToken)
      .addSuccess(TokenCreated, { status: 201 })
      .addError(NotFoundWire)
      .addError(ForbiddenWire)
  )
  .add(HttpApiEndpoint.get("get", "/tokens/:id").setPath(IdPath).addSuccess(Token).addError(NotFoundWire))
  .add(
    HttpApiEndpoint.patch("update", "/tokens/:id")
      .setPath(IdPath)
      .setPayload(UpdateToken)
      .addSuccess(Token)
      .addError(NotFoundWire)
  )
  .add(
    HttpApiEndpoint.del("revoke", "/tokens/:id")
      .setPath(IdPath)
      .addSuccess(HttpApiSchema.NoContent)
      .addError(NotFoundWire)
  )
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Tokens")

export const UsageApi = HttpApiGroup.make("usage")
  .add(HttpApiEndpoint.get("series", "/usage").setUrlParams(UsageParams).addSuccess(UsageSeries))
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Usage")
  .annotate(OpenApi.Description, "Per-hour usage rollups (requests, cache hits, errors, tokens) for charts; at most 366 days at once")

/** Admin UI login: exchanges the management token for a session cookie (see src/http/session.ts). */
export const SessionApi = HttpApiGroup.make("session")
  .add(
    HttpApiEndpoint.post("login", "/session")
      .setPayload(Login)
      .addSuccess(SessionInfo)
      .addError(UnauthorizedWire)
  )
  .add(HttpApiEndpoint.get("current", "/session").addSuccess(SessionInfo))
  .add(
    HttpApiEndpoint.del("logout", "/session")
      .addSuccess(HttpApiSchema.NoContent)
      .addError(ForbiddenWire)
      .annotate(OpenApi.Description, "Ends the session of the cookie; a live session needs its `X-CSRF-Token` (403 `csrf_failed` without)")
  )
  .prefix("/manage")
  .annotate(OpenApi.Title, "Admin session")

export const CacheApi = HttpApiGroup.make("cache")
  .add(
    HttpApiEndpoint.post("purge", "/cache/purge")
      .setPayload(CachePurge)
      .addSuccess(CachePurgeResult)
      .annotate(
        OpenApi.Description,
        "Delete response-cache entries: `{\"method\",\"url\"}` (every variant of that request), `{\"prefix\"}` " +
          "(keys starting with it) or `{\"all\": true}`; any form may add `project_id`."
      )
  )
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Cache")

export const AuditApi = HttpApiGroup.make("audit")
  .add(
    HttpApiEndpoint.get("list", "/audit")
      .setUrlParams(ListAuditParams)
      .addSuccess(AuditPage)
      .annotate(OpenApi.Description, "Audit events matching every given filter, newest first, one page at a time")
  )
  .add(HttpApiEndpoint.get("get", "/audit/:id").setPath(IdPath).addSuccess(AuditEvent).addError(NotFoundWire))
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Audit")

export class ManagementApi extends HttpApi.make("llm-proxy")
  .add(ProjectsApi)
  .add(TokensApi)
  .add(UsageApi)
  .add(SessionApi)
  .add(AuditApi)
  .add(CacheApi)
  .addError(BadRequestWire)
  .addError(PayloadTooLargeWire)
  .addError(TooManyRequestsWire)
  .addError(InternalErrorWire)
  .addError(ServiceUnavailableWire)
  .annotate(OpenApi.Title, "llm-proxy management API")
  .annotate(OpenApi.Version, VERSION)
  .annotate(
    OpenApi.Description,
    "Projects, withering tokens, the response cache and the audit log. Every endpoint needs `Authorization: Bearer <MANAGEMENT_TOKEN>`. " +
      "Errors are `{\"error\": \"...\", \"code\"?: \"...\"}`."
  )
{}
