/**
 * Store: the system of record for projects and tokens. One interface; SQLite and PostgreSQL layers implement it
 * on @effect/sql (see SqlStore.ts), chosen in src/Layers.ts.
 */
import { Context, Effect, Option, Schema } from "effect"
import type { KeysetPage, PageRequest } from "./keyset.js"

/** A storage failure. `message` is safe to log; the database's own text stays in `cause` and never reaches a client. */
export class StoreError extends Schema.TaggedError<StoreError>()("StoreError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {
  /** For the log only (never an answer): the message, then the client's and the driver's reasons under it. */
  get detail(): string {
    const parts = [this.message]
    let cur: unknown = this.cause
    for (let i = 0; i < 2 && typeof cur === "object" && cur !== null; i++) {
      const { cause, message } = cur as { readonly message?: unknown; readonly cause?: unknown }
      if (typeof message === "string" && message !== "") parts.push(message)
      cur = cause
    }
    return parts.join(": ")
  }
}

export class DuplicateProjectName extends Schema.TaggedError<DuplicateProjectName>()("DuplicateProjectName", {
  name: Schema.String
}) {}

/** A window rate limit: requests and/or LLM tokens per window (at least one of the two is set). */
export interface RateLimitRow {
  /** Requests per window; null = not limited by count. */
  readonly requests: number | null
  /** LLM tokens (input + output) per window; null or absent = not limited by tokens. */
  readonly tokens?: number | null | undefined
  readonly windowSeconds: number
}

/** One provider key of a project, as stored (`projects.api_keys`). */
export interface StoredKey {
  /** Random id given when the key was saved (the project's id for the key of a project saved before): what the
   * data plane keeps the key's state (cool-down, breaker) under. */
  readonly id: string
  /** Stored form: `enc:v1:…` when ENCRYPTION_KEY is set, else plaintext. */
  readonly key: string
  /** Obfuscated form computed at write time, so listing never decrypts. */
  readonly hint: string
  readonly weight: number
  /** null = the project's provider. */
  readonly provider: string | null
}

export type BudgetPeriod = "total" | "day" | "month"

/** A token's or project's budget; both limits null = none. */
export interface BudgetRow {
  readonly maxCostUsd: number | null
  /** Input + output tokens. */
  readonly maxTokens: number | null
  readonly period: BudgetPeriod
}

export const NO_BUDGET: BudgetRow = { maxCostUsd: null, maxTokens: null, period: "total" }

/**
 * What a token or project spent: over its whole life, and in the UTC day and month starting at `dayStart` /
 * `monthStart` (epoch ms; null = never). A start older than the current period's means nothing spent in it yet.
 */
export interface SpendRow {
  readonly spentUsd: number
  readonly tokensUsed: number
  readonly dayStart: number | null
  readonly dayCostUsd: number
  readonly dayTokens: number
  readonly monthStart: number | null
  readonly monthCostUsd: number
  readonly monthTokens: number
}

export const NOTHING_SPENT: SpendRow = {
  spentUsd: 0,
  tokensUsed: 0,
  dayStart: null,
  dayCostUsd: 0,
  dayTokens: 0,
  monthStart: null,
  monthCostUsd: 0,
  monthTokens: 0
}

/** Spend to add to one token or project, for the UTC day and month that start at `dayStart` / `monthStart`. */
export interface SpendDelta {
  readonly scope: "token" | "project"
  readonly id: string
  readonly costUsd: number
  readonly tokens: number
  readonly dayStart: number
  readonly monthStart: number
}

export interface ProjectRow {
  readonly id: string
  readonly name: string
  /** The first key's stored form: `enc:v1:…` when ENCRYPTION_KEY is set, else plaintext. */
  readonly apiKey: string
  /** The first key, obfuscated at write time, so listing never decrypts. */
  readonly apiKeyHint: string
  /** Every key, the first one included (a project saved before keys were lists: its one key). */
  readonly apiKeys: ReadonlyArray<StoredKey>
  readonly provider: string
  readonly isActive: boolean
  readonly deactivatedAt: string | null
  readonly rateLimit: RateLimitRow | null
  /** Model names or globs a request may name; null = any. */
  readonly allowedModels: ReadonlyArray<string> | null
  /** The longest lifetime a project key may give a token; null = no bound but the global one. */
  readonly maxTokenMinutes: number | null
  /** The largest `max_requests` a project key may give a token; null = no bound. */
  readonly maxTokenRequests: number | null
  readonly budget: BudgetRow
  readonly spend: SpendRow
  readonly createdAt: string
  readonly updatedAt: string
}

