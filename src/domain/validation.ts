/**
 * Validation of management payloads with the exact messages of reference-system.md §2.3–2.4. Bodies arrive as
 * parsed JSON of unknown shape; every rule here answers a 400 with one clear message and never throws.
 */
import { Either } from "effect"
import {
  API_KEY_MAX,
  DURATION_MAX_MINUTES,
  MAX_REQUESTS_MAX,
  NAME_MAX,
  RATE_LIMIT_REQUESTS_MAX,
  RATE_LIMIT_WINDOW_MAX
} from "./models.js"

export type Invalid = string
type Obj = Record<string, unknown>

const INVALID_BODY = "invalid request body"
const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i
// C0/C1 control characters make names unprintable in tables and logs.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/

// A lone UTF-16 surrogate is not text: PostgreSQL refuses it (a 500 instead of a 400) and SQLite stores mojibake.
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

export const isUuid = (s: string): boolean => UUID_RE.test(s)

export interface RateLimitInput {
  readonly requests: number
  readonly windowSeconds: number
}

/**
 * `rate_limit`: absent → undefined (unchanged), null → null (none), `{"requests": N, "window_seconds": S}` →
 * the limit; anything else → the message.
 */
export const parseRateLimit = (u: unknown): Either.Either<RateLimitInput | null | undefined, Invalid> => {
  if (u === undefined) return Either.right(undefined)
  if (u === null) return Either.right(null)
  const bad = Either.left(
    `rate_limit must be null or {"requests": 1..${RATE_LIMIT_REQUESTS_MAX}, "window_seconds": 1..${RATE_LIMIT_WINDOW_MAX}}`
  )
  if (!isObj(u) || Object.keys(u).some((k) => k !== "requests" && k !== "window_seconds")) return bad
  const { requests, window_seconds } = u
  if (!isInt(requests) || requests < 1 || requests > RATE_LIMIT_REQUESTS_MAX) return bad
  if (!isInt(window_seconds) || window_seconds < 1 || window_seconds > RATE_LIMIT_WINDOW_MAX) return bad
  return Either.right({ requests, windowSeconds: window_seconds })
}

const isObj = (u: unknown): u is Obj => typeof u === "object" && u !== null && !Array.isArray(u)

/**
 * A name worth quoting back: letters, `_` and `-`, at most 40. Anything else a client sent as a name (a pasted API
 * key or token, typically long and with digits) is not repeated in errors, and so not in the audit log either.
 */
export const isPlainName = (name: string): boolean => /^[A-Za-z_-]{1,40}$/.test(name)

const unknownField = (body: Obj, allowed: ReadonlyArray<string>): Invalid | undefined => {
  for (const key of Object.keys(body)) {
    if (!allowed.includes(key)) return isPlainName(key) ? `unknown field "${key}"` : "unknown field"
  }
  return undefined
}

const typeError = (body: Obj, types: Record<string, "string" | "boolean">): boolean =>
  Object.entries(types).some(([k, t]) => body[k] !== undefined && typeof body[k] !== t)

const isObfuscated = (key: string) => key.includes("...") || key.includes("****")

const checkName = (name: string): Invalid | undefined => {
  if (name.trim() === "") return "name must not be empty"
  if (name.length > NAME_MAX) return `name must be at most ${NAME_MAX} characters`
  if (CONTROL_RE.test(name)) return "name must not contain control characters"
  if (LONE_SURROGATE_RE.test(name)) return "name must be valid Unicode text"
  return undefined
}

const checkApiKey = (key: string): Invalid | undefined => {
  if (key.length > API_KEY_MAX) return `api_key must be at most ${API_KEY_MAX} characters`
  if (isObfuscated(key)) return "cannot save obfuscated API key - please provide the full API key"
  if (/\s/.test(key) || CONTROL_RE.test(key)) return "api_key must not contain whitespace or control characters"
  if (LONE_SURROGATE_RE.test(key)) return "api_key must be valid Unicode text"
  return undefined
}

const checkProvider = (provider: string, providers: ReadonlySet<string>): Invalid | undefined =>
  providers.has(provider) ? undefined : `unknown provider "${provider.slice(0, 64)}"`

export interface NewProjectInput {
  readonly name: string
  readonly apiKey: string
  readonly provider: string
  readonly rateLimit: RateLimitInput | null
}

