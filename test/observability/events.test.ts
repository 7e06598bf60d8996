/**
 * The event bus and the dispatcher on /metrics and /health, with real traffic through a real `serve` (SQLite) and
 * a real Redis: publish counts, an in-process dispatcher's delivery counts, the bus lag while a dispatcher is
 * stopped and after it drained, readiness with the Redis bus unreachable, and the standalone `dispatcher` binary's
 * own endpoint with a backend (a local HTTP receiver) that fails, retries and rejects.
 */
import { Either, Option, Redacted } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest"
import { type DispatcherConfig, parseMetricsAddress } from "../../src/config/AppConfig.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { dispatcherLayer } from "../../src/Layers.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { buildLayer, completeLines, makeEvent, type Receiver, startReceiver, waitFor } from "../support/events.js"
import { chatChunks, sse } from "../support/mockUpstream.js"
import { testConfig } from "../support/server.js"
import { parsePrometheus, type Sample, value } from "./prometheus.js"

const sqlite = backends.find((b) => b.name === "sqlite")!
const CHAT = "/v1/chat/completions"

const scrape = async (url: string) => {
  const r = await fetch(`${url}/metrics`)
  expect(r.status).toBe(200)
  return parsePrometheus(await r.text())
}
const has = (s: ReadonlyArray<Sample>, name: string, labels: Record<string, string> = {}) =>
  s.some((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v))
const health = async (url: string) => {
  const r = await fetch(`${url}/health`)
  return { status: r.status, body: await r.json() as any }
}
const ready = async (url: string) => (await fetch(`${url}/ready`)).status

const defaultEvents = testConfig({ _tag: "sqlite", path: ":memory:" }).events
const dir = mkdtempSync(join(tmpdir(), "llm-proxy-obs-events-"))
const lines = (path: string) => completeLines(path).length

describe("serve --file-event-log (in-memory bus, dispatcher in-process)", () => {
  let backend: BackendInstance
  let stack: Stack
  const path = join(dir, "in-process.jsonl")

  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend, { events: { ...defaultEvents, fileEventLog: Option.some(path) } })
    const { token } = await projectAndToken(stack.manage)
    for (let i = 0; i < 3; i++) {
      expect((await call(stack.server.url, CHAT, { token, body: chatBody() })).status).toBe(200)
    }
    // and a streamed one (time to first token, streamed tokens per second)
    stack.mock.enqueue(sse(chatChunks(["a", "b"]), { intervalMs: 10 }))
    expect((await call(stack.server.url, CHAT, { token, body: chatBody({ stream: true }) })).status).toBe(200)
    // the in-process file backend flushes every second
    await waitFor(() => lines(path) >= 4, 20_000, "4 events in the file")
  }, 60_000)

  afterAll(async () => {
    await stack?.close()
    await backend?.cleanup()
  })

  it("counts published events and the dispatcher's deliveries by backend; lag 0 once drained", async () => {
    let s = await scrape(stack.server.url)
    for (let i = 0; i < 40 && value(s, "llm_proxy_dispatcher_delivered_total") < 4; i++) {
      await new Promise((r) => setTimeout(r, 50))
      s = await scrape(stack.server.url)
    }
    expect(value(s, "llm_proxy_bus_published_total")).toBe(4)
    expect(value(s, "llm_proxy_bus_dropped_total")).toBe(0)
    expect(value(s, "llm_proxy_dispatcher_delivered_total", { backend: "file" })).toBe(4)
    expect(value(s, "llm_proxy_dispatcher_retries_total", { backend: "file" })).toBe(0)
    expect(value(s, "llm_proxy_dispatcher_dead_lettered_total", { backend: "file" })).toBe(0)
    expect(value(s, "llm_proxy_dispatcher_batches_total", { backend: "file" })).toBeGreaterThanOrEqual(1)
    const last = value(s, "llm_proxy_dispatcher_last_delivery_timestamp_seconds", { backend: "file" })
    expect(last * 1000).toBeLessThanOrEqual(Date.now())
    expect(last * 1000).toBeGreaterThan(Date.now() - 60_000)
    expect(value(s, "llm_proxy_dispatcher_lag_events", { group: "file-event-log" })).toBe(0)
    expect(has(s, "llm_proxy_bus_lag_events")).toBe(true)
    expect(value(s, "llm_proxy_bus_lag_events")).toBe(0)
  })

  it("/health lists the event bus (optional: in-memory) and the dispatcher with its counters", async () => {
    const h = await health(stack.server.url)
    expect(h.status).toBe(200)
    expect(h.body.status).toBe("ok")
    expect(h.body.checks.event_bus).toMatchObject({
      status: "up",
      required: false,
      kind: "in-memory",
      lag: 0,
      published: 4,
      dropped: 0
    })
    expect(typeof h.body.checks.event_bus.latency_ms).toBe("number")
    expect(h.body.checks.dispatcher).toMatchObject({
      status: "up",
      required: false,
      lag: 0,
      groups: { "file-event-log": { lag: 0, pending: 0 } },
      backends: { file: { group: "file-event-log", delivered: 4, retries: 0, dead_lettered: 0 } }
    })
    expect(Date.parse(h.body.checks.dispatcher.backends.file.last_delivery_at)).not.toBeNaN()
  })

  it("serves every series the Grafana dashboard in docs/ queries (a serve with its dispatcher in-process)", async () => {
    const dashboard = JSON.parse(
      readFileSync(new URL("../../docs/grafana-dashboard.json", import.meta.url), "utf8")
    ) as {
      panels: Array<{ targets?: Array<{ expr: string }> }>
    }
    const exprs = dashboard.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr))
    const used = new Set(
      exprs.flatMap((e) => [...e.matchAll(/\b((?:llm_proxy|process|nodejs)_[a-z0-9_]+)/g)].map((m) => m[1]!))
    )
    for (
      const n of [
        "llm_proxy_bus_lag_events",
        "llm_proxy_dispatcher_lag_events",
        "llm_proxy_dispatcher_delivered_total",
        "llm_proxy_dispatcher_retries_total",
        "llm_proxy_dispatcher_dead_lettered_total"
      ]
    ) {
      expect(used.has(n), n).toBe(true)
    }
    const served = new Set((await scrape(stack.server.url)).map((x) => x.name))
    for (const name of used) expect(served.has(name), name).toBe(true)
  })
})

