/**
 * The Lunary and Helicone backends against receivers that apply the services' own rules (test/dispatcher/services.ts,
 * each rule citing the service's source): what ends up stored — runs, logged requests, tokens, cost, ids — per-event
 * results, retries, dead letters, credential pauses, body limits; and a dispatcher killed mid-batch (Redis Streams,
 * the built binary) whose events are redelivered to the same receiver.
 */
import type { HttpClient } from "@effect/platform"
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer, Logger, Redacted } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, afterEach, describe, expect, it } from "vitest"
import type { Backend } from "../../src/dispatcher/Backend.js"
import { heliconeBackend, lunaryBackend } from "../../src/dispatcher/backends.js"
import * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { eventId, heliconeLog, lunaryBody } from "../../src/dispatcher/formats.js"
import { TokenCounter } from "../../src/dispatcher/tokens.js"
import { transformEvent } from "../../src/dispatcher/transform.js"
import type { ProxyEvent } from "../../src/domain/ProxyEvent.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as InMemoryBus from "../../src/eventbus/InMemoryBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { dispatcherStats } from "../../src/observability/eventChecks.js"
import { make as makeMetrics } from "../../src/observability/Metrics.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { body, buildLayer, jsonLines, makeEvent, sse, startReceiver, waitFor } from "../support/events.js"
import { stopProcess } from "../support/processes.js"
import { type Helicone, type Lunary, LUNARY_TEST_PRICES, startHelicone, startLunary } from "./services.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-services-"))
const lines = (path: string): Array<Record<string, any>> => jsonLines(path)
const json = (value: unknown) => body(JSON.stringify(value), { content_type: "application/json" })

const LUNARY_KEY = "0d9ae2c1-3c4b-4f0a-9d55-5c1f4b8f7e21"
const LUNARY_PROJECT = "7c6f3f7e-1b2d-4a8e-b9a4-2f1d3c4b5a69"
const HELICONE_KEY = "sk-helicone-test-key"

const options = (name: string, extra: Partial<Dispatcher.DispatcherOptions> = {}): Dispatcher.DispatcherOptions => ({
  group: "g",
  consumer: name,
  batchSize: 10,
  flushIntervalMs: 50,
  buffer: 100,
  deadLetterPath: join(dir, `${name}.dead.jsonl`),
  keepAliveMs: 1000,
  retryBaseMs: 10,
  retryMaxMs: 50,
  status: "off",
  ...extra
})

/** The dispatcher on the in-memory bus, its log lines collected. */
const start = async <E>(backend: Layer.Layer<Backend, E, HttpClient.HttpClient>, o: Dispatcher.DispatcherOptions) => {
  const logs: Array<{ level: string; message: string }> = []
  const logger = Logger.replace(
    Logger.defaultLogger,
    Logger.make(({ logLevel, message }) =>
      logs.push({ level: logLevel.label, message: Array.isArray(message) ? message.join(" ") : String(message) })
    )
  )
  const built = await buildLayer(
    Dispatcher.layer(o).pipe(
      Layer.provide(Layer.merge(backend.pipe(Layer.provide(NodeHttpClient.layerUndici)), TokenCounter.layer)),
      Layer.provideMerge(InMemoryBus.layer(1000)),
      Layer.provide(logger)
    )
  )
  return {
    ...built,
    logs,
    state: built.get(Dispatcher.DispatcherState),
    publish: (...events: Array<ProxyEvent>) => events.forEach((e) => built.get(EventBus).publish(e))
  }
}

const lunaryTo = (lunary: Lunary, maxBytes?: number) =>
  lunaryBackend(`${lunary.url}/v1/runs/ingest`, Redacted.make(LUNARY_KEY), maxBytes)
const heliconeTo = (helicone: Helicone) => heliconeBackend(helicone.url, Redacted.make(HELICONE_KEY))

