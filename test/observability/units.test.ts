/** Pure parts of observability, table-driven. */
import { Cause, ConfigProvider, Effect, Either, Option, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import { appConfig, formatConfigError, parseOtlpHeaders } from "../../src/config/AppConfig.js"
import { routeTemplate } from "../../src/http/Server.js"
import { make as makeMetrics, statusClass } from "../../src/observability/Metrics.js"
import { cacheStatusOf, modelOf } from "../../src/observability/ProxyObservability.js"
import { exportBody, make as makeProxySpans, nanos, toOtlpSpansJson } from "../../src/observability/ProxySpans.js"
import { parsePrometheus, value } from "./prometheus.js"

describe("modelOf", () => {
  it.each([
    ['{"model":"gpt-4o-mini","messages":[]}', "gpt-4o-mini"],
    ['{ "messages": [], "model" : "claude-3-5-sonnet" }', "claude-3-5-sonnet"],
    ['{"messages":[{"content":"the \\"model\\" word"}]}', undefined],
    ['{"model": 42}', undefined],
    ["not json at all", undefined],
    ["", undefined],
    [`{"messages":"${"x".repeat(9000)}","model":"late"}`, undefined]
  ])("%s → %s", (body, model) => {
    expect(modelOf(body === "" ? Buffer.alloc(0) : Buffer.from(body))).toBe(model)
  })
  it("undefined body", () => expect(modelOf(undefined)).toBeUndefined())
})

describe("cacheStatusOf", () => {
  it.each([
    [{ "x-proxy-cache": "stored", "cache-status": "llm-proxy; stored" }, "stored"],
    [{ "x-proxy-cache": "BYPASS" }, "bypass"],
    [{ "cache-status": "llm-proxy; miss" }, "miss"],
    [{ "cache-status": "llm-proxy; stored (forced)" }, "stored"],
    [{ "cache-status": "llm-proxy; conditional-hit" }, "conditional-hit"],
    [{ "cache-status": "othercache; hit" }, "none"],
    [{ "x-proxy-cache": "weird" }, "none"],
    [{}, "none"]
  ])("%j → %s", (headers, status) => expect(cacheStatusOf(headers)).toBe(status))
})

describe("statusClass", () => {
  it.each([[200, "2xx"], [204, "2xx"], [301, "3xx"], [404, "4xx"], [499, "4xx"], [503, "5xx"], [0, "none"], [600, "none"]])(
    "%i → %s",
    (status, cls) => expect(statusClass(status)).toBe(cls)
  )
})

describe("routeTemplate", () => {
  it.each([
    ["/manage/projects", "/manage/projects"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60", "/manage/projects/:id"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60/tokens/revoke", "/manage/projects/:id/tokens/revoke"],
    ["/manage/tokens/abc123", "/manage/tokens/:id"],
    ["/manage/cache/purge", "/manage/cache/purge"],
    ["/manage/openapi.json", "/manage/openapi.json"]
  ])("%s → %s", (path, template) => expect(routeTemplate(path)).toBe(template))
})

describe("parseOtlpHeaders", () => {
  it.each([
    ["", {}],
    ["api-key=abc", { "api-key": "abc" }],
    ["A=1, b=x%20y ,", { a: "1", b: "x y" }],
    ["x-honeycomb-team=k=v", { "x-honeycomb-team": "k=v" }]
  ])("%s", (input, out) => expect(parseOtlpHeaders(input)).toEqual(Either.right(out)))
  it.each(["novalue", "=v", "bad key=v", "k=%E0%A4%A"])("rejects %s", (input) => expect(Either.isLeft(parseOtlpHeaders(input))).toBe(true))
})

describe("toOtlpSpans", () => {
  it("builds a server span and a client child with typed attributes and error status", () => {
    const [root, up] = JSON.parse("[" + toOtlpSpansJson({
      name: "proxy.request",
      startMs: 1_700_000_000_000.5,
      endMs: 1_700_000_000_010,
      error: false,
      attributes: { a: "x", n: 3, d: 1.5, b: true, skip: undefined },
      upstream: { startMs: 1_700_000_000_001, endMs: 1_700_000_000_010, error: true, attributes: {} }
    }) + "]") as Array<any>
    expect(root.kind).toBe(2)
    expect(root.traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(root.spanId).toMatch(/^[0-9a-f]{16}$/)
    expect(root.startTimeUnixNano).toBe("1700000000000500000")
    expect(root.attributes).toEqual([
      { key: "a", value: { stringValue: "x" } },
      { key: "n", value: { intValue: 3 } },
      { key: "d", value: { doubleValue: 1.5 } },
      { key: "b", value: { boolValue: true } }
    ])
    expect(root.status).toEqual({ code: 1 })
    expect(up).toMatchObject({ kind: 3, traceId: root.traceId, parentSpanId: root.spanId, status: { code: 2 }, attributes: [] })
    expect(root.parentSpanId).toBeUndefined()
  })

  it("escapes string attributes and builds a valid export body", () => {
    const body = JSON.parse(exportBody({ attributes: [] }, { name: "s" }, [{
      name: "proxy.request",
      startMs: 1,
      endMs: 2,
      error: true,
      attributes: { "gen_ai.request.model": 'we"ird\\model\n' },
      upstream: undefined
    }]))
    const spans = body.resourceSpans[0].scopeSpans[0].spans
    expect(spans).toHaveLength(1)
    expect(spans[0].attributes[0].value.stringValue).toBe('we"ird\\model\n')
    expect(spans[0].status.code).toBe(2)
  })

  it.each([
    [1000, "1000000000"],
    [1.5, "1500000"],
    [1_700_000_000_000.9999999, "1700000000001000000"],
    [1_700_000_000_123.25, "1700000000123250000"]
  ])("nanos(%d) = %s", (ms, ns) => expect(nanos(ms)).toBe(ns))
})

describe("observability configuration", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSyncExit(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  const ok = (env: Record<string, string>) => {
    const exit = load(env)
    if (exit._tag !== "Success") throw new Error(String(exit.cause))
    return exit.value
  }
  const error = (env: Record<string, string>) => {
    const exit = load(env)
    if (exit._tag === "Success") throw new Error("expected a configuration error")
    const failure = Cause.failureOption(exit.cause)
    return failure._tag === "Some" ? formatConfigError(failure.value) : ""
  }

  it("is off without an endpoint; metrics and access log default on", () => {
    const c = ok({})
    expect(Option.isNone(c.otlp)).toBe(true)
    expect([c.enableMetrics, c.accessLog]).toEqual([true, true])
    expect([ok({ ENABLE_METRICS: "false", ACCESS_LOG: "0" }).enableMetrics, ok({ ACCESS_LOG: "0" }).accessLog]).toEqual([false, false])
  })

  it("appends /v1/traces to the generic endpoint; the traces endpoint is used as is", () => {
    const a = Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" }).otlp)
    expect(a).toMatchObject({ tracesUrl: "http://collector:4318/v1/traces", serviceName: "llm-proxy", exportIntervalMs: 5000, sampleRatio: 1 })
    const b = Option.getOrThrow(ok({
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://vendor.example/otlp/traces",
      OTEL_EXPORTER_OTLP_HEADERS: "api-key=s3cret",
      OTEL_SERVICE_NAME: "gw-eu",
      OTEL_EXPORT_INTERVAL: "1s",
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.25"
    }).otlp)
    expect(b).toMatchObject({ tracesUrl: "https://vendor.example/otlp/traces", serviceName: "gw-eu", exportIntervalMs: 1000, sampleRatio: 0.25 })
    expect(Redacted.value(b.headers)).toEqual({ "api-key": "s3cret" })
    expect(String(b.headers)).not.toContain("s3cret")
    expect(Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_SAMPLER: "always_off" }).otlp).sampleRatio).toBe(0)
  })

  it.each([
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" }, "OTEL_EXPORTER_OTLP_ENDPOINT"],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "ftp://x" }, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_HEADERS: "nonsense" }, "OTEL_EXPORTER_OTLP_HEADERS"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_SAMPLER: "jaeger_remote" }, "OTEL_TRACES_SAMPLER"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "2" }, "OTEL_TRACES_SAMPLER_ARG"],
    [{ ENABLE_METRICS: "maybe" }, "ENABLE_METRICS"]
  ])("%j → one line naming %s", (env, variable) => {
    expect(error(env)).toMatch(new RegExp(`^invalid configuration: ${variable}: `))
  })
})

