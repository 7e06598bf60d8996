/**
 * The one place where configuration picks layers: SQLite or PostgreSQL, encryption on or off, log format.
 * Programs (serve, migrate, …) are compositions of what is built here.
 */
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Context, Effect, Layer, Logger, LogLevel, Option, Redacted } from "effect"
import { hostname } from "node:os"
import * as AuditLog from "./audit/AuditLog.js"
import * as AuditRepo from "./audit/AuditRepo.js"
import { makeTrustedProxies } from "./audit/clientIp.js"
import * as AuditRetention from "./audit/retention.js"
import * as AuditSinks from "./audit/sinks.js"
import * as MemoryCache from "./cache/MemoryCache.js"
import * as RedisCache from "./cache/RedisCache.js"
import * as ResponseCache from "./cache/ResponseCache.js"
import { AppConfig, type AppConfigShape, type Database, type DispatcherConfig } from "./config/AppConfig.js"
import { resolveManagementToken } from "./config/managementToken.js"
import { Providers } from "./config/Providers.js"
import { KeyCipher } from "./crypto/KeyCipher.js"
import * as AdminUi from "./http/AdminUi.js"
import * as ManagementApp from "./http/App.js"
import { ManagementToken } from "./http/auth.js"
import * as AuthThrottle from "./http/authThrottle.js"
import * as HttpServer from "./http/Server.js"
import * as AdminSessions from "./http/session.js"
import { busStats, dispatcherStats, registerBusCheck, registerDispatcherCheck } from "./observability/eventChecks.js"
import * as Health from "./observability/Health.js"
import * as Metrics from "./observability/Metrics.js"
import { metricsEndpoint } from "./observability/MetricsEndpoint.js"
import * as ProxyObservability from "./observability/ProxyObservability.js"
import { redisCheck } from "./observability/redisCheck.js"
import * as Tracing from "./observability/Tracing.js"
import { auditHooks } from "./proxy/auditHooks.js"
import { cacheHooks } from "./proxy/CacheHooks.js"
import * as EventCapture from "./proxy/EventCapture.js"
import * as ProxyHandler from "./proxy/ProxyHandler.js"
import { ProxyHooks, type ProxyHooksShape } from "./proxy/ProxyHooks.js"
import * as Upstream from "./proxy/Upstream.js"
import * as Budgets from "./spend/Budgets.js"
import * as Prices from "./spend/prices.js"
import { releaseYoungGeneration } from "./startupMemory.js"
import { postgresStore, sqliteStore } from "./store/layers.js"
import { migrateUp } from "./store/migrations.js"
import * as TokenRetention from "./store/retention.js"
import * as AdminSessionStore from "./store/sessions.js"
import { Store } from "./store/Store.js"
import { layerPostgres as postgresInvalidation } from "./token/PostgresInvalidation.js"
import * as ProjectKeys from "./token/ProjectKeys.js"
import * as RateLimits from "./token/RateLimits.js"
import * as TokenValidator from "./token/TokenValidator.js"
import * as UsageRecorder from "./token/UsageRecorder.js"
import { VERSION } from "./version.js"

import { fileBackend, heliconeBackend, lunaryBackend } from "./dispatcher/backends.js"
import * as Dispatcher from "./dispatcher/Dispatcher.js"
import { TokenCounter } from "./dispatcher/tokens.js"
import { EventBus } from "./eventbus/EventBus.js"
import * as InMemoryBus from "./eventbus/InMemoryBus.js"
import * as RedisStreamsBus from "./eventbus/RedisStreamsBus.js"

export const dialectOf = (db: Database) => (db._tag === "sqlite" ? "sqlite" : "postgres") as "sqlite" | "postgres"

/** Store + SqlClient for the configured database. */
export const databaseLayer = (db: Database) =>
  db._tag === "sqlite" ? sqliteStore(db.path, db.synchronous) : postgresStore(db.url, db.poolSize)

