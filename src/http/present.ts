/**
 * Rows → the JSON the API returns (and the few payload fields the other way). Secrets never leave here whole: keys
 * as their hint, tokens as theirs.
 */
import type { StoredAuditEvent } from "../audit/AuditRepo.js"
import { AuditActors, type AuditEvent, projectKeyActor } from "../domain/audit.js"
import type { BudgetPeriod, Project, ProjectKey, RateLimitSetting, Token, UpstreamKey } from "../domain/models.js"
import { periodEndOf, spentIn } from "../spend/periods.js"
import type {
  BudgetPatch,
  BudgetRow,
  ProjectKeyRow,
  ProjectRow,
  RateLimitRow,
  SpendRow,
  TokenRow
} from "../store/Store.js"

const rateLimitJson = (r: RateLimitRow | null) =>
  r === null ? null : {
    ...(r.requests !== null ? { requests: r.requests } : {}),
    ...(r.tokens !== null && r.tokens !== undefined ? { tokens: r.tokens } : {}),
    window_seconds: r.windowSeconds
  }

/** A decoded payload's `rate_limit` (null removes the limit) as the store keeps it. */
export const rateLimitRow = (r: typeof RateLimitSetting.Type): RateLimitRow | null =>
  r === null ? null : { requests: r.requests ?? null, tokens: r.tokens ?? null, windowSeconds: r.window_seconds }

interface BudgetInput {
  readonly max_cost_usd?: number | null | undefined
  readonly max_tokens?: number | null | undefined
  readonly budget_period?: BudgetPeriod | undefined
}

/** A create payload's budget fields as the store keeps them. */
export const budgetRow = (p: BudgetInput): BudgetRow => ({
  maxCostUsd: p.max_cost_usd ?? null,
  maxTokens: p.max_tokens ?? null,
  period: p.budget_period ?? "total"
})

/** A PATCH payload's budget fields (those given), or undefined when it has none. */
export const budgetPatch = (p: BudgetInput): BudgetPatch | undefined =>
  p.max_cost_usd === undefined && p.max_tokens === undefined && p.budget_period === undefined ? undefined : {
    ...(p.max_cost_usd !== undefined ? { maxCostUsd: p.max_cost_usd } : {}),
    ...(p.max_tokens !== undefined ? { maxTokens: p.max_tokens } : {}),
    ...(p.budget_period !== undefined ? { period: p.budget_period } : {})
  }

/** The budget and what was spent, as every read shows it, at `nowMs`. */
const spendJson = (b: BudgetRow, s: SpendRow, nowMs: number) => {
  const used = spentIn(s, b.period, nowMs)
  const end = periodEndOf(b.period, nowMs)
  return {
    max_cost_usd: b.maxCostUsd,
    max_tokens: b.maxTokens,
    budget_period: b.period,
    spent_usd: s.spentUsd,
    tokens_used: s.tokensUsed,
    period_spent_usd: used.costUsd,
    period_tokens_used: used.tokens,
    period_ends_at: end === undefined ? null : new Date(end).toISOString()
  }
}

/** A decoded payload's `max_requests`: 0 and null both mean unlimited (null in the store). */
export const quotaRow = (n: number | null): number | null => (n === null || n === 0 ? null : n)

/** What this instance knows of a key's state (src/proxy/keys.ts), by the key's id. */
export type KeyStateView = (id: string) => Pick<UpstreamKey, "state" | "until">

const fine: KeyStateView = () => ({ state: "ok" })

export const projectJson = (p: ProjectRow, keyState: KeyStateView = fine, nowMs: number = Date.now()): Project => ({
  id: p.id,
  name: p.name,
  api_key: p.apiKeyHint,
  api_keys: p.apiKeys.map((k, index) => ({
    index,
    key: k.hint,
    weight: k.weight,
    provider: k.provider ?? p.provider,
    ...keyState(k.id)
  })),
  provider: p.provider,
  is_active: p.isActive,
  ...(p.deactivatedAt !== null ? { deactivated_at: p.deactivatedAt } : {}),
  rate_limit: rateLimitJson(p.rateLimit),
  allowed_models: p.allowedModels,
  max_token_minutes: p.maxTokenMinutes,
  max_token_requests: p.maxTokenRequests,
  ...spendJson(p.budget, p.spend, nowMs),
  created_at: p.createdAt,
  updated_at: p.updatedAt
})

export const tokenJson = (t: TokenRow, nowMs: number = Date.now()): Token => ({
  id: t.id,
  token: t.tokenHint,
  project_id: t.projectId,
  expires_at: t.expiresAt,
  is_active: t.isActive,
  ...(t.deactivatedAt !== null ? { deactivated_at: t.deactivatedAt } : {}),
  request_count: t.requestCount,
  max_requests: t.maxRequests,
  rate_limit: rateLimitJson(t.rateLimit),
  cache_hit_count: t.cacheHitCount,
  prompt_tokens: t.promptTokens,
  completion_tokens: t.completionTokens,
  ...spendJson(t.budget, t.spend, nowMs),
  created_at: t.createdAt,
  last_used_at: t.lastUsedAt,
  name: t.name,
  user: t.user,
  metadata: t.metadata,
  allowed_models: t.allowedModels,
  created_by: t.projectKeyId === null ? AuditActors.managementApi : projectKeyActor(t.projectKeyId)
})

export const projectKeyJson = (k: ProjectKeyRow): ProjectKey => ({
  id: k.id,
  name: k.name,
  key: k.keyHint,
  project_id: k.projectId,
  is_active: k.revokedAt === null,
  created_at: k.createdAt,
  last_used_at: k.lastUsedAt,
  ...(k.revokedAt !== null ? { revoked_at: k.revokedAt } : {})
})

const optional = <K extends string>(key: K, value: string | null) =>
  (value === null ? {} : { [key]: value }) as Partial<Record<K, string>>

export const auditEventJson = (e: StoredAuditEvent): AuditEvent => ({
  id: e.id,
  timestamp: e.timestamp,
  action: e.action,
  actor: e.actor,
  outcome: e.outcome,
  ...optional("project_id", e.projectId),
  ...optional("token_id", e.tokenId),
  ...optional("request_id", e.requestId),
  ...optional("correlation_id", e.correlationId),
  ...optional("client_ip", e.clientIp),
  ...optional("method", e.method),
  ...optional("path", e.path),
  ...optional("user_agent", e.userAgent),
  ...optional("reason", e.reason),
  ...optional("metadata", e.metadata),
  count: e.count
})
