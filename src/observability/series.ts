/**
 * The request-path series as plain nested Maps and Float64Arrays, exposed to prom-client as custom metric objects
 * (`name`, `help`, `type`, `get()`), so a scrape renders them like any prom-client metric.
 *
 * Why: prom-client's own `inc(labels)` / `observe(labels, v)` hash the label object and look it up in a dictionary
 * on every call; for one request's four series (requests counter, three histograms) that measured ~5 µs, here it is
 * two Map lookups and three array increments (test/bench/observability-hooks.bench.ts, docs/performance.md).
 */
import type { Registry } from "prom-client"

interface Histo {
  /** Per-bucket (non-cumulative) counts; the last slot is +Inf. */
  readonly counts: Float64Array
  sum: number
  count: number
}

const histo = (buckets: number): Histo => ({ counts: new Float64Array(buckets + 1), sum: 0, count: 0 })

export interface RouteSeries {
  readonly labels: { readonly provider: string; readonly route: string }
  readonly overhead: Histo
  readonly upstream: Histo
  readonly duration: Histo
  /** `status_class` + "\u0001" + `cache` → count */
  readonly requests: Map<string, { readonly status_class: string; readonly cache: string; value: number }>
}

const bucketIndex = (bounds: ReadonlyArray<number>, v: number): number => {
  for (let i = 0; i < bounds.length; i++) if (v <= bounds[i]!) return i
  return bounds.length
}

interface MetricValue {
  readonly labels: Record<string, string | number>
  readonly value: number
  readonly metricName?: string
}

/** A prom-client-compatible metric whose values come from `values()` at scrape time. */
const register = (
  registry: Registry,
  name: string,
  help: string,
  type: "counter" | "histogram",
  values: () => Array<MetricValue>
) => {
  const metric = {
    name,
    help,
    type,
    aggregator: "sum",
    get: () => ({ name, help, type, aggregator: "sum", values: values() }),
    reset: () => {}
  }
  registry.registerMetric(metric as never)
}

/**
 * Per provider and model (one lookup per request for all of them): the token counters, time to first token, and
 * output tokens per second of streamed and of JSON answers.
 */
interface ModelSeries {
  readonly labels: { readonly provider: string; readonly model: string }
  prompt: number
  completion: number
  /** USD the answers cost (priced models). */
  cost: number
  /** Answers with usage whose model has no price. */
  unpriced: number
  readonly firstToken: Histo
  readonly streamTokensPerSecond: Histo
  readonly jsonTokensPerSecond: Histo
}

/** Histogram samples (cumulative buckets, +Inf, sum, count) of `h` under `labels`. */
const histogramValues = (
  name: string,
  labels: Record<string, string>,
  h: Histo,
  bounds: ReadonlyArray<number>
): Array<MetricValue> => {
  const out: Array<MetricValue> = []
  let cumulative = 0
  for (let i = 0; i < bounds.length; i++) {
    cumulative += h.counts[i]!
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: bounds[i]! }, value: cumulative })
  }
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: "+Inf" }, value: h.count })
  out.push({ metricName: `${name}_sum`, labels, value: h.sum })
  out.push({ metricName: `${name}_count`, labels, value: h.count })
  return out
}

export class RequestSeries {
  private readonly byProvider = new Map<string, Map<string, RouteSeries>>()
  private readonly byModel = new Map<string, Map<string, ModelSeries>>()

