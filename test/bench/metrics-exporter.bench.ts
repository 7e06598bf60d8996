/**
 * Per-observation cost of the two Prometheus exporters the issue allows, measured the way the proxy records a
 * request: one counter increment with four labels (provider, route, status class, cache status) plus one
 * histogram observation with two labels (provider, route), label values drawn from a small realistic set.
 *
 *   A. Effect `Metric` (global registry) — what `@effect/opentelemetry`'s producer + `@opentelemetry/exporter-prometheus`
 *      would read at scrape time. Measured with `unsafeUpdate(value, extraTags)` (the cheapest entry point, no
 *      Effect run per observation) and with pre-tagged metrics.
 *   B. prom-client — `inc(labels)` / `observe(labels)` (label object hashed per call), and with label children
 *      cached by a string key (what src/observability/Metrics.ts does).
 *
 * It also times one scrape (render to Prometheus text) with the series the run created, for each exporter.
 *
 * Run: `npm run bench -- metrics-exporter` (environment: BENCH_OBSERVATIONS, default 1,000,000).
 */
import * as OtelMetrics from "@effect/opentelemetry/Metrics"
import * as Resource from "@effect/opentelemetry/Resource"
import { PrometheusExporter, PrometheusSerializer } from "@opentelemetry/exporter-prometheus"
import { Effect, Metric, MetricBoundaries, MetricKey, MetricLabel } from "effect"
import { Counter, Histogram, Registry } from "prom-client"

const N = Number(process.env["BENCH_OBSERVATIONS"] ?? 300_000)
const providers = ["openai", "anthropic"]
const routes = ["/v1/chat/completions", "/v1/embeddings", "/v1/models"]
const statuses = ["2xx", "4xx", "5xx"]
const caches = ["miss", "hit", "bypass"]
const buckets = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

// Pre-drawn label tuples, so every variant pays the same (zero) cost for choosing them.
const draws = Array.from({ length: 4096 }, (_, i) => ({
  provider: providers[i % 2]!,
  route: routes[(i >> 1) % 3]!,
  status: statuses[(i * 7) % 10 < 8 ? 0 : (i % 2) + 1]!,
  cache: caches[(i * 13) % 3]!,
  seconds: ((i * 2654435761) % 1000) / 20_000
}))

interface Result {
  readonly name: string
  readonly nsPerObservation: number
}

const time = (name: string, observe: (i: number) => void): Result => {
  for (let i = 0; i < 100_000; i++) observe(i) // warm-up (JIT, series creation)
  const start = process.hrtime.bigint()
  for (let i = 0; i < N; i++) observe(i)
  const ns = Number(process.hrtime.bigint() - start) / N
  return { name, nsPerObservation: ns }
}

const timeAsync = async (name: string, f: () => Promise<unknown>, runs = 200) => {
  for (let i = 0; i < 20; i++) await f()
  const start = process.hrtime.bigint()
  for (let i = 0; i < runs; i++) await f()
  return { name, usPerScrape: Number(process.hrtime.bigint() - start) / runs / 1000 }
}

const results: Array<Result> = []

// --- A. Effect Metric -------------------------------------------------------------------------------------------
const effRequests = Metric.counter("bench_effect_requests_total", { incremental: true })
const effOverhead = Metric.histogram("bench_effect_overhead_seconds", MetricBoundaries.fromIterable(buckets))
results.push(time("Effect Metric, unsafeUpdate(v, [labels]) per call", (i) => {
  const d = draws[i & 4095]!
  effRequests.unsafeUpdate(1, [
    MetricLabel.make("provider", d.provider),
    MetricLabel.make("route", d.route),
    MetricLabel.make("status_class", d.status),
    MetricLabel.make("cache", d.cache)
  ])
  effOverhead.unsafeUpdate(d.seconds, [MetricLabel.make("provider", d.provider), MetricLabel.make("route", d.route)])
}))

const effTagged = new Map<string, { c: typeof effRequests; h: typeof effOverhead }>()
results.push(time("Effect Metric, pre-tagged metrics cached by key", (i) => {
  const d = draws[i & 4095]!
  const key = `${d.provider}\u0000${d.route}\u0000${d.status}\u0000${d.cache}`
  let m = effTagged.get(key)
  if (m === undefined) {
    m = {
      c: effRequests.pipe(
        Metric.tagged("provider", d.provider),
        Metric.tagged("route", d.route),
        Metric.tagged("status_class", d.status),
        Metric.tagged("cache", d.cache)
      ),
      h: effOverhead.pipe(Metric.tagged("provider", d.provider), Metric.tagged("route", d.route))
    }
    effTagged.set(key, m)
  }
  m.c.unsafeUpdate(1, [])
  m.h.unsafeUpdate(d.seconds, [])
}))