// Events of each provider shape the proxy forwards.
const shapes = {
  chat: () =>
    makeEvent({
      request_body: json({
        model: "gpt-4o-mini",
        temperature: 0,
        messages: [{ role: "system", content: "Be brief" }, { role: "user", content: "Hello there" }]
      }),
      response_body: json({
        id: "chatcmpl-1",
        object: "chat.completion",
        model: "gpt-4o-mini",
        choices: [{ index: 0, message: { role: "assistant", content: "Hi!" }, finish_reason: "stop" }],
        usage: {
          prompt_tokens: 1200,
          completion_tokens: 2,
          total_tokens: 1202,
          prompt_tokens_details: { cached_tokens: 1024 }
        }
      })
    }),
  stream: () =>
    makeEvent({
      stream: true,
      upstream_ms: 250,
      duration_ms: 900,
      request_body: json({
        model: "gpt-4o-mini",
        stream: true,
        stream_options: { include_usage: true },
        messages: [{ role: "user", content: "Count to 2" }]
      }),
      response_body: body(
        sse([
          {
            id: "c2",
            object: "chat.completion.chunk",
            model: "gpt-4o-mini",
            choices: [{ index: 0, delta: { role: "assistant", content: "1, " } }]
          },
          {
            id: "c2",
            object: "chat.completion.chunk",
            model: "gpt-4o-mini",
            choices: [{ index: 0, delta: { content: "2" }, finish_reason: "stop" }]
          },
          {
            id: "c2",
            object: "chat.completion.chunk",
            model: "gpt-4o-mini",
            choices: [],
            usage: { prompt_tokens: 11, completion_tokens: 3, total_tokens: 14 }
          }
        ]),
        { content_type: "text/event-stream" }
      )
    }),
  anthropic: () =>
    makeEvent({
      path: "/v1/messages",
      model: "claude-3-5-haiku",
      request_body: json({
        model: "claude-3-5-haiku",
        max_tokens: 100,
        system: "You are terse.",
        messages: [{ role: "user", content: "Weather in Oslo?" }]
      }),
      response_body: json({
        id: "msg_1",
        type: "message",
        role: "assistant",
        model: "claude-3-5-haiku",
        content: [{ type: "text", text: "Checking." }, {
          type: "tool_use",
          id: "tu_1",
          name: "weather",
          input: { city: "Oslo" }
        }],
        usage: { input_tokens: 30, output_tokens: 12, cache_read_input_tokens: 2000 }
      })
    }),
  responses: () =>
    makeEvent({
      path: "/v1/responses",
      model: "gpt-4o-mini",
      request_body: json({ model: "gpt-4o-mini", instructions: "Answer in French", input: "Hello" }),
      response_body: json({
        id: "resp_1",
        object: "response",
        model: "gpt-4o-mini",
        output: [{ type: "message", role: "assistant", content: [{ type: "output_text", text: "Bonjour" }] }],
        usage: { input_tokens: 14, output_tokens: 2, input_tokens_details: { cached_tokens: 0 } }
      })
    }),
  failed: () => makeEvent({ status: 502, error: "upstream_error", upstream_ms: null, response_body: null })
}

const idOf = (e: ProxyEvent) => eventId(e)

let closers: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  for (const c of closers.reverse()) await c.close()
  closers = []
})
const using = <A extends { close(): Promise<void> }>(a: A): A => {
  closers.push(a)
  return a
}