describe("Metrics sources read at scrape time", () => {
  it("exposes the cache, bus and dispatcher counters they report; a failing or slow source leaves the last values", async () => {
    const { json, text } = await Effect.runPromise(Effect.gen(function*() {
      const m = yield* makeMetrics({ processMetrics: false })
      let cacheHits = 5
      m.attachCache(Effect.sync(() => ({ hits: cacheHits, misses: 7, bypass: 2, stores: 3, evictions: 1, expired: 4, bytes: 1234, entries: 9, errors: 0 })))
      m.attachBus(Effect.succeed({ published: 11, dropped: 1, lag: 3 }))
      m.attachDispatcher(Effect.succeed({ delivered: 10, retries: 2, deadLettered: 1, batches: 4, lag: 6 }))
      m.attachTokenCache(() => ({ hits: 8, loads: 2, size: 2 }))
      m.tokenCacheInvalidated("project")
      yield* m.prometheus
      cacheHits = 6
      const text = yield* m.prometheus
      // A source that fails keeps what was read last.
      m.attachBus(Effect.fail(new Error("bus down")))
      return { text: yield* m.prometheus, json: yield* m.json, first: text }
    }))
    const s = parsePrometheus(text)
    expect(value(s, "llm_proxy_cache_hits_total")).toBe(6)
    expect(value(s, "llm_proxy_cache_evictions_total")).toBe(1)
    expect(value(s, "llm_proxy_cache_bytes")).toBe(1234)
    expect(value(s, "llm_proxy_bus_published_total")).toBe(11)
    expect(value(s, "llm_proxy_bus_lag_events")).toBe(3)
    expect(value(s, "llm_proxy_dispatcher_delivered_total")).toBe(10)
    expect(value(s, "llm_proxy_dispatcher_retries_total")).toBe(2)
    expect(value(s, "llm_proxy_dispatcher_dead_lettered_total")).toBe(1)
    expect(value(s, "llm_proxy_dispatcher_lag_events")).toBe(6)
    expect(value(s, "llm_proxy_token_cache_hits_total")).toBe(8)
    expect(value(s, "llm_proxy_token_cache_invalidations_total", { scope: "project" })).toBe(1)
    expect(json).toMatchObject({ cache_hits: 6, cache_misses: 7, cache_bypass: 2, cache_stores: 3, request_count: 0, error_count: 0 })
  })
})

describe("ProxySpans sampling", () => {
  it.each([[0, false], [1, true]])("ratio %d → sample() %s", async (ratio, expected) => {
    const sampled = await Effect.runPromise(Effect.scoped(Effect.map(
      makeProxySpans({ tracesUrl: "http://127.0.0.1:9/v1/traces", headers: Redacted.make({}), serviceName: "t", exportIntervalMs: 60_000, sampleRatio: ratio }, "v"),
      (s) => [s.sample(), s.sample(), s.sample()]
    )))
    expect(sampled).toEqual([expected, expected, expected])
  })
  it("a ratio of 0.5 samples some requests, not all", async () => {
    const n = await Effect.runPromise(Effect.scoped(Effect.map(
      makeProxySpans({ tracesUrl: "http://127.0.0.1:9/v1/traces", headers: Redacted.make({}), serviceName: "t", exportIntervalMs: 60_000, sampleRatio: 0.5 }, "v"),
      (s) => Array.from({ length: 1000 }, () => s.sample()).filter(Boolean).length
    )))
    expect(n).toBeGreaterThan(300)
    expect(n).toBeLessThan(700)
  })
})