const effKeyed = new Map<string, { c: Metric.Metric.Counter<number>; h: Metric.Metric.Histogram<number> }>()
const requestsKey = MetricKey.counter("bench_effect_requests_total", { incremental: true })
const overheadKey = MetricKey.histogram("bench_effect_overhead_seconds", MetricBoundaries.fromIterable(buckets))
results.push(time("Effect Metric, fromMetricKey(key with tags) cached by key", (i) => {
  const d = draws[i & 4095]!
  const key = `${d.provider}\u0000${d.route}\u0000${d.status}\u0000${d.cache}`
  let m = effKeyed.get(key)
  if (m === undefined) {
    m = {
      c: Metric.fromMetricKey(MetricKey.taggedWithLabels(requestsKey, [
        MetricLabel.make("provider", d.provider),
        MetricLabel.make("route", d.route),
        MetricLabel.make("status_class", d.status),
        MetricLabel.make("cache", d.cache)
      ])),
      h: Metric.fromMetricKey(MetricKey.taggedWithLabels(overheadKey, [
        MetricLabel.make("provider", d.provider),
        MetricLabel.make("route", d.route)
      ]))
    }
    effKeyed.set(key, m)
  }
  m.c.unsafeUpdate(1, [])
  m.h.unsafeUpdate(d.seconds, [])
}))

results.push(time("Effect Metric, Effect.runSync(Metric.update) per call", (i) => {
  const d = draws[i & 4095]!
  const m = effTagged.get(`${d.provider}\u0000${d.route}\u0000${d.status}\u0000${d.cache}`)!
  Effect.runSync(Effect.zipRight(Metric.increment(m.c), Metric.update(m.h, d.seconds)))
}))

// --- B. prom-client ---------------------------------------------------------------------------------------------
const registry = new Registry()
const promRequests = new Counter({
  name: "bench_prom_requests_total",
  help: "requests",
  labelNames: ["provider", "route", "status_class", "cache"],
  registers: [registry]
})
const promOverhead = new Histogram({
  name: "bench_prom_overhead_seconds",
  help: "overhead",
  labelNames: ["provider", "route"],
  buckets,
  registers: [registry]
})
results.push(time("prom-client, inc(labels) + observe(labels) per call", (i) => {
  const d = draws[i & 4095]!
  promRequests.inc({ provider: d.provider, route: d.route, status_class: d.status, cache: d.cache })
  promOverhead.observe({ provider: d.provider, route: d.route }, d.seconds)
}))

const promChildren = new Map<string, { c: { inc: () => void }; h: { observe: (v: number) => void } }>()
results.push(time("prom-client, label children cached by key", (i) => {
  const d = draws[i & 4095]!
  const key = `${d.provider}\u0000${d.route}\u0000${d.status}\u0000${d.cache}`
  let m = promChildren.get(key)
  if (m === undefined) {
    m = {
      c: promRequests.labels(d.provider, d.route, d.status, d.cache),
      h: promOverhead.labels(d.provider, d.route)
    }
    promChildren.set(key, m)
  }
  m.c.inc()
  m.h.observe(d.seconds)
}))

// --- Scrape cost ------------------------------------------------------------------------------------------------
const serializer = new PrometheusSerializer()
const effectScrape = await (async () => {
  // Build the producer once and keep it registered for the scrape loop.
  const producer = await Effect.runPromise(
    OtelMetrics.makeProducer.pipe(Effect.provide(Resource.layer({ serviceName: "bench" })))
  )
  const reader = new PrometheusExporter({ preventServerStart: true })
  reader.setMetricProducer(producer as never)
  return timeAsync("Effect Metric -> @effect/opentelemetry producer -> PrometheusSerializer", async () => {
    const { resourceMetrics } = await reader.collect()
    return serializer.serialize(resourceMetrics)
  })
})()
const promScrape = await timeAsync("prom-client registry.metrics()", () => registry.metrics())

console.log(
  `observations per variant: ${N.toLocaleString("en-US")} (counter with 4 labels + histogram with 2 labels)\n`
)
console.log("| variant | ns per observation |")
console.log("|---|---|")
for (const r of results) console.log(`| ${r.name} | ${r.nsPerObservation.toFixed(0)} |`)
console.log("\n| scrape (same series) | µs per scrape |")
console.log("|---|---|")
for (const s of [effectScrape, promScrape]) console.log(`| ${s.name} | ${s.usPerScrape.toFixed(0)} |`)
