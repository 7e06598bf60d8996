/**
 * Metrics: the proxy's own Prometheus metrics (prom-client, one Registry per service instance) and the Go llm-proxy's
 * JSON counters, kept at /metrics/json (docs/observability.md).
 *
 * Why prom-client and not Effect `Metric` + @effect/opentelemetry's Prometheus exporter: on the request path both
 * cost the same (~1.4 µs for a 4-label counter + 2-label histogram, test/bench/metrics-exporter.bench.ts), but a
 * scrape is ~4.6× cheaper, a registry is per instance (tests and several servers in one process do not share
 * counters) and it ships the standard Node process metrics. docs/performance.md has the numbers.
 *
 * Two ways in:
 * - push, on the request path: `request(...)` once per /v1 request (from the proxy's onComplete seam,
 *   src/observability/ProxyObservability.ts) — synchronous: two Map lookups and a few array increments
 *   (src/observability/series.ts; prom-client's own labelled inc/observe measured ~5 µs per request);
 * - pull, at scrape time: modules that already count (response cache, event bus, dispatcher, token cache) are
 *   attached with `attach*` and read only when /metrics or /metrics/json is asked for, so they cost nothing per request.
 */
import { Context, Effect, Layer } from "effect"
import { collectDefaultMetrics, Counter, Gauge, Registry } from "prom-client"
import { RequestSeries } from "./series.js"

/** What the response cache reports (src/cache ResponseCache `stats`); every field optional so older layers fit. */
export interface CacheStatsLike {
  readonly hits?: number
  readonly misses?: number
  readonly bypass?: number
  readonly stores?: number
  readonly evictions?: number
  readonly expired?: number
  readonly bytes?: number
  readonly entries?: number
  readonly errors?: number
}

/** What an event bus reports (src/eventbus EventBus `stats` and `backlog`). */
export interface BusStatsLike {
  readonly published?: number
  readonly dropped?: number
  /** Events not yet consumed by the slowest consumer (group), when known. */
  readonly lag?: number | null
  /** Redis Streams: each consumer group's lag (events it has not acknowledged), when known. */
  readonly groups?: ReadonlyArray<{ readonly group: string; readonly lag: number | null }>
}

/** What a dispatcher reports (src/dispatcher DispatcherInfo). */
export interface DispatcherStatsLike {
  /** the backend (file, lunary, helicone): the `backend` label */
  readonly backend?: string
  /** its consumer group: the `group` label of the lag */
  readonly group?: string
  readonly delivered?: number
  readonly retries?: number
  readonly deadLettered?: number
  readonly batches?: number
  /** epoch ms of the last event the backend accepted */
  readonly lastDeliveryAt?: number | null
  /** events its group has not acknowledged yet, when known */
  readonly lag?: number | null
  /** delivery rounds the backend refused our credentials */
  readonly credentialFailures?: number
  /** delivery is paused because the backend refuses our credentials */
  readonly paused?: boolean
  /** captured bodies left out of events because they decompressed to more than the limit */
  readonly bodiesTooLarge?: number
}

/** What the token validator reports (src/token TokenValidator `stats`). */
export interface TokenCacheStatsLike {
  readonly hits: number
  readonly loads: number
  readonly size?: number
}

export type StatsSource<A> = Effect.Effect<A, unknown>

/** One finished /v1 request, as the proxy's completion seam sees it. */
export interface RequestObservation {
  readonly provider: string
  readonly route: string
  readonly status: number
  /** hit | miss | stored | bypass | conditional-hit | none */
  readonly cache: string
  /** Time spent in the proxy itself: before forwarding plus between upstream headers and ours (seconds). */
  readonly overheadSeconds: number
  /** Upstream time to response headers (seconds); undefined when nothing was forwarded or it never answered. */
  readonly upstreamSeconds: number | undefined
  /** Arrival until the response ended (seconds). */
  readonly durationSeconds: number
  readonly model: string
  readonly promptTokens: number | undefined
  readonly completionTokens: number | undefined
  /** Which limit refused the request, if one did. */
  readonly rejectedBy: "token_rate_limit" | "project_rate_limit" | "quota" | undefined
  /** The answer was streamed (SSE). */
  readonly stream?: boolean
  /** Streamed answers: arrival until the first chunk of the answer (seconds). */
  readonly firstTokenSeconds?: number | undefined
  /** Completion tokens per second of generation (src/observability/ProxyObservability.ts `outputTokensPerSecond`). */
  readonly outputTokensPerSecond?: number | undefined
  /** What the answer cost (USD, docs/spend.md), when its model has a price. */
  readonly costUsd?: number | undefined
  /** The answer reported usage but its model has no price. */
  readonly unpriced?: boolean | undefined
}

