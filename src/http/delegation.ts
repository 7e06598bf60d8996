/**
 * What a project key may give the tokens it mints or changes: never more than the project allows. Each bound is one
 * rule — the token field, the project's limit on it — checked in order on `POST /manage/tokens` and
 * `PATCH /manage/tokens/{id}` by a project key (the management token is not bound by them); the first one broken is
 * the 400. A new bound is one more entry in DELEGATION_RULES (the budgets are two).
 *
 * A token field left out on creation is within any bound unless its rule says `defaultToLimit` (the token then gets
 * the project's limit); `null` (none / unlimited) passes unless the rule says `unlimitedExceeds` (a per-token quota:
 * unlimited is more than any bound, where a budget left out still has the project's own budget above it).
 */
import type { ProjectRow } from "../store/Store.js"

/** A token as a project key asks for it. */
export interface DelegatedToken {
  /** The decoded payload, as sent. */
  readonly payload: Readonly<Record<string, unknown>>
  /** Minutes from now until it expires: `duration_minutes` on creation, `expires_at` on PATCH; undefined = unchanged. */
  readonly lifetimeMinutes: number | undefined
  readonly creating: boolean
}

export interface DelegationRule {
  /** The token field the rule bounds, as the API names it. */
  readonly field: string
  /** The project field that bounds it. */
  readonly projectField: string
  /** The project's limit; null = no bound. */
  readonly limit: (project: ProjectRow) => number | null
  /** What the token asks for: undefined = not given, null = none (unlimited). */
  readonly requested: (token: DelegatedToken) => number | null | undefined
  readonly defaultToLimit?: boolean
  readonly unlimitedExceeds?: boolean
  /** The refusal, when the generic one does not read well. */
  readonly message?: (limit: number) => string
}

const numberOrNull = (v: unknown): number | null | undefined =>
  v === undefined ? undefined : typeof v === "number" ? v : null

export const DELEGATION_RULES: ReadonlyArray<DelegationRule> = [
  {
    field: "duration_minutes",
    projectField: "max_token_minutes",
    limit: (p) => p.maxTokenMinutes,
    requested: (t) => t.lifetimeMinutes,
    message: (limit) =>
      `a project key may give a token at most ${limit} minutes (the project's max_token_minutes): ` +
      "duration_minutes, or expires_at from now"
  },
  {
    field: "max_requests",
    projectField: "max_token_requests",
    limit: (p) => p.maxTokenRequests,
    // 0 means unlimited on the wire.
    requested: (t) => {
      const v = numberOrNull(t.payload["max_requests"])
      return v === 0 ? null : v
    },
    defaultToLimit: true,
    unlimitedExceeds: true,
    message: (limit) =>
      `max_requests must be between 1 and ${limit} for a token a project key mints (the project's max_token_requests)`
  },
  // A token's own budget may be smaller than its project's, never larger (whatever the two periods: the project's
  // budget applies to the token as well). A token without one is under the project's.
  {
    field: "max_cost_usd",
    projectField: "max_cost_usd",
    limit: (p) => p.budget.maxCostUsd,
    requested: (t) => numberOrNull(t.payload["max_cost_usd"])
  },
  {
    field: "max_tokens",
    projectField: "max_tokens",
    limit: (p) => p.budget.maxTokens,
    requested: (t) => numberOrNull(t.payload["max_tokens"])
  }
]

/** The verdict: the 400 message, or what the token gets where it asked for nothing (`defaultToLimit`). */
export type Delegation =
  | { readonly _tag: "refused"; readonly message: string }
  | { readonly _tag: "allowed"; readonly defaults: Readonly<Record<string, number>> }

export const checkDelegation = (
  token: DelegatedToken,
  project: ProjectRow,
  rules: ReadonlyArray<DelegationRule> = DELEGATION_RULES
): Delegation => {
  const defaults: Record<string, number> = {}
  for (const rule of rules) {
    const limit = rule.limit(project)
    if (limit === null) continue
    const asked = rule.requested(token)
    if (asked === undefined) {
      if (token.creating && rule.defaultToLimit === true) defaults[rule.field] = limit
      continue
    }
    const exceeds = asked === null ? rule.unlimitedExceeds === true : asked > limit
    if (exceeds) {
      return {
        _tag: "refused",
        message: rule.message?.(limit) ??
          `${rule.field} must be at most ${limit} for a token a project key mints (the project's ${rule.projectField})`
      }
    }
  }
  return { _tag: "allowed", defaults }
}
