/**
 * CPU cost per /v1 request of the observability hooks themselves, in-process and without HTTP, so the number does
 * not depend on how loaded the machine is: the real `ProxyObservability.make` hooks (decorateResponse + onComplete)
 * run on realistic request contexts, plus the deferred work each request causes later (building and JSON-encoding its
 * OTLP spans, JSON-encoding its access line), measured per request.
 *
 *   metrics          ENABLE_METRICS=true, no tracing, no access log
 *   metrics+tracing  + span records and their OTLP JSON (every request, and OTEL_TRACES_SAMPLER_ARG=0.1)
 *   all              + the JSON access line
 *
 * The throughput ratio follows from the data plane's own CPU per request P (proxy-smoke / observability benches):
 * ratio = P / (P + cost). Run: `npm run bench -- observability-hooks` (BENCH_REQUESTS, default 200,000).
 */
import { Effect, Exit, Layer, Logger, LogLevel, Option, Scope } from "effect"
import { builtInOpenAi, Providers } from "../../src/config/Providers.js"
import { make as makeMetrics, Metrics } from "../../src/observability/Metrics.js"
import { make as makeHooks } from "../../src/observability/ProxyObservability.js"
import { makeEncoder, ProxySpans, type ProxySpansShape } from "../../src/observability/ProxySpans.js"
import { ProxyRequestContext } from "../../src/proxy/ProxyHooks.js"

const N = Number(process.env["BENCH_REQUESTS"] ?? 200_000)
const body = Buffer.from(JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Say hello." }] }))
const headers = { "content-type": "application/json", "x-request-id": "r" }

const contexts = Array.from({ length: 1024 }, (_, i) => {
  const t = performance.now()
  const c = new ProxyRequestContext(
    crypto.randomUUID(),
    "POST",
    "/v1/chat/completions",
    "/v1/chat/completions",
    undefined,
    t,
    Date.now()
  )
  c.provider = "openai"
  c.tokenId = crypto.randomUUID()
  c.projectId = crypto.randomUUID()
  c.requestBody = body
  c.status = i % 50 === 0 ? 500 : 200
  c.forwarded = true
  c.proxyMs = 0.05
  c.upstreamMs = 1.2
  c.durationMs = 1.5
  c.upstreamStatus = c.status
  c.usage = { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }
  // What the usage reader found in the answer (the GenAI span's response attributes).
  c.answer = {
    responseModel: "gpt-4o-mini-2024-07-18",
    responseId: `chatcmpl-${crypto.randomUUID()}`,
    finishReasons: ["stop"],
    cacheReadTokens: undefined,
    cacheCreationTokens: undefined,
    inputTokens: 9,
    firstChunkAt: undefined
  }
  return c
})

const measure = async (
  name: string,
  options: {
    metrics: boolean
    tracing: boolean
    accessLog: boolean
    sample?: number
    protocol?: "http/protobuf" | "http/json"
  }
) => {
  // The exporter's real encoder (what ProxySpans.record does), minus the network.
  const encoder = makeEncoder(options.protocol ?? "http/protobuf", "bench", "0")
  let exported = 0
  const ratio = options.sample ?? 1
  // Same sampling test as ProxySpans.
  const spans: ProxySpansShape = {
    sample: () => ratio >= 1 || Math.random() < ratio,
    record: (r) => {
      encoder.add(r)
      if (encoder.size() >= 1000) exported += encoder.take().length
    },
    dropped: () => 0
  }
  let written = 0
  const scope = Effect.runSync(Scope.make())
  const hooks = await Effect.runPromise(
    makeHooks({
      metrics: options.metrics,
      accessLog: options.accessLog,
      format: "json",
      write: (t) => void (written += t.length)
    }).pipe(
      Effect.provide(Layer.mergeAll(
        Layer.effect(Metrics, makeMetrics({ processMetrics: false })),
        Layer.succeed(Providers, builtInOpenAi("http://127.0.0.1:1")),
        Layer.succeed(ProxySpans, options.tracing ? Option.some(spans) : Option.none())
      )),
      Effect.provide(Logger.minimumLogLevel(LogLevel.Info)),
      Scope.extend(scope)
    )
  )
  const decorate = hooks.decorateResponse?.[0]
  const complete = hooks.onComplete?.[0]
  const run = async (n: number) => {
    for (let i = 0; i < n; i++) {
      // Let the access log's flush timer run, as it would between requests.
      if ((i & 1023) === 0) await new Promise((r) => setImmediate(r))
      const c = contexts[i & 1023]!
      decorate?.(c, 200, headers)
      complete?.(c)
    }
  }
  await run(20_000)
  const start = process.hrtime.bigint()
  await run(N)
  // Access lines are flushed on a timer; close the scope to flush (and count) what is left.
  await Effect.runPromise(Scope.close(scope, Exit.void))
  const ns = Number(process.hrtime.bigint() - start) / N
  return { name, usPerRequest: ns / 1000, written, exported }
}

const main = async () => {
  const variants: Array<[string, Parameters<typeof measure>[1]]> = [
    ["metrics", { metrics: true, tracing: false, accessLog: false }],
    ["metrics+tracing (protobuf)", { metrics: true, tracing: true, accessLog: false }],
    ["metrics+tracing (http/json)", { metrics: true, tracing: true, accessLog: false, protocol: "http/json" }],
    ["metrics+tracing, 10% sampled", { metrics: true, tracing: true, accessLog: false, sample: 0.1 }],
    ["metrics + access log", { metrics: true, tracing: false, accessLog: true }],
    ["all (metrics + tracing + access log)", { metrics: true, tracing: true, accessLog: true }]
  ]
  // BENCH_ONLY=text: only the variants whose name contains it (for profiling one).
  const only = process.env["BENCH_ONLY"]
  const rows = []
  for (const [name, options] of variants) {
    if (only === undefined || name.includes(only)) rows.push(await measure(name, options))
  }
  console.log(`requests per variant: ${N.toLocaleString("en-US")}\n`)
  console.log("| variant | µs per request | ratio at P = 75 µs | ratio at P = 150 µs |")
  console.log("|---|---|---|---|")
  for (const r of rows) {
    console.log(
      `| ${r.name} | ${r.usPerRequest.toFixed(2)} | ${(75 / (75 + r.usPerRequest)).toFixed(3)} | ${
        (150 / (150 + r.usPerRequest)).toFixed(3)
      } |`
    )
  }
}

main().then(() => process.exit(0), (e) => {
  console.error(e)
  process.exit(1)
})
