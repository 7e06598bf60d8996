/**
 * /metrics after known traffic: a real `serve` stack (SQLite) in front of the in-process mock upstream. Every count
 * below is exact; histogram assertions use only bounds the traffic guarantees (a 60 ms upstream cannot land in a
 * bucket below 0.05 s), never timing thresholds.
 */
import { readFileSync } from "node:fs"
import { createRequire } from "node:module"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, createProject, createToken, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { chatChunks, json, sse } from "../support/mockUpstream.js"
import { startServer, testConfig } from "../support/server.js"
import { buckets, parsePrometheus, value } from "./prometheus.js"

const Database = createRequire(import.meta.url)("better-sqlite3") as new(path: string) => {
  prepare(sql: string): { run(...args: Array<unknown>): unknown }
  close(): void
}

const sqlite = backends.find((b) => b.name === "sqlite")!

const scrape = async (url: string) => {
  const r = await fetch(`${url}/metrics`)
  expect(r.status).toBe(200)
  expect(r.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/)
  return parsePrometheus(await r.text())
}

const CHAT = "/v1/chat/completions"

describe("GET /metrics after known traffic", () => {
  let backend: BackendInstance
  let stack: Stack
  let before: ReadonlyArray<ReturnType<typeof parsePrometheus>[number]>

  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend)
    before = await scrape(stack.server.url)
    const { mock, manage, server } = stack
    const url = server.url

    // 3 × 200 JSON with usage 9/3, each upstream answer 60 ms late.
    const a = await projectAndToken(manage)
    for (let i = 0; i < 3; i++) {
      mock.enqueue(
        json({
          id: "x",
          model: "gpt-4o-mini",
          choices: [],
          usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }
        }, { delayMs: 60 })
      )
      expect((await call(url, CHAT, { token: a.token, body: chatBody() })).status).toBe(200)
    }
    // 1 × SSE with usage 5/2, model gpt-4.1, its 5 chunks 20 ms apart.
    mock.enqueue(sse(chatChunks(["Hel", "lo"]), { intervalMs: 20 }))
    expect((await call(url, CHAT, { token: a.token, body: chatBody({ model: "gpt-4.1", stream: true }) })).status).toBe(
      200
    )
    // 1 × upstream 500.
    mock.enqueue(json({ error: { message: "boom" } }, { status: 500 }))
    expect((await call(url, CHAT, { token: a.token, body: chatBody() })).status).toBe(500)
    // 1 × unknown token (rejected before any provider is known).
    expect((await call(url, CHAT, { token: "sk-" + "A".repeat(43), body: chatBody() })).status).toBe(401)
    // Quota: max_requests 1 → 200 then 429.
    // (Their answers come 5 ms late: an answer within 1 ms has no measurable generation time, and is not observed.)
    const usage93 = {
      id: "x",
      model: "gpt-4o-mini",
      choices: [],
      usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }
    }
    const q = await projectAndToken(manage, { max_requests: 1 })
    mock.enqueue(json(usage93, { delayMs: 5 }))
    expect((await call(url, CHAT, { token: q.token, body: chatBody() })).status).toBe(200)
    expect((await call(url, CHAT, { token: q.token, body: chatBody() })).status).toBe(429)
    // Window rate limit on a token (set in the database before its first use): 200 then 429.
    const p = await createProject(manage)
    const r = await createToken(manage, p.projectId)
    const db = new Database((backend.database as { path: string }).path)
    db.prepare("UPDATE tokens SET rate_limit_requests = 1, rate_limit_window_seconds = 3600 WHERE id = ?").run(
      r.tokenId
    )
    db.close()
    mock.enqueue(json(usage93, { delayMs: 5 }))
    expect((await call(url, CHAT, { token: r.token, body: chatBody() })).status).toBe(200)
    expect((await call(url, CHAT, { token: r.token, body: chatBody() })).status).toBe(429)
    // Revoking a token invalidates the validator cache.
    expect((await manage.delete(`/manage/tokens/${r.tokenId}`)).status).toBe(204)
  }, 60_000)

  afterAll(async () => {
    await stack?.close()
    await backend?.cleanup()
  })

  it("counts requests by provider, route, status class and cache status", async () => {
    const s = await scrape(stack.server.url)
    const req = (labels: Record<string, string>) => value(s, "llm_proxy_requests_total", { route: CHAT, ...labels })
    expect(value(before, "llm_proxy_requests_total")).toBe(0)
    // 3 JSON + 1 SSE + quota's first + rate limit's first
    expect(req({ provider: "openai", status_class: "2xx", cache: "none" })).toBe(6)
    expect(req({ provider: "openai", status_class: "5xx" })).toBe(1)
    // quota 429 + rate-limit 429 (provider known), unknown token 401 (provider none)
    expect(req({ provider: "openai", status_class: "4xx" })).toBe(2)
    expect(req({ provider: "none", status_class: "4xx" })).toBe(1)
    expect(value(s, "llm_proxy_requests_total")).toBe(10)
  })

  it("has upstream-latency and overhead histograms whose buckets match the traffic", async () => {
    const s = await scrape(stack.server.url)
    const upstream = buckets(s, "llm_proxy_upstream_latency_seconds", { provider: "openai", route: CHAT })
    // Every forwarded request: 3 slow JSON + SSE + 500 + quota's first + rate limit's first.
    expect(upstream.get("+Inf")).toBe(7)
    expect(value(s, "llm_proxy_upstream_latency_seconds_count", { provider: "openai" })).toBe(7)
    // The three 60 ms answers cannot be under 50 ms; the 4 fast ones may be anywhere.
    expect(upstream.get("0.05")!).toBeLessThanOrEqual(4)
    expect(upstream.get("120")).toBe(7)
    const les = [...upstream.keys()].filter((k) => k !== "+Inf").map(Number)
    expect(les).toEqual([...les].sort((x, y) => x - y))
    const counts = [...upstream.entries()].sort(([x], [y]) => Number(x) - Number(y)).map(([, c]) => c)
    for (let i = 1; i < counts.length; i++) expect(counts[i]!).toBeGreaterThanOrEqual(counts[i - 1]!)
    expect(value(s, "llm_proxy_upstream_latency_seconds_sum", { provider: "openai" })).toBeGreaterThanOrEqual(0.18)

    // Overhead and duration: one observation per request, rejected ones included.
    expect(value(s, "llm_proxy_proxy_overhead_seconds_count")).toBe(10)
    expect(value(s, "llm_proxy_request_duration_seconds_count")).toBe(10)
    expect(buckets(s, "llm_proxy_proxy_overhead_seconds").get("+Inf")).toBe(10)
    // A request's overhead is part of its duration.
    expect(value(s, "llm_proxy_proxy_overhead_seconds_sum")).toBeLessThanOrEqual(
      value(s, "llm_proxy_request_duration_seconds_sum")
    )
  })

  it("counts tokens by provider, model and kind", async () => {
    const s = await scrape(stack.server.url)
    // 3 × (9, 3) on gpt-4o-mini plus the default mock answer (9, 3) for quota's and rate limit's first requests.
    expect(value(s, "llm_proxy_tokens_total", { provider: "openai", model: "gpt-4o-mini", kind: "prompt" })).toBe(45)
    expect(value(s, "llm_proxy_tokens_total", { provider: "openai", model: "gpt-4o-mini", kind: "completion" })).toBe(
      15
    )
    expect(value(s, "llm_proxy_tokens_total", { provider: "openai", model: "gpt-4.1", kind: "prompt" })).toBe(5)
    expect(value(s, "llm_proxy_tokens_total", { provider: "openai", model: "gpt-4.1", kind: "completion" })).toBe(2)
  })

  it("observes time to first token for the streamed answer only", async () => {
    const s = await scrape(stack.server.url)
    expect(value(before, "llm_proxy_time_to_first_token_seconds_count")).toBe(0)
    expect(value(s, "llm_proxy_time_to_first_token_seconds_count")).toBe(1)
    expect(value(s, "llm_proxy_time_to_first_token_seconds_count", { provider: "openai", model: "gpt-4.1" })).toBe(1)
    expect(buckets(s, "llm_proxy_time_to_first_token_seconds", { model: "gpt-4.1" }).get("+Inf")).toBe(1)
    // The first chunk came before the stream's end (4 more chunks, 20 ms apart).
    const ttft = value(s, "llm_proxy_time_to_first_token_seconds_sum")
    expect(ttft).toBeGreaterThan(0)
    expect(ttft).toBeLessThan(value(s, "llm_proxy_request_duration_seconds_sum"))
  })

  it("observes output tokens per second for every successful answer with completion tokens, by stream", async () => {
    const s = await scrape(stack.server.url)
    // JSON: 3 slow answers + quota's and rate limit's first requests (all gpt-4o-mini, 3 completion tokens each).
    expect(value(s, "llm_proxy_output_tokens_per_second_count", { model: "gpt-4o-mini", stream: "false" })).toBe(5)
    // 3 tokens over at least the 60 ms the upstream waited: at most 50 tokens/s.
    expect(buckets(s, "llm_proxy_output_tokens_per_second", { model: "gpt-4o-mini", stream: "false" }).get("50"))
      .toBeGreaterThanOrEqual(3)
    // The stream: 2 tokens over the ≥ 80 ms between its first and last chunk: at most 25 tokens/s.
    expect(value(s, "llm_proxy_output_tokens_per_second_count", { model: "gpt-4.1", stream: "true" })).toBe(1)
    expect(buckets(s, "llm_proxy_output_tokens_per_second", { model: "gpt-4.1", stream: "true" }).get("30")).toBe(1)
    // The 500 and the rejected requests are not observed.
    expect(value(s, "llm_proxy_output_tokens_per_second_count")).toBe(6)
  })

  it("has one series per quantity: no family declared twice, no sample repeated, no uptime gauge beside the process start time", async () => {
    const text = await (await fetch(`${stack.server.url}/metrics`)).text()
    const families = [...text.matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!)
    expect(families.length).toBeGreaterThan(30)
    expect(families.filter((f, i) => families.indexOf(f) !== i)).toEqual([])
    const samples = parsePrometheus(text).map((x) => `${x.name}${JSON.stringify(Object.entries(x.labels).sort())}`)
    expect(samples.filter((k, i) => samples.indexOf(k) !== i)).toEqual([])
    expect(families).toContain("process_start_time_seconds")
    expect(families).not.toContain("llm_proxy_uptime_seconds")
  })

  it("counts rate-limit and quota rejections apart", async () => {
    const s = await scrape(stack.server.url)
    expect(value(s, "llm_proxy_quota_rejections_total")).toBe(1)
    expect(value(s, "llm_proxy_rate_limit_rejections_total", { scope: "token" })).toBe(1)
    expect(value(s, "llm_proxy_rate_limit_rejections_total", { scope: "project" })).toBe(0)
  })

  it("reports the token-validator cache: misses (loads), hits and invalidations", async () => {
    const s = await scrape(stack.server.url)
    // Three valid tokens were loaded once each; the unknown one was looked up (a miss) and not cached.
    expect(value(s, "llm_proxy_token_cache_misses_total")).toBe(4)
    // 4 more requests on the first token, 1 on the quota token, 1 on the rate-limited one.
    expect(value(s, "llm_proxy_token_cache_hits_total")).toBe(6)
    expect(value(s, "llm_proxy_token_cache_invalidations_total", { scope: "token" })).toBeGreaterThanOrEqual(1)
  })

  it("publishes no event to an in-memory bus that no dispatcher reads (none is built), and drops none", async () => {
    const s = await scrape(stack.server.url)
    // 9 requests of token holders above; with a dispatcher in the process (--file-event-log) each is an event, refused
    // ones included, and counted here (events.test.ts).
    expect(value(s, "llm_proxy_bus_published_total")).toBe(0)
    expect(value(s, "llm_proxy_bus_dropped_total")).toBe(0)
  })

  it("exposes cache and bus series and process metrics; dispatcher series only where a dispatcher runs", async () => {
    const s = await scrape(stack.server.url)
    const names = new Set(s.map((x) => x.name))
    // no dispatcher in this process (no --file-event-log): its series are declared, without samples
    for (const n of ["llm_proxy_dispatcher_delivered_total", "llm_proxy_dispatcher_lag_events"]) {
      expect(names.has(n), n).toBe(false)
    }
    for (
      const n of [
        "llm_proxy_cache_hits_total",
        "llm_proxy_cache_misses_total",
        "llm_proxy_cache_stores_total",
        "llm_proxy_cache_evictions_total",
        "llm_proxy_cache_bytes",
        "llm_proxy_bus_published_total",
        "llm_proxy_bus_dropped_total",
        // the in-memory bus: nothing waiting
        "llm_proxy_bus_lag_events",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "nodejs_heap_size_used_bytes",
        "nodejs_eventloop_lag_seconds"
      ]
    ) expect(names.has(n), n).toBe(true)
  })

  it("keeps the Go llm-proxy's JSON counters at /metrics/json and the text at /metrics/prometheus", async () => {
    const r = await fetch(`${stack.server.url}/metrics/json`)
    expect(r.status).toBe(200)
    const body = await r.json() as Record<string, number>
    expect(Object.keys(body).sort()).toEqual(
      ["cache_bypass", "cache_hits", "cache_misses", "cache_stores", "error_count", "request_count", "uptime_seconds"]
    )
    expect(body["request_count"]).toBe(10)
    // 500 + 401 + 2 × 429
    expect(body["error_count"]).toBe(4)
    expect(body["uptime_seconds"]).toBeGreaterThan(0)
    const p = await fetch(`${stack.server.url}/metrics/prometheus`)
    expect(p.headers.get("content-type")).toMatch(/^text\/plain; version=0\.0\.4/)
    expect(await p.text()).toContain("# TYPE llm_proxy_requests_total counter")
  })

  // test/observability/events.test.ts checks the samples on a serve with its dispatcher in-process
  it("declares every series the Grafana dashboard in docs/ queries", async () => {
    const dashboard = JSON.parse(
      readFileSync(new URL("../../docs/grafana-dashboard.json", import.meta.url), "utf8")
    ) as {
      panels: Array<{ targets?: Array<{ expr: string }> }>
    }
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr))
    expect(exprs.length).toBeGreaterThan(20)
    const used = new Set(
      exprs.flatMap((e) => [...e.matchAll(/\b((?:llm_proxy|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]!))
    )
    const text = await (await fetch(`${stack.server.url}/metrics`)).text()
    const declared = new Set(
      [...text.matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap((m) =>
        m[2] === "histogram"
          ? [`${m[1]}_bucket`, `${m[1]}_sum`, `${m[1]}_count`]
          : m[2] === "summary"
          ? [m[1]!, `${m[1]}_sum`, `${m[1]}_count`]
          : [m[1]!]
      )
    )
    for (const s of parsePrometheus(text)) declared.add(s.name)
    for (const name of used) expect(declared.has(name), name).toBe(true)
  })

  it("folds routes outside the allow-list into one label value", async () => {
    expect((await call(stack.server.url, "/v1/not-a-route/12345", { token: "sk-" + "B".repeat(43) })).status).toBe(404)
    const s = await scrape(stack.server.url)
    expect(value(s, "llm_proxy_requests_total", { route: "other" })).toBe(1)
    expect(s.some((x) => x.labels["route"]?.includes("12345"))).toBe(false)
  })
})

