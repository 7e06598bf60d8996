/**
 * The management API as one HttpApi definition. The server (src/http), the CLI client and the OpenAPI document
 * are all derived from it, so they cannot drift apart.
 */
import {
  HttpApi,
  HttpApiEndpoint,
  HttpApiGroup,
  HttpApiMiddleware,
  HttpApiSchema,
  HttpApiSecurity,
  OpenApi
} from "@effect/platform"
import { Context, Option, Schema } from "effect"
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
  CreateProjectKey,
  CreateToken,
  ListProjectsParams,
  ListTokensParams,
  Login,
  Project,
  ProjectKey,
  ProjectKeyCreated,
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

/** Who is calling: the management token (or the admin UI signed in with it), or a project key of one project. */
export type Caller =
  | { readonly _tag: "management" }
  | { readonly _tag: "project_key"; readonly keyId: string; readonly projectId: string }

export class CurrentCaller extends Context.Tag("llm-proxy/CurrentCaller")<CurrentCaller, Caller>() {}

/**
 * `Authorization: Bearer <MANAGEMENT_TOKEN>` on every management endpoint — or the admin UI's session cookie, with
 * `X-CSRF-Token` on state-changing requests (403 `csrf_failed` without it) — or, on the endpoints annotated with
 * `ProjectKeyAccess`, a project key (`lpk-…`) for its own project; on every other endpoint a project key is 403
 * `forbidden`.
 */
export class ManagementAuth extends HttpApiMiddleware.Tag<ManagementAuth>()("ManagementAuth", {
  failure: Schema.Union(UnauthorizedWire, ForbiddenWire),
  provides: CurrentCaller,
  security: {
    bearer: HttpApiSecurity.bearer.pipe(
      HttpApiSecurity.annotate(
        OpenApi.Description,
        "The management token, or a project key (`lpk-…`) on the operations whose `x-llm-proxy-scopes` list `project_key`"
      )
    )
  }
}) {}

/**
 * The annotation of an endpoint a project key may call besides the management token, saying what it may do there.
 * The handler keeps it to the key's own project (403 `forbidden` for any other); every endpoint without it refuses
 * project keys before its handler runs (src/http/auth.ts). `projectKeyScopes` lists them for the middleware, the
 * OpenAPI document and the tests.
 */
export class ProjectKeyAccess extends Context.Tag("llm-proxy/ProjectKeyAccess")<ProjectKeyAccess, string>() {}

const IdPath = Schema.Struct({ id: Schema.String })
const KeyPath = Schema.Struct({ id: Schema.String, key_id: Schema.String })

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
  .add(
    HttpApiEndpoint.get("get", "/projects/:id")
      .setPath(IdPath)
      .addSuccess(Project)
      .addError(NotFoundWire)
      .annotate(ProjectKeyAccess, "its own project only")
  )
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
  .add(
    HttpApiEndpoint.get("listKeys", "/projects/:id/keys")
      .setPath(IdPath)
      .addSuccess(Schema.Array(ProjectKey))
      .addError(NotFoundWire)
      .annotate(
        OpenApi.Description,
        "The project's keys, newest first, revoked ones included; never the keys themselves"
      )
  )
  .add(
    HttpApiEndpoint.post("createKey", "/projects/:id/keys")
      .setPath(IdPath)
      .setPayload(CreateProjectKey)
      .addSuccess(ProjectKeyCreated, { status: 201 })
      .addError(NotFoundWire)
      .annotate(
        OpenApi.Description,
        "A project key: `lpk-` + 43 characters, shown once. It may create, list, read, change and revoke the tokens of " +
          "this project and read the project and its usage — nothing else (docs/untrusted-clients.md)."
      )
  )
  .add(
    HttpApiEndpoint.del("revokeKey", "/projects/:id/keys/:key_id")
      .setPath(KeyPath)
      .addSuccess(HttpApiSchema.NoContent)
      .addError(NotFoundWire)
      .annotate(
        OpenApi.Description,
        "Revokes the key (idempotent): refused from the next request on, on every instance. Tokens it minted keep working."
      )
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
      .annotate(ProjectKeyAccess, "its own project's tokens only (another project_id is 403)")
  )
  .add(
    HttpApiEndpoint.get("counts", "/tokens/counts")
      .setUrlParams(TokenCountsParams)
      .addSuccess(TokenCounts)
      .annotate(OpenApi.Description, "How many tokens are active, expired and revoked now (each counted up to 10000)")
      .annotate(ProjectKeyAccess, "its own project's tokens only (another project_id is 403)")
  )
  .add(
    HttpApiEndpoint.post("create", "/tokens")
      .setPayload(CreateToken)
      .addSuccess(TokenCreated, { status: 201 })
      .addError(NotFoundWire)
      .addError(ForbiddenWire)
      .annotate(
        ProjectKeyAccess,
        "tokens of its own project (project_id may be left out), within the project's max_token_minutes and " +
          "max_token_requests"
      )
  )
  .add(
    HttpApiEndpoint.get("get", "/tokens/:id")
      .setPath(IdPath)
      .addSuccess(Token)
      .addError(NotFoundWire)
      .annotate(ProjectKeyAccess, "its own project's tokens only")
  )
  .add(
    HttpApiEndpoint.patch("update", "/tokens/:id")
      .setPath(IdPath)
      .setPayload(UpdateToken)
      .addSuccess(Token)
      .addError(NotFoundWire)
      .annotate(
        ProjectKeyAccess,
        "its own project's tokens only, within the project's max_token_minutes and max_token_requests"
      )
  )
  .add(
    HttpApiEndpoint.del("revoke", "/tokens/:id")
      .setPath(IdPath)
      .addSuccess(HttpApiSchema.NoContent)
      .addError(NotFoundWire)
      .annotate(ProjectKeyAccess, "its own project's tokens only")
  )
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Tokens")

