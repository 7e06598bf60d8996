/**
 * What the management API returns and accepts. Field names follow reference-system.md §2.3–2.4 (snake_case) so
 * clients of the system we replace keep working. Timestamps are RFC 3339 strings in UTC.
 */
import { Schema } from "effect"

export const Timestamp = Schema.String.annotations({ description: "RFC 3339 timestamp (UTC)", format: "date-time" })

export const NAME_MAX = 255
export const API_KEY_MAX = 4096
export const DURATION_MAX_MINUTES = 525_600
export const MAX_REQUESTS_MAX = 2_147_483_647

export const RATE_LIMIT_REQUESTS_MAX = 1_000_000_000
export const RATE_LIMIT_WINDOW_MAX = 31_536_000

export const RateLimit = Schema.Struct({
  requests: Schema.Number.annotations({ description: `requests allowed per window, 1..${RATE_LIMIT_REQUESTS_MAX}` }),
  window_seconds: Schema.Number.annotations({ description: `window length in seconds, 1..${RATE_LIMIT_WINDOW_MAX}` })
}).annotations({ identifier: "RateLimit", description: "Window rate limit; null = none" })
export type RateLimit = typeof RateLimit.Type

export const Project = Schema.Struct({
  id: Schema.String.annotations({ description: "UUID" }),
  name: Schema.String,
  api_key: Schema.String.annotations({ description: "The provider key, obfuscated; never returned whole" }),
  provider: Schema.String,
  is_active: Schema.Boolean,
  deactivated_at: Schema.optional(Timestamp),
  rate_limit: Schema.NullOr(RateLimit),
  created_at: Timestamp,
  updated_at: Timestamp
}).annotations({ identifier: "Project" })
export type Project = typeof Project.Type

export const CreateProject = Schema.Struct({
  name: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(NAME_MAX)),
  api_key: Schema.String.pipe(Schema.minLength(1), Schema.maxLength(API_KEY_MAX)),
  provider: Schema.optional(Schema.String.annotations({ description: "Provider name from the configuration (default openai)" })),
  rate_limit: Schema.optional(Schema.NullOr(RateLimit))
}).annotations({ identifier: "CreateProject" })
export type CreateProject = typeof CreateProject.Type

export const UpdateProject = Schema.Struct({
  name: Schema.optional(Schema.String.pipe(Schema.minLength(1), Schema.maxLength(NAME_MAX))),
  api_key: Schema.optional(
    Schema.String.pipe(Schema.maxLength(API_KEY_MAX)).annotations({ description: "Empty string keeps the current key" })
  ),
  provider: Schema.optional(Schema.String),
  rate_limit: Schema.optional(Schema.NullOr(RateLimit).annotations({ description: "null removes the limit" })),
  is_active: Schema.optional(Schema.Boolean),
  revoke_tokens: Schema.optional(
    Schema.Boolean.annotations({ description: "With is_active=false: revoke every active token of the project" })
  )
}).annotations({ identifier: "UpdateProject" })
export type UpdateProject = typeof UpdateProject.Type

export const BulkRevokeResult = Schema.Struct({
  revoked_count: Schema.Number,
  already_revoked_count: Schema.Number,
  total_tokens: Schema.Number
}).annotations({ identifier: "BulkRevokeResult" })
export type BulkRevokeResult = typeof BulkRevokeResult.Type

export const Token = Schema.Struct({
  id: Schema.String,
  token: Schema.String.annotations({ description: "sk- + first 4 + **** + last 4; the secret itself is shown only once" }),
  project_id: Schema.String,
  expires_at: Schema.NullOr(Timestamp),
  is_active: Schema.Boolean,
  deactivated_at: Schema.optional(Timestamp),
  request_count: Schema.Number,
  max_requests: Schema.NullOr(Schema.Number).annotations({ description: "null = unlimited" }),
  rate_limit: Schema.NullOr(RateLimit),
  cache_hit_count: Schema.Number,
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  created_at: Timestamp,
  last_used_at: Schema.NullOr(Timestamp)
}).annotations({ identifier: "Token" })
export type Token = typeof Token.Type