/** The database with every pending migration applied (safe when several instances start at once). */
export const migratedDatabaseLayer = (db: Database) =>
  databaseLayer(db).pipe(
    Layer.tap((ctx) =>
      migrateUp(dialectOf(db)).pipe(
        Effect.tap((ran) => (ran.length > 0 ? Effect.logInfo(`applied migrations: ${ran.join(", ")}`) : Effect.void)),
        Effect.provide(ctx)
      )
    )
  )

/** The response cache: off, in-memory (bounded LRU) or Redis, from HTTP_CACHE_ENABLED / HTTP_CACHE_BACKEND. */
export const responseCacheLayer = (config: Pick<AppConfigShape, "cache" | "redisUrl">) =>
  !config.cache.enabled
    ? ResponseCache.layerDisabled(config.cache)
    : config.cache.backend === "redis"
    ? RedisCache.layer(config.cache, { url: config.redisUrl })
    : MemoryCache.layer(config.cache)
/**
 * The audit log for a configuration: off (AUDIT_ENABLED=false), or writing to the database
 * (AUDIT_STORE_IN_DB) and/or the JSONL file (AUDIT_LOG_FILE), plus retention when AUDIT_RETENTION_DAYS > 0.
 */
export const auditLayer = (config: Pick<AppConfigShape, "audit" | "database">) => {
  const { audit } = config
  const log = audit.enabled
    ? AuditLog.layer.pipe(
      Layer.provide(AuditSinks.layer({ file: Option.getOrUndefined(audit.file), database: audit.storeInDb }))
    )
    : AuditLog.layerDisabled(audit.storeInDb)
  const retention = audit.retentionDays > 0 ? AuditRetention.layer({ days: audit.retentionDays }) : Layer.empty
  return Layer.merge(log, retention).pipe(Layer.provideMerge(AuditRepo.layer(dialectOf(config.database))))
}

/** Token retention when TOKEN_RETENTION_DAYS > 0 (src/store/retention.ts). */
export const tokenRetentionLayer = (config: Pick<AppConfigShape, "tokenRetentionDays">) =>
  config.tokenRetentionDays > 0 ? TokenRetention.layer({ days: config.tokenRetentionDays }) : Layer.empty

// Module-level instances: the logger set is keyed by identity, so providing the layer twice cannot double lines.
const jsonLogger = Logger.withConsoleLog(Logger.jsonLogger)

export const loggerLayer = (config: Pick<AppConfigShape, "logFormat" | "logLevel">) =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, config.logFormat === "json" ? jsonLogger : Logger.prettyLoggerDefault),
    Logger.minimumLogLevel(
      { debug: LogLevel.Debug, info: LogLevel.Info, warn: LogLevel.Warning, error: LogLevel.Error }[config.logLevel]
    )
  )

const redisStreamsOptions = (
  config: Pick<AppConfigShape, "redisUrl" | "events">
): RedisStreamsBus.RedisStreamsOptions => ({
  url: Redacted.make(config.redisUrl),
  streamKey: config.events.streamKey,
  maxLen: config.events.streamMaxLen,
  bufferSize: config.events.bufferSize,
  claimIdleMs: config.events.claimIdleMs
})

/** The event bus chosen by `LLM_PROXY_EVENT_BUS`: both its publishing and its consuming side. */
export const eventBusLayer = (config: Pick<AppConfigShape, "redisUrl" | "events">) =>
  config.events.bus === "in-memory"
    ? InMemoryBus.layer(config.events.bufferSize)
    : RedisStreamsBus.layer(redisStreamsOptions(config))

const defaultConsumer = (prefix: string) => `${prefix}-${hostname()}-${process.pid}`

/**
 * `serve --file-event-log PATH`: the file backend in-process. On Redis it reads with its own consumer group
 * (`file-event-log`), so it never competes with separate dispatchers for events.
 */
export const fileEventLogLayer = (config: Pick<AppConfigShape, "redisUrl" | "events">) =>
  Option.match(config.events.fileEventLog, {
    onNone: () => Layer.empty,
    onSome: (path) =>
      Dispatcher.layer({
        group: "file-event-log",
        consumer: Option.getOrElse(config.events.consumerName, () => defaultConsumer("file-event-log")),
        batchSize: 100,
        flushIntervalMs: 1000,
        buffer: 1000,
        deadLetterPath: `${path}.dead-letter.jsonl`,
        keepAliveMs: Math.max(100, Math.floor(config.events.claimIdleMs / 3)),
        status: "off"
      }).pipe(Layer.provide(Layer.merge(fileBackend(path), TokenCounter.layer)))
  })

