/**
 * AppConfig: every setting of docs/configuration.md, read through effect `Config` so one provider chain
 * (flags > environment > .env) feeds them all. A bad value fails start-up with one line naming the variable.
 */
import { Config, ConfigError, Context, Either, Layer, Option, Redacted } from "effect"
import { parseEncryptionKey } from "../crypto/KeyCipher.js"
import { parseBoolean } from "./parse.js"
import { parseTrustedProxies } from "./trustedProxies.js"

export interface ListenAddress {
  readonly host: string
  readonly port: number
}

export type Database =
  | {
    readonly _tag: "sqlite"
    readonly path: string
    /** SQLITE_SYNCHRONOUS: absent = `normal` (see src/store/layers.ts). */
    readonly synchronous?: "full"
  }
  | { readonly _tag: "postgres"; readonly url: Redacted.Redacted<string>; readonly poolSize: number }

export type LogFormat = "json" | "pretty"

/** OTLP/HTTP body encoding (`OTEL_EXPORTER_OTLP_PROTOCOL`); gRPC is not offered. */
export type OtlpProtocol = "http/protobuf" | "http/json"

/** Where spans go (OTLP/HTTP); see src/observability/Tracing.ts. */
export interface OtlpConfig {
  readonly tracesUrl: string
  /** `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`; default http/protobuf, as in the OTel SDKs. */
  readonly protocol: OtlpProtocol
  /** `OTEL_EXPORTER_OTLP_HEADERS` (often carries a vendor API key). */
  readonly headers: Redacted.Redacted<Record<string, string>>
  readonly serviceName: string
  /** `OTEL_RESOURCE_ATTRIBUTES` without `service.name` / `service.version` (those are set apart). */
  readonly resourceAttributes: Readonly<Record<string, string>>
  /** `OTEL_BSP_SCHEDULE_DELAY` (ms) or `OTEL_EXPORT_INTERVAL` (a duration). */
  readonly exportIntervalMs: number
  /** `OTEL_BSP_MAX_QUEUE_SIZE`: /v1 spans held for export before new ones are dropped. */
  readonly maxQueueSize: number
  /** `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: spans per export request (and a full batch is sent at once). */
  readonly maxExportBatchSize: number
  /** `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION` / `OTEL_EXPORTER_OTLP_COMPRESSION`. */
  readonly compression: "gzip" | "none"
  /** `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT` / `OTEL_EXPORTER_OTLP_TIMEOUT`: one export request, ms. */
  readonly timeoutMs: number
  /** Share of /v1 requests whose spans are exported (OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG), 0..1. */
  readonly sampleRatio: number
  /** `parentbased_*` sampler: a trusted incoming trace's sampled flag decides instead of the ratio. */
  readonly parentBased: boolean
  /**
   * `TRUST_INCOMING_TRACE_CONTEXT`: an incoming `traceparent` (or B3) continues the caller's trace. Off by default:
   * anyone who can reach the listener would otherwise choose the trace ids of our spans.
   */
  readonly trustIncomingTrace: boolean
}

export type EventBusKind = "in-memory" | "redis-streams"

/** Instrumentation events (docs/events.md). */
export interface EventsConfig {
  readonly bus: EventBusKind
  /** OBSERVABILITY_ENABLED: false = the proxy publishes no events */
  readonly enabled: boolean
  /** local publish buffer (events); beyond it events are dropped and counted */
  readonly bufferSize: number
  readonly maxRequestBodyBytes: number
  readonly maxResponseBodyBytes: number
  readonly streamKey: string
  /** 0 = the stream is never trimmed by length */
  readonly streamMaxLen: number
  readonly claimIdleMs: number
  readonly consumerName: Option.Option<string>
  /** `serve --file-event-log PATH`: run the file backend in-process */
  readonly fileEventLog: Option.Option<string>
}

/** The response cache (docs/cache.md). */
export interface CacheConfig {
  readonly enabled: boolean
  readonly backend: "in-memory" | "redis"
  /** Seconds; the lifetime of a `public` response that names none (`HTTP_CACHE_DEFAULT_TTL`). */
  readonly defaultTtlSeconds: number
  /** Largest entry (body + headers) that is stored (`HTTP_CACHE_MAX_OBJECT_BYTES`). */
  readonly maxObjectBytes: number
  /** Bound of the in-memory layer, all entries together (`HTTP_CACHE_MAX_BYTES`). */
  readonly maxBytes: number
  /** Store completed SSE streams on client opt-in (`HTTP_CACHE_STREAM_RESPONSES`). */
  readonly streamResponses: boolean
  /** Longest lifetime a client's `Cache-Control: public, max-age=N` opt-in may force, seconds; 0 = none (`HTTP_CACHE_CLIENT_MAX_TTL`). */
  readonly clientMaxTtlSeconds: number
  /** Prefix of every key the Redis layer writes (`REDIS_CACHE_KEY_PREFIX`). */
  readonly redisKeyPrefix: string
}

export interface AuditConfig {
  readonly enabled: boolean
  /** JSONL sink; none = database only. */
  readonly file: Option.Option<string>
  readonly storeInDb: boolean
  /** Events older than this many days are deleted; 0 keeps them forever. */
  readonly retentionDays: number
}

