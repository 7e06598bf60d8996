/** `llm-proxy dispatcher` and `serve --file-event-log` as users run them (in-process through runCli). */
import { Effect, Exit, Fiber, Redacted } from "effect"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import { runCli } from "../../src/cli/Cli.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { decodeTraces } from "../observability/otlpDecode.js"
import { cli } from "../support/cli.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { buildLayer, makeEvent, waitFor } from "../support/events.js"

const saved = { ...process.env }
afterEach(() => {
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
  Object.assign(process.env, saved)
})

describe("llm-proxy dispatcher", () => {
  it("--help lists its options", async () => {
    const r = await cli("dispatcher", "--help")
    for (
      const o of [
        "--service",
        "--endpoint",
        "--api-key",
        "--batch-size",
        "--flush-interval",
        "--buffer",
        "--consumer-group",
        "--dead-letter",
        "--claim-idle",
        "--metrics-addr"
      ]
    ) {
      expect(r.out).toContain(o)
    }
  })

  it.each([
    [[], {}, "LLM_PROXY_EVENT_BUS: the dispatcher runs as its own process and needs redis-streams"],
    [
      ["--service", "lunary"],
      { LLM_PROXY_EVENT_BUS: "redis-streams" },
      "LLM_PROXY_API_KEY: required for the lunary backend"
    ],
    [
      ["--batch-size", "0"],
      { LLM_PROXY_EVENT_BUS: "redis-streams" },
      "DISPATCHER_BATCH_SIZE: expected a positive integer"
    ],
    [["--flush-interval", "soon"], { LLM_PROXY_EVENT_BUS: "redis-streams" }, "DISPATCHER_FLUSH_INTERVAL"],
    [
      ["--service", "helicone", "--api-key", "k", "--endpoint", "not a url"],
      { LLM_PROXY_EVENT_BUS: "redis-streams" },
      "DISPATCHER_ENDPOINT: expected an http(s) URL"
    ],
    [[], { LLM_PROXY_EVENT_BUS: "kafka" }, "LLM_PROXY_EVENT_BUS: expected in-memory or redis-streams"],
    [
      ["--metrics-addr", "everywhere"],
      { LLM_PROXY_EVENT_BUS: "redis-streams" },
      "DISPATCHER_METRICS_ADDR: expected PORT, :PORT or HOST:PORT"
    ]
  ])("%j %j → one line naming the setting", async (args, env, message) => {
    Object.assign(process.env, env)
    const r = await cli("dispatcher", ...args)
    expect(r.ok).toBe(false)
    expect(r.err).toContain(message)
    expect(r.err.split("\n")).toHaveLength(1)
    expect(r.err).not.toContain("secret")
  })

  it("serve --help shows --file-event-log", async () => {
    expect((await cli("serve", "--help")).out).toContain("--file-event-log")
  })
})

/** Publishes `n` events to the Redis stream `streamKey`, as serve would. */
const publishEvents = async (streamKey: string, n: number) => {
  const publisher = await buildLayer(RedisStreamsBus.layerPublisher({
    url: Redacted.make(redisUrl!),
    streamKey,
    maxLen: 0,
    bufferSize: 100,
    claimIdleMs: 30_000
  }))
  for (let i = 0; i < n; i++) publisher.get(EventBus).publish(makeEvent())
  await publisher.close()
}

describe.skipIf(!redisUrl)("llm-proxy dispatcher against Redis (in-process)", () => {
  const prefix = `llm-proxy-test:cli-dispatcher:${process.pid}:${Date.now()}:`
  afterEach(() => flushRedisPrefix(redisUrl!, prefix))

  it("delivers to the file backend, and stops cleanly when interrupted (as on SIGTERM)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cli-dispatcher-"))
    const path = join(dir, "out.jsonl")
    const streamKey = `${prefix}events`
    await publishEvents(streamKey, 50)
    process.env["LLM_PROXY_EVENT_BUS"] = "redis-streams"
    process.env["LOG_LEVEL"] = "error"
    const fiber = Effect.runFork(runCli([
      "node",
      "llm-proxy",
      "dispatcher",
      "--endpoint",
      path,
      "--redis-url",
      redisUrl!,
      "--stream-key",
      streamKey,
      "--flush-interval",
      "100ms",
      "--dead-letter",
      join(dir, "dead.jsonl")
    ]))
    const count = () => (existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l !== "").length : 0)
    await waitFor(() => count() >= 50, 20_000, "50 lines")
    const exit = await Effect.runPromise(Fiber.interrupt(fiber))
    expect(Exit.isInterrupted(exit)).toBe(true)
    expect(count()).toBe(50)
  })

  it("exports a dispatcher.batch span per batch over OTLP: events, delivered, backend", async () => {
    const bodies: Array<Buffer> = []
    const receiver = createServer((req, res) => {
      const parts: Array<Buffer> = []
      req.on("data", (d: Buffer) => parts.push(d))
      req.on("end", () => {
        bodies.push(Buffer.concat(parts))
        res.writeHead(200).end()
      })
    })
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r))
    try {
      const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cli-dispatcher-"))
      const path = join(dir, "out.jsonl")
      const streamKey = `${prefix}traced`
      await publishEvents(streamKey, 30)
      process.env["LLM_PROXY_EVENT_BUS"] = "redis-streams"
      process.env["LOG_LEVEL"] = "error"
      process.env["OTEL_EXPORTER_OTLP_ENDPOINT"] = `http://127.0.0.1:${(receiver.address() as AddressInfo).port}`
      process.env["OTEL_EXPORT_INTERVAL"] = "100ms"
      const fiber = Effect.runFork(runCli(
        [
          "node",
          "llm-proxy",
          "dispatcher",
          "--endpoint",
          path,
          "--redis-url",
          redisUrl!,
          "--stream-key",
          streamKey,
          "--batch-size",
          "10",
          "--flush-interval",
          "50ms"
        ]
      ))
      const count = () => (existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l !== "").length : 0)
      await waitFor(() => count() >= 30, 20_000, "30 lines")
      await Effect.runPromise(Fiber.interrupt(fiber))
      const spans = bodies.flatMap((b) =>
        decodeTraces(b).resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s: any) => s.spans as Array<any>))
      )
      const batches = spans.filter((s) => s.name === "dispatcher.batch")
      const attr = (s: any, key: string) => s.attributes.find((a: any) => a.key === key)?.value
      expect(batches.length).toBeGreaterThanOrEqual(3)
      const sum = (key: string) => batches.reduce((n, s) => n + Number(attr(s, key)?.intValue ?? 0), 0)
      expect(sum("llm_proxy.dispatcher.events")).toBe(30)
      expect(sum("llm_proxy.dispatcher.delivered")).toBe(30)
      expect(sum("llm_proxy.dispatcher.dead_lettered")).toBe(0)
      expect(batches.every((s) => attr(s, "llm_proxy.dispatcher.backend")?.stringValue === "file" && s.kind === 5))
        .toBe(true)
    } finally {
      await new Promise((r) => receiver.close(r))
    }
  })
})