/** The bus plus whatever consumes it inside `serve`. */
export const eventsLayer = (config: Pick<AppConfigShape, "redisUrl" | "events">) =>
  fileEventLogLayer(config).pipe(Layer.provideMerge(eventBusLayer(config)))

/** `llm-proxy dispatcher`: the Redis Streams source, the chosen backend and the tokenizer. */
export const dispatcherLayer = (config: DispatcherConfig, consumerName: Option.Option<string>) => {
  const backend = config.service === "file"
    ? fileBackend(config.endpoint)
    : (config.service === "lunary" ? lunaryBackend : heliconeBackend)(
      config.endpoint,
      Option.getOrThrow(config.apiKey)
    ).pipe(Layer.provide(NodeHttpClient.layerUndici))
  const options = redisStreamsOptions(config)
  const endpoint = Option.match(config.metricsAddr, {
    onNone: () => Layer.empty,
    onSome: (address) =>
      Layer.merge(dispatcherObservabilityLayer(config), metricsEndpoint(address, `dispatcher ${config.service}`)).pipe(
        Layer.provide(Layer.merge(Metrics.layer, Health.layer(VERSION)))
      )
  })
  const dispatcher = Dispatcher.layer({
    group: config.group,
    consumer: Option.getOrElse(consumerName, () => defaultConsumer(`dispatcher-${config.service}`)),
    batchSize: config.batchSize,
    flushIntervalMs: config.flushIntervalMs,
    buffer: config.buffer,
    deadLetterPath: config.deadLetterPath,
    keepAliveMs: Math.max(100, Math.floor(config.events.claimIdleMs / 3)),
    status: process.stderr.isTTY ? "tty" : "log",
    maintenance: RedisStreamsBus.trimAcknowledged(Redacted.make(config.redisUrl), config.events.streamKey)
  }).pipe(
    Layer.tap(() =>
      Effect.logInfo(
        `dispatcher ${config.service} reading ${config.events.streamKey} as group ${config.group}` +
          (config.service === "file" ? `, writing ${config.endpoint}` : "")
      )
    ),
    Layer.provide(Layer.mergeAll(RedisStreamsBus.layerSource(options), backend, TokenCounter.layer))
  )
  return endpoint.pipe(Layer.provideMerge(dispatcher))
}

/**
 * The standalone dispatcher's /metrics and /health (`--metrics-addr`): its counters and its group's lag; the bus
 * (Redis) is required — without it nothing can be delivered.
 */
const dispatcherObservabilityLayer = (config: DispatcherConfig) =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const metrics = yield* Metrics.Metrics
    const health = yield* Health.Health
    const info = yield* Dispatcher.DispatcherInfo
    const backlog = yield* RedisStreamsBus.makeBacklogProbe(Redacted.make(config.redisUrl), config.events.streamKey)
    metrics.attachDispatcher(dispatcherStats(info))
    registerBusCheck(health, { required: true, kind: "redis-streams", stream: config.events.streamKey, backlog })
    registerDispatcherCheck(health, { backlog, onlyGroup: config.group, dispatchers: [info] })
  }))

/**
 * The brute-force limit on management authentication (src/http/authThrottle.ts): shared through Redis when the rate
 * limits are, per instance otherwise.
 */
export const authThrottleLayer = (
  config: Pick<AppConfigShape, "rateLimitBackend" | "redisUrl" | "managementAuthMaxFailures" | "managementAuthWindowMs">
) => {
  const options = { maxFailures: config.managementAuthMaxFailures, windowMs: config.managementAuthWindowMs }
  return config.rateLimitBackend === "redis"
    ? AuthThrottle.layerRedis(config.redisUrl, options)
    : AuthThrottle.layerMemory(options)
}

/** Admin UI sessions, in the database so every instance shares them (src/http/session.ts). */
export const adminSessionsLayer = AdminSessions.layer().pipe(Layer.provide(AdminSessionStore.layer))

