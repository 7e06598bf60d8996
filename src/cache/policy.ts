/**
 * Response-cache policy (docs/cache.md), as pure functions: what is looked up,
 * under which key, what is stored for how long, which headers are kept, and what a hit looks like on the wire.
 * Storage lives elsewhere (MemoryCache / RedisCache); the proxy calls these at its cache seam.
 *
 * Nothing here does I/O or reads a clock: time comes in as `now` (epoch milliseconds). Hashing uses node:crypto,
 * which is a pure computation.
 */
import { Either } from "effect"
import { createHash } from "node:crypto"
import { CachePurge, PURGE_METHOD_AND_URL_REQUIRED, PURGE_PREFIX_INVALID } from "../domain/models.js"
import { decodePayload } from "../domain/validation.js"

export type HeaderValue = string | ReadonlyArray<string> | undefined
/** Lower-case header names, as node:http and undici give them. */
export type Headers = Readonly<Record<string, HeaderValue>>
export type HeaderList = ReadonlyArray<readonly [string, string]>

/** The settings the policy needs (a subset of `CacheConfig`). */
export interface PolicyConfig {
  readonly defaultTtlSeconds: number
  readonly maxObjectBytes: number
  readonly streamResponses: boolean
}

// ---- Cache-Control ---------------------------------------------------------------------------------------------

export interface CacheControl {
  readonly public: boolean
  readonly private: boolean
  readonly noStore: boolean
  readonly noCache: boolean
  readonly mustRevalidate: boolean
  /** Seconds, when present and a valid non-negative integer. */
  readonly maxAge: number | undefined
  readonly sMaxAge: number | undefined
}

const headerText = (v: HeaderValue): string | undefined =>
  v === undefined ? undefined : typeof v === "string" ? v : v.length === 0 ? undefined : v.join(", ")

