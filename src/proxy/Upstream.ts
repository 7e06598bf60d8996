/**
 * Upstream: one undici keep-alive Pool and one circuit breaker per configured provider, created when the layer is
 * built and closed when its scope closes. Requests carry a response-header timeout (provider
 * `timeouts.response_header`, else REQUEST_TIMEOUT) and no body timeout: streams are never cut by the proxy.
 */
import { Context, Effect, Layer } from "effect"
import { Pool } from "undici"
import { AppConfig } from "../config/AppConfig.js"
import { type ProviderConfig, Providers } from "../config/Providers.js"
import { CircuitBreaker } from "./CircuitBreaker.js"

export interface UpstreamTarget {
  readonly provider: ProviderConfig
  readonly pool: Pool
  readonly breaker: CircuitBreaker
  readonly headersTimeoutMs: number
}

export interface UpstreamShape {
  readonly target: (provider: string) => UpstreamTarget | undefined
}

export class Upstream extends Context.Tag("llm-proxy/Upstream")<Upstream, UpstreamShape>() {}

export const make = Effect.gen(function*() {
  const providers = yield* Providers
  const config = yield* AppConfig
  const targets = new Map<string, UpstreamTarget>()
  for (const provider of providers.all) {
    const pool = new Pool(provider.origin, {
      connections: provider.maxConnections ?? null,
      keepAliveTimeout: provider.idleConnectionMs,
      keepAliveMaxTimeout: Math.max(provider.idleConnectionMs, 600_000),
      connectTimeout: 30_000,
      headersTimeout: provider.responseHeaderTimeoutMs ?? config.requestTimeoutMs,
      bodyTimeout: 0
    })
    targets.set(provider.name, {
      provider,
      pool,
      breaker: new CircuitBreaker(config.circuitBreakerThreshold, config.circuitBreakerCooldownMs),
      headersTimeoutMs: provider.responseHeaderTimeoutMs ?? config.requestTimeoutMs
    })
  }
  yield* Effect.addFinalizer(() =>
    Effect.promise(() => Promise.all([...targets.values()].map((t) => t.pool.destroy().catch(() => undefined))))
  )
  const service: UpstreamShape = { target: (name) => targets.get(name) }
  return service
})

export const layer: Layer.Layer<Upstream, never, Providers | AppConfig> = Layer.scoped(Upstream, make)
