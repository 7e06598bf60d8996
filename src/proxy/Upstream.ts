/**
 * Upstream: one undici keep-alive Pool per configured provider, created when the layer is built and closed when its
 * scope closes, and the state of every project key on this instance (`keys`: cool-downs, circuit breakers, weights;
 * src/proxy/keys.ts). Requests carry a response-header timeout (provider `timeouts.response_header`, else
 * REQUEST_TIMEOUT, cut to what is left of `timeouts.request` across retries) and no body timeout: streams are never
 * cut by the proxy. A provider's `max_idle_conns` / `max_idle_conns_per_host` bound the idle connections its pool
 * keeps: every second the connections idle beyond that are closed (as the keep-alive timeout closes them).
 */
import { Context, Effect, Layer } from "effect"
import type { Socket } from "node:net"
import { Client, errors, Pool } from "undici"
import { AppConfig } from "../config/AppConfig.js"
import { type ProviderConfig, Providers } from "../config/Providers.js"
import { type CoolingPolicy, KeyStates } from "./keys.js"

export interface UpstreamTarget {
  readonly provider: ProviderConfig
  readonly pool: Pool
  /** Response-header timeout of one attempt, ms. */
  readonly headersTimeoutMs: number
  /** All attempts of a request together, until the answer's headers, ms (`timeouts.request`). */
  readonly totalTimeoutMs: number
}

export interface UpstreamShape {
  readonly target: (provider: string) => UpstreamTarget | undefined
  /** Per-key state on this instance. */
  readonly keys: KeyStates
  readonly cooling: CoolingPolicy
  /** Retries after a failed attempt, at most (UPSTREAM_RETRIES). */
  readonly retries: number
}

export class Upstream extends Context.Tag("llm-proxy/Upstream")<Upstream, UpstreamShape>() {}

/** How often the connections idle beyond a provider's bound are closed. */
const IDLE_SWEEP_MS = 1000

/**
 * A pool whose idle connections beyond `maxIdle` are closed every second. Each client of the pool holds one
 * connection; the factory wraps the connector to know each client's socket. Destroying an idle socket is what
 * undici's own keep-alive timeout does: the client connects again for its next request.
 */
const boundedIdlePool = (origin: string, options: Pool.Options, maxIdle: number) => {
  const sockets = new Map<Client, Socket>()
  const pool = new Pool(origin, {
    ...options,
    factory: (o, opts) => {
      const connect = (opts as { connect: NonNullable<Client.Options["connect"]> }).connect as (
        options: object,
        callback: (err: Error | null, socket: Socket | null) => void
      ) => void
      const client: Client = new Client(o, {
        ...opts,
        connect: (connectOptions, callback) =>
          connect(connectOptions, (err, socket) => {
            if (socket !== null) sockets.set(client, socket)
            ;(callback as (err: Error | null, socket: Socket | null) => void)(err, socket)
          })
      } as Client.Options)
      client.on("disconnect", () => sockets.delete(client))
      return client
    }
  })
  const sweep = setInterval(() => {
    let idle = 0
    for (const [client, socket] of sockets) {
      const s = client.stats
      if (!s.connected || s.running > 0 || s.pending > 0 || socket.destroyed) continue
      if (++idle > maxIdle) {
        sockets.delete(client)
        socket.destroy(new errors.InformationalError("idle connections above max_idle_conns"))
      }
    }
  }, IDLE_SWEEP_MS)
  sweep.unref()
  return { pool, stop: () => clearInterval(sweep) }
}

export const make = Effect.gen(function*() {
  const providers = yield* Providers
  const config = yield* AppConfig
  const targets = new Map<string, UpstreamTarget>()
  const stops: Array<() => void> = []
  for (const provider of providers.all) {
    const headersTimeoutMs = provider.responseHeaderTimeoutMs ?? config.requestTimeoutMs
    const options: Pool.Options = {
      connections: provider.maxConnections ?? null,
      keepAliveTimeout: provider.idleConnectionMs,
      keepAliveMaxTimeout: Math.max(provider.idleConnectionMs, 600_000),
      connectTimeout: 30_000,
      headersTimeout: headersTimeoutMs,
      bodyTimeout: 0
    }
    let pool: Pool
    if (provider.maxIdleConnections === undefined) pool = new Pool(provider.origin, options)
    else {
      const bounded = boundedIdlePool(provider.origin, options, provider.maxIdleConnections)
      pool = bounded.pool
      stops.push(bounded.stop)
    }
    targets.set(provider.name, {
      provider,
      pool,
      headersTimeoutMs,
      totalTimeoutMs: provider.requestTimeoutMs ?? headersTimeoutMs
    })
  }
  yield* Effect.addFinalizer(() =>
    Effect.promise(() => {
      for (const stop of stops) stop()
      return Promise.all([...targets.values()].map((t) => t.pool.destroy().catch(() => undefined)))
    })
  )
  const service: UpstreamShape = {
    target: (name) => targets.get(name),
    keys: new KeyStates(config.circuitBreakerThreshold, config.circuitBreakerCooldownMs),
    cooling: { baseMs: config.upstreamKeyCooldownMs, maxMs: config.upstreamKeyCooldownMaxMs },
    retries: config.upstreamRetries
  }
  return service
})

export const layer: Layer.Layer<Upstream, never, Providers | AppConfig> = Layer.scoped(Upstream, make)
