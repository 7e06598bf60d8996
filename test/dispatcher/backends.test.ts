/**
 * The dispatcher with each backend, fed by the in-memory bus, against real files and a local HTTP receiver that
 * checks the ingestion format and answers 500 (retried), 200 (accepted) or 400 (dead letter). The services' own
 * rules (per-event results, stream parsing, credentials, body limits) are applied in services.test.ts.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Layer, Redacted } from "effect"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { afterEach, describe, expect, it } from "vitest"
import { fileBackend, heliconeBackend, lunaryBackend } from "../../src/dispatcher/backends.js"
import { MAX_DECODED_BODY_BYTES } from "../../src/dispatcher/bodies.js"
import * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { TokenCounter } from "../../src/dispatcher/tokens.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as InMemoryBus from "../../src/eventbus/InMemoryBus.js"
import { body, buildLayer, makeEvent, type Receiver, startReceiver, waitFor } from "../support/events.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-dispatch-"))
const lines = (path: string) =>
  existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l)) : []

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

const dispatcherWith = <E>(
  backend: Layer.Layer<import("../../src/dispatcher/Backend.js").Backend, E>,
  o: Dispatcher.DispatcherOptions
) =>
  Dispatcher.layer(o).pipe(
    Layer.provide(Layer.merge(backend, TokenCounter.layer)),
    Layer.provideMerge(InMemoryBus.layer(1000))
  )

let receiver: Receiver | undefined
afterEach(async () => {
  await receiver?.close()
  receiver = undefined
})

describe("dispatcher backends", () => {
  it("file: every event as one JSON line; what was read is delivered on shutdown", async () => {
    const path = join(dir, "events", "file.jsonl")
    const built = await buildLayer(
      dispatcherWith(
        fileBackend(path),
        options("file", { batchSize: 7, flushIntervalMs: 5000, status: "log", statusIntervalMs: 100 })
      )
    )
    const bus = built.get(EventBus)
    const events = Array.from({ length: 25 }, () => makeEvent())
    for (const e of events) bus.publish(e)
    await waitFor(() => lines(path).length >= 21, 10_000, "three full batches")
    // the last 4 do not fill a batch: the 5 s flush interval has not passed, shutdown must still deliver them
    await built.close()
    const written = lines(path)
    expect(written.map((l) => l.request_id)).toEqual(events.map((e) => e.request_id))
    expect(written[0]).toMatchObject({
      method: "POST",
      path: "/v1/chat/completions",
      status: 200,
      model: "gpt-4o-mini",
      usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 },
      usage_source: "response",
      request_body: { messages: [{ role: "user", content: "Hello there" }] },
      response_body: { choices: [{ message: { content: "Hi!" } }] }
    })
  })

  it("file: an event whose captured body is a zip bomb is delivered without that body, and counted", async () => {
    const path = join(dir, "events", "bomb.jsonl")
    const built = await buildLayer(dispatcherWith(fileBackend(path), options("bomb")))
    const state = built.get(Dispatcher.DispatcherState)
    const bomb = body(gzipSync(Buffer.alloc(64 * 1024 * 1024)), {
      content_type: "application/json",
      content_encoding: "gzip"
    })
    built.get(EventBus).publish(makeEvent({ request_id: "bomb", response_body: bomb }))
    built.get(EventBus).publish(makeEvent({ request_id: "fine" }))
    await waitFor(() => lines(path).length >= 2, 10_000, "both events")
    await built.close()
    expect(lines(path).map((l) => [l.request_id, l.response_body])).toEqual([
      ["bomb", `<gzip body omitted: decompresses to more than ${MAX_DECODED_BODY_BYTES} bytes>`],
      ["fine", expect.objectContaining({ object: "chat.completion" })]
    ])
    expect(state).toMatchObject({ delivered: 2, deadLettered: 0, invalid: 0, bodiesTooLarge: 1 })
  })

  it("lunary: batches in its format, retries 500, isolates and dead-letters what it rejects with 400", async () => {
    const bad = makeEvent({ request_id: "rejected-one" })
    let calls = 0
    receiver = await startReceiver((r) => {
      calls++
      const b = r.body as { events?: Array<Record<string, unknown>> }
      const shapeOk = r.headers.authorization === "Bearer lunary-key" && Array.isArray(b.events) &&
        b.events.every((e) =>
          e["type"] === "llm" && (e["event"] === "start" || e["event"] === "end") && typeof e["runId"] === "string"
        )
      if (!shapeOk) return 422
      if (calls === 1) return 500
      const hasBad = b.events!.some((e) => (e["metadata"] as { request_id?: string }).request_id === "rejected-one")
      return hasBad ? 400 : 200
    })
    const o = options("lunary")
    const built = await buildLayer(dispatcherWith(
      lunaryBackend(`${receiver.url}/v1/runs/ingest`, Redacted.make("lunary-key")).pipe(
        Layer.provide(NodeHttpClient.layerUndici)
      ),
      o
    ))
    const state = built.get(Dispatcher.DispatcherState)
    const good = [makeEvent(), makeEvent(), makeEvent()]
    for (const e of [good[0]!, bad, good[1]!, good[2]!]) built.get(EventBus).publish(e)
    await waitFor(() => state.delivered + state.deadLettered >= 4, 10_000, "delivery")
    await built.close()
    expect(state).toMatchObject({ delivered: 3, deadLettered: 1 })
    expect(state.retries).toBeGreaterThanOrEqual(1)
    const accepted = receiver.received.filter((_, i) => i > 0).flatMap((r) =>
      (r.body as { events: Array<{ metadata: { request_id: string } }> }).events
    )
    for (const e of good) expect(accepted.some((a) => a.metadata.request_id === e.request_id)).toBe(true)
    const dead = lines(o.deadLetterPath)
    expect(dead).toHaveLength(1)
    expect(dead[0]).toMatchObject({
      service: "lunary",
      reason: expect.stringContaining("HTTP 400"),
      event: { request_id: "rejected-one" }
    })
  })

  it("helicone: one log per event in its format; 500 then 200 is retried, 400 is dead-lettered", async () => {
    const seen = new Map<string, number>()
    receiver = await startReceiver((r) => {
      const b = r.body as {
        providerRequest?: { url?: string; json?: unknown; meta?: Record<string, string> }
        providerResponse?: { status?: number; json?: unknown }
        timing?: { startTime?: { seconds?: number } }
      }
      if (r.headers.authorization !== "Bearer helicone-key") return 401
      if (r.url !== "/oai/v1/log") return 404
      if (
        typeof b.providerRequest?.url !== "string" || typeof b.providerResponse?.status !== "number" ||
        typeof b.timing?.startTime?.seconds !== "number"
      ) return 422
      const id = b.providerRequest.meta?.["Helicone-Property-Request-Id"] ?? ""
      const n = (seen.get(id) ?? 0) + 1
      seen.set(id, n)
      if (id.startsWith("flaky") && n === 1) return 500
      if (id.startsWith("bad")) return 400
      return 200
    })
    const o = options("helicone")
    const built = await buildLayer(dispatcherWith(
      heliconeBackend(receiver.url, Redacted.make("helicone-key")).pipe(Layer.provide(NodeHttpClient.layerUndici)),
      o
    ))
    const state = built.get(Dispatcher.DispatcherState)
    const bus = built.get(EventBus)
    for (const id of ["ok-1", "flaky-1", "bad-1", "ok-2"]) bus.publish(makeEvent({ request_id: id }))
    await waitFor(() => state.delivered + state.deadLettered >= 4, 10_000, "delivery")
    await built.close()
    expect(state).toMatchObject({ delivered: 3, deadLettered: 1 })
    // accepted events are never sent twice; only the flaky one is retried
    expect(Object.fromEntries(seen)).toEqual({ "ok-1": 1, "flaky-1": 2, "bad-1": 1, "ok-2": 1 })
    expect(lines(o.deadLetterPath).map((d) => d.event.request_id)).toEqual(["bad-1"])
  })

  it("a backend that never answers: events are not lost while it is down, and shutdown gives up after the drain timeout", async () => {
    receiver = await startReceiver(() => 503)
    const o = options("down", { drainTimeoutMs: 300 })
    const built = await buildLayer(dispatcherWith(
      lunaryBackend(`${receiver.url}/x`, Redacted.make("k")).pipe(Layer.provide(NodeHttpClient.layerUndici)),
      o
    ))
    const state = built.get(Dispatcher.DispatcherState)
    built.get(EventBus).publish(makeEvent())
    await waitFor(() => state.retries >= 3, 10_000, "retries")
    await built.close()
    expect(state).toMatchObject({ delivered: 0, deadLettered: 0 })
  })
})
