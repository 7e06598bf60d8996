/**
 * Request policy of the data plane as pure functions (no I/O, no Effect): the route (allow-listed path + method),
 * path and query safety, origin rules, the parameter whitelist, CORS, header hygiene in both directions, and every locally produced
 * answer. Table-tested in test/proxy/policy.test.ts.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http"
import type { Endpoint, ProviderConfig } from "../config/Providers.js"
import { compileGlob as compileGlobOf } from "./glob.js"
import { BACKSLASH, QUOTE, skipSpace, stringEnd, valueEnd } from "./jsonBody.js"

/**
 * A locally produced answer: status, message, code (+ description) and headers, with its body serialised once in
 * each wire shape (`bodyOf`). On `/v1` the body takes the shape of the API the path belongs to, so that SDKs read
 * `code` and `type` as they do from the provider: OpenAI's `{"error": {"message", "type", "code", "param"}}`, or on
 * Anthropic's paths (`/v1/messages…`, `/v1/complete`) `{"type": "error", "error": {"type", "message"}}`; the
 * description, when there is one, is an extra member of the inner `error` object.
 */
export interface LocalAnswer {
  readonly status: number
  readonly message: string
  readonly code: string
  readonly description: string | undefined
  /** The OpenAI error `type` (the Anthropic one is derived from the status, see `anthropicType`). */
  readonly type: string
  /** No retry can change this answer (the token, the quota, the budget, the request itself): `x-should-retry: false`. */
  readonly final: boolean
  readonly headers?: Readonly<Record<string, string>>
  readonly openai: string
  readonly anthropic: string
}

export type ErrorShape = "openai" | "anthropic"

/** The paths of Anthropic's own API: answered in its error shape. */
export const errorShapeOf = (path: string): ErrorShape =>
  path.startsWith("/v1/messages") && (path.length === 12 || path[12] === "/") || path === "/v1/complete"
    ? "anthropic"
    : "openai"

export const bodyOf = (a: LocalAnswer, shape: ErrorShape): string => (shape === "anthropic" ? a.anthropic : a.openai)

/** OpenAI's error `type` for a status. */
export const openAiType = (status: number): string =>
  status === 401
    ? "authentication_error"
    : status === 403
    ? "permission_error"
    : status === 429
    ? "rate_limit_error"
    : status >= 500
    ? "api_error"
    : "invalid_request_error"

/** Anthropic's error `type` for a status (its documented types). */
export const anthropicType = (status: number): string =>
  status === 401
    ? "authentication_error"
    : status === 403
    ? "permission_error"
    : status === 404
    ? "not_found_error"
    : status === 413
    ? "request_too_large"
    : status === 429
    ? "rate_limit_error"
    : status >= 500
    ? "api_error"
    : "invalid_request_error"

/**
 * Codes, beyond the client errors, that no retry can fix: a used-up quota or budget. (Client errors other than 408
 * and 429 are final whatever their code; a window rate limit is not: it passes.)
 */
const FINAL_CODES: ReadonlySet<string> = new Set(["budget_exceeded"])
/** OpenAI's own type for a quota that is used up (its SDKs expose it as `error.type`). */
const QUOTA_TYPE = "insufficient_quota"

export interface AnswerOptions {
  /** OpenAI error type, when the status's default does not fit (`insufficient_quota`). */
  readonly type?: string
  /** Overrides the default: client errors (except 408, 429) and FINAL_CODES are final. */
  readonly final?: boolean
  readonly headers?: Readonly<Record<string, string>>
}

export const answer = (
  status: number,
  message: string,
  code: string,
  description?: string,
  options: AnswerOptions = {}
): LocalAnswer => {
  const type = options.type ?? (code === "budget_exceeded" ? QUOTA_TYPE : openAiType(status))
  const extra = description !== undefined ? { description } : {}
  return {
    status,
    message,
    code,
    description,
    type,
    final: options.final ??
      ((status >= 400 && status < 500 && status !== 408 && status !== 429) || FINAL_CODES.has(code)),
    ...(options.headers !== undefined ? { headers: options.headers } : {}),
    openai: JSON.stringify({ error: { message, type, code, param: null, ...extra } }),
    anthropic: JSON.stringify({ type: "error", error: { type: anthropicType(status), message, code, ...extra } })
  }
}