  constructor(
    registry: Registry,
    private readonly overheadBuckets: ReadonlyArray<number>,
    private readonly latencyBuckets: ReadonlyArray<number>,
    private readonly firstTokenBuckets: ReadonlyArray<number> = [],
    private readonly tokensPerSecondBuckets: ReadonlyArray<number> = []
  ) {
    register(
      registry,
      "llm_proxy_requests_total",
      "Proxied /v1 requests by provider, route, status class and cache status (every request, rejected ones too)",
      "counter",
      () =>
        this.all().flatMap((s) =>
          [...s.requests.values()].map((r) => ({
            labels: { ...s.labels, status_class: r.status_class, cache: r.cache },
            value: r.value
          }))
        )
    )
    const histogram = (name: string, help: string, pick: (s: RouteSeries) => Histo, bounds: ReadonlyArray<number>) =>
      register(
        registry,
        name,
        help,
        "histogram",
        () => this.all().flatMap((s) => histogramValues(name, s.labels, pick(s), bounds))
      )
    histogram(
      "llm_proxy_proxy_overhead_seconds",
      "Time spent in the proxy itself: before forwarding plus between the upstream's response headers and ours",
      (s) => s.overhead,
      overheadBuckets
    )
    histogram(
      "llm_proxy_upstream_latency_seconds",
      "Upstream time to response headers",
      (s) => s.upstream,
      latencyBuckets
    )
    histogram(
      "llm_proxy_request_duration_seconds",
      "Arrival of a /v1 request until its response ended (streams included)",
      (s) => s.duration,
      latencyBuckets
    )
    register(
      registry,
      "llm_proxy_time_to_first_token_seconds",
      "Streamed answers: arrival of the request until the first chunk of the upstream's answer, by provider and model",
      "histogram",
      () =>
        this.models().flatMap((m) =>
          m.firstToken.count === 0
            ? []
            : histogramValues("llm_proxy_time_to_first_token_seconds", m.labels, m.firstToken, firstTokenBuckets)
        )
    )
    register(
      registry,
      "llm_proxy_output_tokens_per_second",
      "Completion tokens per second of generation, by provider, model and stream (streams: after the first chunk; JSON: the whole upstream wait)",
      "histogram",
      () =>
        this.models().flatMap((m) => [
          ...(m.streamTokensPerSecond.count === 0
            ? []
            : histogramValues(
              "llm_proxy_output_tokens_per_second",
              { ...m.labels, stream: "true" },
              m.streamTokensPerSecond,
              tokensPerSecondBuckets
            )),
          ...(m.jsonTokensPerSecond.count === 0
            ? []
            : histogramValues(
              "llm_proxy_output_tokens_per_second",
              { ...m.labels, stream: "false" },
              m.jsonTokensPerSecond,
              tokensPerSecondBuckets
            ))
        ])
    )
    register(
      registry,
      "llm_proxy_tokens_total",
      "LLM tokens reported by the upstream, by provider, model and kind (prompt, completion)",
      "counter",
      () =>
        this.models().flatMap((m) =>
          m.prompt === 0 && m.completion === 0 ? [] : [
            { labels: { ...m.labels, kind: "prompt" }, value: m.prompt },
            { labels: { ...m.labels, kind: "completion" }, value: m.completion }
          ]
        )
    )
    register(
      registry,
      "llm_proxy_cost_usd_total",
      "What answers cost in USD, from their usage and the model's price (docs/spend.md), by provider and model",
      "counter",
      () => this.models().flatMap((m) => (m.cost === 0 ? [] : [{ labels: m.labels, value: m.cost }]))
    )
    register(
      registry,
      "llm_proxy_unpriced_answers_total",
      "Answers with usage whose model has no price (counted 0 USD; add the model to PRICES_PATH), by provider and model",
      "counter",
      () => this.models().flatMap((m) => (m.unpriced === 0 ? [] : [{ labels: m.labels, value: m.unpriced }]))
    )
  }

  private models(): Array<ModelSeries> {
    const out: Array<ModelSeries> = []
    for (const models of this.byModel.values()) for (const m of models.values()) out.push(m)
    return out
  }

  private all(): Array<RouteSeries> {
    const out: Array<RouteSeries> = []
    for (const routes of this.byProvider.values()) for (const s of routes.values()) out.push(s)
    return out
  }

  /** The series of one provider and route (created on first use). */
  route(provider: string, route: string): RouteSeries {
    let routes = this.byProvider.get(provider)
    if (routes === undefined) {
      routes = new Map()
      this.byProvider.set(provider, routes)
    }
    let s = routes.get(route)
    if (s === undefined) {
      s = {
        labels: { provider, route },
        overhead: histo(this.overheadBuckets.length),
        upstream: histo(this.latencyBuckets.length),
        duration: histo(this.latencyBuckets.length),
        requests: new Map()
      }
      routes.set(route, s)
    }
    return s
  }

  countRequest(s: RouteSeries, statusClass: string, cache: string): void {
    const key = statusClass + "\u0001" + cache
    const r = s.requests.get(key)
    if (r !== undefined) r.value++
    else s.requests.set(key, { status_class: statusClass, cache, value: 1 })
  }

  observeOverhead(s: RouteSeries, seconds: number): void {
    this.observe(s.overhead, this.overheadBuckets, seconds)
  }

  observeUpstream(s: RouteSeries, seconds: number): void {
    this.observe(s.upstream, this.latencyBuckets, seconds)
  }

  observeDuration(s: RouteSeries, seconds: number): void {
    this.observe(s.duration, this.latencyBuckets, seconds)
  }

  /** The series of one provider and model (created on first use). */
  model(provider: string, model: string): ModelSeries {
    let models = this.byModel.get(provider)
    if (models === undefined) {
      models = new Map()
      this.byModel.set(provider, models)
    }
    let m = models.get(model)
    if (m === undefined) {
      m = {
        labels: { provider, model },
        prompt: 0,
        completion: 0,
        cost: 0,
        unpriced: 0,
        firstToken: histo(this.firstTokenBuckets.length),
        streamTokensPerSecond: histo(this.tokensPerSecondBuckets.length),
        jsonTokensPerSecond: histo(this.tokensPerSecondBuckets.length)
      }
      models.set(model, m)
    }
    return m
  }

  addTokens(m: ModelSeries, prompt: number, completion: number): void {
    m.prompt += prompt
    m.completion += completion
  }

  addCost(m: ModelSeries, usd: number): void {
    m.cost += usd
  }

  countUnpriced(m: ModelSeries): void {
    m.unpriced++
  }

  observeFirstToken(m: ModelSeries, seconds: number): void {
    this.observe(m.firstToken, this.firstTokenBuckets, seconds)
  }

  observeTokensPerSecond(m: ModelSeries, stream: boolean, value: number): void {
    this.observe(stream ? m.streamTokensPerSecond : m.jsonTokensPerSecond, this.tokensPerSecondBuckets, value)
  }

  private observe(h: Histo, bounds: ReadonlyArray<number>, v: number): void {
    if (!Number.isFinite(v)) return
    const i = bucketIndex(bounds, v)
    h.counts[i] = h.counts[i]! + 1
    h.sum += v
    h.count++
  }
}