export interface TokenRow {
  readonly id: string
  readonly tokenHash: string
  readonly tokenHint: string
  readonly projectId: string
  readonly expiresAt: string | null
  readonly isActive: boolean
  readonly deactivatedAt: string | null
  readonly requestCount: number
  readonly maxRequests: number | null
  readonly rateLimit: RateLimitRow | null
  readonly cacheHitCount: number
  readonly promptTokens: number
  readonly completionTokens: number
  readonly budget: BudgetRow
  readonly spend: SpendRow
  readonly createdAt: string
  readonly lastUsedAt: string | null
  /** Model names or globs a request may name; null = any (the project's scope applies as well). */
  readonly allowedModels: ReadonlyArray<string> | null
  readonly name: string | null
  /** The end user the token was minted for. */
  readonly user: string | null
  readonly metadata: Readonly<Record<string, string>> | null
  /** The project key that minted it; null when the management token did. */
  readonly projectKeyId: string | null
}

/** A token's descriptive fields (name, user, metadata) and its model scope; null = none. */
export interface TokenLabels {
  readonly allowedModels?: ReadonlyArray<string> | null
  readonly name?: string | null
  readonly user?: string | null
  readonly metadata?: Readonly<Record<string, string>> | null
}

export interface NewProject {
  readonly id: string
  readonly name: string
  /** At least one. */
  readonly apiKeys: ReadonlyArray<StoredKey>
  readonly provider: string
  readonly rateLimit?: RateLimitRow | null
  readonly allowedModels?: ReadonlyArray<string> | null
  readonly maxTokenMinutes?: number | null
  readonly maxTokenRequests?: number | null
  readonly budget?: BudgetRow
  readonly now: string
}

export interface ProjectPatch {
  readonly name?: string
  /** Replaces every key (at least one). */
  readonly apiKeys?: ReadonlyArray<StoredKey>
  readonly provider?: string
  /** null removes the limit. */
  readonly rateLimit?: RateLimitRow | null
  /** null removes the bound (or the scope). */
  readonly allowedModels?: ReadonlyArray<string> | null
  readonly maxTokenMinutes?: number | null
  readonly maxTokenRequests?: number | null
  /** The fields given replace the current ones (null removes a limit). */
  readonly budget?: BudgetPatch
  readonly isActive?: boolean
  /** Revoke every active token of the project in the same transaction. */
  readonly revokeTokens?: boolean
  readonly now: string
}

export interface NewToken extends TokenLabels {
  readonly id: string
  readonly tokenHash: string
  readonly tokenHint: string
  readonly projectId: string
  readonly expiresAt: string
  readonly maxRequests: number | null
  readonly rateLimit?: RateLimitRow | null
  /** The project key that mints it (absent: the management token). */
  readonly projectKeyId?: string | null
  readonly budget?: BudgetRow
  readonly now: string
}

/** A budget change: each field given replaces the current one. */
export interface BudgetPatch {
  readonly maxCostUsd?: number | null
  readonly maxTokens?: number | null
  readonly period?: BudgetPeriod
}

/** What creating a token for a project came to: the token, or why the project refused it. */
export type CreateTokenResult =
  | { readonly _tag: "created"; readonly token: TokenRow }
  | { readonly _tag: "project_not_found" }
  | { readonly _tag: "project_inactive" }

/** Absent fields are kept; a label set to null is removed. */
export interface TokenPatch extends TokenLabels {
  readonly isActive?: boolean
  readonly maxRequests?: number | null
  readonly expiresAt?: string
  /** null removes the limit. */
  readonly rateLimit?: RateLimitRow | null
  readonly budget?: BudgetPatch
  readonly now: string
}

export interface BulkRevoke {
  readonly revoked: number
  readonly alreadyRevoked: number
  readonly total: number
}

/** A token's state at a moment: revoked (`is_active` false), else expired (`expires_at` ≤ now), else active. */
export type TokenStatus = "active" | "expired" | "revoked"

export interface TokenFilter {
  readonly projectId?: string
  /** Only tokens in this state at `now`. */
  readonly status?: TokenStatus
  /**
   * What the token's id starts with (any case), or its exact `user` or `name` (the searched fields: `tokenSearch` in
   * SqlStore.ts).
   */
  readonly search?: string
  /** Exactly this end user. */
  readonly user?: string
  /** Exactly this name. */
  readonly name?: string
  readonly now: string
}

export interface TokenCount {
  readonly count: number
  /** false when more tokens match than were counted (the count is then the cap). */
  readonly exact: boolean
}

export interface TokenCounts {
  readonly active: TokenCount
  readonly expired: TokenCount
  readonly revoked: TokenCount
}