/** The Go llm-proxy's `/metrics` JSON (now at `/metrics/json`, docs/observability.md). */
export interface JsonCounters {
  readonly uptime_seconds: number
  readonly request_count: number
  readonly error_count: number
  readonly cache_hits: number
  readonly cache_misses: number
  readonly cache_bypass: number
  readonly cache_stores: number
}

export interface MetricsShape {
  readonly registry: Registry
  readonly request: (o: RequestObservation) => void
  readonly tokenCacheInvalidated: (scope: "token" | "project" | "all") => void
  readonly attachCache: (stats: StatsSource<CacheStatsLike>) => void
  readonly attachBus: (stats: StatsSource<BusStatsLike>) => void
  /** Several may be attached (one per dispatcher in this process); their `backend` / `group` label them. */
  readonly attachDispatcher: (stats: StatsSource<DispatcherStatsLike>) => void
  readonly attachTokenCache: (stats: () => TokenCacheStatsLike) => void
  /** Prometheus text exposition format. */
  readonly prometheus: Effect.Effect<string>
  readonly json: Effect.Effect<JsonCounters>
  readonly contentType: string
}

export class Metrics extends Context.Tag("llm-proxy/Metrics")<Metrics, MetricsShape>() {}

/** Buckets in seconds: proxy overhead lives in the sub-millisecond range, upstream latency in seconds. */
export const OVERHEAD_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1]
export const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120]
/** Time to first token lives between tens of milliseconds and a minute; generation speed between 1 and 1,000 tokens/s. */
export const FIRST_TOKEN_BUCKETS = [0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60]
export const TOKENS_PER_SECOND_BUCKETS = [1, 5, 10, 20, 30, 40, 50, 75, 100, 150, 200, 300, 500, 1000]

export const statusClass = (status: number): string =>
  status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : "none"

const n = (v: number | null | undefined) => (typeof v === "number" && Number.isFinite(v) ? v : 0)

/** A counter whose value is read at scrape time from a cumulative source. */
const pulledCounter = (registry: Registry, name: string, help: string) =>
  new Counter({ name, help, registers: [registry] })

const setCounter = (c: Counter, value: number) => {
  c.reset()
  if (value > 0) c.inc(value)
}

type Labels = Readonly<Record<string, string>>

/**
 * A series whose samples are replaced at every scrape (labelled values read from a component). A value that is
 * not known is simply absent — a plain prom-client gauge would show 0.
 */
const snapshotSeries = (registry: Registry, name: string, help: string, type: "counter" | "gauge") => {
  let values: Array<{ readonly labels: Labels; readonly value: number }> = []
  registry.registerMetric({
    name,
    help,
    type,
    aggregator: "sum",
    get: () => ({ name, help, type, aggregator: "sum", values }),
    reset: () => {
      values = []
    }
  } as never)
  return {
    set: (next: Array<{ readonly labels: Labels; readonly value: number }>) => {
      values = next
    }
  }
}