/**
 * `METRICS_ADDR`: /metrics, /metrics/json and /health on a listener of their own (the main listener then answers
 * 404 for the metrics), with METRICS_TOKEN required there too when it is set.
 */
export const serveMetricsListenerLayer = (
  config: Pick<AppConfigShape, "enableMetrics" | "metricsAddr" | "metricsToken">
) =>
  config.enableMetrics && Option.isSome(config.metricsAddr)
    ? metricsEndpoint(config.metricsAddr.value, "serve", {
      json: true,
      ...(Option.isSome(config.metricsToken) ? { token: config.metricsToken.value } : {})
    })
    : Layer.empty

/** Window rate limiter store: one instance in memory, or shared through Redis. */
export const rateLimitsLayer = (
  config: Pick<AppConfigShape, "rateLimitBackend" | "redisUrl" | "rateLimitFailureMode">
) =>
  config.rateLimitBackend === "redis"
    ? RateLimits.layerRedis(config.redisUrl, config.rateLimitFailureMode)
    : RateLimits.layerMemory

/**
 * Observability of the proxy itself: metrics registry, health checks and the tracer (OTLP when configured, off
 * otherwise). Provided under everything else so every runtime built later carries the tracer setting.
 */
export const observabilityLayer = (config: AppConfigShape) =>
  Layer.mergeAll(Metrics.layer, Health.layer(VERSION), Tracing.layer(config.otlp, VERSION))

/** Which Redis-backed layers this configuration uses (named in the `redis` health check). */
export const redisUsers = (config: AppConfigShape): ReadonlyArray<string> => [
  ...(config.cache.enabled && config.cache.backend === "redis" ? ["response_cache"] : []),
  ...(config.rateLimitBackend === "redis" ? ["rate_limits"] : []),
  ...(config.invalidationBackend === "redis" ? ["token_invalidation"] : [])
]

/**
 * Health checks for the dependencies this configuration uses: the database always (required); Redis when a layer
 * needs it (required only when rate limits fail closed without it: RATE_LIMIT_FAILURE_MODE=closed).
 */
export const healthChecksLayer = (config: AppConfigShape) =>
  Layer.mergeAll(
    Layer.effectDiscard(Effect.gen(function*() {
      const health = yield* Health.Health
      const store = yield* Store
      health.register({ name: "database", required: true, check: Effect.as(store.ping, { driver: store.dialect }) })
    })),
    redisUsers(config).length > 0
      ? redisCheck(
        config.redisUrl,
        redisUsers(config),
        config.rateLimitBackend === "redis" && config.rateLimitFailureMode === "closed"
      )
      : Layer.empty
  )

/**
 * The token cache (whichever layer provides it) with its hits, misses and the invalidations this instance issues
 * counted (src/observability/Metrics.ts).
 */
export const instrumentedTokenValidatorLayer = Layer.effect(
  TokenValidator.TokenValidator,
  Effect.gen(function*() {
    const inner = yield* TokenValidator.TokenValidator
    const metrics = yield* Metrics.Metrics
    metrics.attachTokenCache(inner.stats)
    const service: TokenValidator.TokenValidatorShape = {
      ...inner,
      invalidate: (what) =>
        Effect.zipRight(Effect.sync(() => metrics.tokenCacheInvalidated(what.kind)), inner.invalidate(what)),
      unsafeInvalidate: (what) => {
        metrics.tokenCacheInvalidated(what.kind)
        inner.unsafeInvalidate(what)
      }
    }
    return service
  })
)

/**
 * The token cache for INVALIDATION_BACKEND: in-process only, PostgreSQL LISTEN/NOTIFY, or Redis pub/sub. A setting
 * that leaves several instances on one PostgreSQL database without invalidations is logged as a warning at start-up.
 */