/** Parses `Cache-Control` (all values of the header). Unknown directives are ignored; bad numbers count as absent. */
export const parseCacheControl = (value: HeaderValue): CacheControl => {
  const text = headerText(value) ?? ""
  const out = {
    public: false,
    private: false,
    noStore: false,
    noCache: false,
    mustRevalidate: false,
    maxAge: undefined as number | undefined,
    sMaxAge: undefined as number | undefined
  }
  // Directives are comma-separated; a quoted argument (`private="set-cookie, x"`) may itself hold commas.
  for (const m of text.matchAll(/([A-Za-z0-9!#$%&'*+.^_`|~-]+)\s*(?:=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*)))?/g)) {
    const name = m[1]!.toLowerCase()
    const arg = m[2] ?? m[3]
    const seconds = arg !== undefined && /^\d{1,10}$/.test(arg) ? Number(arg) : undefined
    switch (name) {
      case "public":
        out.public = true
        break
      case "private":
        out.private = true
        break
      case "no-store":
        out.noStore = true
        break
      case "no-cache":
        out.noCache = true
        break
      case "must-revalidate":
      case "proxy-revalidate":
        out.mustRevalidate = true
        break
      case "max-age":
        if (seconds !== undefined) out.maxAge = seconds
        break
      case "s-maxage":
        if (seconds !== undefined) out.sMaxAge = seconds
        break
    }
  }
  return out
}

// ---- the request side ------------------------------------------------------------------------------------------

export interface CacheRequest {
  readonly method: string
  /** Path without the query string, as received. */
  readonly path: string
  /** Raw query string without the leading `?` ("" when none). */
  readonly query: string
  readonly headers: Headers
  /** The project the authenticated token belongs to: every entry is scoped to it. */
  readonly projectId: string
  /** The request body when the proxy has it buffered (needed to cache an opted-in POST). */
  readonly body?: Uint8Array | undefined
}

export type BypassReason = "method" | "no-store" | "post-without-opt-in" | "body-unavailable"

export type RequestPlan =
  | { readonly _tag: "Bypass"; readonly reason: BypassReason }
  | {
    readonly _tag: "Lookup"
    readonly key: string
    /** Client asked for revalidation (`no-cache`, `max-age=0`, `Pragma: no-cache`). */
    readonly revalidate: boolean
    /** Client opt-in lifetime (`Cache-Control: public, max-age|s-maxage=N`, N > 0). */
    readonly forcedTtl: number | undefined
  }

/** Headers always part of the key: they change the representation an LLM API returns. */
export const KEY_HEADERS = ["accept", "accept-encoding", "accept-language"] as const

/** No entry lives longer than a year, whatever a client or upstream asks for. */
export const MAX_TTL_SECONDS = 31_536_000

/**
 * Client opt-in: `public` plus a positive `s-maxage` (preferred) or `max-age`, capped at `maxTtl` seconds (the
 * operator's `HTTP_CACHE_CLIENT_MAX_TTL`: a client may shorten a lifetime, never lengthen it past that; 0 = clients
 * cannot force caching at all).
 */
export const clientForcedTtl = (cc: CacheControl, maxTtl: number = MAX_TTL_SECONDS): number | undefined => {
  const cap = Math.min(maxTtl, MAX_TTL_SECONDS)
  if (!cc.public || cap <= 0) return undefined
  if (cc.sMaxAge !== undefined && cc.sMaxAge > 0) return Math.min(cc.sMaxAge, cap)
  if (cc.maxAge !== undefined && cc.maxAge > 0) return Math.min(cc.maxAge, cap)
  return undefined
}

const sha256 = (data: string | Uint8Array) => createHash("sha256").update(data).digest("hex")

/** Query string with keys sorted and each key's values sorted: `a=1,2&b=&`. */
export const canonicalQuery = (query: string): string => {
  const grouped = new Map<string, Array<string>>()
  for (const [k, v] of new URLSearchParams(query)) {
    const values = grouped.get(k)
    if (values) values.push(v)
    else grouped.set(k, [v])
  }
  let out = ""
  for (const k of [...grouped.keys()].sort()) out += `${k}=${grouped.get(k)!.sort().join(",")}&`
  return out
}

const normalizedHeader = (headers: Headers, name: string): string => (headerText(headers[name]) ?? "").trim()

/** 32 hex characters naming method + path + sorted query: the part an exact purge deletes by. */
export const urlHash = (method: string, path: string, query: string): string =>
  sha256(`${method.toUpperCase()}|${path}|${canonicalQuery(query)}`).slice(0, 32)

/** 16 hex characters naming the project: entries of one project are never served to another. */
export const scopeHash = (projectId: string): string => sha256(`project|${projectId}`).slice(0, 16)

export const URL_HASH_LENGTH = 32
export const SCOPE_HASH_LENGTH = 16

/**
 * The key: `urlHash ‖ scopeHash ‖ variantHash` (80 hex characters). The variant covers the key headers, the body
 * of an opted-in POST and its opt-in lifetime. Putting the URL first lets an exact purge delete every project's
 * and every variant's entry by prefix, and a project purge match the fixed middle.
 */
export const cacheKey = (req: CacheRequest, forcedTtl: number | undefined): string => {
  const method = req.method.toUpperCase()
  let variant = ""
  for (const name of KEY_HEADERS) {
    const v = normalizedHeader(req.headers, name)
    if (v !== "") variant += `${name}:${v}|`
  }
  if (method !== "GET" && method !== "HEAD") {
    if (req.body !== undefined) variant += `body=${sha256(req.body)}|`
    if (forcedTtl !== undefined) variant += `ttl=${forcedTtl}|`
  }
  return urlHash(method, req.path, req.query) + scopeHash(req.projectId) + sha256(variant).slice(0, 32)
}

const wantsRevalidation = (headers: Headers, cc: CacheControl): boolean =>
  cc.noCache || cc.maxAge === 0 ||
  (headers["cache-control"] === undefined && /(^|,)\s*no-cache\s*(,|$)/i.test(headerText(headers["pragma"]) ?? ""))

/**
 * Decides whether a request is looked up in the cache, and under which key. `clientMaxTtl`: the longest lifetime a
 * client's opt-in may ask for (seconds; 0 = no opt-in, so no POST is ever cached).
 */
export const planRequest = (req: CacheRequest, clientMaxTtl: number = MAX_TTL_SECONDS): RequestPlan => {
  const method = req.method.toUpperCase()
  const cc = parseCacheControl(req.headers["cache-control"])
  if (method !== "GET" && method !== "HEAD" && method !== "POST") return { _tag: "Bypass", reason: "method" }
  if (cc.noStore) return { _tag: "Bypass", reason: "no-store" }
  const forcedTtl = clientForcedTtl(cc, clientMaxTtl)
  if (method === "POST") {
    if (forcedTtl === undefined) return { _tag: "Bypass", reason: "post-without-opt-in" }
    if (req.body === undefined) return { _tag: "Bypass", reason: "body-unavailable" }
  }
  return { _tag: "Lookup", key: cacheKey(req, forcedTtl), revalidate: wantsRevalidation(req.headers, cc), forcedTtl }
}

// ---- the response side -----------------------------------------------------------------------------------------

export interface UpstreamHead {
  readonly status: number
  readonly headers: Headers
}

export type StorePlan =
  | {
    readonly _tag: "Store"
    readonly ttlSeconds: number
    /** Lifetime came from the client's opt-in, not from the upstream. */
    readonly forced: boolean
    readonly streaming: boolean
  }
  | { readonly _tag: "Skip"; readonly debug: string }

/** Statuses a shared cache may store by default (RFC 9111 §4.2.2) that are also successes. */
const CACHEABLE_STATUS = new Set([200, 203])

export const isEventStream = (headers: Headers): boolean =>
  /^\s*text\/event-stream/i.test(headerText(headers["content-type"]) ?? "")

/** Vary names of a response, lower-cased, sorted, deduplicated; `["*"]` when it varies on everything. */
export const varyNames = (headers: Headers): ReadonlyArray<string> => {
  const names = new Set<string>()
  for (const part of (headerText(headers["vary"]) ?? "").split(",")) {
    const name = part.trim().toLowerCase()
    if (name === "*") return ["*"]
    if (name !== "") names.add(name)
  }
  return [...names].sort()
}

/** Decides whether (and for how long) an upstream response to a looked-up request is stored. */
export const planStore = (
  method: string,
  forcedTtl: number | undefined,
  res: UpstreamHead,
  config: PolicyConfig
): StorePlan => {
  const m = method.toUpperCase()
  if (m !== "GET" && m !== "HEAD" && m !== "POST") return { _tag: "Skip", debug: "method-not-cacheable" }
  if (!CACHEABLE_STATUS.has(res.status)) return { _tag: "Skip", debug: "status-not-cacheable" }
  const cc = parseCacheControl(res.headers["cache-control"])
  if (cc.noStore) return { _tag: "Skip", debug: "no-store" }
  if (cc.private) return { _tag: "Skip", debug: "private" }
  if (varyNames(res.headers)[0] === "*") return { _tag: "Skip", debug: "vary-star" }
  const streaming = isEventStream(res.headers)
  if (streaming && !config.streamResponses) return { _tag: "Skip", debug: "streaming-response" }
  // `no-cache` means "revalidate before every reuse": storing it under a client's forced TTL would serve it
  // unchecked. SSE servers send it by convention so that intermediaries do not buffer the live stream; with stream
  // caching switched on by the operator and asked for by the client, it does not block a completed stream.
  if (cc.noCache && !streaming) return { _tag: "Skip", debug: "no-cache" }
  const length = Number(headerText(res.headers["content-length"]) ?? "NaN")
  if (m !== "HEAD" && Number.isFinite(length) && length > config.maxObjectBytes) {
    return { _tag: "Skip", debug: "too-large" }
  }
  // The request always carried credentials (RFC 9111 §3.5): only `public`, `s-maxage` or `must-revalidate`
  // responses may be stored by a shared cache on the upstream's word alone.
  const sharedOk = cc.public || cc.sMaxAge !== undefined || cc.mustRevalidate
  if (sharedOk) {
    const fromResponse = cc.sMaxAge !== undefined && cc.sMaxAge > 0
      ? cc.sMaxAge
      : cc.maxAge !== undefined && cc.maxAge > 0
      ? cc.maxAge
      : cc.sMaxAge === undefined && cc.maxAge === undefined
      ? config.defaultTtlSeconds
      : 0
    if (fromResponse > 0) {
      return { _tag: "Store", ttlSeconds: Math.min(fromResponse, MAX_TTL_SECONDS), forced: false, streaming }
    }
  }
  if (forcedTtl !== undefined) return { _tag: "Store", ttlSeconds: forcedTtl, forced: true, streaming }
  return { _tag: "Skip", debug: "ttl-zero" }
}

// ---- entries ---------------------------------------------------------------------------------------------------

/** What is stored: a response minus everything that belongs to one request or one hop. */
export interface CachedResponse {
  readonly status: number
  readonly headers: HeaderList
  readonly body: Uint8Array
  /** Epoch milliseconds. */
  readonly storedAt: number
  readonly expiresAt: number
  /**
   * The request's values of response-Vary headers that are not already in the key (name, SHA-256 of the value —
   * `Vary: Authorization` or `Cookie` must not put a credential into the cache): a later request is served only
   * when its values are the same.
   */
  readonly vary: HeaderList
}

const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-authenticate",
  "proxy-authorization",
  "proxy-connection",
  "te",
  "trailer",
  "trailers",
  "transfer-encoding",
  "upgrade"
])

/** Per-request, per-hop or per-client headers: never stored, so a hit can never replay another request's. */
const NEVER_STORED = new Set([
  "set-cookie",
  "set-cookie2",
  "date",
  "age",
  "content-length",
  "x-request-id",
  "x-correlation-id",
  "server-timing",
  "x-upstream-request-start",
  "x-upstream-request-stop",
  "x-proxy-received-at",
  "x-proxy-first-response-at",
  "x-proxy-final-response-at",
  "x-proxy",
  "x-proxy-version",
  "cache-status",
  "x-proxy-cache",
  "x-proxy-cache-key",
  "x-cache-debug"
])

/** True when a response header may be kept in a cache entry. */
export const isStorableHeader = (name: string, connectionListed: ReadonlySet<string> = new Set()): boolean => {
  const n = name.toLowerCase()
  return !HOP_BY_HOP.has(n) && !NEVER_STORED.has(n) && !n.startsWith("access-control-") && !connectionListed.has(n)
}

const headerPairs = (headers: Headers): Array<[string, string]> => {
  const out: Array<[string, string]> = []
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined) continue
    if (typeof value === "string") out.push([name.toLowerCase(), value])
    else for (const v of value) out.push([name.toLowerCase(), v])
  }
  return out
}