export interface AppConfigShape {
  readonly listen: ListenAddress
  readonly managementToken: Option.Option<Redacted.Redacted<string>>
  readonly managementTokenFile: string
  readonly database: Database
  readonly encryptionKey: Option.Option<Redacted.Redacted<Uint8Array>>
  readonly requireEncryptionKey: boolean
  readonly logLevel: "debug" | "info" | "warn" | "error"
  readonly logFormat: LogFormat
  readonly audit: AuditConfig
  /** IPs/CIDRs whose X-Forwarded-For is believed (audit client IPs). */
  readonly trustedProxies: ReadonlyArray<string>
  /** Providers YAML (docs/proxy.md "Providers"); none = the built-in `openai` provider at `openaiApiUrl`. */
  readonly apiConfigPath: Option.Option<string>
  readonly openaiApiUrl: string
  /** Largest proxy request body, bytes (413 above). */
  readonly maxRequestSize: number
  /** Upstream response-header timeout, ms (504 after it); streams are never cut by it. */
  readonly requestTimeoutMs: number
  /**
   * How long a client may take to send a request's headers, ms (408 and close after it): the slowloris bound.
   * Bodies and responses are not limited by it.
   */
  readonly headersTimeoutMs: number
  /**
   * How long a client may take to send a whole request, headers and body, ms (408 and close after it): the
   * slow-body bound. Responses (streams) are not limited by it.
   */
  readonly clientRequestTimeoutMs: number
  /** Open client connections on the listener at most; beyond it new ones get 503 and are closed (0 = unlimited). */
  readonly maxConnections: number
  /**
   * Open client connections per socket peer address at most; beyond it new ones get 429 and are closed (0 =
   * unlimited). Peers in `trustedProxies` are exempt: they carry many clients.
   */
  readonly maxConnectionsPerIp: number
  /** Consecutive 502/503/504 answers of one provider that open its circuit breaker. */
  readonly circuitBreakerThreshold: number
  /** How long an open breaker answers 503 before letting one probe through, ms. */
  readonly circuitBreakerCooldownMs: number
  /** Retries of a failed upstream attempt on another key, at most (UPSTREAM_RETRIES). */
  readonly upstreamRetries: number
  /** First cool-down of a key that failed without a Retry-After, ms; doubles with each failure in a row. */
  readonly upstreamKeyCooldownMs: number
  /** Longest cool-down of a key, Retry-After included, ms. */
  readonly upstreamKeyCooldownMaxMs: number
  /** How long a validated token may be served from memory before it is re-read, ms (safety net across instances). */
  readonly tokenCacheTtlMs: number
  /**
   * While the database is unreachable, a token validated earlier keeps being served from memory until this long
   * after it was loaded, ms (0 = refuse as soon as the normal TTL is over).
   */
  readonly tokenCacheStaleTtlMs: number
  /** Tokens expired or revoked more than this many days ago are deleted (their usage rollups stay); 0 keeps them. */
  readonly tokenRetentionDays: number
  /** How often batched usage counters are written to the database, ms. */
  readonly usageFlushIntervalMs: number
  readonly rateLimitBackend: "in-memory" | "redis"
  /** PRICES_PATH: a YAML of model prices that adds to or overrides the built-in table (docs/spend.md). */
  readonly pricesPath: Option.Option<string>
  /** UNPRICED_MODELS: a model without a price on a token or project with a USD budget is refused, or allowed. */
  readonly unpricedModels?: "refuse" | "allow"
  /** What a request gets when the shared rate-limit store (Redis) fails: admitted (open) or 503 (closed). */
  readonly rateLimitFailureMode: "open" | "closed"
  /**
   * How token-cache invalidations reach other instances, resolved from INVALIDATION_BACKEND (default `auto`:
   * `postgres` on PostgreSQL, `in-memory` on SQLite).
   */
  readonly invalidationBackend: InvalidationBackend
  /** `REDIS_URL` (or `REDIS_ADDR` as `host:port`): every Redis-backed layer connects here. */
  readonly redisUrl: string
  /** `GET /metrics`, `/metrics/json` and `/metrics/prometheus` answer (else 404). */
  readonly enableMetrics: boolean
  /** `METRICS_TOKEN`: the metrics need `Authorization: Bearer <it>` from anywhere (else: loopback clients only). */
  readonly metricsToken: Option.Option<Redacted.Redacted<string>>
  /** `METRICS_ADDR`: the metrics are served on their own listener here, and not on the main one. */
  readonly metricsAddr: Option.Option<ListenAddress>
  /** Failed management authentications one client IP may make per window before it gets 429s. */
  readonly managementAuthMaxFailures: number
  /** That window, ms (`MANAGEMENT_AUTH_WINDOW`). */
  readonly managementAuthWindowMs: number
  /** One access-log line per /v1 request at info level. */
  readonly accessLog: boolean
  /** Span export; none = tracing off (zero cost). */
  readonly otlp: Option.Option<OtlpConfig>

  readonly events: EventsConfig
  readonly cache: CacheConfig
}

export class AppConfig extends Context.Tag("llm-proxy/AppConfig")<AppConfig, AppConfigShape>() {}

const invalid = (name: string, message: string) => ConfigError.InvalidData([name], message)

/** `host:port`, `:port` or `[v6]:port`. Port 0 asks the OS for a free port (tests). */
export const parseListenAddress = (value: string): Either.Either<ListenAddress, string> => {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s[\]]*)):(\d{1,5})$/.exec(value.trim())
  if (!m) return Either.left(`expected host:port or :port, got "${value}"`)
  const port = Number(m[3])
  if (port > 65535) return Either.left(`port must be 0..65535, got ${port}`)
  const host = m[1] ?? m[2] ?? ""
  return Either.right({ host: host === "" ? "0.0.0.0" : host, port })
}

