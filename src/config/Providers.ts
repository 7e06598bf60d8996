/**
 * Providers: the upstream APIs projects may name. Either the YAML file of docs/proxy.md "Providers"
 * (`API_CONFIG_PATH`, decoded with Schema, per provider `auth_header` / `auth_scheme` included) or, when
 * no file is given, the built-in `openai` provider at `OPENAI_API_URL`. Upstream base URLs come only from here.
 * Every key of the file has an effect; a key the format does not have is refused at start-up (docs/proxy.md).
 */
import { Context, Effect, Either, Layer, ParseResult, Schema } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { parseDuration } from "./AppConfig.js"

/**
 * One `allowed_endpoints` entry: a path, exact or a prefix on segment boundaries, and the methods it admits. Several
 * entries may name the same path; a request is admitted when any entry matching its path lists its method.
 */
export interface Endpoint {
  /** Normalised: leading `/`, no trailing slash (except `/` itself); `{name}` segments match any one segment. */
  readonly path: string
  /** false: the path itself only; true: the path and everything under it (`/v1/audio` admits `/v1/audio/speech`). */
  readonly prefix: boolean
  /** Upper case. */
  readonly methods: ReadonlyArray<string>
  /** The path's segments with `null` for a `{name}` one; undefined when the path has no `{name}` segment. */
  readonly segments: ReadonlyArray<string | null> | undefined
}

export interface ProviderConfig {
  readonly name: string
  /** Scheme + host (+ port) of `base_url`. */
  readonly origin: string
  /**
   * The path of `base_url` without a trailing `/` ("" when it has none): when set, it replaces the request path's
   * `/v1` (`/v1beta/openai` + `/v1/chat/completions` → `/v1beta/openai/chat/completions`).
   */
  readonly basePath: string
  /** `query`: parameters added to the upstream URL when the client's query does not name them (see upstreamPath). */
  readonly fixedQuery: ReadonlyArray<QueryParameter>
  readonly allowedEndpoints: ReadonlyArray<Endpoint>
  /** Glob patterns per top-level JSON parameter. */
  readonly paramWhitelist: ReadonlyMap<string, ReadonlyArray<string>>
  /** Exact origins; empty = any origin. */
  readonly allowedOrigins: ReadonlyArray<string>
  readonly requireOrigin: boolean
  /** Lower case header name the upstream key goes into. */
  readonly authHeader: string
  /** `Bearer` by default; "" sends the bare key. */
  readonly authScheme: string
  /**
   * Whether a client header (lower-case name) is sent upstream: FORWARDED_HEADERS, FORWARDED_PREFIXES and the
   * provider's `forward_headers` (names and `x-…-*` prefixes).
   */
  readonly forwardsHeader: (name: string) => boolean
  /** `headers`: fixed values sent upstream, replacing any client value (lower-case names). */
  readonly fixedHeaders: ReadonlyArray<readonly [string, string]>
  /** Response-header timeout for this provider (ms); undefined = REQUEST_TIMEOUT. */
  readonly responseHeaderTimeoutMs: number | undefined
  /**
   * `timeouts.request`: the bound on all of a request's upstream attempts together, from the first one's start to
   * the answer's headers (ms); undefined = the response-header timeout. Streams are never cut by it.
   */
  readonly requestTimeoutMs: number | undefined
  /** How long an idle keep-alive connection is kept (ms). */
  readonly idleConnectionMs: number
  /** Connections per pool; undefined = unbounded. */
  readonly maxConnections: number | undefined
  /**
   * `inject_user`: JSON requests of a token minted for an end user get that user as their OpenAI `user`
   * (`safety_identifier` for the Responses API) when they do not set it (src/proxy/modelScope.ts `injectUser`).
   */
  readonly injectUser: boolean
  /**
   * Idle keep-alive connections kept open at most (`max_idle_conns`, `max_idle_conns_per_host`: a provider is one
   * host, so the smaller); undefined = no bound but `idle_connection`.
   */
  readonly maxIdleConnections: number | undefined
}

