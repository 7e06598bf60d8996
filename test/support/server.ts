/** Starts a real `serve` stack in-process on an ephemeral loopback port, for integration tests. */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import type { AppConfigShape, CacheConfig, Database } from "../../src/config/AppConfig.js"
import { parseEncryptionKey } from "../../src/crypto/KeyCipher.js"
import { ServerAddress } from "../../src/http/Server.js"
import { loggerLayer, serveLayer } from "../../src/Layers.js"
import { newManagementToken } from "./managementToken.js"

export interface TestServer {
  readonly url: string
  readonly token: string
  readonly close: () => Promise<void>
}

/** The cache settings `serve` gets by default, with any field overridden. */
export const testCacheConfig = (overrides: Partial<CacheConfig> = {}): CacheConfig => ({
  enabled: true,
  backend: "in-memory",
  defaultTtlSeconds: 300,
  maxObjectBytes: 1_048_576,
  maxBytes: 67_108_864,
  streamResponses: false,
  clientMaxTtlSeconds: 300,
  redisKeyPrefix: "llmproxy:cache:",
  ...overrides
})

export const testConfig = (database: Database, overrides: Partial<AppConfigShape> = {}): AppConfigShape => ({
  listen: { host: "127.0.0.1", port: 0 },
  managementToken: Option.some(Redacted.make(newManagementToken())),
  managementTokenFile: "/nonexistent/management-token",
  database,
  encryptionKey: Option.none(),
  requireEncryptionKey: false,
  logLevel: "error",
  logFormat: "json",
  // No JSONL file by default: tests that want one name a temp path.
  audit: { enabled: true, file: Option.none(), storeInDb: true, retentionDays: 0 },
  trustedProxies: [],
  apiConfigPath: Option.none(),
  openaiApiUrl: "https://api.openai.com",
  maxRequestSize: 33_554_432,
  requestTimeoutMs: 120_000,
  headersTimeoutMs: 30_000,
  clientRequestTimeoutMs: 600_000,
  maxConnections: 10_000,
  maxConnectionsPerIp: 1_000,
  circuitBreakerThreshold: 5,
  circuitBreakerCooldownMs: 30_000,
  upstreamRetries: 2,
  upstreamKeyCooldownMs: 1_000,
  upstreamKeyCooldownMaxMs: 60_000,
  tokenCacheTtlMs: 5_000,
  tokenCacheStaleTtlMs: 60_000,
  tokenRetentionDays: 30,
  usageFlushIntervalMs: 200,
  rateLimitBackend: "in-memory",
  rateLimitFailureMode: "open",
  pricesPath: Option.none(),
  invalidationBackend: "in-memory",
  enableMetrics: true,
  metricsToken: Option.none(),
  metricsAddr: Option.none(),
  managementAuthMaxFailures: 10,
  managementAuthWindowMs: 60_000,
  accessLog: true,
  otlp: Option.none(),
  redisUrl: process.env["REDIS_URL"] || "redis://127.0.0.1:6379",
  cache: testCacheConfig(),
  events: {
    bus: "in-memory",
    enabled: true,
    bufferSize: 10_000,
    maxRequestBodyBytes: 65_536,
    maxResponseBodyBytes: 262_144,
    streamKey: `llm-proxy-test:${crypto.randomUUID()}:events`,
    streamMaxLen: 0,
    claimIdleMs: 30_000,
    consumerName: Option.none(),
    fileEventLog: Option.none()
  },
  ...overrides
})

export const withEncryptionKey = (base64: string): Partial<AppConfigShape> => {
  const parsed = parseEncryptionKey(base64)
  if (parsed._tag === "Left") throw new Error(parsed.left)
  return { encryptionKey: Option.some(Redacted.make(parsed.right)) }
}

export const startServer = async (config: AppConfigShape): Promise<TestServer> => {
  const scope = Effect.runSync(Scope.make())
  const layer = serveLayer(config).pipe(Layer.provide(loggerLayer(config)))
  const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  const address = Context.get(ctx, ServerAddress)
  const token = Option.match(config.managementToken, { onNone: () => "", onSome: Redacted.value })
  return {
    url: `http://127.0.0.1:${address.port}`,
    token,
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}