describe.skipIf(!redisUrl)("serve with the Redis Streams bus", () => {
  const prefix = `llm-proxy-test:obs-events:${process.pid}:${Date.now()}:`
  const streamKey = `${prefix}events`
  let backend: BackendInstance
  let stack: Stack
  let token: string

  const dispatcherConfig = (group: string): DispatcherConfig => ({
    service: "file",
    endpoint: join(dir, `${group}.jsonl`),
    apiKey: Option.none(),
    otlp: Option.none(),
    batchSize: 100,
    flushIntervalMs: 50,
    buffer: 1000,
    group,
    deadLetterPath: join(dir, `${group}.dead.jsonl`),
    redisUrl: redisUrl!,
    events: { ...defaultEvents, bus: "redis-streams", streamKey },
    logLevel: "error",
    logFormat: "json",
    metricsAddr: Option.none()
  })
  const startDispatcher = (group: string) =>
    buildLayer(dispatcherLayer(dispatcherConfig(group), Option.some(`${group}-1`)))
  const traffic = async (n: number) => {
    for (let i = 0; i < n; i++) {
      expect((await call(stack.server.url, CHAT, { token, body: chatBody() })).status).toBe(200)
    }
  }
  const lagIs = (n: number, labels: Record<string, string> = {}, name = "llm_proxy_bus_lag_events") =>
    waitFor(
      async () => {
        const s = await scrape(stack.server.url)
        return has(s, name, labels) && value(s, name, labels) === n
      },
      20_000,
      `${name} ${JSON.stringify(labels)} = ${n}`
    )

  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend, {
      redisUrl: redisUrl!,
      events: { ...defaultEvents, bus: "redis-streams", streamKey }
    })
    token = (await projectAndToken(stack.manage)).token
  }, 60_000)

  afterAll(async () => {
    await stack?.close()
    await backend?.cleanup()
    await flushRedisPrefix(redisUrl!, prefix)
  })

  it(
    "bus lag: the stream length before any dispatcher, 0 once one drained it, N while it is stopped, 0 again after",
    async () => {
      await traffic(3)
      // no consumer group yet: everything written is unconsumed
      await lagIs(3)
      let s = await scrape(stack.server.url)
      expect(value(s, "llm_proxy_bus_published_total")).toBe(3)
      let h = await health(stack.server.url)
      expect(h.body.checks.event_bus).toMatchObject({
        status: "up",
        required: true,
        kind: "redis-streams",
        stream: streamKey,
        lag: 3,
        length: 3,
        published: 3
      })
      expect(h.body.checks.dispatcher).toMatchObject({ status: "up", required: false, lag: null, groups: {} })

      let d = await startDispatcher("g-lag")
      await lagIs(0)
      await lagIs(0, { group: "g-lag" }, "llm_proxy_dispatcher_lag_events")
      await d.close()

      await traffic(2)
      await lagIs(2)
      await lagIs(2, { group: "g-lag" }, "llm_proxy_dispatcher_lag_events")
      h = await health(stack.server.url)
      expect(h.status).toBe(200)
      expect(h.body.checks.dispatcher).toMatchObject({
        lag: 2,
        groups: { "g-lag": { lag: 2, pending: 0, consumers: 1 } }
      })
      expect(h.body.checks.dispatcher.backends).toBeUndefined()
      expect(await ready(stack.server.url)).toBe(200)

      d = await startDispatcher("g-lag")
      await lagIs(0)
      await d.close()
      expect(lines(join(dir, "g-lag.jsonl"))).toBe(5)
      s = await scrape(stack.server.url)
      expect(value(s, "llm_proxy_bus_published_total")).toBe(5)
      expect(value(s, "llm_proxy_bus_dropped_total")).toBe(0)
      expect(value(s, "llm_proxy_dispatcher_lag_events", { group: "g-lag" })).toBe(0)
    },
    60_000
  )
})