/** One fixed query parameter: its name as compared with the client's, and `name=value` percent-encoded. */
export interface QueryParameter {
  readonly name: string
  readonly pair: string
}

export interface ProvidersShape {
  readonly names: ReadonlySet<string>
  readonly defaultProvider: string
  readonly all: ReadonlyArray<ProviderConfig>
  readonly get: (name: string) => ProviderConfig | undefined
}

export class ProvidersError extends Schema.TaggedError<ProvidersError>()("ProvidersError", {
  message: Schema.String
}) {}

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/

const Duration = Schema.String.pipe(
  Schema.filter((s) => parseDuration(s) !== undefined || "expected a duration such as 30s or 500ms")
)
const StringList = Schema.Array(Schema.String)

const ProviderYaml = Schema.Struct({
  base_url: Schema.String,
  // Strings (prefixes, methods from allowed_methods) or { path, methods?, match? }; checked by endpointsOf.
  allowed_endpoints: Schema.Array(Schema.Unknown).pipe(Schema.minItems(1)),
  allowed_methods: Schema.optional(StringList.pipe(Schema.minItems(1))),
  timeouts: Schema.optional(Schema.Struct({
    request: Schema.optional(Duration),
    response_header: Schema.optional(Duration),
    idle_connection: Schema.optional(Duration),
    flush_interval: Schema.optional(Duration)
  })),
  connection: Schema.optional(Schema.Struct({
    max_idle_conns: Schema.optional(Schema.Int.pipe(Schema.positive())),
    max_idle_conns_per_host: Schema.optional(Schema.Int.pipe(Schema.positive())),
    max_conns_per_host: Schema.optional(Schema.Int.pipe(Schema.positive()))
  })),
  param_whitelist: Schema.optional(Schema.Record({ key: Schema.String, value: StringList })),
  allowed_origins: Schema.optional(StringList),
  required_headers: Schema.optional(StringList),
  auth_header: Schema.optional(Schema.String.pipe(Schema.pattern(HEADER_NAME))),
  auth_scheme: Schema.optional(Schema.String),
  forward_headers: Schema.optional(StringList),
  headers: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  inject_user: Schema.optional(Schema.Boolean),
  query: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String }))
})

const ProvidersYaml = Schema.Struct({
  default_api: Schema.optional(Schema.String),
  apis: Schema.Record({ key: Schema.String, value: ProviderYaml })
})

const normaliseEndpoint = (e: string): string => {
  const trimmed = e.trim()
  const withSlash = trimmed.startsWith("/") ? trimmed : `/${trimmed}`
  return withSlash.length > 1 ? withSlash.replace(/\/+$/, "") : withSlash
}

const PARAM_SEGMENT = /^\{[A-Za-z0-9_]+\}$/

/** An endpoint from a normalised path; `{name}` segments become wildcards. */
export const endpoint = (path: string, methods: ReadonlyArray<string>, prefix: boolean): Endpoint => {
  const parts = path === "/" ? [] : path.slice(1).split("/")
  const templated = parts.some((s) => PARAM_SEGMENT.test(s))
  return {
    path,
    prefix,
    methods: [...new Set(methods)],
    segments: templated ? parts.map((s) => (PARAM_SEGMENT.test(s) ? null : s)) : undefined
  }
}

const METHOD = /^[A-Za-z]+$/

/**
 * `allowed_endpoints`: a string keeps its old meaning (a prefix on segment boundaries, methods from
 * `allowed_methods`); `{ path, methods?, match? }` is exact unless `match: prefix`, with its own methods (default
 * `allowed_methods`). Every problem names the entry.
 */
