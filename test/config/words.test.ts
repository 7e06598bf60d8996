/**
 * Settings that take one of a few words, and yes/no settings (src/config/AppConfig.ts `oneOf`, src/config/parse.ts
 * `parseBoolean`): every accepted spelling, case and surrounding spaces ignored, what an empty value means, and the
 * one line a wrong word gets.
 */
import { ConfigProvider, Effect, Either, Option } from "effect"
import { describe, expect, it } from "vitest"
import { appConfig, dispatcherConfig, formatConfigError } from "../../src/config/AppConfig.js"
import { parseBoolean } from "../../src/config/parse.js"

const load = <A>(config: typeof appConfig | typeof dispatcherConfig, env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(
      Effect.withConfigProvider(config as typeof appConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))
    )
  ) as Either.Either<A, Parameters<typeof formatConfigError>[0]>

const serve = (env: Record<string, string>) => {
  const c = load<Effect.Effect.Success<typeof appConfig>>(appConfig, env)
  if (Either.isLeft(c)) throw new Error(formatConfigError(c.left))
  return c.right
}

const refusal = (config: typeof appConfig | typeof dispatcherConfig, env: Record<string, string>) => {
  const c = load<unknown>(config, env)
  return Either.isLeft(c) ? formatConfigError(c.left) : "accepted"
}

const POSTGRES = { DATABASE_URL: "postgres://db/app" }
const OTLP = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318" }