/** The storable subset of response headers. */
export const storableHeaders = (headers: Headers): HeaderList => {
  const connectionListed = new Set(
    (headerText(headers["connection"]) ?? "").split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== "")
  )
  return headerPairs(headers).filter(([n]) => isStorableHeader(n, connectionListed))
}

const withHeader = (headers: HeaderList, name: string, value: string): HeaderList => [
  ...headers.filter(([n]) => n !== name),
  [name, value]
]

/** Builds the entry for a stored response. A forced entry says so in its own `Cache-Control`. */
export const makeEntry = (
  req: Pick<CacheRequest, "method" | "headers">,
  res: UpstreamHead,
  body: Uint8Array,
  plan: { readonly ttlSeconds: number; readonly forced: boolean },
  now: number
): CachedResponse => {
  let headers = storableHeaders(res.headers)
  if (plan.forced) headers = withHeader(headers, "cache-control", `public, max-age=${plan.ttlSeconds}`)
  // A HEAD response has no body to measure: keep the length the upstream announced for the GET representation.
  const length = headerText(res.headers["content-length"])
  if (req.method.toUpperCase() === "HEAD" && length !== undefined) {
    headers = withHeader(headers, "content-length", length)
  }
  const keyed = new Set<string>(KEY_HEADERS)
  const vary = varyNames(res.headers)
    .filter((n) => !keyed.has(n))
    .map((n) => [n, varyDigest(normalizedHeader(req.headers, n))] as const)
  return { status: res.status, headers, body, storedAt: now, expiresAt: now + plan.ttlSeconds * 1000, vary }
}