export const validateCreateProject = (
  body: unknown,
  providers: ReadonlySet<string>,
  defaultProvider: string
): Either.Either<NewProjectInput, Invalid> => {
  if (!isObj(body)) return Either.left(INVALID_BODY)
  const unknown = unknownField(body, ["name", "api_key", "provider", "rate_limit"])
  if (unknown) return Either.left(unknown)
  if (typeError(body, { name: "string", api_key: "string", provider: "string" })) return Either.left(INVALID_BODY)
  const name = body.name as string | undefined
  const apiKey = body.api_key as string | undefined
  if (!name || !apiKey) return Either.left("name and api_key are required")
  const provider = (body.provider as string | undefined) ?? defaultProvider
  const problem = checkName(name) ?? checkApiKey(apiKey) ?? checkProvider(provider, providers)
  if (problem) return Either.left(problem)
  return Either.map(parseRateLimit(body.rate_limit), (rateLimit) => ({ name, apiKey, provider, rateLimit: rateLimit ?? null }))
}

export interface ProjectPatchInput {
  readonly name?: string
  readonly apiKey?: string
  readonly provider?: string
  /** null removes the limit. */
  readonly rateLimit?: RateLimitInput | null
  readonly isActive?: boolean
  readonly revokeTokens: boolean
}

export const validateUpdateProject = (
  body: unknown,
  providers: ReadonlySet<string>
): Either.Either<ProjectPatchInput, Invalid> => {
  if (!isObj(body)) return Either.left(INVALID_BODY)
  const unknown = unknownField(body, ["name", "api_key", "provider", "is_active", "revoke_tokens", "rate_limit"])
  if (unknown) return Either.left(unknown)
  if (
    typeError(body, {
      name: "string",
      api_key: "string",
      provider: "string",
      is_active: "boolean",
      revoke_tokens: "boolean"
    })
  ) return Either.left(INVALID_BODY)
  const b = body as {
    name?: string
    api_key?: string
    provider?: string
    is_active?: boolean
    revoke_tokens?: boolean
  }
  if (b.revoke_tokens === true && b.is_active !== false) return Either.left("revoke_tokens requires is_active=false")
  const problem = (b.name !== undefined ? checkName(b.name) : undefined) ??
    (b.api_key ? checkApiKey(b.api_key) : undefined) ??
    (b.provider !== undefined ? checkProvider(b.provider, providers) : undefined)
  if (problem) return Either.left(problem)
  const rateLimit = parseRateLimit((body as Obj).rate_limit)
  if (Either.isLeft(rateLimit)) return Either.left(rateLimit.left)
  return Either.right({
    ...(b.name !== undefined ? { name: b.name } : {}),
    ...(rateLimit.right !== undefined ? { rateLimit: rateLimit.right } : {}),
    // An empty api_key means "keep the current key" (reference §2.3).
    ...(b.api_key ? { apiKey: b.api_key } : {}),
    ...(b.provider !== undefined ? { provider: b.provider } : {}),
    ...(b.is_active !== undefined ? { isActive: b.is_active } : {}),
    revokeTokens: b.revoke_tokens === true
  })
}

const isInt = (u: unknown): u is number => typeof u === "number" && Number.isSafeInteger(u)

export interface NewTokenInput {
  readonly projectId: string
  readonly durationMinutes: number
  readonly maxRequests: number | null
  readonly rateLimit: RateLimitInput | null
}

export const validateCreateToken = (body: unknown): Either.Either<NewTokenInput, Invalid> => {
  if (!isObj(body)) return Either.left(INVALID_BODY)
  const unknown = unknownField(body, ["project_id", "duration_minutes", "max_requests", "rate_limit"])
  if (unknown) return Either.left(unknown)
  const { project_id, duration_minutes, max_requests } = body
  if (project_id !== undefined && typeof project_id !== "string") return Either.left(INVALID_BODY)
  if (duration_minutes !== undefined && duration_minutes !== null && typeof duration_minutes !== "number") {
    return Either.left(INVALID_BODY)
  }
  if (max_requests !== undefined && max_requests !== null && typeof max_requests !== "number") {
    return Either.left(INVALID_BODY)
  }
  if (typeof duration_minutes === "number" && !Number.isInteger(duration_minutes)) {
    return Either.left("duration_minutes must be an integer")
  }
  if (typeof max_requests === "number" && !Number.isInteger(max_requests)) {
    return Either.left("max_requests must be an integer")
  }
  if (!isInt(duration_minutes) || duration_minutes <= 0) {
    if (typeof duration_minutes === "number" && duration_minutes > DURATION_MAX_MINUTES) {
      return Either.left("duration_minutes exceeds maximum allowed")
    }
    return Either.left("project_id and duration_minutes are required")
  }
  if (duration_minutes > DURATION_MAX_MINUTES) return Either.left("duration_minutes exceeds maximum allowed")
  if (!project_id) return Either.left("project_id is required")
  if (!isUuid(project_id)) return Either.left("invalid project_id")
  const maxProblem = checkMaxRequests(max_requests)
  if (maxProblem) return Either.left(maxProblem)
  return Either.map(parseRateLimit(body.rate_limit), (rateLimit) => ({
    projectId: project_id.toLowerCase(),
    durationMinutes: duration_minutes,
    maxRequests: typeof max_requests === "number" && max_requests > 0 ? max_requests : null,
    rateLimit: rateLimit ?? null
  }))
}

