/**
 * The Store's row schemas: the columns each query selects (column schemas of columns.ts, the same for both dialects)
 * and how they become the row types of Store.ts. Groups of columns that several tables or joins share — rate limit,
 * budget, spend, provider keys — are decoded by one schema and shaped by one function.
 */
import { Schema } from "effect"
import {
  nullable,
  prefixed,
  type RowColumns,
  SqlBool,
  SqlJson,
  SqlNumber,
  sqlRow,
  SqlText,
  SqlTimestamp,
  unprefixed,
  withFallback
} from "./columns.js"
import type {
  BudgetRow,
  ProjectKeyRow,
  ProjectRow,
  RateLimitRow,
  SpendRow,
  StoredKey,
  TokenAuthRow,
  TokenRow,
  UsagePoint
} from "./Store.js"

const NullableNumber = nullable(SqlNumber)
const NullableTimestamp = nullable(SqlTimestamp)
const NullableText = nullable(SqlText)

/** Model names or globs (`allowed_models`). */
const ModelList = SqlJson(Schema.Array(Schema.String))
/** A token's metadata: a JSON object of strings. */
const Metadata = SqlJson(Schema.Record({ key: Schema.String, value: Schema.String }))

/** One entry of `projects.api_keys`, as keyColumns writes it; a weight or provider of another type is the default. */
const StoredKeyJson = Schema.Struct({
  id: Schema.String,
  key: Schema.String,
  hint: Schema.String,
  weight: withFallback(Schema.Number, 1).schema,
  provider: withFallback(Schema.NullOr(Schema.String), null).schema
})

const KeyColumns = {
  api_key: SqlText,
  api_key_hint: SqlText,
  api_keys: SqlJson(Schema.Array(StoredKeyJson))
}

/**
 * `projects.api_keys` as keys; NULL — a project saved before keys were lists —, an empty list or one written by hand
 * that is not a list of keys: its one `api_key`, under the project's id.
 */
const storedKeys = (c: RowColumns<typeof KeyColumns>, projectId: string): ReadonlyArray<StoredKey> =>
  c.api_keys !== null && c.api_keys.length > 0
    ? c.api_keys
    : [{ id: projectId, key: c.api_key, hint: c.api_key_hint, weight: 1, provider: null }]

const positiveOrNull = (n: number | null): number | null => (n !== null && n > 0 ? n : null)

/** A window rate limit from its three columns; none unless the window and one of the two counts are positive. */
const rateLimit = (
  requests: number | null,
  windowSeconds: number | null,
  tokens: number | null
): RateLimitRow | null => {
  const r = positiveOrNull(requests)
  const t = positiveOrNull(tokens)
  const w = positiveOrNull(windowSeconds)
  return w !== null && (r !== null || t !== null) ? { requests: r, tokens: t, windowSeconds: w } : null
}

const RateLimitColumns = {
  rate_limit_requests: NullableNumber,
  rate_limit_window_seconds: NullableNumber,
  rate_limit_tokens: NullableNumber
}

const BudgetColumns = {
  max_cost_usd: NullableNumber,
  max_tokens: NullableNumber,
  // A period this build does not know is the whole life.
  budget_period: withFallback(Schema.Literal("total", "day", "month"), "total")
}

const budget = (c: RowColumns<typeof BudgetColumns>): BudgetRow => ({
  maxCostUsd: positiveOrNull(c.max_cost_usd),
  maxTokens: positiveOrNull(c.max_tokens),
  period: c.budget_period
})

const SpendColumns = {
  spent_usd: SqlNumber,
  tokens_used: SqlNumber,
  day_start: NullableNumber,
  day_cost_usd: SqlNumber,
  day_tokens: SqlNumber,
  month_start: NullableNumber,
  month_cost_usd: SqlNumber,
  month_tokens: SqlNumber
}

const spend = (c: RowColumns<typeof SpendColumns>): SpendRow => ({
  spentUsd: c.spent_usd,
  tokensUsed: c.tokens_used,
  dayStart: c.day_start,
  dayCostUsd: c.day_cost_usd,
  dayTokens: c.day_tokens,
  monthStart: c.month_start,
  monthCostUsd: c.month_cost_usd,
  monthTokens: c.month_tokens
})

/** `SELECT * FROM projects`. */
export const ProjectFromRow = sqlRow("ProjectRow", {
  id: SqlText,
  name: SqlText,
  ...KeyColumns,
  provider: SqlText,
  is_active: SqlBool,
  deactivated_at: NullableTimestamp,
  ...RateLimitColumns,
  allowed_models: ModelList,
  max_token_minutes: NullableNumber,
  max_token_requests: NullableNumber,
  ...BudgetColumns,
  ...SpendColumns,
  created_at: SqlTimestamp,
  updated_at: SqlTimestamp
}, (r): ProjectRow => ({
  id: r.id,
  name: r.name,
  apiKey: r.api_key,
  apiKeyHint: r.api_key_hint,
  apiKeys: storedKeys(r, r.id),
  provider: r.provider,
  isActive: r.is_active,
  deactivatedAt: r.deactivated_at,
  rateLimit: rateLimit(r.rate_limit_requests, r.rate_limit_window_seconds, r.rate_limit_tokens),
  allowedModels: r.allowed_models,
  maxTokenMinutes: r.max_token_minutes,
  maxTokenRequests: r.max_token_requests,
  budget: budget(r),
  spend: spend(r),
  createdAt: r.created_at,
  updatedAt: r.updated_at
}))