const bool = (name: string, fallback: boolean) =>
  Config.string(name).pipe(
    Config.withDefault(String(fallback)),
    Config.mapOrFail((s) => {
      const b = parseBoolean(s.trim())
      return b === undefined ? Either.left(invalid(name, `expected true or false, got "${s}"`)) : Either.right(b)
    })
  )

/**
 * The one parser of settings that take one of a few words: case-insensitive, surrounding spaces ignored. `words` maps
 * every accepted word (aliases, and "" when an empty value means the default) to its meaning; anything else is an
 * error naming the setting, `expected` and the value given.
 */
const oneOf =
  <const W extends Readonly<Record<string, string>>>(name: string, words: W, expected: string) =>
  (s: string): Either.Either<W[keyof W], ConfigError.ConfigError> => {
    const word = s.trim().toLowerCase()
    return Object.hasOwn(words, word)
      ? Either.right(words[word] as W[keyof W])
      : Either.left(invalid(name, `expected ${expected}, got "${s}"`))
  }

/** A word setting (`oneOf`), `fallback` when unset. */
const wordSetting = <const W extends Readonly<Record<string, string>>>(
  name: string,
  fallback: string,
  words: W,
  expected: string
) => Config.string(name).pipe(Config.withDefault(fallback), Config.mapOrFail(oneOf(name, words, expected)))

/** A word setting (`oneOf`), none when unset or empty. */
const optionalWordSetting = <const W extends Readonly<Record<string, string>>>(
  name: string,
  words: W,
  expected: string
) =>
  optionalString(name).pipe(
    Config.mapOrFail((o): Either.Either<Option.Option<W[keyof W]>, ConfigError.ConfigError> =>
      Option.isNone(o) ? Either.right(Option.none()) : Either.map(oneOf(name, words, expected)(o.value), Option.some)
    )
  )

export const positiveInt = (name: string, fallback: number) =>
  Config.string(name).pipe(
    Config.withDefault(String(fallback)),
    Config.mapOrFail((s) =>
      /^\d+$/.test(s.trim()) && Number(s) > 0
        ? Either.right(Number(s))
        : Either.left(invalid(name, `expected a positive integer, got "${s}"`))
    )
  )

const nonNegativeInt = (name: string, fallback: number) =>
  Config.string(name).pipe(
    Config.withDefault(String(fallback)),
    Config.mapOrFail((s) =>
      /^\d{1,9}$/.test(s.trim())
        ? Either.right(Number(s))
        : Either.left(invalid(name, `expected a non-negative integer, got "${s}"`))
    )
  )

/** `120s`, `2m`, `500ms`, `1h`, or a bare number of seconds → milliseconds. */
export const parseDuration = (s: string): number | undefined => {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(s.trim())
  if (!m) return undefined
  const n = Number(m[1])
  const ms = n * ({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? "s") as "ms" | "s" | "m" | "h"])
  return Number.isFinite(ms) ? Math.round(ms) : undefined
}

export const duration = (name: string, fallback: string, min = 1) =>
  Config.string(name).pipe(
    Config.withDefault(fallback),
    Config.mapOrFail((s) => {
      const ms = parseDuration(s)
      return ms !== undefined && ms >= min
        ? Either.right(ms)
        : Either.left(invalid(name, `expected a duration such as 30s, 500ms or 2m, got "${s}"`))
    })
  )

const httpUrl = (name: string, fallback: string) =>
  Config.string(name).pipe(
    Config.withDefault(fallback),
    Config.mapOrFail((s) => {
      try {
        const u = new URL(s.trim())
        if (u.protocol === "http:" || u.protocol === "https:") return Either.right(u.origin)
      } catch {
        // fall through
      }
      return Either.left(invalid(name, `expected an http:// or https:// URL, got "${s}"`))
    })
  )

const memoryOrRedis = (name: string) =>
  wordSetting(
    name,
    "in-memory",
    { "in-memory": "in-memory", memory: "in-memory", "": "in-memory", redis: "redis" },
    "in-memory or redis"
  )

export const optionalString = (name: string) =>
  Config.option(Config.string(name)).pipe(Config.map(Option.filter((s) => s.trim() !== "")))

/** `k1=v1,k2=v2` (values URL-decoded), the OpenTelemetry SDK format of headers and resource attributes. */
const parseKeyValues = (s: string, lowerCaseKeys: boolean): Either.Either<Record<string, string>, string> => {
  const out: Record<string, string> = {}
  for (const part of s.split(",")) {
    if (part.trim() === "") continue
    const eq = part.indexOf("=")
    const key = eq > 0 ? part.slice(0, eq).trim() : ""
    if (key === "" || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(key)) {
      return Either.left("expected key=value pairs separated by commas")
    }
    try {
      out[lowerCaseKeys ? key.toLowerCase() : key] = decodeURIComponent(part.slice(eq + 1).trim())
    } catch {
      return Either.left(`the value of "${key}" is not URL-encoded correctly`)
    }
  }
  return Either.right(out)
}

/** `OTEL_EXPORTER_OTLP_HEADERS`: header names are case-insensitive (kept lower case). */
export const parseOtlpHeaders = (s: string): Either.Either<Record<string, string>, string> => parseKeyValues(s, true)

/** `OTEL_RESOURCE_ATTRIBUTES`: keys as written (attribute names are case-sensitive). */
export const parseResourceAttributes = (s: string): Either.Either<Record<string, string>, string> =>
  parseKeyValues(s, false)

const otlpUrl = (name: string) =>
  optionalString(name).pipe(
    Config.mapOrFail((o) => {
      if (Option.isNone(o)) return Either.right(Option.none<string>())
      try {
        const u = new URL(o.value.trim())
        if (u.protocol === "http:" || u.protocol === "https:") return Either.right(Option.some(u.href))
      } catch {
        // fall through
      }
      return Either.left(invalid(name, `expected an http:// or https:// URL, got "${o.value}"`))
    })
  )