const endpointsOf = (
  name: string,
  entries: ReadonlyArray<unknown>,
  methods: ReadonlyArray<string> | undefined
): Either.Either<ReadonlyArray<Endpoint>, string> => {
  const out: Array<Endpoint> = []
  const defaults = methods?.map((m) => m.trim().toUpperCase())
  const missing = `${name}.allowed_methods: is missing (entries of allowed_endpoints without their own methods use it)`
  for (let i = 0; i < entries.length; i++) {
    const at = `${name}.allowed_endpoints.${i}`
    const e = entries[i]
    if (typeof e === "string") {
      if (e.trim() === "") return Either.left(`${at}: expected a path`)
      if (defaults === undefined) return Either.left(missing)
      out.push(endpoint(normaliseEndpoint(e), defaults, true))
      continue
    }
    if (typeof e !== "object" || e === null || Array.isArray(e)) {
      return Either.left(`${at}: expected a path or { path, methods, match }`)
    }
    const o = e as Record<string, unknown>
    const unknown = Object.keys(o).find((k) => k !== "path" && k !== "methods" && k !== "match")
    // A misspelt key (`method:`) would otherwise widen the entry to allowed_methods.
    if (unknown !== undefined) return Either.left(`${at}: unknown key "${unknown}" (path, methods, match)`)
    if (typeof o["path"] !== "string" || o["path"].trim() === "") return Either.left(`${at}.path: expected a path`)
    const match = o["match"] ?? "exact"
    if (match !== "exact" && match !== "prefix") return Either.left(`${at}.match: expected exact or prefix`)
    let own: ReadonlyArray<string> | undefined
    if (o["methods"] !== undefined) {
      const ms = o["methods"]
      if (!Array.isArray(ms) || ms.length === 0 || !ms.every((m) => typeof m === "string" && METHOD.test(m.trim()))) {
        return Either.left(`${at}.methods: expected a non-empty list of HTTP methods`)
      }
      own = ms.map((m: string) => m.trim().toUpperCase())
    }
    const list = own ?? defaults
    if (list === undefined) return Either.left(missing)
    out.push(endpoint(normaliseEndpoint(o["path"]), list, match === "prefix"))
  }
  return Either.right(out)
}

/**
 * Client headers sent upstream by every provider (plus `x-stainless-*`, the OpenAI and Anthropic SDKs' client
 * metadata): content negotiation, a client's own conditional GET, the user agent, the origin, the providers' API version and beta switches, and
 * idempotency keys. Anything else needs the provider's `forward_headers`.
 */
export const FORWARDED_HEADERS: ReadonlyArray<string> = [
  "content-type",
  "accept",
  "accept-language",
  "if-none-match",
  "if-modified-since",
  "user-agent",
  "origin",
  "idempotency-key",
  "openai-beta",
  "anthropic-version",
  "anthropic-beta",
  "anthropic-dangerous-direct-browser-access"
]
export const FORWARDED_PREFIXES: ReadonlyArray<string> = ["x-stainless-"]

// Set by the proxy itself or framing the connection: neither forwarded from clients nor settable in `headers`.
const PROXY_SET = new Set([
  "host",
  "content-length",
  "transfer-encoding",
  "connection",
  "keep-alive",
  "proxy-connection",
  "te",
  "trailer",
  "upgrade",
  "expect",
  "accept-encoding",
  "x-request-id"
])
// Never taken from a client, whatever forward_headers says: credentials, the billed account, the client's address.
const NEVER_FROM_CLIENTS = new Set([
  "authorization",
  "proxy-authorization",
  "x-api-key",
  "api-key",
  "cookie",
  "openai-organization",
  "openai-project",
  "forwarded",
  "x-real-ip",
  "x-client-ip",
  "true-client-ip",
  "cf-connecting-ip",
  "fastly-client-ip",
  "x-cluster-client-ip",
  "x-original-forwarded-for"
])
const neverFromClients = (h: string) => PROXY_SET.has(h) || NEVER_FROM_CLIENTS.has(h) || h.startsWith("x-forwarded-")

/**
 * The allow-list as one function, memoised: it runs for every header of every request, and one Map lookup of a
 * name seen before costs less than the set lookup plus prefix comparisons (bounded: header names come from clients).
 */
export const headerForwarder = (
  names: ReadonlySet<string>,
  prefixes: ReadonlyArray<string>
): (name: string) => boolean => {
  const memo = new Map<string, boolean>()
  return (name) => {
    let ok = memo.get(name)
    if (ok === undefined) {
      ok = names.has(name) || prefixes.some((p) => name.startsWith(p))
      if (memo.size < 1_024) memo.set(name, ok)
    }
    return ok
  }
}