export const invalidationLayer = (config: AppConfigShape) => {
  const validator = config.invalidationBackend === "redis"
    ? TokenValidator.layerRedis(config.redisUrl)
    : config.invalidationBackend === "postgres" && config.database._tag === "postgres"
    ? postgresInvalidation(config.database.url)
    : TokenValidator.layer
  return validator.pipe(Layer.tap(() => {
    if (config.invalidationBackend !== "in-memory") {
      return Effect.logInfo(
        config.invalidationBackend === "postgres"
          ? "token invalidations: PostgreSQL LISTEN/NOTIFY (every instance on this database applies them)"
          : "token invalidations: Redis pub/sub (every instance on this Redis applies them)"
      )
    }
    // Nothing cached (TOKEN_CACHE_TTL=0s) means nothing to invalidate; SQLite is one instance.
    if (config.database._tag !== "postgres" || config.tokenCacheTtlMs === 0) return Effect.void
    return Effect.logWarning(
      `INVALIDATION_BACKEND=in-memory on PostgreSQL: a token revoked, a project deactivated or a key rotated through ` +
        `one instance keeps working on the other instances of this database for up to TOKEN_CACHE_TTL ` +
        `(${config.tokenCacheTtlMs / 1000} s). Unset INVALIDATION_BACKEND (auto: postgres) or set it to postgres or ` +
        `redis unless this is the only instance.`
    )
  }))
}

/**
 * `token_invalidation` in /health when invalidations cross instances: up while this instance receives them, down
 * (not required: the cache is bypassed and every request reads the database) while it does not.
 */
export const invalidationCheckLayer = (config: Pick<AppConfigShape, "invalidationBackend">) =>
  config.invalidationBackend === "in-memory"
    ? Layer.empty
    : Layer.effectDiscard(Effect.gen(function*() {
      const health = yield* Health.Health
      const validator = yield* TokenValidator.TokenValidator
      const channel = config.invalidationBackend === "postgres" ? "postgres-listen" : "redis-pubsub"
      health.register({
        name: "token_invalidation",
        required: false,
        check: Effect.suspend(() =>
          validator.trusted()
            ? Effect.succeed({ channel })
            : Effect.fail(
              new Error(`${channel} not receiving; the token cache is bypassed (every request reads the database)`)
            )
        )
      })
    }))

/** The response cache's counters on /metrics (read at scrape time). */
export const cacheMetricsLayer = Layer.effectDiscard(Effect.gen(function*() {
  const metrics = yield* Metrics.Metrics
  const cache = yield* ResponseCache.ResponseCache
  metrics.attachCache(cache.stats)
}))

/**
 * The event bus and an in-process dispatcher (`serve --file-event-log`) on /metrics and /health, read at scrape /
 * health time: publish counters, the bus's backlog and each consumer group's lag, the dispatcher's counters.
 * The bus is required for readiness only when events are on and it is Redis Streams (docs/observability.md).
 */
export const busObservabilityLayer = (config: Pick<AppConfigShape, "events">) =>
  Layer.effectDiscard(Effect.gen(function*() {
    const metrics = yield* Metrics.Metrics
    const health = yield* Health.Health
    const bus = yield* EventBus
    // present only when serve runs the file backend in-process (Layers.fileEventLogLayer)
    const dispatcher = yield* Effect.serviceOption(Dispatcher.DispatcherInfo)
    const redis = bus.kind === "redis-streams"
    metrics.attachBus(busStats(bus))
    registerBusCheck(health, {
      required: config.events.enabled && redis,
      kind: bus.kind,
      ...(redis ? { stream: config.events.streamKey } : {}),
      backlog: bus.backlog,
      stats: bus.stats
    })
    if (Option.isSome(dispatcher)) metrics.attachDispatcher(dispatcherStats(dispatcher.value))
    if (redis || Option.isSome(dispatcher)) {
      registerDispatcherCheck(health, {
        ...(redis ? { backlog: bus.backlog } : {}),
        dispatchers: Option.toArray(dispatcher)
      })
    }
  }))

/**
 * Everything that plugs into the data plane (src/proxy/ProxyHooks.ts), in the order the hooks run:
 *   1. the response cache: first, its hit ends the request before any other hook's `beforeUpstream`;
 *   2. instrumentation events (unless OBSERVABILITY_ENABLED=false): after the cache, so a hit yields no event;
 *   3. `extra`, the hooks given to `serveLayer` (tests);
 *   4. the audit log's (requests refused for their token, or for an inactive project);
 *   5. observability (metrics, access log, spans): last, because it reads the headers the others set.
 */