/** The OpenTelemetry SDK sampler variables, as the share of /v1 requests traced. */
const sampler = Config.all({
  name: Config.string("OTEL_TRACES_SAMPLER").pipe(Config.withDefault("parentbased_always_on")),
  arg: optionalString("OTEL_TRACES_SAMPLER_ARG")
}).pipe(
  Config.mapOrFail(
    (
      { arg, name }
    ): Either.Either<{ readonly ratio: number; readonly parentBased: boolean }, ConfigError.ConfigError> => {
      const lower = name.trim().toLowerCase()
      const parentBased = lower.startsWith("parentbased_")
      const n = lower.replace(/^parentbased_/, "")
      if (n === "always_on" || n === "") return Either.right({ ratio: 1, parentBased })
      if (n === "always_off") return Either.right({ ratio: 0, parentBased })
      if (n !== "traceidratio") {
        return Either.left(
          invalid(
            "OTEL_TRACES_SAMPLER",
            `expected always_on, always_off or traceidratio (optionally parentbased_), got "${name}"`
          )
        )
      }
      if (Option.isNone(arg)) return Either.right({ ratio: 1, parentBased })
      const r = Number(arg.value.trim())
      return Number.isFinite(r) && r >= 0 && r <= 1
        ? Either.right({ ratio: r, parentBased })
        : Either.left(invalid("OTEL_TRACES_SAMPLER_ARG", `expected a ratio between 0 and 1, got "${arg.value}"`))
    }
  )
)

/** An OpenTelemetry SDK integer variable (milliseconds, sizes): none when unset or empty. */
const optionalCount = (name: string, min: number) =>
  optionalString(name).pipe(
    Config.mapOrFail((o): Either.Either<Option.Option<number>, ConfigError.ConfigError> => {
      if (Option.isNone(o)) return Either.right(Option.none())
      const v = o.value.trim()
      return /^\d{1,9}$/.test(v) && Number(v) >= min
        ? Either.right(Option.some(Number(v)))
        : Either.left(invalid(name, `expected an integer of at least ${min}, got "${o.value}"`))
    })
  )

const otlpCompression = (name: string) => optionalWordSetting(name, { gzip: "gzip", none: "none" }, "gzip or none")

const resourceAttributes = Config.string("OTEL_RESOURCE_ATTRIBUTES").pipe(
  Config.withDefault(""),
  Config.mapOrFail((s) => Either.mapLeft(parseResourceAttributes(s), (e) => invalid("OTEL_RESOURCE_ATTRIBUTES", e)))
)

const otlpProtocol = (name: string) =>
  optionalWordSetting(
    name,
    { "http/protobuf": "http/protobuf", "http/json": "http/json" },
    "http/protobuf or http/json (grpc is not supported)"
  )

/**
 * Tracing, from the OpenTelemetry SDK environment variables (the project's older names stay as aliases; the standard
 * name wins when both are set): none when no endpoint is given or `OTEL_SDK_DISABLED=true`.
 */
