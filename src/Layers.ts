/**
 * The one place where configuration picks layers: SQLite or PostgreSQL, encryption on or off, log format.
 * Programs (serve, migrate, …) are compositions of what is built here.
 */
import { Context, Effect, Layer, Logger, LogLevel, Option } from "effect"
import * as AuditLog from "./audit/AuditLog.js"
import * as AuditRepo from "./audit/AuditRepo.js"
import { makeTrustedProxies } from "./audit/clientIp.js"
import { retentionLayer } from "./audit/retention.js"
import { sinksLayer } from "./audit/sinks.js"
import { AppConfig, type AppConfigShape, type Database } from "./config/AppConfig.js"
import { resolveManagementToken } from "./config/managementToken.js"
import { Providers } from "./config/Providers.js"
import * as ProxyHandler from "./proxy/ProxyHandler.js"
import { auditHooks } from "./proxy/auditHooks.js"
import { ProxyHooks } from "./proxy/ProxyHooks.js"
import * as Upstream from "./proxy/Upstream.js"
import * as RateLimits from "./token/RateLimits.js"
import * as TokenValidator from "./token/TokenValidator.js"
import * as UsageRecorder from "./token/UsageRecorder.js"
import { KeyCipher } from "./crypto/KeyCipher.js"
import { ManagementAppLive } from "./http/App.js"
import { ManagementToken } from "./http/auth.js"
import { HttpServerLive, ServerAddress } from "./http/Server.js"
import { postgresStore, sqliteStore } from "./store/layers.js"
import { migrateUp } from "./store/migrations.js"

export const dialectOf = (db: Database) => (db._tag === "sqlite" ? "sqlite" : "postgres") as "sqlite" | "postgres"

/** Store + SqlClient for the configured database. */
export const databaseLayer = (db: Database) =>
  db._tag === "sqlite" ? sqliteStore(db.path) : postgresStore(db.url, db.poolSize)

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

/**
 * The audit log for a configuration: off (AUDIT_ENABLED=false), or writing to the database
 * (AUDIT_STORE_IN_DB) and/or the JSONL file (AUDIT_LOG_FILE), plus retention when AUDIT_RETENTION_DAYS > 0.
 */
export const auditLayer = (config: Pick<AppConfigShape, "audit" | "database">) => {
  const { audit } = config
  const log = audit.enabled
    ? AuditLog.layer.pipe(Layer.provide(sinksLayer({ file: Option.getOrUndefined(audit.file), database: audit.storeInDb })))
    : AuditLog.disabled(audit.storeInDb)
  const retention = audit.retentionDays > 0 ? retentionLayer({ days: audit.retentionDays }) : Layer.empty
  return Layer.merge(log, retention).pipe(Layer.provideMerge(AuditRepo.layer(dialectOf(config.database))))
}

// Module-level instances: the logger set is keyed by identity, so providing the layer twice cannot double lines.
const jsonLogger = Logger.withConsoleLog(Logger.jsonLogger)

export const loggerLayer = (config: Pick<AppConfigShape, "logFormat" | "logLevel">) =>
  Layer.merge(
    Logger.replace(Logger.defaultLogger, config.logFormat === "json" ? jsonLogger : Logger.prettyLoggerDefault),
    Logger.minimumLogLevel(
      { debug: LogLevel.Debug, info: LogLevel.Info, warn: LogLevel.Warning, error: LogLevel.Error }[config.logLevel]
    )
  )

/** Window rate limiter store: one instance in memory, or shared through Redis. */
export const rateLimitsLayer = (config: Pick<AppConfigShape, "rateLimitBackend" | "redisUrl" | "rateLimitFailureMode">) =>
  config.rateLimitBackend === "redis" ? RateLimits.redis(config.redisUrl, config.rateLimitFailureMode) : RateLimits.memory

/**
 * The data plane: TokenValidator (shared with the management handlers, which invalidate it), usage counters,
 * rate limits, upstream pools, and the /v1 handler with its hooks.
 */
export const dataPlaneLayer = (config: AppConfigShape, hooks: Layer.Layer<ProxyHooks> = ProxyHooks.none) =>
  ProxyHandler.layer.pipe(
    Layer.provideMerge(Layer.mergeAll(UsageRecorder.layer, Upstream.layer, rateLimitsLayer(config), withAuditHooks(config, hooks)))
  )

/** The given hooks plus the audit log's (proxy requests denied for an inactive project). */
const withAuditHooks = (config: Pick<AppConfigShape, "trustedProxies">, hooks: Layer.Layer<ProxyHooks>) =>
  Layer.effect(
    ProxyHooks,
    Effect.gen(function*() {
      const given = yield* ProxyHooks
      const audit = yield* auditHooks(makeTrustedProxies(config.trustedProxies))
      return ProxyHooks.combine(given, audit)
    })
  ).pipe(Layer.provide(hooks))

export interface ServeOptions {
  /** What plugs into the data plane (cache, events, audit, metrics); none by default. */
  readonly proxyHooks?: Layer.Layer<ProxyHooks>
}

/** Everything `serve` runs, for a given configuration. Provides the bound address (tests use port 0). */
export const serveLayer = (config: AppConfigShape, options: ServeOptions = {}) =>
  Layer.unwrapEffect(
    Effect.gen(function*() {
      const resolved = yield* resolveManagementToken(config.managementToken, config.managementTokenFile)
      if (resolved.source !== "environment") {
        yield* Effect.logInfo(
          resolved.source === "generated"
            ? `generated a management token; it is stored in ${config.managementTokenFile} (mode 0600)`
            : `using the management token stored in ${config.managementTokenFile}`
        )
      }
      return HttpServerLive.pipe(
        Layer.provide(ManagementAppLive),
        Layer.provideMerge(dataPlaneLayer(config, options.proxyHooks)),
        Layer.provideMerge(
          config.invalidationBackend === "redis" ? TokenValidator.layerRedis(config.redisUrl) : TokenValidator.layer
        ),
        Layer.provideMerge(
          Layer.mergeAll(
            auditLayer(config).pipe(Layer.provideMerge(migratedDatabaseLayer(config.database))),
            KeyCipher.layer(config.encryptionKey),
            Providers.load(Option.getOrUndefined(config.apiConfigPath), config.openaiApiUrl),
            Layer.succeed(ManagementToken, resolved.token),
            Layer.succeed(AppConfig, config)
          )
        ),
        Layer.tap((ctx) => {
          return Effect.logInfo(`llm-proxy listening on ${Context.get(ctx, ServerAddress).url}`)
        })
      )
    })
  )