const forwardingOf = (
  name: string,
  authHeader: string,
  list: ReadonlyArray<string> | undefined
): Either.Either<(name: string) => boolean, string> => {
  const names = new Set(FORWARDED_HEADERS)
  const prefixes = [...FORWARDED_PREFIXES]
  for (const [i, raw] of (list ?? []).entries()) {
    const h = raw.trim().toLowerCase()
    const star = h.endsWith("*")
    const base = star ? h.slice(0, -1) : h
    if (!HEADER_NAME.test(base) || base.includes("*") || (star && base.length < 3)) {
      return Either.left(`${name}.forward_headers.${i}: expected a header name, or a prefix such as x-my-*`)
    }
    const refused = star
      ? [...PROXY_SET, ...NEVER_FROM_CLIENTS, authHeader, "x-forwarded-"].find((n) => n.startsWith(base))
      : neverFromClients(h) || h === authHeader
      ? h
      : undefined
    if (refused !== undefined) {
      return Either.left(
        `${name}.forward_headers.${i}: "${refused}" is never taken from clients (a fixed value can go under headers)`
      )
    }
    if (star) prefixes.push(base)
    else names.add(h)
  }
  return Either.right(headerForwarder(names, prefixes))
}

// A header value: visible ASCII, spaces and tabs (no CR/LF/NUL, which Node would refuse at request time).
const HEADER_VALUE = /^[\t\x20-\x7e]*$/

const fixedHeadersOf = (
  name: string,
  authHeader: string,
  headers: Readonly<Record<string, string>> | undefined
): Either.Either<ReadonlyArray<readonly [string, string]>, string> => {
  const out: Array<readonly [string, string]> = []
  for (const [k, v] of Object.entries(headers ?? {})) {
    const h = k.trim().toLowerCase()
    if (!HEADER_NAME.test(h)) return Either.left(`${name}.headers: "${k}" is not a header name`)
    if (PROXY_SET.has(h) || h === authHeader) return Either.left(`${name}.headers.${k}: set by the proxy itself`)
    if (!HEADER_VALUE.test(v)) {
      return Either.left(`${name}.headers.${k}: the value has characters a header cannot carry`)
    }
    out.push([h, v.trim()])
  }
  return Either.right(out)
}

/** `base_url`: its origin and its path ("" for none); a query, fragment or credentials in it are refused. */
const baseOf = (
  name: string,
  baseUrl: string
): Either.Either<{ readonly origin: string; readonly path: string }, string> => {
  let u: URL
  try {
    u = new URL(baseUrl)
  } catch {
    return Either.left(`${name}.base_url is not a URL: "${baseUrl}"`)
  }
  if (u.protocol !== "http:" && u.protocol !== "https:") {
    return Either.left(`${name}.base_url must be http:// or https://`)
  }
  if (u.search !== "" || u.hash !== "") return Either.left(`${name}.base_url: a query goes under query, not in the URL`)
  if (u.username !== "" || u.password !== "") return Either.left(`${name}.base_url must not carry credentials`)
  return Either.right({ origin: u.origin, path: u.pathname.replace(/\/+$/, "") })
}

/** `query`: names and values as given, percent-encoded once here. */
const fixedQueryOf = (
  name: string,
  query: Readonly<Record<string, string>> | undefined
): Either.Either<ReadonlyArray<QueryParameter>, string> => {
  const out: Array<QueryParameter> = []
  for (const [k, v] of Object.entries(query ?? {})) {
    if (k.trim() === "") return Either.left(`${name}.query: a parameter needs a name`)
    out.push({ name: k, pair: `${encodeURIComponent(k)}=${encodeURIComponent(v)}` })
  }
  return Either.right(out)
}

export const DEFAULT_IDLE_MS = 90_000