describe("word settings", () => {
  it.each<[string, Record<string, string>, (c: ReturnType<typeof serve>) => unknown, unknown]>([
    ["RATE_LIMIT_BACKEND", { RATE_LIMIT_BACKEND: " Redis " }, (c) => c.rateLimitBackend, "redis"],
    ["RATE_LIMIT_BACKEND", { RATE_LIMIT_BACKEND: "MEMORY" }, (c) => c.rateLimitBackend, "in-memory"],
    ["RATE_LIMIT_BACKEND", { RATE_LIMIT_BACKEND: "" }, (c) => c.rateLimitBackend, "in-memory"],
    ["HTTP_CACHE_BACKEND", { HTTP_CACHE_BACKEND: "In-Memory" }, (c) => c.cache.backend, "in-memory"],
    ["RATE_LIMIT_FAILURE_MODE", { RATE_LIMIT_FAILURE_MODE: "Closed" }, (c) => c.rateLimitFailureMode, "closed"],
    ["RATE_LIMIT_FAILURE_MODE", { RATE_LIMIT_FAILURE_MODE: "" }, (c) => c.rateLimitFailureMode, "open"],
    [
      "INVALIDATION_BACKEND",
      { INVALIDATION_BACKEND: "PostgreSQL", ...POSTGRES },
      (c) => c.invalidationBackend,
      "postgres"
    ],
    ["INVALIDATION_BACKEND", { INVALIDATION_BACKEND: " ", ...POSTGRES }, (c) => c.invalidationBackend, "postgres"],
    ["INVALIDATION_BACKEND", { INVALIDATION_BACKEND: "AUTO" }, (c) => c.invalidationBackend, "in-memory"],
    [
      "INVALIDATION_BACKEND",
      { INVALIDATION_BACKEND: "memory", ...POSTGRES },
      (c) => c.invalidationBackend,
      "in-memory"
    ],
    // DB_DRIVER is one word for the database and the invalidation backend alike.
    ["DB_DRIVER", { DB_DRIVER: " SQLite ", ...POSTGRES }, (c) => [c.database._tag, c.invalidationBackend], [
      "sqlite",
      "in-memory"
    ]],
    ["DB_DRIVER", { DB_DRIVER: "Postgres", ...POSTGRES }, (c) => [c.database._tag, c.invalidationBackend], [
      "postgres",
      "postgres"
    ]],
    ["DB_DRIVER", { DB_DRIVER: "", ...POSTGRES }, (c) => [c.database._tag, c.invalidationBackend], [
      "postgres",
      "postgres"
    ]],
    ["LOG_LEVEL", { LOG_LEVEL: " WARN " }, (c) => c.logLevel, "warn"],
    ["LOG_FORMAT", { LOG_FORMAT: "Console" }, (c) => c.logFormat, "pretty"],
    ["LOG_FORMAT", { LOG_FORMAT: "text" }, (c) => c.logFormat, "pretty"],
    ["LOG_FORMAT", { LOG_FORMAT: "JSON" }, (c) => c.logFormat, "json"],
    ["LOG_FORMAT", { LOG_FORMAT: " " }, (c) => c.logFormat, process.stdout.isTTY ? "pretty" : "json"],
    ["LLM_PROXY_EVENT_BUS", { LLM_PROXY_EVENT_BUS: "redis" }, (c) => c.events.bus, "redis-streams"],
    ["LLM_PROXY_EVENT_BUS", { LLM_PROXY_EVENT_BUS: "Redis-Streams" }, (c) => c.events.bus, "redis-streams"],
    ["LLM_PROXY_EVENT_BUS", { LLM_PROXY_EVENT_BUS: "" }, (c) => c.events.bus, "in-memory"],
    [
      "OTEL_EXPORTER_OTLP_PROTOCOL",
      { OTEL_EXPORTER_OTLP_PROTOCOL: "HTTP/JSON", ...OTLP },
      (c) => Option.map(c.otlp, (o) => o.protocol),
      Option.some("http/json")
    ],
    [
      "OTEL_EXPORTER_OTLP_PROTOCOL",
      { OTEL_EXPORTER_OTLP_PROTOCOL: "", ...OTLP },
      (c) => Option.map(c.otlp, (o) => o.protocol),
      Option.some("http/protobuf")
    ],
    [
      "OTEL_EXPORTER_OTLP_COMPRESSION",
      { OTEL_EXPORTER_OTLP_COMPRESSION: " GZIP", ...OTLP },
      (c) => Option.map(c.otlp, (o) => o.compression),
      Option.some("gzip")
    ],
    ["ACCESS_LOG", { ACCESS_LOG: " No " }, (c) => c.accessLog, false],
    ["ACCESS_LOG", { ACCESS_LOG: "" }, (c) => c.accessLog, false],
    ["ENABLE_METRICS", { ENABLE_METRICS: "0" }, (c) => c.enableMetrics, false],
    [
      "REQUIRE_ENCRYPTION_KEY",
      { REQUIRE_ENCRYPTION_KEY: "YES", ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64") },
      (c) => c.requireEncryptionKey,
      true
    ]
  ])("%s: %j", (_name, env, read, expected) => {
    expect(read(serve(env))).toEqual(expected)
  })

  it.each<[Record<string, string>, string]>([
    [{ RATE_LIMIT_BACKEND: "memcached" }, `RATE_LIMIT_BACKEND: expected in-memory or redis, got "memcached"`],
    [{ RATE_LIMIT_FAILURE_MODE: "half" }, `RATE_LIMIT_FAILURE_MODE: expected open or closed, got "half"`],
    [{ INVALIDATION_BACKEND: "postgres" }, "INVALIDATION_BACKEND: postgres needs a PostgreSQL database (DATABASE_URL)"],
    [{ DB_DRIVER: "mysql", ...POSTGRES }, `DB_DRIVER: expected sqlite or postgres, got "mysql"`],
    [{ DB_DRIVER: "postgres" }, "DATABASE_URL: required when DB_DRIVER=postgres"],
    [{ LOG_LEVEL: "" }, `LOG_LEVEL: expected debug, info, warn or error, got ""`],
    [{ LOG_LEVEL: "trace" }, `LOG_LEVEL: expected debug, info, warn or error, got "trace"`],
    [{ LOG_FORMAT: "xml" }, `LOG_FORMAT: expected json or pretty, got "xml"`],
    [
      { OTEL_EXPORTER_OTLP_PROTOCOL: "grpc", ...OTLP },
      `OTEL_EXPORTER_OTLP_PROTOCOL: expected http/protobuf or http/json (grpc is not supported), got "grpc"`
    ],
    [
      { OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: "zstd", ...OTLP },
      `OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: expected gzip or none, got "zstd"`
    ],
    // A word that names a property of every object is still only a word.
    [{ LOG_LEVEL: "constructor" }, `LOG_LEVEL: expected debug, info, warn or error, got "constructor"`],
    [{ ACCESS_LOG: "on" }, `ACCESS_LOG: expected true or false, got "on"`]
  ])("rejects %j", (env, message) => {
    expect(refusal(appConfig, env)).toBe(`invalid configuration: ${message}`)
  })

  it("DISPATCHER_SERVICE: any case; a wrong word names the three", () => {
    const bus = { LLM_PROXY_EVENT_BUS: "redis-streams" }
    const c = load<Effect.Effect.Success<typeof dispatcherConfig>>(dispatcherConfig, {
      ...bus,
      DISPATCHER_SERVICE: " FILE "
    })
    expect(Either.isRight(c) && c.right.service).toBe("file")
    expect(refusal(dispatcherConfig, { ...bus, DISPATCHER_SERVICE: "kafka" })).toBe(
      `invalid configuration: DISPATCHER_SERVICE: expected file, lunary or helicone, got "kafka"`
    )
  })
})

describe("parseBoolean", () => {
  it.each<[string, boolean | undefined]>([
    ["true", true],
    ["TRUE", true],
    ["1", true],
    ["Yes", true],
    ["false", false],
    ["0", false],
    ["NO", false],
    ["", false],
    ["maybe", undefined],
    ["2", undefined],
    [" true", undefined]
  ])("%j → %s", (s, expected) => {
    expect(parseBoolean(s)).toBe(expected)
  })
})