export const make = (options: { readonly processMetrics?: boolean } = {}) =>
  Effect.sync((): MetricsShape => {
    const registry = new Registry()
    const startedAt = Date.now()
    if (options.processMetrics !== false) collectDefaultMetrics({ register: registry })

    // No uptime gauge: prom-client's `process_start_time_seconds` says the same (`time() - process_start_time_seconds`),
    // and a scrape carries one series per quantity. /metrics/json keeps `uptime_seconds` for the Go llm-proxy's users.

    // -- request path ---------------------------------------------------------------------------------------------
    const series = new RequestSeries(
      registry,
      OVERHEAD_BUCKETS,
      LATENCY_BUCKETS,
      FIRST_TOKEN_BUCKETS,
      TOKENS_PER_SECOND_BUCKETS
    )
    const rateLimited = new Counter({
      name: "llm_proxy_rate_limit_rejections_total",
      help: "Requests refused by a window rate limit, by scope (token, project)",
      labelNames: ["scope"] as const,
      registers: [registry]
    })
    const quotaRejected = new Counter({
      name: "llm_proxy_quota_rejections_total",
      help: "Requests refused because the token's max_requests quota was used up",
      registers: [registry]
    })
    rateLimited.inc({ scope: "token" }, 0)
    rateLimited.inc({ scope: "project" }, 0)
    quotaRejected.inc(0)
    let requestCount = 0
    let errorCount = 0

    // -- token validator cache ------------------------------------------------------------------------------------
    const tokenInvalidations = new Counter({
      name: "llm_proxy_token_cache_invalidations_total",
      help: "Token-validator cache invalidations by scope (token, project, all)",
      labelNames: ["scope"] as const,
      registers: [registry]
    })
    for (const scope of ["token", "project", "all"]) tokenInvalidations.inc({ scope }, 0)
    const tokenHits = pulledCounter(
      registry,
      "llm_proxy_token_cache_hits_total",
      "Proxy tokens answered from the in-memory validator cache"
    )
    const tokenMisses = pulledCounter(
      registry,
      "llm_proxy_token_cache_misses_total",
      "Proxy tokens not in the validator cache (read from the database)"
    )
    const tokenEntries = new Gauge({
      name: "llm_proxy_token_cache_entries",
      help: "Entries in the token-validator cache",
      registers: [registry]
    })

    // -- response cache -------------------------------------------------------------------------------------------
    const cacheCounter = (what: string, help: string) => pulledCounter(registry, `llm_proxy_cache_${what}_total`, help)
    const cacheHits = cacheCounter("hits", "Responses served from the response cache")
    const cacheMisses = cacheCounter("misses", "Response-cache lookups that found nothing usable")
    const cacheBypass = cacheCounter("bypass", "Requests the response cache did not look up or could not serve")
    const cacheStores = cacheCounter("stores", "Responses stored in the response cache")
    const cacheEvictions = cacheCounter(
      "evictions",
      "Response-cache entries evicted to stay within HTTP_CACHE_MAX_BYTES"
    )
    const cacheExpired = cacheCounter("expired", "Response-cache entries dropped because their lifetime ended")
    const cacheErrors = cacheCounter("errors", "Response-cache backend operations that failed")
    const cacheBytes = new Gauge({
      name: "llm_proxy_cache_bytes",
      help: "Bytes held by the in-memory response cache",
      registers: [registry]
    })
    const cacheEntries = new Gauge({
      name: "llm_proxy_cache_entries",
      help: "Entries held by the in-memory response cache",
      registers: [registry]
    })

    // -- event bus and dispatcher ---------------------------------------------------------------------------------
    const busPublished = pulledCounter(
      registry,
      "llm_proxy_bus_published_total",
      "Instrumentation events published to the event bus"
    )
    const busDropped = pulledCounter(
      registry,
      "llm_proxy_bus_dropped_total",
      "Instrumentation events dropped because the bus buffer was full or the bus was unavailable"
    )
    const busLag = snapshotSeries(
      registry,
      "llm_proxy_bus_lag_events",
      "Events in the bus not yet consumed by the slowest consumer group (absent when unknown)",
      "gauge"
    )
    const dispDelivered = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_delivered_total",
      "Events the dispatcher delivered to its backend, by backend",
      "counter"
    )
    const dispRetried = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_retries_total",
      "Dispatcher delivery retries after transient backend failures, by backend",
      "counter"
    )
    const dispDead = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_dead_lettered_total",
      "Events the dispatcher wrote to its dead-letter file (rejected by the backend or undecodable), by backend",
      "counter"
    )
    const dispBatches = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_batches_total",
      "Batches the dispatcher finished, by backend",
      "counter"
    )
    const dispCredentials = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_credential_failures_total",
      "Delivery rounds the backend refused the dispatcher's API key (delivery pauses and retries), by backend",
      "counter"
    )
    const dispPaused = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_paused",
      "1 while delivery is paused because the backend refuses the dispatcher's API key, by backend",
      "gauge"
    )
    const dispBodiesTooLarge = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_bodies_too_large_total",
      "Captured bodies left out of delivered events because they decompressed to more than 8 MiB, by backend",
      "counter"
    )
    const dispLastDelivery = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_last_delivery_timestamp_seconds",
      "When the backend last accepted an event (Unix time), by backend",
      "gauge"
    )
    const dispLag = snapshotSeries(
      registry,
      "llm_proxy_dispatcher_lag_events",
      "Events a dispatcher's consumer group has not acknowledged yet (not read + read and not finished), by group",
      "gauge"
    )

    let cacheSource: StatsSource<CacheStatsLike> | undefined
    let busSource: StatsSource<BusStatsLike> | undefined
    const dispatcherSources: Array<StatsSource<DispatcherStatsLike>> = []
    let tokenSource: (() => TokenCacheStatsLike) | undefined
    let lastCache: CacheStatsLike = {}

    const read = <A>(source: StatsSource<A> | undefined): Effect.Effect<A | undefined> =>
      source === undefined
        ? Effect.succeed(undefined)
        : Effect.orElseSucceed(Effect.timeout(source, "1 second"), () => undefined)

    const refresh = Effect.gen(function*() {
      const cache = yield* read(cacheSource)
      if (cache !== undefined) {
        lastCache = cache
        setCounter(cacheHits, n(cache.hits))
        setCounter(cacheMisses, n(cache.misses))
        setCounter(cacheBypass, n(cache.bypass))
        setCounter(cacheStores, n(cache.stores))
        setCounter(cacheEvictions, n(cache.evictions))
        setCounter(cacheExpired, n(cache.expired))
        setCounter(cacheErrors, n(cache.errors))
        cacheBytes.set(n(cache.bytes))
        cacheEntries.set(n(cache.entries))
      }
      const bus = yield* read(busSource)
      // a group's lag as the bus sees it, then as its dispatcher here sees it (the same number, read later)
      const groupLag = new Map<string, number>()
      if (bus !== undefined) {
        setCounter(busPublished, n(bus.published))
        setCounter(busDropped, n(bus.dropped))
        busLag.set(typeof bus.lag === "number" ? [{ labels: {}, value: bus.lag }] : [])
        for (const g of bus.groups ?? []) if (typeof g.lag === "number") groupLag.set(g.group, g.lag)
      }
      if (dispatcherSources.length > 0) {
        const all = (yield* Effect.all(dispatcherSources.map(read))).filter((d) => d !== undefined)
        const byBackend = (pick: (d: DispatcherStatsLike) => number) =>
          all.map((d) => ({ labels: { backend: d.backend ?? "unknown" }, value: pick(d) }))
        dispDelivered.set(byBackend((d) => n(d.delivered)))
        dispRetried.set(byBackend((d) => n(d.retries)))
        dispDead.set(byBackend((d) => n(d.deadLettered)))
        dispBatches.set(byBackend((d) => n(d.batches)))
        dispCredentials.set(byBackend((d) => n(d.credentialFailures)))
        dispPaused.set(byBackend((d) => (d.paused === true ? 1 : 0)))
        dispBodiesTooLarge.set(byBackend((d) => n(d.bodiesTooLarge)))
        dispLastDelivery.set(
          all.flatMap((d) => (typeof d.lastDeliveryAt === "number"
            ? [{ labels: { backend: d.backend ?? "unknown" }, value: d.lastDeliveryAt / 1000 }]
            : [])
          )
        )
        for (const d of all) if (typeof d.lag === "number") groupLag.set(d.group ?? "unknown", d.lag)
      }
      if (bus !== undefined || dispatcherSources.length > 0) {
        dispLag.set([...groupLag].map(([group, value]) => ({ labels: { group }, value })))
      }
      if (tokenSource !== undefined) {
        const t = tokenSource()
        setCounter(tokenHits, t.hits)
        setCounter(tokenMisses, t.loads)
        tokenEntries.set(n(t.size))
      }
    })

    const service: MetricsShape = {
      registry,
      contentType: registry.contentType,
      request: (o) => {
        requestCount++
        if (o.status >= 400) errorCount++
        const s = series.route(o.provider, o.route)
        series.countRequest(s, statusClass(o.status), o.cache)
        series.observeOverhead(s, o.overheadSeconds)
        series.observeDuration(s, o.durationSeconds)
        if (o.upstreamSeconds !== undefined) series.observeUpstream(s, o.upstreamSeconds)
        const tokens = (o.promptTokens ?? 0) > 0 || (o.completionTokens ?? 0) > 0
        if (
          tokens || o.firstTokenSeconds !== undefined || o.outputTokensPerSecond !== undefined ||
          o.costUsd !== undefined || o.unpriced === true
        ) {
          const m = series.model(o.provider, o.model)
          if (tokens) series.addTokens(m, o.promptTokens ?? 0, o.completionTokens ?? 0)
          if (o.costUsd !== undefined) series.addCost(m, o.costUsd)
          if (o.unpriced === true) series.countUnpriced(m)
          if (o.firstTokenSeconds !== undefined) series.observeFirstToken(m, o.firstTokenSeconds)
          if (o.outputTokensPerSecond !== undefined) {
            series.observeTokensPerSecond(m, o.stream === true, o.outputTokensPerSecond)
          }
        }
        if (o.rejectedBy === "quota") {
          quotaRejected.inc()
        } else if (o.rejectedBy === "token_rate_limit") rateLimited.inc({ scope: "token" })
        else if (o.rejectedBy === "project_rate_limit") rateLimited.inc({ scope: "project" })
      },
      tokenCacheInvalidated: (scope) => tokenInvalidations.inc({ scope }),
      attachCache: (s) => {
        cacheSource = s
      },
      attachBus: (s) => {
        busSource = s
      },
      attachDispatcher: (s) => {
        dispatcherSources.push(s)
      },
      attachTokenCache: (s) => {
        tokenSource = s
      },
      prometheus: Effect.zipRight(refresh, Effect.promise(() => registry.metrics())),
      json: Effect.map(refresh, () => ({
        uptime_seconds: (Date.now() - startedAt) / 1000,
        request_count: requestCount,
        error_count: errorCount,
        cache_hits: n(lastCache.hits),
        cache_misses: n(lastCache.misses),
        cache_bypass: n(lastCache.bypass),
        cache_stores: n(lastCache.stores)
      }))
    }
    return service
  })

export const layer: Layer.Layer<Metrics> = Layer.effect(Metrics, make())