describe("Lunary, as its ingestion API reads the events", () => {
  it("each request is one run: chat input and output of every provider shape, tokens, cached tokens, cost, the project as user", async () => {
    const lunary = using(await startLunary({ keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]) }))
    const d = using(await start(lunaryTo(lunary), options("lunary-shapes")))
    const events = {
      chat: shapes.chat(),
      stream: shapes.stream(),
      anthropic: shapes.anthropic(),
      responses: shapes.responses(),
      failed: shapes.failed()
    }
    d.publish(...Object.values(events))
    await waitFor(() => d.state.delivered >= 5, 10_000, "5 runs")
    expect(lunary.runs.size).toBe(5)
    const run = (e: ProxyEvent) => lunary.runs.get(idOf(e))!
    // Lunary camel-cases every key it stores (recursiveToCamel): toolCalls, requestId …
    expect(run(events.chat)).toMatchObject({
      projectId: LUNARY_PROJECT,
      type: "llm",
      name: "gpt-4o-mini",
      status: "success",
      externalUserId: events.chat.project_id,
      input: [{ role: "system", content: "Be brief" }, { role: "user", content: "Hello there" }],
      output: { role: "assistant", content: "Hi!" },
      params: { temperature: 0 },
      promptTokens: 1200,
      completionTokens: 2,
      cachedPromptTokens: 1024,
      tags: ["llm-proxy"],
      metadata: {
        requestId: events.chat.request_id,
        path: "/v1/chat/completions",
        status: 200,
        usageSource: "response"
      }
    })
    const price = LUNARY_TEST_PRICES["gpt-4o-mini"]!
    expect(run(events.chat).cost).toBeCloseTo(
      (1200 * price.input - 1024 * price.cachedReduction + 2 * price.output) / 1e6,
      12
    )
    expect(run(events.stream)).toMatchObject({
      input: [{ role: "user", content: "Count to 2" }],
      output: { role: "assistant", content: "1, 2" },
      promptTokens: 11,
      completionTokens: 3,
      metadata: { stream: true }
    })
    expect(run(events.anthropic)).toMatchObject({
      name: "claude-3-5-haiku",
      input: [{ role: "system", content: "You are terse." }, { role: "user", content: "Weather in Oslo?" }],
      output: {
        role: "assistant",
        content: "Checking.",
        toolCalls: [{ id: "tu_1", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } }]
      },
      promptTokens: 2030,
      completionTokens: 12,
      cachedPromptTokens: 2000
    })
    expect(run(events.anthropic).cost).toBeGreaterThan(0)
    expect(run(events.responses)).toMatchObject({
      input: [{ role: "system", content: "Answer in French" }, { role: "user", content: "Hello" }],
      output: { role: "assistant", content: "Bonjour" },
      promptTokens: 14,
      completionTokens: 2,
      cachedPromptTokens: 0
    })
    expect(run(events.failed)).toMatchObject({ status: "error", error: { message: "HTTP 502 upstream_error" } })
    expect(d.state.deadLettered).toBe(0)
  })

  it("two requests with the same client X-Request-ID are two runs, not one overwritten", async () => {
    const lunary = using(await startLunary({ keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]) }))
    const d = using(await start(lunaryTo(lunary), options("lunary-reused")))
    const first = makeEvent({
      request_id: "my-request",
      response_body: json({ choices: [{ message: { role: "assistant", content: "first" } }] })
    })
    const second = makeEvent({
      request_id: "my-request",
      timestamp: "2026-12-01T12:00:03.000Z",
      response_body: json({ choices: [{ message: { role: "assistant", content: "second" } }] })
    })
    d.publish(first, second)
    await waitFor(() => d.state.delivered >= 2, 10_000, "2 runs")
    expect(
      [...lunary.runs.values()].map((r) => [r.metadata?.["requestId"], (r.output as { content: string }).content])
        .sort()
    ).toEqual([
      ["my-request", "first"],
      ["my-request", "second"]
    ])
    expect(lunary.posts.flatMap((p) => p.results ?? []).every((r) => r["success"] === true)).toBe(true)
  })

  it("per-event results: a failing event is retried alone, one that keeps failing is dead-lettered, the rest accepted once", async () => {
    const [ok1, flaky, poison, ok2] = ["ok-1", "flaky", "poison", "ok-2"].map((request_id) => makeEvent({ request_id }))
    let flakyFailures = 0
    const lunary = using(
      await startLunary({
        keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]),
        failEvent: (e) => {
          if (
            e["runId"] === idOf(flaky!) && e["event"] === "start" && flakyFailures++ === 0
          ) return "write CONNECTION_CLOSED"
          if (e["runId"] === idOf(poison!) && e["event"] === "start") return "unsupported Unicode escape sequence"
          return undefined
        }
      })
    )
    const o = options("lunary-results")
    const d = using(await start(lunaryTo(lunary), o))
    d.publish(ok1!, flaky!, poison!, ok2!)
    await waitFor(() => d.state.delivered + d.state.deadLettered >= 4, 10_000, "4 events settled")
    expect(d.state).toMatchObject({ delivered: 3, deadLettered: 1 })
    // times each event was sent: its results (a start and an end) over all POSTs
    const sent = (e: ProxyEvent) =>
      lunary.posts.flatMap((p) => p.results ?? []).filter((r) => r["id"] === idOf(e)).length / 2
    expect([ok1, flaky, poison, ok2].map((e) => sent(e!))).toEqual([1, 2, 5, 1])
    expect(lunary.runs.get(idOf(flaky!))).toMatchObject({ status: "success" })
    expect(lunary.runs.has(idOf(poison!))).toBe(false)
    expect(lines(o.deadLetterPath)).toEqual([
      expect.objectContaining({
        service: "lunary",
        reason: "Lunary refused the event (start: unsupported Unicode escape sequence) (5 attempts)",
        event: expect.objectContaining({ request_id: "poison" })
      })
    ])
  })

  it("a redelivered event: Lunary answers that its run exists, which counts as accepted — one run, nothing dead-lettered", async () => {
    const lunary = using(await startLunary({ keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]) }))
    const o = options("lunary-again")
    const d = using(await start(lunaryTo(lunary), o))
    const e = shapes.chat()
    d.publish(e)
    await waitFor(() => d.state.delivered >= 1, 10_000, "first delivery")
    // the same entry again, as after a dispatcher crash before its acknowledgement
    d.publish(JSON.parse(JSON.stringify(e)))
    await waitFor(() => d.state.delivered >= 2, 10_000, "the redelivery")
    expect(lunary.runs.size).toBe(1)
    expect(lunary.posts[1]!.results).toEqual([
      { id: idOf(e), success: false, error: "Run with this ID already exists in the database." },
      { id: idOf(e), success: true }
    ])
    expect(d.state.deadLettered).toBe(0)
    expect(lines(o.deadLetterPath)).toEqual([])
  })

  it("batches are split by bytes: no POST is over Lunary's body limit (here 64 KiB on both sides)", async () => {
    const limit = 64 * 1024
    const lunary = using(await startLunary({ keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]), maxBodyBytes: limit }))
    const events = Array.from(
      { length: 12 },
      (_, i) =>
        makeEvent({
          request_body: json({
            model: "gpt-4o-mini",
            messages: [{ role: "user", content: `${i}: ${"ö".repeat(7_000)}` }]
          })
        })
    )
    // the receiver does refuse a body over its limit: the batch as one POST would be
    const whole = await fetch(`${lunary.url}/v1/runs/ingest`, {
      method: "POST",
      headers: { authorization: `Bearer ${LUNARY_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(lunaryBody(events.map((e) => transformEvent(e, () => 0))))
    })
    expect(whole.status).toBe(413)
    const d = using(
      await start(lunaryTo(lunary, limit), options("lunary-split", { batchSize: 12, flushIntervalMs: 500 }))
    )
    d.publish(...events)
    await waitFor(() => d.state.delivered >= 12, 10_000, "12 runs")
    const posted = lunary.posts.slice(1)
    expect(posted.length).toBeGreaterThan(1)
    expect(posted.every((p) => p.status === 200 && p.bytes <= limit)).toBe(true)
    expect(lunary.runs.size).toBe(12)
    expect(d.state.retries).toBe(0)
  })

  it("a refused key pauses delivery (loud log, metric, nothing dead-lettered) until the key is accepted again", async () => {
    const keys = new Map<string, string>()
    const lunary = using(await startLunary({ keys }))
    const o = options("lunary-key")
    const d = using(await start(lunaryTo(lunary), o))
    const metrics = await Effect.runPromise(makeMetrics({ processMetrics: false }))
    metrics.attachDispatcher(dispatcherStats(d.get(Dispatcher.DispatcherInfo)))
    const scrape = () => Effect.runPromise(metrics.prometheus)
    d.publish(shapes.chat(), shapes.responses())
    await waitFor(() => d.state.credentialFailures >= 3, 10_000, "refusals")
    expect(d.state.pausedSince).not.toBeNull()
    expect(await scrape()).toMatch(/llm_proxy_dispatcher_paused\{backend="lunary"\} 1/)
    expect(lunary.posts.every((p) => p.status === 401)).toBe(true)
    // the key is (re)created on the Lunary side: delivery resumes on its own
    keys.set(LUNARY_KEY, LUNARY_PROJECT)
    await waitFor(() => d.state.delivered >= 2, 10_000, "delivery after the key works")
    // a refused key is not a transient failure: counted apart, never dead-lettered
    expect(d.state).toMatchObject({ deadLettered: 0, pausedSince: null, retries: 0 })
    expect(lines(o.deadLetterPath)).toEqual([])
    expect(lunary.runs.size).toBe(2)
    const text = await scrape()
    expect(text).toMatch(/llm_proxy_dispatcher_paused\{backend="lunary"\} 0/)
    expect(Number(/llm_proxy_dispatcher_credential_failures_total\{backend="lunary"\} (\d+)/.exec(text)?.[1])).toBe(
      d.state.credentialFailures
    )
    const errors = d.logs.filter((l) => l.level === "ERROR")
    expect(errors.length).toBe(d.state.credentialFailures)
    expect(errors[0]!.message).toMatch(
      /^lunary backend refuses the API key \(HTTP 401: \{"message":"Invalid API key"\}\): delivery is PAUSED, \d+ event\(s\) wait/
    )
    expect(errors[0]!.message).not.toContain(LUNARY_KEY)
    expect(d.logs.some((l) => /lunary backend accepts the API key again: delivery resumed/.test(l.message))).toBe(true)
  })

  it.each([402, 403, 404])(
    "HTTP %i (Lunary's answers to a bad project key) pauses too; nothing is dead-lettered",
    async (status) => {
      const receiver = using(await startReceiver((_r, i) => (i < 2 ? status : 200)))
      const o = options(`lunary-${status}`)
      const d = using(await start(lunaryBackend(`${receiver.url}/v1/runs/ingest`, Redacted.make(LUNARY_KEY)), o))
      d.publish(makeEvent())
      await waitFor(() => d.state.delivered >= 1, 10_000, "delivery")
      expect(d.state).toMatchObject({ credentialFailures: 2, deadLettered: 0, pausedSince: null })
    }
  )
})

describe("Helicone, as its log routes read the events", () => {
  it("each request is logged on its provider's route with tokens, cost, its stable id, the project as user, properties", async () => {
    const helicone = using(await startHelicone({ keys: new Set([HELICONE_KEY]) }))
    const d = using(await start(heliconeTo(helicone), options("helicone-shapes")))
    const events = {
      chat: shapes.chat(),
      stream: shapes.stream(),
      anthropic: shapes.anthropic(),
      responses: shapes.responses(),
      failed: shapes.failed(),
      unicode: makeEvent({ status: 400, error: "Paramètre « model » invalide", response_body: null })
    }
    d.publish(...Object.values(events))
    await waitFor(() => d.state.delivered >= 6, 10_000, "6 logs")
    expect(helicone.posts.map((p) => p.status)).toEqual([200, 200, 200, 200, 200, 200])
    const logged = (e: ProxyEvent) => helicone.requests.get(idOf(e))!
    expect(logged(events.chat)).toMatchObject({
      provider: "OPENAI",
      path: "/v1/chat/completions",
      userId: events.chat.project_id,
      properties: {
        project: events.chat.project_id,
        token: events.chat.token_id,
        path: "/v1/chat/completions",
        "request-id": events.chat.request_id
      },
      model: "gpt-4o-mini",
      isStream: false,
      promptTokens: 1200,
      completionTokens: 2,
      latencyMs: 120,
      timeToFirstToken: null,
      costed: true
    })
    // the stream: logged with its reassembled answer and tokens (the request copy no longer says stream)
    expect(logged(events.stream)).toMatchObject({
      provider: "OPENAI",
      isStream: false,
      promptTokens: 11,
      completionTokens: 3,
      timeToFirstToken: 250,
      latencyMs: 900,
      costed: true,
      properties: { stream: "true" },
      responseBody: { object: "chat.completion", choices: [{ message: { content: "1, 2" } }] }
    })
    expect(logged(events.anthropic)).toMatchObject({
      provider: "ANTHROPIC",
      model: "claude-3-5-haiku",
      promptTokens: 30,
      completionTokens: 12,
      costed: true
    })
    expect(helicone.posts.filter((p) => p.route === "/anthropic/v1/log").map((p) => p.id)).toEqual([
      idOf(events.anthropic)
    ])
    expect(logged(events.responses)).toMatchObject({
      provider: "OPENAI",
      promptTokens: 14,
      completionTokens: 2,
      costed: true
    })
    expect(logged(events.failed)).toMatchObject({
      status: 502,
      properties: { error: "upstream_error" },
      responseBody: { error: { message: "HTTP 502 upstream_error", code: "upstream_error" } }
    })
    expect(logged(events.unicode)).toMatchObject({
      status: 400,
      properties: { error: "Param%C3%A8tre %C2%AB model %C2%BB invalide" }
    })
    expect(d.state.deadLettered).toBe(0)
  })

  it("the receiver applies Helicone's stream rule: the old request copy (stream: true with a JSON answer) had no tokens, no cost", async () => {
    const helicone = using(await startHelicone({ keys: new Set([HELICONE_KEY]) }))
    const e = transformEvent(shapes.stream(), () => 0)
    const log = heliconeLog(e).body as {
      providerRequest: { json: Record<string, unknown>; meta: Record<string, string> }
    }
    const post = (route: string, value: unknown) =>
      fetch(`${helicone.url}${route}`, {
        method: "POST",
        headers: { authorization: `Bearer ${HELICONE_KEY}` },
        body: JSON.stringify(value)
      })
    const old = structuredClone(log)
    old.providerRequest.json["stream"] = true
    old.providerRequest.meta["Helicone-Request-Id"] = crypto.randomUUID()
    expect((await post("/custom/v1/log", old)).status).toBe(200)
    expect(helicone.requests.get(old.providerRequest.meta["Helicone-Request-Id"])).toMatchObject({
      provider: "CUSTOM",
      isStream: true,
      promptTokens: undefined,
      completionTokens: undefined,
      costed: false
    })
    expect((await post("/oai/v1/log", log)).status).toBe(200)
    expect(helicone.requests.get(eventId(e))).toMatchObject({
      provider: "OPENAI",
      promptTokens: 11,
      completionTokens: 3,
      costed: true
    })
  })

  it("200 {error} (Helicone could not store it) is retried until stored; only that event is sent again", async () => {
    const [a, b] = [makeEvent({ request_id: "a" }), makeEvent({ request_id: "b" })]
    let failures = 0
    const helicone = using(
      await startHelicone({
        keys: new Set([HELICONE_KEY]),
        storeFails: (log) => (log["providerRequest"].meta["Helicone-Request-Id"] === idOf(b!) && failures++ < 2
          ? "Error logging"
          : undefined)
      })
    )
    const d = using(await start(heliconeTo(helicone), options("helicone-error")))
    d.publish(a!, b!)
    await waitFor(() => d.state.delivered >= 2, 10_000, "both stored")
    expect(helicone.posts.map((p) => p.id).filter((id) => id === idOf(a!))).toHaveLength(1)
    expect(helicone.posts.map((p) => p.id).filter((id) => id === idOf(b!))).toHaveLength(3)
    expect(helicone.requests.size).toBe(2)
    expect(d.state).toMatchObject({ deadLettered: 0, retries: 2 })
    expect(d.logs.some((l) => l.message.includes("Helicone could not store the log: Error logging"))).toBe(true)
  })

  it("a refused key pauses delivery until it is accepted; nothing is dead-lettered", async () => {
    const keys = new Set<string>()
    const helicone = using(await startHelicone({ keys }))
    const o = options("helicone-key")
    const d = using(await start(heliconeTo(helicone), o))
    d.publish(makeEvent(), makeEvent(), makeEvent())
    await waitFor(() => d.state.credentialFailures >= 2, 10_000, "refusals")
    expect(d.state.pausedSince).not.toBeNull()
    keys.add(HELICONE_KEY)
    await waitFor(() => d.state.delivered >= 3, 10_000, "delivery")
    expect(d.state).toMatchObject({ deadLettered: 0, pausedSince: null })
    expect(helicone.requests.size).toBe(3)
    expect(d.logs.filter((l) => l.level === "ERROR")[0]!.message).toMatch(
      /^helicone backend refuses the API key \(HTTP 401/
    )
  })
})

// ---------------------------------------------------------------------------------------------------------------
// A dispatcher killed in the middle of a batch (Redis Streams, the built binary)

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))
const prefix = `llm-proxy-test:services:${process.pid}:${Date.now()}:`

describe.skipIf(!redisUrl || !built)(
  "a dispatcher killed mid-batch, then another: the redelivered events reach the service again",
  () => {
    afterAll(async () => {
      await flushRedisPrefix(redisUrl!, prefix)
    })
    let n = 0
    const bus = () => ({
      url: Redacted.make(redisUrl!),
      streamKey: `${prefix}${++n}`,
      maxLen: 0,
      bufferSize: 10_000,
      claimIdleMs: 30_000
    })

    const publish = async (options: RedisStreamsBus.RedisStreamsOptions, events: Array<ProxyEvent>) => {
      const publisher = await buildLayer(RedisStreamsBus.layerPublisher(options))
      for (const e of events) expect(publisher.get(EventBus).publish(e)).toBe(true)
      await publisher.close()
    }

    const run = (
      service: string,
      endpoint: string,
      apiKey: string,
      streamKey: string,
      name: string,
      batchSize: number
    ) => {
      const child = spawn(process.execPath, [
        bin,
        "dispatcher",
        "--service",
        service,
        "--endpoint",
        endpoint,
        "--api-key",
        apiKey,
        "--batch-size",
        String(batchSize),
        "--flush-interval",
        "50ms",
        "--buffer",
        String(2 * batchSize),
        "--consumer-name",
        name,
        "--claim-idle",
        "1s",
        "--redis-url",
        redisUrl!,
        "--stream-key",
        streamKey,
        "--dead-letter",
        join(dir, `${name}.dead.jsonl`)
      ], { cwd: dir, env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", LLM_PROXY_EVENT_BUS: "redis-streams" } })
      let out = ""
      child.stdout.on("data", (c: Buffer) => (out += c.toString()))
      child.stderr.on("data", (c: Buffer) => (out += c.toString()))
      return { child, output: () => out }
    }
    const killed = async (child: ChildProcess) => {
      const gone = new Promise((resolve) => child.once("exit", resolve))
      child.kill("SIGKILL")
      await gone
    }
    const drained = (output: string) =>
      output.split("\n").filter((l) => l.includes("dispatcher drained")).map((l) =>
        JSON.parse(l) as { annotations: Record<string, unknown> }
      )

    it(
      "Lunary: runs stored before the kill are recognised on redelivery; every request is one run; nothing dead-lettered",
      async () => {
        const options = bus()
        // clients reusing X-Request-ID: 20 pairs share an id
        const events = Array.from({ length: 200 }, (_, i) =>
          makeEvent({
            request_id: i < 40 ? `reused-${i % 20}` : `req-${i}`,
            timestamp: new Date(Date.UTC(2026, 11, 1, 12, 0, 0, i)).toISOString(),
            response_body: json({
              choices: [{ message: { role: "assistant", content: `answer ${i}` } }],
              usage: { prompt_tokens: 5, completion_tokens: 1 }
            })
          }))
        await publish(options, events)
        // the third POST is stored, but its answer never comes back: the dispatcher hangs there and is killed
        let hang = true
        const lunary = using(
          await startLunary({ keys: new Map([[LUNARY_KEY, LUNARY_PROJECT]]), storeThenHang: (i) => hang && i >= 2 })
        )
        const victim = run("lunary", `${lunary.url}/v1/runs/ingest`, LUNARY_KEY, options.streamKey, "lunary-victim", 50)
        try {
          await waitFor(() => lunary.posts.length >= 3, 20_000, "a hanging POST")
          await killed(victim.child)
        } finally {
          await stopProcess(victim.child)
        }
        const storedBeforeKill = lunary.runs.size
        expect(storedBeforeKill).toBe(150)
        hang = false
        const survivor = run(
          "lunary",
          `${lunary.url}/v1/runs/ingest`,
          LUNARY_KEY,
          options.streamKey,
          "lunary-survivor",
          50
        )
        try {
          await waitFor(
            () => lunary.runs.size === 200 && [...lunary.runs.values()].every((r) => r.status === "success"),
            30_000,
            "every run ended"
          )
          const exit = new Promise<number | null>((resolve) => survivor.child.once("exit", resolve))
          survivor.child.kill("SIGTERM")
          expect(await exit).toBe(0)
        } finally {
          await stopProcess(survivor.child)
        }
        expect([...lunary.runs.keys()].sort()).toEqual(events.map(idOf).sort())
        const results = lunary.posts.flatMap((p) => p.results ?? [])
        // the hung batch came back: its starts were answered "already exists" and counted as delivered
        expect(results.filter((r) => r["error"] === "Run with this ID already exists in the database.").length).toBe(50)
        const [summary] = drained(survivor.output())
        // everything the victim had read and not acknowledged: at least the hung batch
        expect(Number(summary!.annotations["redelivered"])).toBeGreaterThanOrEqual(50)
        expect(Number(summary!.annotations["dead_lettered"])).toBe(0)
        expect(lines(join(dir, "lunary-survivor.dead.jsonl"))).toEqual([])
      },
      60_000
    )

    it("Helicone: a redelivered event carries the same Helicone-Request-Id; every request is one log", async () => {
      const options = bus()
      const events = Array.from(
        { length: 60 },
        (_, i) => makeEvent({ request_id: i < 10 ? "reused" : `h-${i}`, duration_ms: 100 + i })
      )
      await publish(options, events)
      let hang = true
      const helicone = using(
        await startHelicone({
          keys: new Set([HELICONE_KEY]),
          storeThenHang: (i) => hang && i >= 25
        })
      )
      const victim = run("helicone", helicone.url, HELICONE_KEY, options.streamKey, "helicone-victim", 20)
      try {
        await waitFor(() => helicone.posts.length >= 28, 20_000, "hanging logs")
        await killed(victim.child)
      } finally {
        await stopProcess(victim.child)
      }
      hang = false
      const survivor = run("helicone", helicone.url, HELICONE_KEY, options.streamKey, "helicone-survivor", 20)
      try {
        await waitFor(
          () => helicone.requests.size === 60 && helicone.posts.filter((p) => p.status === 200).length >= 60,
          30_000,
          "every log"
        )
        const exit = new Promise<number | null>((resolve) => survivor.child.once("exit", resolve))
        survivor.child.kill("SIGTERM")
        expect(await exit).toBe(0)
      } finally {
        await stopProcess(survivor.child)
      }
      expect([...helicone.requests.keys()].sort()).toEqual(events.map(idOf).sort())
      // the events of the batch in flight were logged twice under the same id: Helicone keeps one request each
      const posts = new Map<string, number>()
      for (const p of helicone.posts) posts.set(p.id!, (posts.get(p.id!) ?? 0) + 1)
      const twice = [...posts.values()].filter((c) => c === 2).length
      expect(twice).toBeGreaterThan(0)
      expect([...posts.values()].every((c) => c <= 2)).toBe(true)
      expect(helicone.posts.length).toBe(60 + twice)
    }, 60_000)
  }
)