const smallest = (...values: ReadonlyArray<number | undefined>): number | undefined => {
  const set = values.filter((v): v is number => v !== undefined)
  return set.length === 0 ? undefined : Math.min(...set)
}

/**
 * `timeouts.flush_interval` is refused rather than ignored: the proxy writes every chunk of an answer to the client
 * as it arrives (nothing is buffered to flush), so no interval could change what it does.
 */
export const FLUSH_INTERVAL_REFUSED =
  "timeouts.flush_interval is not supported: the proxy writes every chunk to the client as it arrives (nothing is " +
  "buffered); remove it"

const build = (name: string, p: typeof ProviderYaml.Type): Either.Either<ProviderConfig, string> => {
  const authHeader = (p.auth_header ?? "Authorization").toLowerCase()
  if (p.timeouts?.flush_interval !== undefined) return Either.left(`${name}.${FLUSH_INTERVAL_REFUSED}`)
  return Either.all({
    base: baseOf(name, p.base_url),
    endpoints: endpointsOf(name, p.allowed_endpoints, p.allowed_methods),
    forwarding: forwardingOf(name, authHeader, p.forward_headers),
    fixed: fixedHeadersOf(name, authHeader, p.headers),
    query: fixedQueryOf(name, p.query)
  }).pipe(Either.map(({ base, endpoints, fixed, forwarding, query }) => ({
    name,
    origin: base.origin,
    basePath: base.path,
    fixedQuery: query,
    allowedEndpoints: endpoints,
    paramWhitelist: new Map(Object.entries(p.param_whitelist ?? {})),
    allowedOrigins: p.allowed_origins ?? [],
    requireOrigin: (p.required_headers ?? []).some((h) => h.trim().toLowerCase() === "origin"),
    authHeader,
    authScheme: p.auth_scheme ?? "Bearer",
    forwardsHeader: forwarding,
    fixedHeaders: fixed,
    responseHeaderTimeoutMs: p.timeouts?.response_header !== undefined
      ? parseDuration(p.timeouts.response_header)
      : undefined,
    requestTimeoutMs: p.timeouts?.request !== undefined ? parseDuration(p.timeouts.request) : undefined,
    idleConnectionMs: p.timeouts?.idle_connection !== undefined
      ? parseDuration(p.timeouts.idle_connection) ?? DEFAULT_IDLE_MS
      : DEFAULT_IDLE_MS,
    maxConnections: p.connection?.max_conns_per_host,
    injectUser: p.inject_user === true,
    maxIdleConnections: smallest(p.connection?.max_idle_conns, p.connection?.max_idle_conns_per_host)
  })))
}

const shapeOf = (providers: ReadonlyArray<ProviderConfig>, defaultProvider: string): ProvidersShape => {
  const byName = new Map(providers.map((p) => [p.name, p]))
  return {
    names: new Set(byName.keys()),
    defaultProvider,
    all: providers,
    get: (name) => byName.get(name)
  }
}

/**
 * What the built-in `openai` provider admits: OpenAI's inference API and the model list, nothing that reads stored
 * data (listing stored chat completions, file contents) or deletes anything — those are opt-in through a providers
 * YAML (docs/proxy.md has the snippet).
 */
export const BUILT_IN_OPENAI_ENDPOINTS: ReadonlyArray<Endpoint> = [
  endpoint("/v1/responses", ["POST"], false),
  endpoint("/v1/chat/completions", ["POST"], false),
  endpoint("/v1/completions", ["POST"], false),
  endpoint("/v1/embeddings", ["POST"], false),
  endpoint("/v1/moderations", ["POST"], false),
  endpoint("/v1/audio", ["POST"], true),
  endpoint("/v1/images", ["POST"], true),
  endpoint("/v1/models", ["GET"], false),
  endpoint("/v1/models/{id}", ["GET"], false)
]