describe("ENABLE_METRICS=false", () => {
  it("answers 404 on every metrics path", async () => {
    const backend = await sqlite.create()
    const server = await startServer(testConfig(backend.database, { enableMetrics: false }))
    try {
      for (const path of ["/metrics", "/metrics/json", "/metrics/prometheus"]) {
        expect((await fetch(`${server.url}${path}`)).status, path).toBe(404)
      }
    } finally {
      await server.close()
      await backend.cleanup()
    }
  })
})

describe("response cache on /metrics", () => {
  it("counts stores and hits, labels requests by cache status, and fills the JSON counters", async () => {
    const backend = await sqlite.create()
    const stack = await startStack(backend)
    try {
      const { token } = await projectAndToken(stack.manage)
      stack.mock.route(
        "/v1/models",
        json({ object: "list", data: [] }, { headers: { "cache-control": "public, max-age=60" } })
      )
      const first = await call(stack.server.url, "/v1/models", { token })
      const second = await call(stack.server.url, "/v1/models", { token })
      expect([first.headers["x-proxy-cache"], second.headers["x-proxy-cache"]]).toEqual(["stored", "hit"])
      stack.mock.route("/v1/models/gpt-4o", json({ id: "gpt-4o" }))
      expect((await call(stack.server.url, "/v1/models/gpt-4o", { token })).headers["cache-status"]).toBe(
        "llm-proxy; miss"
      )
      const s = await scrape(stack.server.url)
      expect(value(s, "llm_proxy_requests_total", { route: "/v1/models", cache: "stored" })).toBe(1)
      expect(value(s, "llm_proxy_requests_total", { route: "/v1/models", cache: "hit" })).toBe(1)
      expect(value(s, "llm_proxy_requests_total", { route: "/v1/models/{id}", cache: "miss" })).toBe(1)
      expect(value(s, "llm_proxy_cache_hits_total")).toBe(1)
      expect(value(s, "llm_proxy_cache_stores_total")).toBe(1)
      expect(value(s, "llm_proxy_cache_misses_total")).toBe(2)
      expect(value(s, "llm_proxy_cache_entries")).toBe(1)
      expect(value(s, "llm_proxy_cache_bytes")).toBeGreaterThan(0)
      const j = await (await fetch(`${stack.server.url}/metrics/json`)).json() as Record<string, number>
      expect(j).toMatchObject({ request_count: 3, cache_hits: 1, cache_stores: 1, cache_misses: 2 })
    } finally {
      await stack.close()
      await backend.cleanup()
    }
  })
})