const varyDigest = (value: string): string => (value === "" ? "" : sha256(`vary|${value}`).slice(0, 32))

/** Bytes an entry costs: body, headers and a fixed overhead for the object itself. */
export const entrySize = (e: CachedResponse): number => {
  let n = 128 + e.body.byteLength
  for (const [k, v] of e.headers) n += k.length + v.length + 16
  for (const [k, v] of e.vary) n += k.length + v.length + 16
  return n
}

export const isFresh = (e: CachedResponse, now: number): boolean => now < e.expiresAt

/** A stored entry may serve this request only if the request agrees on every Vary header outside the key. */
export const varyMatches = (e: CachedResponse, headers: Headers): boolean =>
  e.vary.every(([name, digest]) => varyDigest(normalizedHeader(headers, name)) === digest)

export const entryHeader = (e: CachedResponse, name: string): string | undefined => {
  for (const [n, v] of e.headers) if (n === name) return v
  return undefined
}

// ---- conditional requests and revalidation ---------------------------------------------------------------------

const opaqueTag = (tag: string): string => tag.trim().replace(/^W\//, "").replace(/^"|"$/g, "")

/**
 * True when a client's `If-None-Match` / `If-Modified-Since` is satisfied by the entry (answer 304). Weak
 * comparison for ETags; `If-Modified-Since` is only consulted without `If-None-Match` (RFC 9110 §13.2.2).
 */
export const conditionalMatches = (e: CachedResponse, method: string, headers: Headers): boolean => {
  const m = method.toUpperCase()
  if (m !== "GET" && m !== "HEAD") return false
  const inm = headerText(headers["if-none-match"])
  if (inm !== undefined) {
    const etag = entryHeader(e, "etag")
    if (inm.trim() === "*") return true
    if (etag === undefined) return false
    const stored = opaqueTag(etag)
    return inm.split(",").some((t) => opaqueTag(t) === stored)
  }
  const ims = headerText(headers["if-modified-since"])
  const lm = entryHeader(e, "last-modified")
  if (ims === undefined || lm === undefined) return false
  const since = Date.parse(ims)
  const modified = Date.parse(lm)
  return Number.isFinite(since) && Number.isFinite(modified) && modified <= since
}

/** True when the client sent a conditional of its own (then an upstream 304 is its answer, not ours to translate). */
export const hasClientConditional = (headers: Headers): boolean =>
  headers["if-none-match"] !== undefined || headers["if-modified-since"] !== undefined

/** Validators the proxy adds when it revalidates an entry upstream; empty when the entry has none. */
export const revalidationHeaders = (e: CachedResponse): Record<string, string> => {
  const out: Record<string, string> = {}
  const etag = entryHeader(e, "etag")
  const lm = entryHeader(e, "last-modified")
  if (etag !== undefined) out["if-none-match"] = etag
  if (lm !== undefined) out["if-modified-since"] = lm
  return out
}

/**
 * The entry after an upstream 304 (RFC 9111 §4.3.4): headers the 304 carries replace the stored ones, and the
 * lifetime restarts from the 304's own `Cache-Control`, else the entry's previous lifetime. `undefined` when the
 * 304 forbids storing (`no-store`/`private`): the entry must then be dropped.
 */
export const refreshEntry = (e: CachedResponse, notModified: Headers, now: number): CachedResponse | undefined => {
  const cc = parseCacheControl(notModified["cache-control"])
  if (cc.noStore || cc.private) return undefined
  const updates = storableHeaders(notModified).filter(([n]) => n !== "content-length" && n !== "content-encoding")
  const replaced = new Set(updates.map(([n]) => n))
  const headers = [...e.headers.filter(([n]) => !replaced.has(n)), ...updates]
  const ttl = cc.sMaxAge !== undefined && cc.sMaxAge > 0
    ? cc.sMaxAge * 1000
    : cc.maxAge !== undefined && cc.maxAge > 0
    ? cc.maxAge * 1000
    : e.expiresAt - e.storedAt
  return { ...e, headers, storedAt: now, expiresAt: now + ttl }
}

// ---- what the client sees --------------------------------------------------------------------------------------

export type CacheOutcome = "hit" | "conditional-hit" | "revalidated" | "stored" | "stored (forced)" | "miss" | "bypass"

/**
 * `Cache-Status` / `X-PROXY-CACHE` / `X-PROXY-CACHE-KEY` (docs/cache.md "Headers reported"). `X-PROXY-CACHE` is
 * absent on a plain miss.
 */
export const cacheStatusHeaders = (outcome: CacheOutcome, key: string | undefined): Array<[string, string]> => {
  const out: Array<[string, string]> = [["cache-status", `llm-proxy; ${outcome}`]]
  if (outcome !== "miss") out.push(["x-proxy-cache", outcome === "stored (forced)" ? "stored" : outcome])
  if (key !== undefined) out.push(["x-proxy-cache-key", key])
  return out
}

/** Headers a 304 carries (RFC 9110 §15.4.5). */
const NOT_MODIFIED_HEADERS = new Set(["cache-control", "content-location", "etag", "expires", "last-modified", "vary"])

/**
 * Headers of a response served from the cache: the stored ones, a fresh `Date`, `Age` and the cache headers.
 * (The proxy adds the request's own `X-Request-ID` and CORS headers like on any response.)
 */
export const servedHeaders = (
  e: CachedResponse,
  outcome: "hit" | "conditional-hit" | "revalidated",
  key: string,
  now: number
): Array<readonly [string, string]> => {
  const stored = outcome === "conditional-hit" ? e.headers.filter(([n]) => NOT_MODIFIED_HEADERS.has(n)) : e.headers
  return [
    ...stored,
    ["date", new Date(now).toUTCString()],
    ["age", String(Math.max(0, Math.floor((now - e.storedAt) / 1000)))],
    ...cacheStatusHeaders(outcome, key)
  ]
}

// ---- purge -----------------------------------------------------------------------------------------------------

/** What a purge deletes. Every form may be restricted to one project. */
export type PurgeSelector =
  | { readonly _tag: "Exact"; readonly urlHash: string; readonly scope: string | undefined }
  | { readonly _tag: "Prefix"; readonly prefix: string; readonly scope: string | undefined }
  | { readonly _tag: "All"; readonly scope: string | undefined }

/** True when `key` is selected by the purge. */
export const purgeMatches = (selector: PurgeSelector, key: string): boolean => {
  const scopeOk = selector.scope === undefined ||
    key.slice(URL_HASH_LENGTH, URL_HASH_LENGTH + SCOPE_HASH_LENGTH) === selector.scope
  switch (selector._tag) {
    case "Exact":
      return scopeOk && key.startsWith(selector.urlHash)
    case "Prefix":
      return scopeOk && key.startsWith(selector.prefix)
    case "All":
      return scopeOk
  }
}

const METHOD = /^[A-Za-z]{1,16}$/

export type PurgeKind = "exact" | "prefix" | "all"

const decodePurge = decodePayload(CachePurge)

/**
 * A purge body: the types of its fields and the project id are the CachePurge Schema's (src/domain/models.ts); then
 * the form — `all: true`, else a non-empty `prefix`, else `method` and `url` — and that form's own rules (the
 * messages of docs/management-api.md "Response cache"). `ok: false` carries the 400 error text.
 */
export const parsePurge = (
  body: unknown
): { readonly ok: true; readonly kind: PurgeKind; readonly selector: PurgeSelector } | {
  readonly ok: false
  readonly error: string
} => {
  const decoded = decodePurge(body)
  if (Either.isLeft(decoded)) return { ok: false, error: decoded.left }
  const b = decoded.right
  // null and "" mean absent, as for `prefix`, `method` and `url`.
  const scope = b.project_id ? scopeHash(b.project_id.toLowerCase()) : undefined
  if (b.all === true) return { ok: true, kind: "all", selector: { _tag: "All", scope } }
  if (b.prefix) {
    if (!/^[0-9a-f]{1,80}$/i.test(b.prefix)) return { ok: false, error: PURGE_PREFIX_INVALID }
    return { ok: true, kind: "prefix", selector: { _tag: "Prefix", prefix: b.prefix.toLowerCase(), scope } }
  }
  if (!b.method || !b.url) return { ok: false, error: PURGE_METHOD_AND_URL_REQUIRED }
  if (!METHOD.test(b.method)) return { ok: false, error: "invalid method" }
  let parsed: URL
  try {
    if (!/^(https?:\/\/|\/)/i.test(b.url)) throw new Error("relative")
    parsed = new URL(b.url, "http://localhost")
  } catch {
    return { ok: false, error: "invalid URL" }
  }
  return {
    ok: true,
    kind: "exact",
    selector: { _tag: "Exact", urlHash: urlHash(b.method, parsed.pathname, parsed.search.replace(/^\?/, "")), scope }
  }
}