/** `SELECT * FROM tokens`. */
export const TokenFromRow = sqlRow("TokenRow", {
  id: SqlText,
  token_hash: SqlText,
  token_hint: SqlText,
  project_id: SqlText,
  expires_at: NullableTimestamp,
  is_active: SqlBool,
  deactivated_at: NullableTimestamp,
  request_count: SqlNumber,
  max_requests: NullableNumber,
  ...RateLimitColumns,
  cache_hit_count: SqlNumber,
  prompt_tokens: SqlNumber,
  completion_tokens: SqlNumber,
  ...BudgetColumns,
  ...SpendColumns,
  created_at: SqlTimestamp,
  last_used_at: NullableTimestamp,
  allowed_models: ModelList,
  name: NullableText,
  end_user: NullableText,
  metadata: Metadata,
  project_key_id: NullableText
}, (r): TokenRow => ({
  id: r.id,
  tokenHash: r.token_hash,
  tokenHint: r.token_hint,
  projectId: r.project_id,
  expiresAt: r.expires_at,
  isActive: r.is_active,
  deactivatedAt: r.deactivated_at,
  requestCount: r.request_count,
  maxRequests: r.max_requests,
  rateLimit: rateLimit(r.rate_limit_requests, r.rate_limit_window_seconds, r.rate_limit_tokens),
  cacheHitCount: r.cache_hit_count,
  promptTokens: r.prompt_tokens,
  completionTokens: r.completion_tokens,
  budget: budget(r),
  spend: spend(r),
  createdAt: r.created_at,
  lastUsedAt: r.last_used_at,
  allowedModels: r.allowed_models,
  name: r.name,
  user: r.end_user,
  metadata: r.metadata,
  projectKeyId: r.project_key_id
}))

/** The token with its project (`getTokenAuth`'s join): the token's budget under `t_`, the project's under `p_`. */
export const TokenAuthFromRow = sqlRow("TokenAuthRow", {
  token_id: SqlText,
  project_id: SqlText,
  expires_at: NullableTimestamp,
  token_active: SqlBool,
  max_requests: NullableNumber,
  token_rl_requests: NullableNumber,
  token_rl_window: NullableNumber,
  token_rl_tokens: NullableNumber,
  ...prefixed("t_", BudgetColumns),
  project_active: SqlBool,
  ...KeyColumns,
  provider: SqlText,
  project_rl_requests: NullableNumber,
  project_rl_window: NullableNumber,
  project_rl_tokens: NullableNumber,
  ...prefixed("p_", BudgetColumns),
  token_models: ModelList,
  project_models: ModelList,
  name: NullableText,
  end_user: NullableText,
  metadata: Metadata
}, (r): TokenAuthRow => ({
  tokenId: r.token_id,
  projectId: r.project_id,
  expiresAt: r.expires_at,
  isActive: r.token_active,
  maxRequests: r.max_requests,
  tokenRateLimit: rateLimit(r.token_rl_requests, r.token_rl_window, r.token_rl_tokens),
  projectActive: r.project_active,
  apiKeys: storedKeys(r, r.project_id),
  provider: r.provider,
  projectRateLimit: rateLimit(r.project_rl_requests, r.project_rl_window, r.project_rl_tokens),
  tokenAllowedModels: r.token_models,
  projectAllowedModels: r.project_models,
  name: r.name,
  user: r.end_user,
  metadata: r.metadata,
  tokenBudget: budget(unprefixed(r, "t_", BudgetColumns)),
  projectBudget: budget(unprefixed(r, "p_", BudgetColumns))
}))

/** `SELECT * FROM project_keys`. */
export const ProjectKeyFromRow = sqlRow("ProjectKeyRow", {
  id: SqlText,
  project_id: SqlText,
  name: SqlText,
  key_hash: SqlText,
  key_hint: SqlText,
  created_at: SqlTimestamp,
  last_used_at: NullableTimestamp,
  revoked_at: NullableTimestamp
}, (r): ProjectKeyRow => ({
  id: r.id,
  projectId: r.project_id,
  name: r.name,
  keyHash: r.key_hash,
  keyHint: r.key_hint,
  createdAt: r.created_at,
  lastUsedAt: r.last_used_at,
  revokedAt: r.revoked_at
}))

/** What a token and its project spent (`spendOf`'s join): the token's columns under `t_`, the project's under `p_`. */
export const SpendPairFromRow = sqlRow("SpendPair", {
  ...prefixed("t_", SpendColumns),
  ...prefixed("p_", SpendColumns)
}, (r) => ({ token: spend(unprefixed(r, "t_", SpendColumns)), project: spend(unprefixed(r, "p_", SpendColumns)) }))

/** Why `consumeQuota` refused: the token's and its project's state. */
export const QuotaStateFromRow = sqlRow("QuotaState", {
  is_active: SqlBool,
  expires_at: NullableTimestamp,
  project_active: SqlBool
}, (r) => ({ isActive: r.is_active, expiresAt: r.expires_at, projectActive: r.project_active }))

/** Whether a project exists and is active (the token group commit's check of a batch's projects). */
export const ProjectStateFromRow = sqlRow("ProjectState", {
  id: SqlText,
  is_active: SqlBool
}, (r) => ({ id: r.id, isActive: r.is_active }))

/** One hour of `usageSeries` (sums of `usage_hourly`). */
export const UsagePointFromRow = sqlRow("UsagePoint", {
  hour: SqlTimestamp,
  requests: SqlNumber,
  cache_hits: SqlNumber,
  errors: SqlNumber,
  prompt_tokens: SqlNumber,
  completion_tokens: SqlNumber,
  cost_usd: SqlNumber
}, (r): UsagePoint => ({
  hour: r.hour,
  requests: r.requests,
  cacheHits: r.cache_hits,
  errors: r.errors,
  promptTokens: r.prompt_tokens,
  completionTokens: r.completion_tokens,
  costUsd: r.cost_usd
}))