/** Everything the proxy needs to admit a request with a token, read in one query. */
export interface TokenAuthRow {
  readonly tokenId: string
  readonly projectId: string
  readonly expiresAt: string | null
  readonly isActive: boolean
  readonly maxRequests: number | null
  readonly tokenRateLimit: RateLimitRow | null
  readonly projectActive: boolean
  /** Every key of the project, in stored form (`enc:v1:…` or plaintext). */
  readonly apiKeys: ReadonlyArray<StoredKey>
  readonly provider: string
  readonly projectRateLimit: RateLimitRow | null
  readonly tokenAllowedModels: ReadonlyArray<string> | null
  readonly projectAllowedModels: ReadonlyArray<string> | null
  readonly name: string | null
  readonly user: string | null
  readonly metadata: Readonly<Record<string, string>> | null
  readonly tokenBudget: BudgetRow
  readonly projectBudget: BudgetRow
}

export type QuotaResult = "ok" | "exhausted" | "inactive" | "expired" | "project_inactive" | "not_found"

/** Counters to add to one token (batched off the request path). */
export interface UsageDelta {
  readonly tokenId: string
  /** Requests to add to `request_count` (0 for limited tokens: their quota update counted them already). */
  readonly requests: number
  readonly promptTokens: number
  readonly completionTokens: number
  readonly cacheHits: number
  /** Latest use, or null to leave `last_used_at` alone. */
  readonly lastUsedAt: string | null
}

/** Usage to add to one (hour, token) rollup row. `hour` is the ISO start of a UTC hour (see `hourOf`). */
export interface HourlyUsage {
  readonly hour: string
  readonly projectId: string
  readonly tokenId: string
  /** Every answered request, cache hits included. */
  readonly requests: number
  readonly cacheHits: number
  /** Requests answered with status >= 400. */
  readonly errors: number
  readonly promptTokens: number
  readonly completionTokens: number
  /** USD; answers of models without a price count 0. */
  readonly costUsd?: number
}

export interface UsageQuery {
  /** Inclusive ISO start (rounded down to its hour by the caller). */
  readonly since: string
  /** Exclusive ISO end. */
  readonly until: string
  readonly projectId?: string
  readonly tokenId?: string
  /** Every token minted for this end user (tokens deleted by retention no longer count). */
  readonly user?: string
}

/** The sum over the matching rollup rows of one hour. */
export interface UsagePoint {
  readonly hour: string
  readonly requests: number
  readonly cacheHits: number
  readonly errors: number
  readonly promptTokens: number
  readonly completionTokens: number
  readonly costUsd: number
}

export interface ProjectPageQuery {
  /** Case-insensitive substring of the name, or a full project id. */
  readonly search?: string
  readonly limit: number
  readonly offset: number
  /** Count at most this many (default COUNT_CAP). */
  readonly countCap?: number
}

/** A project key: mints and manages the tokens of one project (src/token/ProjectKeys.ts). */
export interface ProjectKeyRow {
  readonly id: string
  readonly projectId: string
  readonly name: string
  /** SHA-256 of the key. */
  readonly keyHash: string
  /** `lpk-` + first 4 + `****` + last 4. */
  readonly keyHint: string
  readonly createdAt: string
  readonly lastUsedAt: string | null
  readonly revokedAt: string | null
}

export interface NewProjectKey {
  readonly id: string
  readonly projectId: string
  readonly name: string
  readonly keyHash: string
  readonly keyHint: string
  readonly now: string
}

/** Counts beyond this are not read to the end: a listing's `total_count` is exact up to it. */
export const COUNT_CAP = 10_000