const checkMaxRequests = (u: unknown): Invalid | undefined => {
  if (typeof u !== "number") return undefined
  if (u < 0) return "max_requests must be >= 0"
  if (u > MAX_REQUESTS_MAX) return `max_requests must be <= ${MAX_REQUESTS_MAX}`
  return undefined
}

export interface TokenPatchInput {
  readonly isActive?: boolean
  /** null = unlimited */
  readonly maxRequests?: number | null
  readonly expiresAt?: string
  /** null removes the limit. */
  readonly rateLimit?: RateLimitInput | null
}

export const validateUpdateToken = (body: unknown): Either.Either<TokenPatchInput, Invalid> => {
  if (!isObj(body)) return Either.left(INVALID_BODY)
  const unknown = unknownField(body, ["is_active", "max_requests", "expires_at", "rate_limit"])
  if (unknown) return Either.left(unknown)
  const { is_active, max_requests, expires_at, rate_limit } = body
  if (is_active !== undefined && typeof is_active !== "boolean") return Either.left(INVALID_BODY)
  if (max_requests !== undefined && max_requests !== null && typeof max_requests !== "number") {
    return Either.left(INVALID_BODY)
  }
  if (expires_at !== undefined && typeof expires_at !== "string") return Either.left(INVALID_BODY)
  if (is_active === undefined && max_requests === undefined && expires_at === undefined && rate_limit === undefined) {
    return Either.left("no fields to update")
  }
  if (typeof max_requests === "number" && !Number.isInteger(max_requests)) {
    return Either.left("max_requests must be an integer")
  }
  const maxProblem = checkMaxRequests(max_requests)
  if (maxProblem) return Either.left(maxProblem)
  let expiresAt: string | undefined
  if (expires_at !== undefined) {
    const parsed = parseTimestamp(expires_at)
    if (parsed === undefined) return Either.left("expires_at must be an RFC 3339 timestamp")
    expiresAt = parsed
  }
  const rateLimit = parseRateLimit(rate_limit)
  if (Either.isLeft(rateLimit)) return Either.left(rateLimit.left)
  return Either.right({
    ...(rateLimit.right !== undefined ? { rateLimit: rateLimit.right } : {}),
    ...(is_active !== undefined ? { isActive: is_active } : {}),
    ...(max_requests !== undefined ? { maxRequests: typeof max_requests === "number" && max_requests > 0 ? max_requests : null } : {}),
    ...(expiresAt !== undefined ? { expiresAt } : {})
  })
}

const RFC3339_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/i

/** RFC 3339 → canonical UTC ISO string (ms precision), or undefined. */
export const parseTimestamp = (s: string): string | undefined => {
  if (!RFC3339_RE.test(s)) return undefined
  const ms = Date.parse(s)
  if (Number.isNaN(ms)) return undefined
  const d = new Date(ms)
  // Years outside 1..9999 (after conversion to UTC) print as "-000001-…"/"+010000-…", which is not RFC 3339
  // and which PostgreSQL rejects.
  const year = d.getUTCFullYear()
  return year < 1 || year > 9999 ? undefined : d.toISOString()
}

/** `active_only` query values accepted by `GET /manage/tokens`. */
export const parseBooleanParam = (s: string | undefined): Either.Either<boolean, Invalid> => {
  if (s === undefined || s === "") return Either.right(false)
  switch (s.toLowerCase()) {
    case "true":
    case "1":
    case "yes":
      return Either.right(true)
    case "false":
    case "0":
    case "no":
      return Either.right(false)
  }
  return Either.left("active_only must be true or false")
}

/** An integer query parameter within [min, max]; absent or empty → `fallback`. */
export const parsePageParam = (
  name: string,
  s: string | undefined,
  min: number,
  max: number,
  fallback: number
): Either.Either<number, Invalid> => {
  if (s === undefined || s === "") return Either.right(fallback)
  const n = /^\d{1,10}$/.test(s) ? Number(s) : NaN
  return Number.isInteger(n) && n >= min && n <= max
    ? Either.right(n)
    : Either.left(`${name} must be an integer between ${min} and ${max}`)
}