export const TokenCreated = Schema.Struct({
  id: Schema.String,
  token: Schema.String.annotations({ description: "The secret. Store it now: it is never shown again." }),
  project_id: Schema.String,
  expires_at: Timestamp,
  max_requests: Schema.optional(Schema.Number)
}).annotations({ identifier: "TokenCreated" })
export type TokenCreated = typeof TokenCreated.Type

const Int = Schema.Number.pipe(Schema.int())

export const CreateToken = Schema.Struct({
  project_id: Schema.String,
  duration_minutes: Int.pipe(Schema.between(1, DURATION_MAX_MINUTES)),
  max_requests: Schema.optional(
    Schema.NullOr(Int.pipe(Schema.between(0, MAX_REQUESTS_MAX))).annotations({ description: "0 or null = unlimited" })
  ),
  rate_limit: Schema.optional(Schema.NullOr(RateLimit))
}).annotations({ identifier: "CreateToken" })
export type CreateToken = typeof CreateToken.Type

export const UpdateToken = Schema.Struct({
  is_active: Schema.optional(Schema.Boolean),
  max_requests: Schema.optional(Schema.NullOr(Int.pipe(Schema.between(0, MAX_REQUESTS_MAX)))),
  expires_at: Schema.optional(Timestamp),
  rate_limit: Schema.optional(Schema.NullOr(RateLimit).annotations({ description: "null removes the limit" }))
}).annotations({ identifier: "UpdateToken" })
export type UpdateToken = typeof UpdateToken.Type

export const ListTokensParams = Schema.Struct({
  project_id: Schema.optional(Schema.String),
  projectId: Schema.optional(Schema.String.annotations({ description: "Legacy spelling of project_id" })),
  active_only: Schema.optional(Schema.String.annotations({ description: "true: only active, unexpired tokens" })),
  status: Schema.optional(
    Schema.String.annotations({ description: "active (not revoked, not expired), expired (not revoked) or revoked" })
  ),
  search: Schema.optional(Schema.String.annotations({ description: "The start of the token's id (case-insensitive)" })),
  page_size: Schema.optional(
    Schema.String.annotations({ description: "1..100 (default 20); with page_size or cursor the answer is a TokenPage" })
  ),
  cursor: Schema.optional(
    Schema.String.annotations({ description: "next_cursor or prev_cursor of a TokenPage, or `last` for the last page" })
  )
})

/** The paging of a keyset listing: no page numbers, a cursor to each neighbouring page. */
export const CursorPagination = Schema.Struct({
  page_size: Schema.Number,
  has_next: Schema.Boolean.annotations({ description: "Older entries follow" }),
  has_prev: Schema.Boolean.annotations({ description: "Newer entries precede" }),
  next_cursor: Schema.NullOr(Schema.String).annotations({ description: "cursor of the next (older) page" }),
  prev_cursor: Schema.NullOr(Schema.String).annotations({ description: "cursor of the previous (newer) page" })
}).annotations({ identifier: "CursorPagination" })
export type CursorPagination = typeof CursorPagination.Type

export const TokenPage = Schema.Struct({
  tokens: Schema.Array(Token),
  pagination: CursorPagination
}).annotations({ identifier: "TokenPage" })
export type TokenPage = typeof TokenPage.Type

export const TokenCountsParams = Schema.Struct({
  project_id: Schema.optional(Schema.String.annotations({ description: "Only this project's tokens" }))
})

const Count = Schema.Struct({
  count: Schema.Number,
  exact: Schema.Boolean.annotations({ description: "false: at least `count` (counting stops there)" })
})

export const TokenCounts = Schema.Struct({
  active: Count,
  expired: Count,
  revoked: Count
}).annotations({ identifier: "TokenCounts", description: "Tokens per state now, each counted up to 10000" })
export type TokenCounts = typeof TokenCounts.Type