const otlp = Config.all({
  disabled: bool("OTEL_SDK_DISABLED", false),
  endpoint: otlpUrl("OTEL_EXPORTER_OTLP_ENDPOINT"),
  protocol: otlpProtocol("OTEL_EXPORTER_OTLP_PROTOCOL"),
  tracesProtocol: otlpProtocol("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
  traces: otlpUrl("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
  headers: Config.redacted("OTEL_EXPORTER_OTLP_HEADERS").pipe(Config.withDefault(Redacted.make(""))),
  serviceName: optionalString("OTEL_SERVICE_NAME"),
  resourceAttributes,
  scheduleDelayMs: optionalCount("OTEL_BSP_SCHEDULE_DELAY", 1),
  exportIntervalMs: duration("OTEL_EXPORT_INTERVAL", "5s"),
  maxQueueSize: optionalCount("OTEL_BSP_MAX_QUEUE_SIZE", 1),
  maxExportBatchSize: optionalCount("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 1),
  compression: otlpCompression("OTEL_EXPORTER_OTLP_COMPRESSION"),
  tracesCompression: otlpCompression("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"),
  timeoutMs: optionalCount("OTEL_EXPORTER_OTLP_TIMEOUT", 1),
  tracesTimeoutMs: optionalCount("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", 1),
  sampler,
  trustIncomingTrace: bool("TRUST_INCOMING_TRACE_CONTEXT", false)
}).pipe(
  Config.mapOrFail((c): Either.Either<Option.Option<OtlpConfig>, ConfigError.ConfigError> => {
    if (c.disabled) return Either.right(Option.none())
    // Like the OpenTelemetry SDKs: the generic endpoint gets `/v1/traces` appended, the signal-specific one is used as is.
    const url = Option.orElse(c.traces, () => Option.map(c.endpoint, (e) => e.replace(/\/+$/, "") + "/v1/traces"))
    if (Option.isNone(url)) return Either.right(Option.none())
    const parsed = parseOtlpHeaders(Redacted.value(c.headers))
    if (Either.isLeft(parsed)) return Either.left(invalid("OTEL_EXPORTER_OTLP_HEADERS", parsed.left))
    const maxQueueSize = Option.getOrElse(c.maxQueueSize, () => 20_000)
    const maxExportBatchSize = Option.getOrElse(c.maxExportBatchSize, () => Math.min(1_000, maxQueueSize))
    if (maxExportBatchSize > maxQueueSize) {
      return Either.left(
        invalid("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", `must not exceed OTEL_BSP_MAX_QUEUE_SIZE (${maxQueueSize})`)
      )
    }
    // OTEL_SERVICE_NAME wins over a `service.name` in OTEL_RESOURCE_ATTRIBUTES; the version is always this build's.
    const { "service.name": resourceServiceName, "service.version": _version, ...resourceAttributes } =
      c.resourceAttributes
    const serviceName = Option.getOrElse(
      Option.map(c.serviceName, (s) => s.trim()),
      () => resourceServiceName?.trim() || "llm-proxy"
    )
    return Either.right(Option.some({
      tracesUrl: url.value,
      protocol: Option.getOrElse(
        Option.orElse(c.tracesProtocol, () => c.protocol),
        (): OtlpProtocol => "http/protobuf"
      ),
      headers: Redacted.make(parsed.right),
      serviceName,
      resourceAttributes,
      exportIntervalMs: Option.getOrElse(c.scheduleDelayMs, () => c.exportIntervalMs),
      maxQueueSize,
      maxExportBatchSize,
      compression: Option.getOrElse(Option.orElse(c.tracesCompression, () => c.compression), () => "none" as const),
      timeoutMs: Option.getOrElse(Option.orElse(c.tracesTimeoutMs, () => c.timeoutMs), () => 10_000),
      sampleRatio: c.sampler.ratio,
      parentBased: c.sampler.parentBased,
      trustIncomingTrace: c.trustIncomingTrace
    }))
  })
)

const redisUrl = Config.all({ url: optionalString("REDIS_URL"), addr: optionalString("REDIS_ADDR") }).pipe(
  Config.mapOrFail(({ addr, url }): Either.Either<string, ConfigError.ConfigError> => {
    if (Option.isSome(url)) {
      return /^rediss?:\/\/[^\s]*$/.test(url.value.trim())
        ? Either.right(url.value.trim())
        : Either.left(invalid("REDIS_URL", "expected a redis:// or rediss:// URL"))
    }
    if (Option.isSome(addr)) {
      return /^[^\s/:]+:\d{1,5}$/.test(addr.value.trim())
        ? Either.right(`redis://${addr.value.trim()}`)
        : Either.left(invalid("REDIS_ADDR", `expected host:port, got "${addr.value}"`))
    }
    return Either.right("redis://127.0.0.1:6379")
  })
)

const cache: Config.Config<CacheConfig> = Config.all({
  enabled: bool("HTTP_CACHE_ENABLED", true),
  backend: memoryOrRedis("HTTP_CACHE_BACKEND"),
  defaultTtlSeconds: positiveInt("HTTP_CACHE_DEFAULT_TTL", 300),
  maxObjectBytes: positiveInt("HTTP_CACHE_MAX_OBJECT_BYTES", 1_048_576),
  maxBytes: positiveInt("HTTP_CACHE_MAX_BYTES", 67_108_864),
  streamResponses: bool("HTTP_CACHE_STREAM_RESPONSES", false),
  clientMaxTtlSeconds: nonNegativeInt("HTTP_CACHE_CLIENT_MAX_TTL", 300),
  redisKeyPrefix: Config.string("REDIS_CACHE_KEY_PREFIX").pipe(Config.withDefault("llmproxy:cache:"))
}).pipe(
  Config.mapOrFail((c) =>
    c.maxObjectBytes > c.maxBytes
      ? Either.left(invalid("HTTP_CACHE_MAX_OBJECT_BYTES", `must not exceed HTTP_CACHE_MAX_BYTES (${c.maxBytes})`))
      : c.redisKeyPrefix.trim() === ""
      ? Either.left(invalid("REDIS_CACHE_KEY_PREFIX", "must not be empty"))
      : Either.right(c)
  )
)

/**
 * `METRICS_ADDR` and `DISPATCHER_METRICS_ADDR`: `PORT` or `:PORT` listen on loopback (127.0.0.1); `HOST:PORT` /
 * `[v6]:PORT` as given (e.g. `0.0.0.0:9464` for a scraper on another machine).
 */
export const parseMetricsAddress = (value: string): Either.Either<ListenAddress, string> => {
  const v = value.trim()
  const loopback = /^:?(\d{1,5})$/.exec(v)
  const parsed = parseListenAddress(loopback ? `127.0.0.1:${loopback[1]}` : v)
  return Either.mapLeft(parsed, () => `expected PORT, :PORT or HOST:PORT (port 0..65535), got "${value}"`)
}

const listenAddressOption = (name: string) =>
  optionalString(name).pipe(
    Config.mapOrFail((o) =>
      Option.match(o, {
        onNone: () => Either.right(Option.none<ListenAddress>()),
        onSome: (s) =>
          Either.match(parseMetricsAddress(s), {
            onLeft: (m) => Either.left(invalid(name, m)),
            onRight: (a) => Either.right(Option.some(a))
          })
      })
    )
  )

export type InvalidationBackend = "in-memory" | "redis" | "postgres"

/** DB_DRIVER, read the same way by the database and the invalidation backend: none when unset or empty. */
const dbDriver = optionalWordSetting("DB_DRIVER", { sqlite: "sqlite", postgres: "postgres" }, "sqlite or postgres")

/**
 * INVALIDATION_BACKEND: `auto` (default) lets the database every instance shares carry the invalidations on
 * PostgreSQL (LISTEN/NOTIFY) and keeps them in-process on SQLite (one instance by nature); `postgres` needs a
 * PostgreSQL database.
 */
const invalidationBackend = Config.all({
  setting: wordSetting(
    "INVALIDATION_BACKEND",
    "auto",
    {
      auto: "auto",
      "": "auto",
      "in-memory": "in-memory",
      memory: "in-memory",
      redis: "redis",
      postgres: "postgres",
      postgresql: "postgres"
    },
    "auto, in-memory, redis or postgres"
  ),
  driver: dbDriver,
  url: optionalString("DATABASE_URL")
}).pipe(
  Config.mapOrFail(({ driver, setting, url }): Either.Either<InvalidationBackend, ConfigError.ConfigError> => {
    // The same rule as `database` below: a DATABASE_URL means PostgreSQL unless DB_DRIVER says sqlite.
    const postgres = Option.isSome(url) && Option.getOrUndefined(driver) !== "sqlite"
    if (setting === "auto") return Either.right(postgres ? "postgres" : "in-memory")
    if (setting === "postgres" && !postgres) {
      return Either.left(invalid("INVALIDATION_BACKEND", "postgres needs a PostgreSQL database (DATABASE_URL)"))
    }
    return Either.right(setting)
  })
)

const listen = Config.string("LISTEN_ADDR").pipe(
  Config.withDefault(":8080"),
  Config.mapOrFail((s) => Either.mapLeft(parseListenAddress(s), (m) => invalid("LISTEN_ADDR", m)))
)

const database = Config.all({
  url: optionalString("DATABASE_URL"),
  driver: dbDriver,
  path: Config.string("DATABASE_PATH").pipe(Config.withDefault("./data/llm-proxy.db")),
  poolSize: positiveInt("DATABASE_POOL_SIZE", 10),
  synchronous: wordSetting(
    "SQLITE_SYNCHRONOUS",
    "normal",
    { normal: "normal", "": "normal", full: "full" },
    "normal or full"
  )
}).pipe(
  Config.mapOrFail(({ driver, path, poolSize, synchronous, url }): Either.Either<Database, ConfigError.ConfigError> => {
    const d = Option.getOrUndefined(driver)
    if (Option.isSome(url) && d !== "sqlite") {
      if (!/^postgres(ql)?:\/\//.test(url.value)) {
        return Either.left(invalid("DATABASE_URL", "expected a postgres:// or postgresql:// URL"))
      }
      return Either.right({ _tag: "postgres", url: Redacted.make(url.value), poolSize })
    }
    if (d === "postgres") return Either.left(invalid("DATABASE_URL", "required when DB_DRIVER=postgres"))
    return Either.right({ _tag: "sqlite", path, ...(synchronous === "full" ? { synchronous } : {}) })
  })
)

const encryptionKey = optionalString("ENCRYPTION_KEY").pipe(
  Config.mapOrFail((o) =>
    Option.match(o, {
      onNone: () => Either.right(Option.none<Redacted.Redacted<Uint8Array>>()),
      onSome: (s) =>
        Either.match(parseEncryptionKey(s), {
          onLeft: (m) => Either.left(invalid("ENCRYPTION_KEY", m)),
          onRight: (bytes) => Either.right(Option.some(Redacted.make(bytes)))
        })
    })
  )
)

const logLevel = wordSetting(
  "LOG_LEVEL",
  "info",
  { debug: "debug", info: "info", warn: "warn", error: "error" },
  "debug, info, warn or error"
)

/** Unset or empty: pretty on a terminal, JSON otherwise. */
const logFormat = optionalWordSetting(
  "LOG_FORMAT",
  { json: "json", pretty: "pretty", text: "pretty", console: "pretty" },
  "json or pretty"
).pipe(Config.map(Option.getOrElse((): LogFormat => (process.stdout.isTTY ? "pretty" : "json"))))

const eventBus: Config.Config<EventBusKind> = wordSetting(
  "LLM_PROXY_EVENT_BUS",
  "in-memory",
  {
    "in-memory": "in-memory",
    memory: "in-memory",
    "": "in-memory",
    "redis-streams": "redis-streams",
    redis: "redis-streams"
  },
  "in-memory or redis-streams"
)

export const eventsConfig: Config.Config<EventsConfig> = Config.all({
  bus: eventBus,
  enabled: bool("OBSERVABILITY_ENABLED", true),
  bufferSize: positiveInt("OBSERVABILITY_BUFFER_SIZE", 10_000),
  maxRequestBodyBytes: nonNegativeInt("OBSERVABILITY_MAX_REQUEST_BODY_BYTES", 65_536),
  maxResponseBodyBytes: nonNegativeInt("OBSERVABILITY_MAX_RESPONSE_BODY_BYTES", 262_144),
  streamKey: Config.string("REDIS_STREAM_KEY").pipe(Config.withDefault("llm-proxy:events")),
  streamMaxLen: nonNegativeInt("REDIS_STREAM_MAX_LEN", 0),
  claimIdleMs: duration("REDIS_STREAM_CLAIM_IDLE", "30s"),
  consumerName: optionalString("REDIS_CONSUMER_NAME"),
  fileEventLog: optionalString("FILE_EVENT_LOG")
})

const audit: Config.Config<AuditConfig> = Config.all({
  enabled: bool("AUDIT_ENABLED", true),
  file: Config.string("AUDIT_LOG_FILE").pipe(
    Config.withDefault("./data/audit.log"),
    Config.map((s) => (s.trim() === "" ? Option.none() : Option.some(s.trim())))
  ),
  storeInDb: bool("AUDIT_STORE_IN_DB", true),
  retentionDays: nonNegativeInt("AUDIT_RETENTION_DAYS", 0)
})

const trustedProxies = Config.string("TRUSTED_PROXIES").pipe(
  Config.withDefault(""),
  Config.mapOrFail((s) => Either.mapLeft(parseTrustedProxies(s), (m) => invalid("TRUSTED_PROXIES", m)))
)

export const appConfig: Config.Config<AppConfigShape> = Config.all({
  listen,
  managementToken: Config.option(Config.redacted("MANAGEMENT_TOKEN")).pipe(
    Config.map(Option.filter((r) => Redacted.value(r).trim() !== ""))
  ),
  managementTokenFile: Config.string("MANAGEMENT_TOKEN_FILE").pipe(Config.withDefault("./data/management-token")),
  database,
  encryptionKey,
  requireEncryptionKey: bool("REQUIRE_ENCRYPTION_KEY", false),
  logLevel,
  logFormat,
  audit,
  trustedProxies,
  apiConfigPath: optionalString("API_CONFIG_PATH"),
  openaiApiUrl: httpUrl("OPENAI_API_URL", "https://api.openai.com"),
  maxRequestSize: positiveInt("MAX_REQUEST_SIZE", 33_554_432),
  requestTimeoutMs: duration("REQUEST_TIMEOUT", "120s"),
  headersTimeoutMs: duration("CLIENT_HEADERS_TIMEOUT", "30s"),
  clientRequestTimeoutMs: duration("CLIENT_REQUEST_TIMEOUT", "10m"),
  maxConnections: nonNegativeInt("MAX_CONNECTIONS", 10_000),
  maxConnectionsPerIp: nonNegativeInt("MAX_CONNECTIONS_PER_IP", 1_000),
  circuitBreakerThreshold: positiveInt("CIRCUIT_BREAKER_THRESHOLD", 5),
  circuitBreakerCooldownMs: duration("CIRCUIT_BREAKER_COOLDOWN", "30s"),
  upstreamRetries: nonNegativeInt("UPSTREAM_RETRIES", 2),
  upstreamKeyCooldownMs: duration("UPSTREAM_KEY_COOLDOWN", "1s"),
  upstreamKeyCooldownMaxMs: duration("UPSTREAM_KEY_COOLDOWN_MAX", "60s"),
  tokenCacheTtlMs: duration("TOKEN_CACHE_TTL", "5s", 0),
  tokenCacheStaleTtlMs: duration("TOKEN_CACHE_STALE_TTL", "60s", 0),
  tokenRetentionDays: nonNegativeInt("TOKEN_RETENTION_DAYS", 30),
  usageFlushIntervalMs: duration("USAGE_FLUSH_INTERVAL", "1s"),
  rateLimitBackend: memoryOrRedis("RATE_LIMIT_BACKEND"),
  pricesPath: optionalString("PRICES_PATH"),
  unpricedModels: wordSetting(
    "UNPRICED_MODELS",
    "refuse",
    { refuse: "refuse", "": "refuse", allow: "allow" },
    "refuse or allow"
  ),
  rateLimitFailureMode: wordSetting(
    "RATE_LIMIT_FAILURE_MODE",
    "open",
    { open: "open", "": "open", closed: "closed" },
    "open or closed"
  ),
  invalidationBackend,
  redisUrl,
  cache,
  enableMetrics: bool("ENABLE_METRICS", true),
  metricsToken: Config.option(Config.redacted("METRICS_TOKEN")).pipe(
    Config.map(Option.filter((r) => Redacted.value(r).trim() !== ""))
  ),
  metricsAddr: listenAddressOption("METRICS_ADDR"),
  managementAuthMaxFailures: positiveInt("MANAGEMENT_AUTH_MAX_FAILURES", 10),
  managementAuthWindowMs: duration("MANAGEMENT_AUTH_WINDOW", "1m", 1000),
  accessLog: bool("ACCESS_LOG", true),
  otlp,
  events: eventsConfig
}).pipe(
  Config.mapOrFail((c) =>
    c.requireEncryptionKey && Option.isNone(c.encryptionKey)
      ? Either.left(invalid("ENCRYPTION_KEY", "required because REQUIRE_ENCRYPTION_KEY=true"))
      : Either.right(c)
  )
)

export const layer: Layer.Layer<AppConfig, ConfigError.ConfigError> = Layer.effect(AppConfig, appConfig)

/** One line for a person: the variable and what is wrong with it. */
export const formatConfigError = (e: ConfigError.ConfigError): string => {
  const lines: Array<string> = []
  const walk = (err: ConfigError.ConfigError): void => {
    switch (err._op) {
      case "And":
      case "Or":
        walk(err.left)
        walk(err.right)
        return
      case "InvalidData":
      case "MissingData":
      case "SourceUnavailable":
      case "Unsupported":
        lines.push(`${err.path.join("_") || "configuration"}: ${err.message}`)
    }
  }
  walk(e)
  return `invalid configuration: ${lines[0] ?? String(e)}`
}

export type DispatcherService = "file" | "lunary" | "helicone"

export interface DispatcherConfig {
  readonly service: DispatcherService
  readonly endpoint: string
  readonly apiKey: Option.Option<Redacted.Redacted<string>>
  readonly batchSize: number
  readonly flushIntervalMs: number
  readonly buffer: number
  readonly group: string
  readonly deadLetterPath: string
  readonly redisUrl: string
  readonly events: EventsConfig
  readonly logLevel: AppConfigShape["logLevel"]
  readonly logFormat: LogFormat
  /** `--metrics-addr`: serve GET /metrics and GET /health here; none = no listener */
  readonly metricsAddr: Option.Option<ListenAddress>
  /** Spans of its batches, exported like serve's (OTEL_EXPORTER_OTLP_*). */
  readonly otlp: Option.Option<OtlpConfig>
}

const metricsAddr = listenAddressOption("DISPATCHER_METRICS_ADDR")

const DEFAULT_ENDPOINTS: Record<DispatcherService, string> = {
  file: "./data/events.jsonl",
  lunary: "https://api.lunary.ai/v1/runs/ingest",
  helicone: "https://api.worker.helicone.ai"
}

/** `llm-proxy dispatcher`: its own settings plus the bus it reads. */
export const dispatcherConfig: Config.Config<DispatcherConfig> = Config.all({
  service: wordSetting(
    "DISPATCHER_SERVICE",
    "file",
    { file: "file", lunary: "lunary", helicone: "helicone" },
    "file, lunary or helicone"
  ),
  endpoint: optionalString("DISPATCHER_ENDPOINT"),
  apiKey: Config.option(Config.redacted("LLM_PROXY_API_KEY")).pipe(
    Config.map(Option.filter((r) => Redacted.value(r).trim() !== ""))
  ),
  batchSize: positiveInt("DISPATCHER_BATCH_SIZE", 100),
  flushIntervalMs: duration("DISPATCHER_FLUSH_INTERVAL", "5s"),
  buffer: positiveInt("DISPATCHER_BUFFER", 1000),
  group: optionalString("DISPATCHER_CONSUMER_GROUP"),
  deadLetter: optionalString("DISPATCHER_DEAD_LETTER"),
  redisUrl,
  events: eventsConfig,
  logLevel,
  logFormat,
  metricsAddr,
  otlp
}).pipe(
  Config.mapOrFail((c): Either.Either<DispatcherConfig, ConfigError.ConfigError> => {
    if (c.events.bus !== "redis-streams") {
      return Either.left(invalid(
        "LLM_PROXY_EVENT_BUS",
        "the dispatcher runs as its own process and needs redis-streams (the in-memory bus lives inside serve: use serve --file-event-log)"
      ))
    }
    if (c.service !== "file" && Option.isNone(c.apiKey)) {
      return Either.left(invalid("LLM_PROXY_API_KEY", `required for the ${c.service} backend (--api-key)`))
    }
    const endpoint = Option.getOrElse(c.endpoint, () => DEFAULT_ENDPOINTS[c.service])
    if (c.service !== "file" && !/^https?:\/\/\S+$/.test(endpoint)) {
      return Either.left(invalid("DISPATCHER_ENDPOINT", `expected an http(s) URL, got "${endpoint}"`))
    }
    return Either.right({
      service: c.service,
      endpoint,
      apiKey: c.apiKey,
      batchSize: c.batchSize,
      flushIntervalMs: c.flushIntervalMs,
      buffer: c.buffer,
      group: Option.getOrElse(c.group, () => `dispatcher-${c.service}`),
      deadLetterPath: Option.getOrElse(c.deadLetter, () => `./data/dead-letter-${c.service}.jsonl`),
      redisUrl: c.redisUrl,
      events: c.events,
      logLevel: c.logLevel,
      logFormat: c.logFormat,
      metricsAddr: c.metricsAddr,
      otlp: c.otlp
    })
  })
)

/**
 * `llm-proxy migrate import`: the Go proxy's ENCRYPTION_KEY, to read the provider keys it stored encrypted, when it
 * is not this gateway's ENCRYPTION_KEY (which is tried when this is unset).
 */
export const importEncryptionKey = optionalString("IMPORT_ENCRYPTION_KEY").pipe(
  Config.mapOrFail((o) =>
    Option.match(o, {
      onNone: () => Either.right(Option.none<Redacted.Redacted<Uint8Array>>()),
      onSome: (s) =>
        Either.match(parseEncryptionKey(s), {
          onLeft: (m) => Either.left(invalid("IMPORT_ENCRYPTION_KEY", m)),
          onRight: (bytes) => Either.right(Option.some(Redacted.make(bytes)))
        })
    })
  )
)

/**
 * Environment names of the Go llm-proxy that have a counterpart here: [Go name, name here]. They are read when the
 * name here is not set, with a warning naming it (docs/configuration.md, docs/migrating-from-go.md).
 */
export const GO_ENV_ALIASES: ReadonlyArray<readonly [string, string]> = [
  ["REDIS_STREAM_CLAIM_TIME", "REDIS_STREAM_CLAIM_IDLE"],
  ["REDIS_CONSUMER_GROUP", "DISPATCHER_CONSUMER_GROUP"],
  ["MANAGEMENT_API_BASE_URL", "MANAGE_API_BASE_URL"],
  ["PROXY_URL", "LLM_PROXY_URL"],
  ["PROXY_TOKEN", "LLM_PROXY_TOKEN"]
]

/**
 * The values the Go names supply (under the names here) and one warning per Go name in use. `lookup` answers
 * what is set (flags, environment, dotenv file); an empty value counts as unset.
 */
export const resolveGoEnvAliases = (lookup: (name: string) => string | undefined) => {
  const values = new Map<string, string>()
  const warnings: Array<string> = []
  const set = (name: string) => {
    const v = lookup(name)
    return v !== undefined && v.trim() !== "" ? v : undefined
  }
  for (const [goName, name] of GO_ENV_ALIASES) {
    const v = set(goName)
    if (v === undefined) continue
    if (set(name) !== undefined) {
      warnings.push(`${goName} (the Go llm-proxy's name) is ignored: ${name} is set`)
      continue
    }
    values.set(name, v)
    warnings.push(`${goName} is the Go llm-proxy's name; use ${name}`)
  }
  return { values, warnings }
}