describe("readiness and the event bus", () => {
  const cleanups: Array<() => Promise<void>> = []
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c()
  })

  it("Redis bus unreachable (closed port): event_bus down and required, /ready 503, /metrics still answers", async () => {
    const backend = await sqlite.create()
    cleanups.push(() => backend.cleanup())
    const stack = await startStack(backend, {
      redisUrl: "redis://127.0.0.1:1",
      events: { ...defaultEvents, bus: "redis-streams" }
    })
    cleanups.push(() => stack.close())
    const h = await health(stack.server.url)
    expect(h.status).toBe(503)
    expect(h.body.status).toBe("down")
    expect(h.body.checks.event_bus).toMatchObject({ status: "down", required: true })
    expect(h.body.checks.event_bus.error).toMatch(/not connected/)
    expect(h.body.checks.database.status).toBe("up")
    expect(h.body.checks.dispatcher).toMatchObject({ status: "down", required: false })
    expect(await ready(stack.server.url)).toBe(503)
    const s = await scrape(stack.server.url)
    expect(has(s, "llm_proxy_bus_published_total")).toBe(true)
    expect(has(s, "llm_proxy_bus_lag_events")).toBe(false)
  })

  it("Redis bus unreachable but events off (OBSERVABILITY_ENABLED=false): degraded, still ready", async () => {
    const backend = await sqlite.create()
    cleanups.push(() => backend.cleanup())
    const stack = await startStack(backend, {
      redisUrl: "redis://127.0.0.1:1",
      events: { ...defaultEvents, bus: "redis-streams", enabled: false }
    })
    cleanups.push(() => stack.close())
    const h = await health(stack.server.url)
    expect(h.status).toBe(200)
    expect(h.body.status).toBe("degraded")
    expect(h.body.checks.event_bus).toMatchObject({ status: "down", required: false })
    expect(await ready(stack.server.url)).toBe(200)
  })

  it.skipIf(!redisUrl)("Redis bus reachable: ready, event_bus up", async () => {
    const backend = await sqlite.create()
    cleanups.push(() => backend.cleanup())
    const stack = await startStack(backend, { redisUrl: redisUrl!, events: { ...defaultEvents, bus: "redis-streams" } })
    cleanups.push(() => stack.close())
    // the probe connection is opened at start-up; give it its first round trip
    await waitFor(async () => (await ready(stack.server.url)) === 200, 10_000, "ready")
    const h = await health(stack.server.url)
    expect(h.body.checks.event_bus).toMatchObject({ status: "up", required: true, lag: 0, length: 0 })
  })

  // failing open (the default) leaves it optional: test/observability/health.test.ts
  it("rate limits failing closed (RATE_LIMIT_FAILURE_MODE=closed) make Redis required", async () => {
    const backend = await sqlite.create()
    cleanups.push(() => backend.cleanup())
    const closed = await startStack(backend, {
      rateLimitBackend: "redis",
      rateLimitFailureMode: "closed",
      redisUrl: "redis://127.0.0.1:1"
    })
    cleanups.push(() => closed.close())
    const h = await health(closed.server.url)
    expect(h.body.checks.redis).toMatchObject({ status: "down", required: true })
    expect(await ready(closed.server.url)).toBe(503)
  })
})

describe("DISPATCHER_METRICS_ADDR", () => {
  it.each([
    ["9464", { host: "127.0.0.1", port: 9464 }],
    [":0", { host: "127.0.0.1", port: 0 }],
    ["0.0.0.0:9464", { host: "0.0.0.0", port: 9464 }],
    ["[::1]:9000", { host: "::1", port: 9000 }]
  ])("%s → %j (loopback unless a host is given)", (input, expected) => {
    expect(Either.getOrThrow(parseMetricsAddress(input))).toEqual(expected)
  })
  it.each(["", "host", "99999", "a:b"])("%j is refused", (input) => {
    expect(parseMetricsAddress(input)._tag).toBe("Left")
  })
})

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