export const CachePurge = Schema.Struct({
  method: Schema.optional(Schema.String.annotations({ description: "With url: purge every entry of that method and URL" })),
  url: Schema.optional(Schema.String.annotations({ description: "Path (with query) or absolute URL, e.g. /v1/models" })),
  prefix: Schema.optional(Schema.String.annotations({ description: "Purge keys starting with this (a prefix of X-PROXY-CACHE-KEY)" })),
  all: Schema.optional(Schema.Boolean.annotations({ description: "true: purge everything (of project_id, when given)" })),
  project_id: Schema.optional(Schema.String.annotations({ description: "Restrict any form to one project" }))
}).annotations({ identifier: "CachePurge" })
export type CachePurge = typeof CachePurge.Type

export const CachePurgeResult = Schema.Struct({
  deleted: Schema.Union(Schema.Boolean, Schema.Number).annotations({
    description: "exact purge: whether anything was deleted; prefix / all: how many entries"
  })
}).annotations({ identifier: "CachePurgeResult" })
export type CachePurgeResult = typeof CachePurgeResult.Type

export const ListProjectsParams = Schema.Struct({
  search: Schema.optional(Schema.String.annotations({ description: "Case-insensitive part of the name, or a project id" })),
  page: Schema.optional(Schema.String.annotations({ description: "1-based; with page or page_size the answer is a ProjectPage" })),
  page_size: Schema.optional(Schema.String.annotations({ description: "1..100 (default 20)" }))
})

export const Pagination = Schema.Struct({
  page: Schema.Number,
  page_size: Schema.Number,
  total_count: Schema.Number.annotations({ description: "Counted up to 10000 (see total_exact)" }),
  total_pages: Schema.Number,
  has_next: Schema.Boolean,
  has_prev: Schema.Boolean,
  total_exact: Schema.optional(
    Schema.Boolean.annotations({ description: "false: more than total_count match (counting stops at 10000)" })
  )
}).annotations({ identifier: "Pagination" })
export type Pagination = typeof Pagination.Type

export const ProjectPage = Schema.Struct({
  projects: Schema.Array(Project),
  pagination: Pagination
}).annotations({ identifier: "ProjectPage" })
export type ProjectPage = typeof ProjectPage.Type

export const UsageParams = Schema.Struct({
  since: Schema.optional(Timestamp.annotations({ description: "Inclusive start (default: 24 hours before until)" })),
  until: Schema.optional(Timestamp.annotations({ description: "Exclusive end (default: now)" })),
  project_id: Schema.optional(Schema.String),
  token_id: Schema.optional(Schema.String)
})

export const UsageHour = Schema.Struct({
  hour: Timestamp.annotations({ description: "Start of the UTC hour" }),
  requests: Schema.Number,
  cache_hits: Schema.Number,
  errors: Schema.Number,
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number
}).annotations({ identifier: "UsageHour" })
export type UsageHour = typeof UsageHour.Type

export const UsageSeries = Schema.Struct({
  since: Timestamp,
  until: Timestamp,
  hours: Schema.Array(UsageHour).annotations({ description: "Hours with usage, oldest first (hours without usage are absent)" }),
  totals: Schema.Struct({
    requests: Schema.Number,
    cache_hits: Schema.Number,
    errors: Schema.Number,
    prompt_tokens: Schema.Number,
    completion_tokens: Schema.Number
  })
}).annotations({ identifier: "UsageSeries" })
export type UsageSeries = typeof UsageSeries.Type

export const Login = Schema.Struct({
  token: Schema.String.annotations({ description: "The management token" })
}).annotations({ identifier: "Login" })

export const SessionInfo = Schema.Struct({
  authenticated: Schema.Boolean,
  csrf_token: Schema.optional(Schema.String.annotations({ description: "Send as X-CSRF-Token on every state-changing request" })),
  expires_at: Schema.optional(Timestamp.annotations({ description: "When the session ends unless used before (idle timeout)" }))
}).annotations({ identifier: "SessionInfo" })
export type SessionInfo = typeof SessionInfo.Type