export interface StoreShape {
  readonly dialect: "sqlite" | "postgres"
  readonly ping: Effect.Effect<void, StoreError>
  readonly listProjects: Effect.Effect<ReadonlyArray<ProjectRow>, StoreError>
  /**
   * One page of projects by name, whether more follow, and how many match in all — counted up to COUNT_CAP
   * (`totalExact` false beyond it).
   */
  readonly listProjectsPage: (q: ProjectPageQuery) => Effect.Effect<
    {
      readonly rows: ReadonlyArray<ProjectRow>
      readonly hasNext: boolean
      readonly total: number
      readonly totalExact: boolean
    },
    StoreError
  >
  readonly getProject: (id: string) => Effect.Effect<Option.Option<ProjectRow>, StoreError>
  readonly createProject: (p: NewProject) => Effect.Effect<ProjectRow, StoreError | DuplicateProjectName>
  /** None when the project does not exist. `revoked` counts tokens revoked by `revokeTokens`. */
  readonly updateProject: (
    id: string,
    patch: ProjectPatch
  ) => Effect.Effect<Option.Option<{ project: ProjectRow; revoked: number }>, StoreError | DuplicateProjectName>
  /** None when the project does not exist. */
  readonly revokeProjectTokens: (id: string, now: string) => Effect.Effect<Option.Option<BulkRevoke>, StoreError>
  readonly createToken: (t: NewToken) => Effect.Effect<TokenRow, StoreError>
  /**
   * Creates the token only if its project exists and is active, in one statement. On SQLite, concurrent calls
   * are committed together (one transaction per batch: a group commit).
   */
  readonly createTokenForProject: (t: NewToken) => Effect.Effect<CreateTokenResult, StoreError>
  /** One page of the matching tokens, newest first (created_at, then id), read through an index (keyset). */
  readonly listTokens: (filter: TokenFilter, page: PageRequest) => Effect.Effect<KeysetPage<TokenRow>, StoreError>
  /** Tokens (of one project, or all) per state at `now`, each counted up to `cap`. */
  readonly countTokens: (now: string, cap: number, projectId?: string) => Effect.Effect<TokenCounts, StoreError>
  readonly getToken: (id: string) => Effect.Effect<Option.Option<TokenRow>, StoreError>
  readonly getTokenByHash: (hash: string) => Effect.Effect<Option.Option<TokenRow>, StoreError>
  readonly updateToken: (id: string, patch: TokenPatch) => Effect.Effect<Option.Option<TokenRow>, StoreError>
  /**
   * Retention: deletes up to `limit` tokens that expired, or were revoked, before `before`, in one short
   * transaction; returns how many. Their usage rollups (usage_hourly) and audit events stay.
   */
  readonly pruneTokens: (before: string, limit: number) => Effect.Effect<number, StoreError>
  /** Idempotent; false when the token does not exist. */
  readonly revokeToken: (id: string, now: string) => Effect.Effect<boolean, StoreError>
  /** The token with its project, by the token's SHA-256. */
  readonly getTokenAuth: (hash: string) => Effect.Effect<Option.Option<TokenAuthRow>, StoreError>
  /**
   * One atomic conditional increment of `request_count` for a limited token: succeeds only while the token is
   * active, unexpired and under `max_requests` (exactly K of N concurrent callers get "ok").
   */
  readonly consumeQuota: (tokenId: string, now: string) => Effect.Effect<QuotaResult, StoreError>
  /** Adds batched counters, in one transaction. */
  readonly addUsage: (deltas: ReadonlyArray<UsageDelta>) => Effect.Effect<void, StoreError>
  /** Adds to the per-hour rollups (one upsert per batch; deltas of the same hour and token are summed first). */
  readonly addHourlyUsage: (deltas: ReadonlyArray<HourlyUsage>) => Effect.Effect<void, StoreError>
  /** Per-hour sums in [since, until), oldest first; hours without usage are absent. */
  readonly usageSeries: (q: UsageQuery) => Effect.Effect<ReadonlyArray<UsagePoint>, StoreError>
  /** None when the project does not exist. */
  readonly createProjectKey: (k: NewProjectKey) => Effect.Effect<Option.Option<ProjectKeyRow>, StoreError>
  /** The project's keys, newest first, revoked ones included. */
  readonly listProjectKeys: (projectId: string) => Effect.Effect<ReadonlyArray<ProjectKeyRow>, StoreError>
  /** The key with this SHA-256, revoked or not. */
  readonly getProjectKeyByHash: (hash: string) => Effect.Effect<Option.Option<ProjectKeyRow>, StoreError>
  /** Revokes the key if it is the project's (idempotent: `revoked_at` is kept); None when it is not. */
  readonly revokeProjectKey: (
    projectId: string,
    keyId: string,
    now: string
  ) => Effect.Effect<Option.Option<ProjectKeyRow>, StoreError>
  /** Sets `last_used_at` to `now` unless it is already at or after `notBefore` (so one write a minute at most). */
  readonly touchProjectKey: (id: string, now: string, notBefore: string) => Effect.Effect<void, StoreError>
  /** What a token and its project spent, read in one query (budgets); None when the token does not exist. */
  readonly spendOf: (
    tokenId: string
  ) => Effect.Effect<Option.Option<{ readonly token: SpendRow; readonly project: SpendRow }>, StoreError>
  /**
   * Adds spend to tokens and projects, in one transaction: older days first (a period restarts with its first delta),
   * then in one row order on every instance (no deadlocks between instances on PostgreSQL).
   */
  readonly addSpend: (deltas: ReadonlyArray<SpendDelta>) => Effect.Effect<void, StoreError>
}

export class Store extends Context.Tag("llm-proxy/Store")<Store, StoreShape>() {}