/** The built-in provider when no YAML is given. */
export const builtInOpenAi = (baseUrl: string): ProvidersShape =>
  shapeOf([{
    name: "openai",
    origin: new URL(baseUrl).origin,
    basePath: "",
    fixedQuery: [],
    allowedEndpoints: BUILT_IN_OPENAI_ENDPOINTS,
    paramWhitelist: new Map(),
    allowedOrigins: [],
    requireOrigin: false,
    authHeader: "authorization",
    authScheme: "Bearer",
    forwardsHeader: headerForwarder(new Set(FORWARDED_HEADERS), FORWARDED_PREFIXES),
    fixedHeaders: [],
    responseHeaderTimeoutMs: undefined,
    requestTimeoutMs: undefined,
    idleConnectionMs: DEFAULT_IDLE_MS,
    maxConnections: undefined,
    injectUser: false,
    maxIdleConnections: undefined
  }], "openai")

/** The keys that may stand where `path` (an unknown key) does, for the message refusing it. */
const knownKeys = (path: ReadonlyArray<PropertyKey>): string => {
  const section = path.length === 4 ? path[2] : path.length === 3 ? "provider" : "document"
  const keys = section === "timeouts"
    ? ["request", "response_header", "idle_connection", "flush_interval"]
    : section === "connection"
    ? ["max_idle_conns", "max_idle_conns_per_host", "max_conns_per_host"]
    : section === "provider"
    ? Object.keys(ProviderYaml.fields)
    : Object.keys(ProvidersYaml.fields)
  return `expected one of ${keys.join(", ")}`
}

/** Parses and validates the YAML text; every problem is one line naming the key. */
export const parseProvidersYaml = (text: string): Either.Either<ProvidersShape, string> => {
  let raw: unknown
  try {
    raw = parseYaml(text)
  } catch (e) {
    return Either.left(`not valid YAML: ${(e as Error).message.split("\n")[0]}`)
  }
  // A key the format does not have is refused: a misspelt one (`timeout:`, `max_conn_per_host:`) would otherwise be
  // a setting that silently does nothing.
  const decoded = Schema.decodeUnknownEither(ProvidersYaml)(raw, { onExcessProperty: "error" })
  if (Either.isLeft(decoded)) {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)[0]
    if (issue === undefined) return Either.left("invalid document")
    const at = issue.path.join(".") || "document"
    return Either.left(
      issue._tag === "Unexpected" ? `${at}: unknown key (${knownKeys(issue.path)})` : `${at}: ${issue.message}`
    )
  }
  const doc = decoded.right
  const entries = Object.entries(doc.apis)
  if (entries.length === 0) return Either.left("apis: at least one provider is required")
  const built: Array<ProviderConfig> = []
  for (const [name, p] of entries) {
    const r = build(name, p)
    if (Either.isLeft(r)) return Either.left(`apis.${r.left}`)
    built.push(r.right)
  }
  const defaultProvider = doc.default_api ?? (doc.apis["openai"] ? "openai" : entries[0]![0])
  if (!doc.apis[defaultProvider]) return Either.left(`default_api: "${defaultProvider}" is not in apis`)
  return Either.right(shapeOf(built, defaultProvider))
}

export class Providers extends Context.Tag("llm-proxy/Providers")<Providers, ProvidersShape>() {
  static readonly builtIn: Layer.Layer<Providers> = Layer.succeed(Providers, builtInOpenAi("https://api.openai.com"))

  static readonly fromValue = (shape: ProvidersShape): Layer.Layer<Providers> => Layer.succeed(Providers, shape)

  /** The YAML at `path`, or the built-in provider at `openaiApiUrl` when no path is given. */
  static readonly load = (path: string | undefined, openaiApiUrl: string): Layer.Layer<Providers, ProvidersError> =>
    Layer.effect(
      Providers,
      path === undefined ? Effect.succeed(builtInOpenAi(openaiApiUrl)) : Effect.gen(function*() {
        const text = yield* Effect.try({
          try: () => readFileSync(path, "utf8"),
          catch: (e) =>
            new ProvidersError({
              message: `API_CONFIG_PATH: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`
            })
        })
        return yield* Either.mapLeft(
          parseProvidersYaml(text),
          (m) => new ProvidersError({ message: `API_CONFIG_PATH (${path}): ${m}` })
        )
      })
    )
}
