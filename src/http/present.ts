/**
 * Rows → the JSON the API returns (and the few payload fields the other way). Secrets never leave here whole: keys
 * as their hint, tokens as theirs.
 */
import type { StoredAuditEvent } from "../audit/AuditRepo.js"
import { AuditActors, type AuditEvent, projectKeyActor } from "../domain/audit.js"
import type { Project, ProjectKey, RateLimitSetting, Token, UpstreamKey } from "../domain/models.js"
import type { ProjectKeyRow, ProjectRow, RateLimitRow, TokenRow } from "../store/Store.js"

const rateLimitJson = (r: RateLimitRow | null) => (r === null ? null : { requests: r.requests, window_seconds: r.windowSeconds })

/** A decoded payload's `rate_limit` (null removes the limit) as the store keeps it. */
export const rateLimitRow = (r: typeof RateLimitSetting.Type): RateLimitRow | null =>
  r === null ? null : { requests: r.requests, windowSeconds: r.window_seconds }

/** A decoded payload's `max_requests`: 0 and null both mean unlimited (null in the store). */
export const quotaRow = (n: number | null): number | null => (n === null || n === 0 ? null : n)

/** What this instance knows of a key's state (src/proxy/keys.ts), by the key's id. */
export type KeyStateView = (id: string) => Pick<UpstreamKey, "state" | "until">

const fine: KeyStateView = () => ({ state: "ok" })

export const projectJson = (p: ProjectRow, keyState: KeyStateView = fine): Project => ({
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
  created_at: p.createdAt,
  updated_at: p.updatedAt
})

export const tokenJson = (t: TokenRow): Token => ({
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
