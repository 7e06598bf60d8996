/**
 * Providers: the upstream APIs projects may name. Either the YAML file of reference-system.md §5.1
 * (`API_CONFIG_PATH`, decoded with Schema; plus per provider `auth_header` / `auth_scheme`, CONTRACT §3) or, when
 * no file is given, the built-in `openai` provider at `OPENAI_API_URL`. Upstream base URLs come only from here.
 */
import { Context, Effect, Either, Layer, ParseResult, Schema } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { parseDuration } from "./AppConfig.js"

export interface ProviderConfig {
  readonly name: string
  /** Scheme + host (+ port) of `base_url`; any path in `base_url` is ignored, as the reference does. */
  readonly origin: string
  /** Normalised path prefixes (no trailing slash), matched on segment boundaries. */
  readonly allowedEndpoints: ReadonlyArray<string>
  /** Upper case. */
  readonly allowedMethods: ReadonlyArray<string>
  /** Glob patterns per top-level JSON parameter. */
  readonly paramWhitelist: ReadonlyMap<string, ReadonlyArray<string>>
  /** Exact origins; empty = any origin. */
  readonly allowedOrigins: ReadonlyArray<string>
  readonly requireOrigin: boolean
  /** Lower case header name the upstream key goes into. */
  readonly authHeader: string
  /** `Bearer` by default; "" sends the bare key. */
  readonly authScheme: string
  /** Response-header timeout for this provider (ms); undefined = REQUEST_TIMEOUT. */
  readonly responseHeaderTimeoutMs: number | undefined
  /** How long an idle keep-alive connection is kept (ms). */
  readonly idleConnectionMs: number
  /** Connections per pool; undefined = unbounded. */
  readonly maxConnections: number | undefined
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

const Duration = Schema.String.pipe(
  Schema.filter((s) => parseDuration(s) !== undefined || "expected a duration such as 30s or 500ms")
)
const StringList = Schema.Array(Schema.String)

const ProviderYaml = Schema.Struct({
  base_url: Schema.String,
  allowed_endpoints: StringList.pipe(Schema.minItems(1)),
  allowed_methods: StringList.pipe(Schema.minItems(1)),
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
  auth_header: Schema.optional(Schema.String.pipe(Schema.pattern(/^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/))),
  auth_scheme: Schema.optional(Schema.String)
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

const originOf = (name: string, baseUrl: string): Either.Either<string, string> => {
  try {
    const u = new URL(baseUrl)
    if (u.protocol !== "http:" && u.protocol !== "https:") return Either.left(`${name}.base_url must be http:// or https://`)
    return Either.right(u.origin)
  } catch {
    return Either.left(`${name}.base_url is not a URL: "${baseUrl}"`)
  }
}

export const DEFAULT_IDLE_MS = 90_000

const build = (name: string, p: typeof ProviderYaml.Type): Either.Either<ProviderConfig, string> =>
  Either.map(originOf(name, p.base_url), (origin) => ({
    name,
    origin,
    allowedEndpoints: p.allowed_endpoints.map(normaliseEndpoint),
    allowedMethods: p.allowed_methods.map((m) => m.trim().toUpperCase()),
    paramWhitelist: new Map(Object.entries(p.param_whitelist ?? {})),
    allowedOrigins: p.allowed_origins ?? [],
    requireOrigin: (p.required_headers ?? []).some((h) => h.trim().toLowerCase() === "origin"),
    authHeader: (p.auth_header ?? "Authorization").toLowerCase(),
    authScheme: p.auth_scheme ?? "Bearer",
    responseHeaderTimeoutMs: p.timeouts?.response_header !== undefined ? parseDuration(p.timeouts.response_header) : undefined,
    idleConnectionMs: p.timeouts?.idle_connection !== undefined
      ? parseDuration(p.timeouts.idle_connection) ?? DEFAULT_IDLE_MS
      : DEFAULT_IDLE_MS,
    maxConnections: p.connection?.max_conns_per_host
  }))

const shapeOf = (providers: ReadonlyArray<ProviderConfig>, defaultProvider: string): ProvidersShape => {
  const byName = new Map(providers.map((p) => [p.name, p]))
  return {
    names: new Set(byName.keys()),
    defaultProvider,
    all: providers,
    get: (name) => byName.get(name)
  }
}

/** The built-in provider when no YAML is given (reference §5.1 fallback list). */
export const builtInOpenAi = (baseUrl: string): ProvidersShape =>
  shapeOf([{
    name: "openai",
    origin: new URL(baseUrl).origin,
    allowedEndpoints: [
      "/v1/chat/completions",
      "/v1/completions",
      "/v1/embeddings",
      "/v1/models",
      "/v1/edits",
      "/v1/fine-tunes",
      "/v1/files",
      "/v1/images/generations",
      "/v1/audio/transcriptions",
      "/v1/moderations"
    ],
    allowedMethods: ["GET", "POST", "DELETE"],
    paramWhitelist: new Map(),
    allowedOrigins: [],
    requireOrigin: false,
    authHeader: "authorization",
    authScheme: "Bearer",
    responseHeaderTimeoutMs: undefined,
    idleConnectionMs: DEFAULT_IDLE_MS,
    maxConnections: undefined
  }], "openai")

/** Parses and validates the YAML text; every problem is one line naming the key. */
export const parseProvidersYaml = (text: string): Either.Either<ProvidersShape, string> => {
  let raw: unknown
  try {
    raw = parseYaml(text)
  } catch (e) {
    return Either.left(`not valid YAML: ${(e as Error).message.split("\n")[0]}`)
  }
  const decoded = Schema.decodeUnknownEither(ProvidersYaml)(raw, { onExcessProperty: "ignore" })
  if (Either.isLeft(decoded)) {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)[0]
    return Either.left(issue ? `${issue.path.join(".") || "document"}: ${issue.message}` : "invalid document")
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
          catch: (e) => new ProvidersError({ message: `API_CONFIG_PATH: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}` })
        })
        return yield* Either.mapLeft(parseProvidersYaml(text), (m) => new ProvidersError({ message: `API_CONFIG_PATH (${path}): ${m}` }))
      })
    )
}