/** Every error the proxy produces itself (docs/proxy.md lists them). */
export const Answers = {
  missingAuthorization: answer(401, "Invalid token", "invalid_token", "missing or invalid authorization header"),
  malformedToken: answer(401, "Invalid token", "invalid_token", "invalid token format"),
  tokenNotFound: answer(401, "Token not found", "token_not_found"),
  tokenInactive: answer(401, "Token is inactive", "token_inactive"),
  tokenExpired: answer(401, "Token has expired", "token_expired"),
  quotaExhausted: answer(429, "Rate limit exceeded", "rate_limit_exceeded", "request quota (max_requests) exhausted", {
    type: QUOTA_TYPE,
    final: true
  }),
  rateLimited: (retryAfterSeconds: number, scope: "token" | "project"): LocalAnswer =>
    answer(429, "Rate limit exceeded", "rate_limit_exceeded", `${scope} rate limit exceeded`, {
      headers: { "retry-after": String(retryAfterSeconds) }
    }),
  /** A budget is used up: SDKs must not retry (`x-should-retry: false`); `which` names it. */
  budgetExceeded: (which: string): LocalAnswer =>
    answer(429, "Budget exceeded", "budget_exceeded", which, { type: QUOTA_TYPE, final: true }),
  /** A model without a price, for a token or project with a USD budget (UNPRICED_MODELS=refuse). */
  modelNotPriced: answer(
    403,
    "Model has no price",
    "model_not_priced",
    "this token or its project has a USD budget and the model has no price (PRICES_PATH)"
  ),
  projectInactive: answer(403, "Project is inactive", "project_inactive"),
  serviceUnavailable: answer(503, "Service temporarily unavailable", "service_unavailable"),
  // A configuration problem: only the operator can fix it.
  upstreamAuthError: answer(
    503,
    "Upstream authentication error",
    "upstream_auth_error",
    "failed to load upstream API key",
    {
      final: true
    }
  ),
  providerNotConfigured: answer(503, "Provider is not configured", "provider_not_configured", undefined, {
    final: true
  }),
  circuitOpen: (retryAfterSeconds: number): LocalAnswer =>
    answer(503, "Upstream unavailable (circuit breaker open)", "upstream_unavailable", undefined, {
      headers: { "retry-after": String(retryAfterSeconds) }
    }),
  keysCoolingDown: (retryAfterSeconds: number): LocalAnswer =>
    answer(503, "Upstream unavailable (every key is cooling down)", "upstream_unavailable", undefined, {
      headers: { "retry-after": String(retryAfterSeconds) }
    }),
  upstreamError: answer(502, "Proxy error", "upstream_error"),
  timeout: answer(504, "Request timeout", "timeout"),
  methodNotAllowed: (allow: ReadonlyArray<string>): LocalAnswer =>
    answer(405, "Method not allowed", "method_not_allowed", undefined, { headers: { allow: allow.join(", ") } }),
  endpointNotFound: answer(404, "Endpoint not found", "endpoint_not_found"),
  originRequired: answer(400, "Origin header required", "origin_required"),
  originNotAllowed: answer(403, "Origin not allowed", "origin_not_allowed"),
  requestTooLarge: answer(413, "Request body too large", "request_too_large"),
  badRequestBody: answer(400, "Invalid request body", "invalid_request"),
  credentialInQuery: answer(
    400,
    "Credentials are not accepted in the query string",
    "credential_in_query",
    "send the token in the Authorization header"
  ),
  duplicateAuthorization: answer(400, "Invalid token", "invalid_token", "more than one Authorization header"),
  paramNotAllowed: (param: string, value: string, patterns: ReadonlyArray<string>) =>
    answer(
      400,
      `Parameter '${param}' value '${value}' is not allowed. Allowed patterns: [${patterns.join(" ")}]`,
      "param_not_allowed"
    ),
  /** A whitelisted parameter whose value is not matched at all (too long, too deep): `reason` follows "value". */
  paramRefused: (param: string, reason: string) =>
    answer(400, `Parameter '${param}' value ${reason}`, "param_not_allowed"),
  /** The request names a model outside the project's or the token's `allowed_models`. */
  modelNotAllowed: (model: string) =>
    answer(403, `Model '${shown(model)}' is not allowed for this token`, "model_not_allowed"),
  /** A model scope applies and the request's model cannot be told (`why` completes the sentence). */
  modelUnchecked: (why: string) =>
    answer(
      403,
      `This token may only use certain models, and this request's model cannot be checked: ${why}`,
      "model_not_allowed"
    ),
  internalError: answer(500, "Internal error", "internal_error")
} as const