export const UsageApi = HttpApiGroup.make("usage")
  .add(
    HttpApiEndpoint.get("series", "/usage")
      .setUrlParams(UsageParams)
      .addSuccess(UsageSeries)
      .annotate(ProjectKeyAccess, "its own project's usage only (another project_id is 403)")
  )
  .prefix("/manage")
  .middleware(ManagementAuth)
  .annotate(OpenApi.Title, "Usage")
  .annotate(
    OpenApi.Description,
    "Per-hour usage rollups (requests, cache hits, errors, tokens) for charts; at most 366 days at once"
  )

/** Admin UI login: exchanges the management token for a session cookie (see src/http/session.ts). */
export const SessionApi = HttpApiGroup.make("session")
  .add(
    HttpApiEndpoint.post("login", "/session")
      .setPayload(Login)
      .addSuccess(SessionInfo)
      .addError(UnauthorizedWire)
      .addError(ForbiddenWire)
      .annotate(
        OpenApi.Description,
        "The management token only: a project key is 403 `forbidden` (in the body or in `Authorization`)"
      )
  )
  .add(
    HttpApiEndpoint.get("current", "/session").addSuccess(SessionInfo).addError(UnauthorizedWire).addError(
      ForbiddenWire
    )
  )
  .add(
    HttpApiEndpoint.del("logout", "/session")
      .addSuccess(HttpApiSchema.NoContent)
      .addError(UnauthorizedWire)
      .addError(ForbiddenWire)
      .annotate(
        OpenApi.Description,
        "Ends the session of the cookie; a live session needs its `X-CSRF-Token` (403 `csrf_failed` without)"
      )
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

const api = HttpApi.make("llm-proxy")
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
    "Projects, withering tokens, project keys, the response cache and the audit log. Every endpoint needs " +
      "`Authorization: Bearer <MANAGEMENT_TOKEN>`; a project key (`lpk-…`) may call the operations whose " +
      "`x-llm-proxy-scopes` list `project_key`, for its own project, and is 403 `forbidden` everywhere else. " +
      "Errors are `{\"error\": \"...\", \"code\"?: \"...\"}`."
  )

/** An endpoint as the router sees it: `METHOD /manage/path/:param`. */
export const routeKey = (method: string, path: string) => `${method.toUpperCase()} ${path}`

/**
 * The endpoints of an API definition that take the management auth, with what a project key may do there (None:
 * nothing — 403). Read from the definition itself, so a new endpoint is covered the moment it is added.
 */
export const projectKeyScopes = (definition: HttpApi.HttpApi.Any): ReadonlyMap<string, Option.Option<string>> => {
  const out = new Map<string, Option.Option<string>>()
  HttpApi.reflect(definition as HttpApi.HttpApi<string, HttpApiGroup.HttpApiGroup.AnyWithProps, unknown, unknown>, {
    onGroup: () => {},
    onEndpoint: ({ endpoint, middleware }) => {
      if (!(middleware as ReadonlySet<unknown>).has(ManagementAuth)) return
      out.set(routeKey(endpoint.method, endpoint.path), Context.getOption(endpoint.annotations, ProjectKeyAccess))
    }
  })
  return out
}

/** The scopes of every operation in the OpenAPI document: `x-llm-proxy-scopes` and a sentence in its description. */
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- the OpenAPI document as generated, changed in place
const documentScopes = (spec: Record<string, any>): Record<string, any> => {
  const scopes = projectKeyScopes(api)
  for (
    const [path, operations] of Object.entries(spec.paths as Record<string, Record<string, Record<string, unknown>>>)
  ) {
    for (const [method, op] of Object.entries(operations)) {
      const scope = scopes.get(routeKey(method, path.replace(/\{(\w+)\}/g, ":$1")))
      if (scope === undefined) continue
      const sentence = Option.match(scope, {
        onNone: () => "Scopes: the management token only (a project key is 403 `forbidden`).",
        onSome: (what) => `Scopes: the management token, or a project key for ${what}.`
      })
      op["x-llm-proxy-scopes"] = Option.isSome(scope) ? ["management_token", "project_key"] : ["management_token"]
      op["description"] = typeof op["description"] === "string" ? `${op["description"]}\n\n${sentence}` : sentence
    }
  }
  return spec
}

export class ManagementApi extends api.annotate(OpenApi.Transform, documentScopes) {}