export const proxyHooksLayer = (config: AppConfigShape, extra: Partial<ProxyHooksShape> = {}) =>
  Layer.scoped(
    ProxyHooks,
    Effect.gen(function*() {
      const cache = cacheHooks(yield* ResponseCache.ResponseCache)
      const events = config.events.enabled ? yield* EventCapture.eventHooks(config.events) : {}
      const audit = yield* auditHooks(makeTrustedProxies(config.trustedProxies))
      const observability = yield* ProxyObservability.make({
        metrics: config.enableMetrics,
        accessLog: config.accessLog,
        format: config.logFormat,
        trustIncomingTrace: Option.exists(config.otlp, (o) => o.trustIncomingTrace)
      })
      return ProxyHooks.combine(cache, events, extra, audit, observability)
    })
  )

/**
 * The data plane: TokenValidator (shared with the management handlers, which invalidate it), usage counters,
 * rate limits, upstream pools, and the /v1 handler with its hooks.
 */
export const dataPlaneLayer = (config: AppConfigShape, extraHooks?: Partial<ProxyHooksShape>) =>
  ProxyHandler.layer.pipe(
    Layer.provideMerge(
      Layer.mergeAll(
        UsageRecorder.layer,
        Budgets.layer,
        Upstream.layer,
        rateLimitsLayer(config),
        proxyHooksLayer(config, extraHooks)
      )
    ),
    Layer.provideMerge(Prices.layer(Option.getOrUndefined(config.pricesPath)))
  )

export interface ServeOptions {
  /** More hooks for the data plane (tests), run after the response cache's and the events' (`proxyHooksLayer`). */
  readonly proxyHooks?: Partial<ProxyHooksShape>
}

/** Everything `serve` runs, for a given configuration. Provides the bound address (tests use port 0). */
export const serveLayer = (config: AppConfigShape, options: ServeOptions = {}) =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const resolved = yield* resolveManagementToken(config.managementToken, config.managementTokenFile)
      for (const warning of resolved.warnings) yield* Effect.logWarning(warning)
      if (resolved.source !== "environment") {
        yield* Effect.logInfo(
          resolved.source === "generated"
            ? `generated a management token; it is stored in ${config.managementTokenFile} (mode 0600)`
            : `using the management token stored in ${config.managementTokenFile}`
        )
      }
      return Layer.merge(HttpServer.layer, serveMetricsListenerLayer(config)).pipe(
        Layer.provide(ManagementApp.layer),
        Layer.provideMerge(ProjectKeys.layer),
        Layer.provideMerge(dataPlaneLayer(config, options.proxyHooks)),
        Layer.provideMerge(
          invalidationCheckLayer(config).pipe(
            Layer.provideMerge(instrumentedTokenValidatorLayer.pipe(Layer.provide(invalidationLayer(config))))
          )
        ),
        Layer.provideMerge(Layer.mergeAll(healthChecksLayer(config), cacheMetricsLayer, busObservabilityLayer(config))),
        Layer.provideMerge(
          Layer.mergeAll(
            Layer.mergeAll(auditLayer(config), adminSessionsLayer, tokenRetentionLayer(config)).pipe(
              Layer.provideMerge(migratedDatabaseLayer(config.database))
            ),
            KeyCipher.layer(config.encryptionKey),
            Providers.load(Option.getOrUndefined(config.apiConfigPath), config.openaiApiUrl),
            responseCacheLayer(config),
            Layer.succeed(ManagementToken, resolved.token),
            authThrottleLayer(config),
            AdminUi.layer(),
            Layer.succeed(AppConfig, config),
            eventsLayer(config)
          )
        ),
        Layer.provideMerge(observabilityLayer(config)),
        Layer.tap((ctx) => {
          // Started: from here on the young generation may grow with traffic again (src/startupMemory.ts).
          releaseYoungGeneration()
          return Effect.logInfo(`llm-proxy listening on ${Context.get(ctx, HttpServer.ServerAddress).url}`)
        })
      )
    })
  )