describe.skipIf(!redisUrl || !built)("the built dispatcher binary with --metrics-addr", () => {
  const prefix = `llm-proxy-test:obs-dispatcher-bin:${process.pid}:${Date.now()}:`
  const streamKey = `${prefix}events`
  let receiver: Receiver | undefined
  let child: ChildProcess | undefined
  afterEach(async () => {
    if (child !== undefined && child.exitCode === null) child.kill("SIGKILL")
    await receiver?.close()
    await flushRedisPrefix(redisUrl!, prefix)
  })

  it(
    "serves /metrics with exact delivered / retried / dead-lettered counts and /health with the bus and the backend",
    async () => {
      const seen = new Map<string, number>()
      receiver = await startReceiver((r) => {
        const id = (r.body as { providerRequest?: { meta?: Record<string, string> } }).providerRequest?.meta
          ?.["Helicone-Property-Request-Id"] ?? ""
        const n = (seen.get(id) ?? 0) + 1
        seen.set(id, n)
        if (id === "flaky" && n <= 2) return 500
        return id === "bad" ? 400 : 200
      })
      const publisher = await buildLayer(RedisStreamsBus.layerPublisher({
        url: Redacted.make(redisUrl!),
        streamKey,
        maxLen: 0,
        bufferSize: 100,
        claimIdleMs: 30_000
      }))
      for (const id of ["ok-1", "flaky", "bad", "ok-2"]) publisher.get(EventBus).publish(makeEvent({ request_id: id }))
      await publisher.close()

      const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-bin-dispatcher-"))
      const c = spawn(process.execPath, [
        bin,
        "dispatcher",
        "--service",
        "helicone",
        "--api-key",
        "helicone-test-key",
        "--endpoint",
        `${receiver.url}/custom/v1/log`,
        "--redis-url",
        redisUrl!,
        "--stream-key",
        streamKey,
        "--flush-interval",
        "100ms",
        "--dead-letter",
        join(cwd, "dead.jsonl"),
        "--metrics-addr",
        ":0"
      ], { cwd, env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", LLM_PROXY_EVENT_BUS: "redis-streams" } })
      child = c
      let output = ""
      const url = await new Promise<string>((resolve, reject) => {
        const onData = (d: Buffer) => {
          output += d.toString()
          const m = /metrics and health on (http:\/\/[^"\s]+)/.exec(output)
          if (m?.[1]) resolve(m[1])
        }
        c.stdout!.on("data", onData)
        c.stderr!.on("data", onData)
        c.on("exit", (code) => reject(new Error(`dispatcher exited with ${code}: ${output}`)))
      })
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/)

      await waitFor(
        async () => {
          const s = await scrape(url)
          return value(s, "llm_proxy_dispatcher_delivered_total") +
              value(s, "llm_proxy_dispatcher_dead_lettered_total") >= 4
        },
        20_000,
        "4 events finished"
      )
      const s = await scrape(url)
      expect(value(s, "llm_proxy_dispatcher_delivered_total", { backend: "helicone" })).toBe(3)
      expect(value(s, "llm_proxy_dispatcher_dead_lettered_total", { backend: "helicone" })).toBe(1)
      // the flaky event failed twice: two retry rounds; accepted events are never resent
      expect(value(s, "llm_proxy_dispatcher_retries_total", { backend: "helicone" })).toBe(2)
      expect(Object.fromEntries(seen)).toEqual({ "ok-1": 1, flaky: 3, bad: 1, "ok-2": 1 })
      expect(has(s, "llm_proxy_dispatcher_last_delivery_timestamp_seconds", { backend: "helicone" })).toBe(true)
      expect(has(s, "process_cpu_seconds_total")).toBe(true)

      await waitFor(async () => (await health(url)).body.checks?.dispatcher?.lag === 0, 10_000, "lag 0")
      const h = await health(url)
      expect(h.status).toBe(200)
      expect(h.body.checks.event_bus).toMatchObject({
        status: "up",
        required: true,
        kind: "redis-streams",
        stream: streamKey
      })
      expect(h.body.checks.dispatcher).toMatchObject({
        status: "up",
        lag: 0,
        groups: { "dispatcher-helicone": { lag: 0, pending: 0 } },
        backends: { helicone: { group: "dispatcher-helicone", delivered: 3, retries: 2, dead_lettered: 1 } }
      })
      expect(Date.parse(h.body.checks.dispatcher.backends.helicone.last_delivery_at)).not.toBeNaN()
      expect(JSON.stringify(h.body)).not.toContain("helicone-test-key")
      expect((await fetch(`${url}/nope`)).status).toBe(404)
      expect((await fetch(`${url}/metrics`, { method: "POST" })).status).toBe(405)
      expect(output).not.toContain("helicone-test-key")

      const code = await new Promise<number | null>((resolve) => {
        c.removeAllListeners("exit")
        c.on("exit", resolve)
        c.kill("SIGTERM")
      })
      expect(code).toBe(0)
    },
    60_000
  )
})