// ---------------------------------------------------------------------------------------------------------------
// Paths

/** `/v1`, `/v1/…` and `/v1?…` are the data plane's. */
export const isProxyPath = (url: string): boolean =>
  url.startsWith("/v1") && (url.length === 3 || url[3] === "/" || url[3] === "?")

export const splitUrl = (url: string): { readonly path: string; readonly query: string } => {
  const q = url.indexOf("?")
  return q === -1 ? { path: url, query: "" } : { path: url.slice(0, q), query: url.slice(q) }
}

// Dot segments, empty segments, backslashes and encoded separators/dots could make the upstream resolve a path the
// allow-list never saw; `;` (matrix parameters, `/v1/models/..;/files`) and `#` are read as separators by some
// servers. Nothing legitimate needs them.
const UNSAFE_PATH = /\/\.{1,2}(?:\/|$)|\/\/|\\|%2e|%2f|%5c|%00|%3b|[;#]|[\x00-\x20\x7f]/i

export const isSafePath = (path: string): boolean => path.startsWith("/") && !UNSAFE_PATH.test(path)

/** One segment-wise comparison: `null` segments match any one non-empty segment; no allocation. */
const segmentsMatch = (path: string, segments: ReadonlyArray<string | null>, prefix: boolean): boolean => {
  let i = 1
  for (const s of segments) {
    if (i > path.length) return false
    let end = path.indexOf("/", i)
    if (end === -1) end = path.length
    if (end === i) return false
    if (s !== null && (end - i !== s.length || !path.startsWith(s, i))) return false
    i = end + 1
  }
  return i > path.length || prefix
}

/**
 * Whether `path` is the endpoint's (exact) or under it on segment boundaries (prefix): `/v1/models` as a prefix
 * admits `/v1/models` and `/v1/models/…`, never `/v1/modelsX`.
 */
export const endpointMatches = (path: string, e: Endpoint): boolean => {
  if (e.segments !== undefined) return segmentsMatch(path, e.segments, e.prefix)
  const p = e.path
  if (path === p) return true
  return e.prefix && path.startsWith(p) && (path[p.length] === "/" || p === "/")
}

/** The methods the provider admits on `path` (the union of its matching entries, in configuration order). */
export const methodsFor = (path: string, provider: ProviderConfig): ReadonlyArray<string> => {
  const out: Array<string> = []
  for (const e of provider.allowedEndpoints) {
    if (!endpointMatches(path, e)) continue
    for (const m of e.methods) if (!out.includes(m)) out.push(m)
  }
  return out
}

/**
 * The route stage for one provider: undefined when an entry of `allowed_endpoints` matching the path lists the
 * method; else 405 with `Allow` naming the methods of the entries that match the path, or 404. The path must have
 * passed isSafePath.
 */
export const routeOf = (method: string, path: string, provider: ProviderConfig): LocalAnswer | undefined => {
  let known = false
  for (const e of provider.allowedEndpoints) {
    if (!endpointMatches(path, e)) continue
    if (e.methods.includes(method)) return undefined
    known = true
  }
  return known ? Answers.methodNotAllowed(methodsFor(path, provider)) : Answers.endpointNotFound
}

/** The answer when no provider admits the request: 405 naming what any of them admits on the path, else 404. */
export const routeRefusal = (path: string, providers: ReadonlyArray<ProviderConfig>): LocalAnswer => {
  const allow: Array<string> = []
  for (const p of providers) for (const m of methodsFor(path, p)) if (!allow.includes(m)) allow.push(m)
  return allow.length > 0 ? Answers.methodNotAllowed(allow) : Answers.endpointNotFound
}

/**
 * Query parameters that carry credentials (compared case-insensitively, after percent-decoding). A request naming
 * one is refused rather than stripped: the query is forwarded as received, never rewritten.
 */
export const QUERY_CREDENTIALS: ReadonlySet<string> = new Set([
  "key",
  "apikey",
  "api-key",
  "api_key",
  "x-api-key",
  "access_token",
  "access-token",
  "id_token",
  "token",
  "auth",
  "authorization",
  "bearer",
  "password",
  "secret",
  "client_secret",
  "sig"
])

const decodeName = (s: string): string => {
  if (!s.includes("%") && !s.includes("+")) return s
  try {
    return decodeURIComponent(s.replace(/\+/g, " "))
  } catch {
    return s
  }
}

/** True when the query (with or without its `?`) names a credential parameter; `&` and `;` both separate. */
export const hasQueryCredential = (query: string): boolean => {
  let start = query.startsWith("?") ? 1 : 0
  while (start < query.length) {
    let end = start
    while (end < query.length && query[end] !== "&" && query[end] !== ";") end++
    const eq = query.indexOf("=", start)
    const name = query.slice(start, eq === -1 || eq > end ? end : eq)
    if (name !== "" && QUERY_CREDENTIALS.has(decodeName(name).trim().toLowerCase())) return true
    start = end + 1
  }
  return false
}

/** The names a query (with its `?`) uses, decoded (the same reading as hasQueryCredential). */
const queryNames = (query: string): ReadonlyArray<string> => {
  const names: Array<string> = []
  let start = query.startsWith("?") ? 1 : 0
  while (start < query.length) {
    let end = start
    while (end < query.length && query[end] !== "&" && query[end] !== ";") end++
    const eq = query.indexOf("=", start)
    const name = query.slice(start, eq === -1 || eq > end ? end : eq)
    if (name !== "") names.push(decodeName(name))
    start = end + 1
  }
  return names
}

/**
 * The path and query sent upstream for a request's `url` (its `path` is the part before `?`, starting with `/v1`):
 * as received when the provider's `base_url` has no path and it sets no `query` (the common case: the same string,
 * nothing built). A `base_url` path replaces the `/v1` (`/v1beta/openai` + `/v1/chat/completions?x=1` →
 * `/v1beta/openai/chat/completions?x=1`). The client's query is kept as received, first; the provider's `query`
 * parameters follow, each unless the client's query names it already.
 */
export const upstreamPath = (provider: ProviderConfig, url: string, path: string): string => {
  const base = provider.basePath
  const fixed = provider.fixedQuery
  if (base === "" && fixed.length === 0) return url
  const target = base === "" ? path : base + path.slice(3)
  let query = url.length > path.length ? url.slice(path.length) : ""
  if (fixed.length > 0) {
    const named = query.length > 1 ? queryNames(query) : []
    for (const q of fixed) {
      if (named.includes(q.name)) continue
      query = query === "" || query === "?"
        ? `?${q.pair}`
        : query.endsWith("&")
        ? `${query}${q.pair}`
        : `${query}&${q.pair}`
    }
  }
  return target + query
}

// ---------------------------------------------------------------------------------------------------------------
// Origin and CORS

export const checkOrigin = (origin: string | undefined, provider: ProviderConfig): LocalAnswer | undefined => {
  if (origin === undefined || origin === "") return provider.requireOrigin ? Answers.originRequired : undefined
  if (provider.allowedOrigins.length > 0 && !provider.allowedOrigins.includes(origin)) return Answers.originNotAllowed
  return undefined
}

export const EXPOSED_HEADERS =
  "X-Request-ID, X-Upstream-Request-ID, Server-Timing, Retry-After, X-Should-Retry, Cache-Status, X-PROXY-CACHE, X-PROXY-CACHE-KEY"
const DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type, X-Requested-With"

/** Headers for a browser reading an answer (proxied or local) to a request that carried `Origin`. */
export const corsHeaders = (origin: string | undefined): Record<string, string> =>
  origin === undefined || origin === ""
    ? {}
    : { "access-control-allow-origin": origin, "access-control-expose-headers": EXPOSED_HEADERS, vary: "Origin" }

/**
 * Preflight (`OPTIONS`, no authentication): 204; CORS headers only when `Origin` and `Access-Control-Request-Method`
 * are present and some provider admits the origin, the path and that method; the methods listed are what those
 * providers admit on the path. Credentials are never allowed.
 */
export const preflight = (
  origin: string | undefined,
  requestMethod: string | undefined,
  path: string,
  requestHeaders: string | undefined,
  providers: ReadonlyArray<ProviderConfig>
): Record<string, string> => {
  if (origin === undefined || origin === "" || requestMethod === undefined || !isSafePath(path)) return {}
  const method = requestMethod.trim().toUpperCase()
  const methods: Array<string> = []
  for (const p of providers) {
    if (p.allowedOrigins.length > 0 && !p.allowedOrigins.includes(origin)) continue
    const admitted = methodsFor(path, p)
    if (!admitted.includes(method)) continue
    for (const m of admitted) if (!methods.includes(m)) methods.push(m)
  }
  if (methods.length === 0) return {}
  return {
    "access-control-allow-origin": origin,
    "access-control-allow-methods": methods.join(", "),
    "access-control-allow-headers": requestHeaders !== undefined && requestHeaders.trim() !== ""
      ? requestHeaders
      : DEFAULT_ALLOW_HEADERS,
    "access-control-expose-headers": EXPOSED_HEADERS,
    "access-control-max-age": "86400",
    vary: "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Parameter whitelist

/** `application/json`, `application/json; charset=utf-8`, `application/vnd.x+json`, … */
export const isJsonContentType = (contentType: string | undefined): boolean => {
  if (contentType === undefined) return false
  const semi = contentType.indexOf(";")
  const type = (semi === -1 ? contentType : contentType.slice(0, semi)).trim().toLowerCase()
  return type === "application/json" || (type.startsWith("application/") && type.endsWith("+json"))
}

export { compileGlob, type Glob } from "./glob.js"

/** Longest parameter value (as matched: strings as they are, other values as JSON) the whitelist looks at. */
export const MAX_PARAM_VALUE_LENGTH = 4096
/** Deepest nesting of arrays and objects in a whitelisted parameter's value. */
const MAX_PARAM_DEPTH = 32

/**
 * `JSON.stringify(v)` for a value of `JSON.parse`, or undefined as soon as the text passes `max` characters or the
 * nesting passes MAX_PARAM_DEPTH (a recursive `JSON.stringify` of a deeply nested value overflows the stack).
 */
const boundedJson = (v: unknown, max: number): string | undefined => {
  let out = ""
  const walk = (x: unknown, depth: number): boolean => {
    if (depth > MAX_PARAM_DEPTH) return false
    if (x === null || x === undefined) out += "null"
    else if (typeof x === "string") {
      if (x.length > max) return false
      out += JSON.stringify(x)
    } else if (typeof x === "number") out += Number.isFinite(x) ? String(x) : "null"
    else if (typeof x === "boolean") out += x ? "true" : "false"
    else if (Array.isArray(x)) {
      out += "["
      for (let i = 0; i < x.length; i++) {
        if (i > 0) out += ","
        if (!walk(x[i], depth + 1) || out.length > max) return false
      }
      out += "]"
    } else if (typeof x === "object") {
      out += "{"
      let first = true
      for (const k in x) {
        if (!Object.hasOwn(x, k)) continue
        out += (first ? "" : ",") + JSON.stringify(k) + ":"
        first = false
        if (!walk((x as Record<string, unknown>)[k], depth + 1) || out.length > max) return false
      }
      out += "}"
    } else out += "null"
    return out.length <= max
  }
  return walk(v, 0) ? out : undefined
}

const shown = (value: string) => (value.length > 200 ? value.slice(0, 200) + "…" : value)

/** One whitelisted parameter's value against its patterns. */
const checkParam = (param: string, raw: unknown, patterns: ReadonlyArray<string>): LocalAnswer | undefined => {
  if (typeof raw === "string" && raw.length > MAX_PARAM_VALUE_LENGTH) {
    return Answers.paramRefused(param, `'${raw.slice(0, 64)}…' is longer than ${MAX_PARAM_VALUE_LENGTH} characters`)
  }
  const value = typeof raw === "string"
    ? raw
    : typeof raw === "number" || typeof raw === "boolean"
    ? String(raw)
    : boundedJson(raw, MAX_PARAM_VALUE_LENGTH)
  if (value === undefined) return Answers.paramRefused(param, TOO_LONG_OR_DEEP)
  if (!patterns.some((p) => compileGlobOf(p)?.test(value) === true)) {
    return Answers.paramNotAllowed(param, shown(value), patterns)
  }
  return undefined
}

const TOO_LONG_OR_DEEP = `is longer than ${MAX_PARAM_VALUE_LENGTH} characters or nested too deeply`

/**
 * Top-level parameters named in the whitelist must match one of their patterns; absent ones pass. A value longer
 * than MAX_PARAM_VALUE_LENGTH, or nested too deeply to read, is refused (400) without being matched.
 */
export const checkParams = (
  body: unknown,
  whitelist: ReadonlyMap<string, ReadonlyArray<string>>
): LocalAnswer | undefined => {
  if (whitelist.size === 0 || typeof body !== "object" || body === null || Array.isArray(body)) return undefined
  for (const [param, patterns] of whitelist) {
    if (!Object.hasOwn(body, param)) continue
    const a = checkParam(param, (body as Record<string, unknown>)[param], patterns)
    if (a !== undefined) return a
  }
  return undefined
}

/** Bytes a whitelisted value's JSON text may take before it is refused unread (a character can take 6: `\u0041`). */
const MAX_PARAM_SLICE = MAX_PARAM_VALUE_LENGTH * 6 + 2

/**
 * `checkParams` on a JSON request body without parsing all of it: the top-level object is scanned once (strings are
 * skipped with a native search, nesting with a counter), and only the values of whitelisted parameters are parsed —
 * each bounded in size and depth before it is. A parse of the whole body (it may be MAX_REQUEST_SIZE) would stall
 * the event loop: 30 MB take half a second, 100,000 levels of nesting as long. Every occurrence of a parameter is
 * checked (a parser downstream may keep either of two). A body that is not a JSON object has nothing to check; a
 * malformed one is checked as far as it can be read (the upstream refuses the rest).
 */
export const checkBodyParams = (
  body: Buffer,
  whitelist: ReadonlyMap<string, ReadonlyArray<string>>
): LocalAnswer | undefined => {
  if (whitelist.size === 0) return undefined
  let maxKeyBytes = 2
  for (const name of whitelist.keys()) maxKeyBytes = Math.max(maxKeyBytes, name.length * 6 + 2)
  let i = skipSpace(body, 0)
  if (body[i] !== 0x7b) return undefined
  i = skipSpace(body, i + 1)
  if (body[i] === 0x7d) return undefined
  for (;;) {
    if (body[i] !== QUOTE) return undefined
    const keyEnd = stringEnd(body, i)
    if (keyEnd === -1) return undefined
    // A key longer than any whitelisted name can be, however it is encoded, is not decoded at all.
    let key: string | undefined
    if (keyEnd - i <= maxKeyBytes) {
      if (body.subarray(i, keyEnd).includes(BACKSLASH)) {
        try {
          key = JSON.parse(body.toString("utf8", i, keyEnd)) as string
        } catch {
          return undefined
        }
      } else key = body.toString("utf8", i + 1, keyEnd - 1)
    }
    i = skipSpace(body, keyEnd)
    if (body[i] !== 0x3a) return undefined
    i = skipSpace(body, i + 1)
    const patterns = key === undefined ? undefined : whitelist.get(key)
    const depth = { max: 0 }
    const end = valueEnd(body, i, depth)
    if (end === -1 || end === i) {
      return patterns === undefined
        ? undefined
        : Answers.paramRefused(key!, "is not valid JSON")
    }
    if (patterns !== undefined && key !== undefined) {
      if (end - i > MAX_PARAM_SLICE || depth.max > MAX_PARAM_DEPTH) return Answers.paramRefused(key, TOO_LONG_OR_DEEP)
      let value: unknown
      try {
        value = JSON.parse(body.toString("utf8", i, end))
      } catch {
        return Answers.paramRefused(key, "is not valid JSON")
      }
      const a = checkParam(key, value, patterns)
      if (a !== undefined) return a
    }
    i = skipSpace(body, end)
    if (body[i] === 0x7d) return undefined
    if (body[i] !== 0x2c) return undefined
    i = skipSpace(body, i + 1)
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Authorization

const BEARER = /^\s*bearer\s+(\S+)\s*$/i

/** The credential of `Authorization: Bearer <x>` (scheme case-insensitive), else undefined. */
export const bearerCredential = (header: string | undefined): string | undefined => {
  if (header === undefined) return undefined
  const m = BEARER.exec(header)
  return m ? m[1] : undefined
}

/**
 * True when `Authorization` appears more than once in the raw header list. Which copy counts depends on who reads
 * them (Node keeps the first, other proxies the last or a join), so a request carrying two is refused rather than
 * letting a front proxy and this one disagree about who the caller is.
 */
export const duplicateAuthorization = (rawHeaders: ReadonlyArray<string>): boolean => {
  let seen = false
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!
    if (name.length === 13 && name.toLowerCase() === "authorization") {
      if (seen) return true
      seen = true
    }
  }
  return false
}

// ---------------------------------------------------------------------------------------------------------------
// Request ids and timing

const SAFE_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** A client's X-Request-ID is kept when it is short and safe, else replaced. */
export const requestIdOf = (header: string | undefined): string =>
  header !== undefined && SAFE_REQUEST_ID.test(header) ? header : crypto.randomUUID()

/**
 * `proxy;dur=<ms before the first upstream attempt>`, then `upstream;dur=<ms from the first attempt until the
 * answer's headers, every attempt included>` once an upstream answered, and `attempts;desc=<upstream attempts>` once
 * the request went upstream.
 */
export const serverTiming = (proxyMs: number, upstreamMs: number | undefined, attempts = 0): string => {
  const proxy = `proxy;dur=${proxyMs.toFixed(2)}`
  const timed = upstreamMs === undefined ? proxy : `${proxy}, upstream;dur=${upstreamMs.toFixed(2)}`
  return attempts === 0 ? timed : `${timed}, attempts;desc=${attempts}`
}

// ---------------------------------------------------------------------------------------------------------------
// Header hygiene (docs/proxy.md "Headers")

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade"
])

const NONE: ReadonlyArray<string> = []

/** Header names listed in `Connection` (beyond keep-alive/close, which are stripped anyway). */
const connectionTokens = (value: string | string[] | undefined): ReadonlyArray<string> => {
  if (value === undefined) return NONE
  if (typeof value === "string") {
    const v = value.length < 11 ? value.toLowerCase() : ""
    if (v === "keep-alive" || v === "close") return NONE
  }
  return (Array.isArray(value) ? value.join(",") : value).split(",").map((t) => t.trim().toLowerCase())
}

/**
 * The headers sent upstream, an allow-list: the client's headers the provider forwards (`forwardsHeader`: content type, accept, user agent, provider version/beta headers, idempotency keys,
 * `x-stainless-*`, plus the YAML's `forward_headers`) unless `Connection` names them; then the provider's fixed
 * `headers`; then the project key in the provider's scheme, our request id, `accept-encoding: identity` (usage is
 * read from the bytes, which must not be compressed) and the body's length. Credentials, cookies, the billed
 * account (`OpenAI-Organization`, `OpenAI-Project`), client addresses and trace context are never forwarded.
 */
export const upstreamRequestHeaders = (
  client: IncomingHttpHeaders,
  provider: ProviderConfig,
  apiKey: string,
  requestId: string,
  contentLength: number | undefined
): Record<string, string | string[]> => {
  const named = connectionTokens(client.connection)
  const forwards = provider.forwardsHeader
  const out: Record<string, string | string[]> = {}
  for (const name in client) {
    if (!forwards(name)) continue
    if (named.length > 0 && named.includes(name)) continue
    const v = client[name]
    if (v !== undefined) out[name] = v
  }
  const fixed = provider.fixedHeaders
  for (let i = 0; i < fixed.length; i++) out[fixed[i]![0]] = fixed[i]![1]
  out[provider.authHeader] = provider.authScheme === "" ? apiKey : `${provider.authScheme} ${apiKey}`
  out["x-request-id"] = requestId
  out["accept-encoding"] = "identity"
  if (contentLength !== undefined) out["content-length"] = String(contentLength)
  return out
}

/** Upstream response headers minus hop-by-hop ones (and those named by `Connection`). */
export const downstreamHeaders = (upstream: Record<string, string | string[] | undefined>): OutgoingHttpHeaders => {
  const named = connectionTokens(upstream.connection)
  const out: OutgoingHttpHeaders = {}
  for (const name in upstream) {
    if (HOP_BY_HOP.has(name) || (named.length > 0 && named.includes(name))) continue
    const v = upstream[name]
    if (v !== undefined) out[name] = v
  }
  return out
}
