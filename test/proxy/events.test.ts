/**
 * Instrumentation events through the real proxy (serve stack + mock upstream): one event per request with the
 * fields of docs/events.md, for JSON and SSE answers, rejected requests, compressed and oversized bodies; a bus that is
 * full never slows or fails requests; with Redis, 1,000 events published by serve all reach the dispatcher's file.
 */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { gzipSync } from "node:zlib"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { AppConfigShape, EventsConfig } from "../../src/config/AppConfig.js"
import { fileBackend } from "../../src/dispatcher/backends.js"
import * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { TokenCounter } from "../../src/dispatcher/tokens.js"
import { EventBus, EventSource } from "../../src/eventbus/EventBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { ServerAddress } from "../../src/http/Server.js"
import { loggerLayer, serveLayer } from "../../src/Layers.js"
import { Client } from "../http/harness.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { buildLayer, jsonLines, waitFor } from "../support/events.js"
import { chatChunks, handler, json, type MockUpstream, sse, startMockUpstream } from "../support/mockUpstream.js"
import { testConfig } from "../support/server.js"
import { call, chatBody, type ProjectAndToken, projectAndToken } from "./stack.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-events-"))
const lines = (path: string): Array<Record<string, any>> => jsonLines(path)

let n = 0
const start = async (mock: MockUpstream, events: Partial<EventsConfig>, extra: Partial<AppConfigShape> = {}) => {
  const base = testConfig({ _tag: "sqlite", path: join(dir, `db-${++n}.sqlite`) }, { openaiApiUrl: mock.url, ...extra })
  const config: AppConfigShape = { ...base, events: { ...base.events, ...events } }
  const scope = Effect.runSync(Scope.make())
  const ctx = await Effect.runPromise(
    Layer.buildWithScope(serveLayer(config).pipe(Layer.provide(loggerLayer(config))), scope)
  )
  const url = `http://127.0.0.1:${Context.get(ctx, ServerAddress).port}`
  const manage = new Client(url, Option.match(config.managementToken, { onNone: () => "", onSome: Redacted.value }))
  return {
    url,
    manage,
    bus: Context.get(ctx, EventBus),
    source: Context.get(ctx, EventSource),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

describe("events from the proxy (in-memory bus, serve --file-event-log)", () => {
  let mock: MockUpstream
  let server: Awaited<ReturnType<typeof start>>
  let t: ProjectAndToken
  const path = join(dir, "serve-events.jsonl")
  const eventFor = async (requestId: string) => {
    await waitFor(() => lines(path).some((l) => l.request_id === requestId), 10_000, `event ${requestId}`)
    return lines(path).find((l) => l.request_id === requestId)!
  }

  beforeAll(async () => {
    mock = await startMockUpstream()
    server = await start(mock, {
      fileEventLog: Option.some(path),
      maxRequestBodyBytes: 2048,
      maxResponseBodyBytes: 4096
    })
    t = await projectAndToken(server.manage)
  })
  afterAll(async () => {
    await server.close()
    await mock.close()
  })

  it("a JSON request: every field of docs/events.md", async () => {
    const r = await call(server.url, "/v1/chat/completions?trace=1", { token: t.token, body: chatBody() })
    expect(r.status).toBe(200)
    const e = await eventFor(r.headers["x-request-id"] as string)
    expect(e).toMatchObject({
      project_id: t.projectId,
      token_id: t.tokenId,
      method: "POST",
      path: "/v1/chat/completions",
      status: 200,
      model: "gpt-4o-mini",
      stream: false,
      usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 },
      usage_source: "response",
      request_body: { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] },
      response_body: { object: "chat.completion", choices: [{ message: { content: "Hello!" } }] },
      request_body_truncated: false,
      response_body_truncated: false,
      error: null
    })
    expect(Date.parse(e.timestamp)).toBeGreaterThan(Date.now() - 60_000)
    expect(e.duration_ms).toBeGreaterThan(0)
    expect(e.upstream_ms).toBeGreaterThanOrEqual(0)
    expect(e.upstream_ms).toBeLessThanOrEqual(e.duration_ms)
    // the proxy token and the provider key never appear in an event
    expect(JSON.stringify(e)).not.toContain(t.token)
    expect(JSON.stringify(e)).not.toContain(t.apiKey)
    // a token without labels: none of their fields
    expect(Object.keys(e)).not.toEqual(expect.arrayContaining(["token_name"]))
    expect(Object.keys(e).filter((k) => ["token_name", "user", "token_metadata"].includes(k))).toEqual([])
  })

  it("a token's name, end user and metadata are carried on its events", async () => {
    const created = await server.manage.post("/manage/tokens", {
      project_id: t.projectId,
      duration_minutes: 5,
      name: "checkout session",
      user: "user-8812",
      metadata: { plan: "pro", region: "eu" }
    })
    expect(created.status, created.text).toBe(201)
    const r = await call(server.url, "/v1/chat/completions", { token: created.json.token, body: chatBody() })
    expect(r.status).toBe(200)
    const e = await eventFor(r.headers["x-request-id"] as string)
    expect(e).toMatchObject({
      token_id: created.json.id,
      token_name: "checkout session",
      user: "user-8812",
      token_metadata: { plan: "pro", region: "eu" }
    })
  })

  it("a request retried on the project's second key: every attempt (key index, status, duration) and the upstream's request id", async () => {
    const created = await server.manage.post("/manage/projects", {
      name: `events-keys-${crypto.randomUUID()}`,
      api_keys: [{ key: `sk-first-${crypto.randomUUID()}` }, { key: `sk-second-${crypto.randomUUID()}` }]
    })
    const token = await server.manage.post("/manage/tokens", { project_id: created.json.id, duration_minutes: 5 })
    mock.enqueue(
      json({ error: { message: "slow down" } }, { status: 429, headers: { "retry-after": "10" } }),
      json({ id: "chatcmpl-b", object: "chat.completion", choices: [] }, { headers: { "x-request-id": "req_second" } })
    )
    const r = await call(server.url, "/v1/chat/completions", { token: token.json.token, body: chatBody() })
    expect(r.status).toBe(200)
    const e = await eventFor(r.headers["x-request-id"] as string)
    expect(e.upstream_request_id).toBe("req_second")
    expect(e.attempts).toEqual([
      { key_index: 0, provider: "openai", status: 429, error: null, duration_ms: expect.any(Number) },
      { key_index: 1, provider: "openai", status: 200, error: null, duration_ms: expect.any(Number) }
    ])
    // One attempt, no upstream id: attempts has the one, upstream_request_id is absent.
    const plain = await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    const one = await eventFor(plain.headers["x-request-id"] as string)
    expect(one.attempts).toEqual([{
      key_index: 0,
      provider: "openai",
      status: 200,
      error: null,
      duration_ms: expect.any(Number)
    }])
    expect(one.upstream_request_id).toBeUndefined()
  })

  it("an SSE request: the stream reassembled into the final message, usage from the usage chunk", async () => {
    mock.enqueue(sse(chatChunks(["Hel", "lo ", "world"])))
    const r = await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody({ stream: true }) })
    expect(r.status).toBe(200)
    const e = await eventFor(r.headers["x-request-id"] as string)
    // The time to the first body bytes (time to first token): after the headers arrived, within the request.
    expect(e.first_chunk_ms).toBeGreaterThanOrEqual(e.upstream_ms!)
    expect(e.first_chunk_ms).toBeLessThanOrEqual(e.duration_ms)
    expect(e).toMatchObject({
      stream: true,
      status: 200,
      usage: { prompt_tokens: 5, completion_tokens: 3, total_tokens: 8 },
      response_body: {
        object: "chat.completion",
        model: "gpt-4o-mini",
        choices: [{ index: 0, message: { role: "assistant", content: "Hello world" }, finish_reason: "stop" }]
      }
    })
  })

  it("an SSE answer without usage: counted with the model's tokenizer", async () => {
    mock.enqueue(sse(chatChunks(["Hello", " there"], null)))
    const r = await call(server.url, "/v1/chat/completions", {
      token: t.token,
      body: chatBody({ stream: true, messages: [{ role: "user", content: "Say hello there" }] })
    })
    const e = await eventFor(r.headers["x-request-id"] as string)
    expect(e).toMatchObject({
      stream: true,
      usage_source: "tokenizer",
      usage: { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 }
    })
  })

  it("a refused request of a token holder has an event with the local status and error code, but not its body", async () => {
    const one = await projectAndToken(server.manage, { max_requests: 1 })
    expect((await call(server.url, "/v1/chat/completions", { token: one.token, body: chatBody() })).status).toBe(200)
    const refused = await call(server.url, "/v1/chat/completions", {
      token: one.token,
      body: chatBody({ model: "refused-model" })
    })
    expect(refused.status).toBe(429)
    const e = await eventFor(refused.headers["x-request-id"] as string)
    expect(e).toMatchObject({
      status: 429,
      token_id: one.tokenId,
      project_id: one.projectId,
      error: "rate_limit_exceeded",
      request_body: null,
      usage: null
    })
  })

  it("a request without a valid token publishes no event at all", async () => {
    const p = await projectAndToken(server.manage)
    await server.manage.patch(`/manage/projects/${p.projectId}`, { is_active: false })
    const anonymous = [
      await call(server.url, "/v1/chat/completions", { token: null, body: chatBody({ model: "stranger-1" }) }),
      await call(server.url, "/v1/chat/completions", { token: "not-a-token", body: chatBody() }),
      await call(server.url, "/v1/chat/completions", { token: "sk-" + "A".repeat(42) + "E", body: chatBody() }),
      await call(server.url, "/v1/chat/completions", { token: p.token, body: chatBody() })
    ]
    expect(anonymous.map((r) => r.status)).toEqual([401, 401, 401, 403])
    // a later request's event arrives after where theirs would have been
    const later = await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    await eventFor(later.headers["x-request-id"] as string)
    const ids = new Set(anonymous.map((r) => r.headers["x-request-id"]))
    expect(lines(path).filter((l) => ids.has(l.request_id))).toEqual([])
    expect(readFileSync(path, "utf8")).not.toContain("stranger-1")
  })

  it("a cache hit publishes no event (nothing reached the provider)", async () => {
    const headers = { "cache-control": "public, max-age=60" }
    const body = chatBody({ messages: [{ role: "user", content: "cache me" }] })
    const first = await call(server.url, "/v1/chat/completions", { token: t.token, body, headers })
    const second = await call(server.url, "/v1/chat/completions", { token: t.token, body, headers })
    expect(second.headers["x-proxy-cache"]).toBe("hit")
    await eventFor(first.headers["x-request-id"] as string)
    // a later request's event arrives after where the hit's would have been
    const third = await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    await eventFor(third.headers["x-request-id"] as string)
    expect(lines(path).some((l) => l.request_id === second.headers["x-request-id"])).toBe(false)
  })

  it("a gzip upstream answer is decoded; bodies beyond the bounds are cut and marked", async () => {
    const big = { ...chatBody(), messages: [{ role: "user", content: "x".repeat(10_000) }] }
    mock.enqueue(handler((_req, res) => {
      const body = gzipSync(
        JSON.stringify({
          id: "z",
          object: "chat.completion",
          choices: [{ index: 0, message: { role: "assistant", content: "y".repeat(50_000) } }]
        })
      )
      res.writeHead(200, {
        "content-type": "application/json",
        "content-encoding": "gzip",
        "content-length": body.length
      }).end(body)
    }))
    const r = await call(server.url, "/v1/chat/completions", { token: t.token, body: big })
    expect(r.status).toBe(200)
    const e = await eventFor(r.headers["x-request-id"] as string)
    expect(e.request_body_truncated).toBe(true)
    expect(typeof e.request_body).toBe("string")
    expect((e.request_body as string).length).toBeLessThanOrEqual(2048)
    // 4 KiB of gzip holds all of it here: decoded, it is the whole JSON
    expect(e.response_body).toMatchObject({ id: "z", choices: [{ message: { content: "y".repeat(50_000) } }] })
    mock.enqueue(json({ id: "long", text: "z".repeat(10_000) }))
    const r2 = await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    const e2 = await eventFor(r2.headers["x-request-id"] as string)
    expect(e2.response_body_truncated).toBe(true)
    expect(typeof e2.response_body).toBe("string")
    expect((e2.response_body as string).startsWith("{\"id\":\"long\"")).toBe(true)
  })
})

describe("a full bus never slows or fails requests", () => {
  it("publishing beyond the buffer drops events, counts them, and every request still succeeds", async () => {
    const mock = await startMockUpstream()
    const server = await start(mock, { bufferSize: 5 })
    try {
      const t = await projectAndToken(server.manage)
      // a subscriber that never reads holds the buffer full
      const scope = Effect.runSync(Scope.make())
      await Effect.runPromise(Scope.extend(server.source.subscribe("slow", "slow"), scope))
      const replies = await Promise.all(
        Array.from({ length: 20 }, () => call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() }))
      )
      expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200))
      await waitFor(
        async () =>
          (await Effect.runPromise(server.bus.stats)).published + (await Effect.runPromise(server.bus.stats)).dropped >=
            20,
        5000,
        "20 events"
      )
      expect(await Effect.runPromise(server.bus.stats)).toMatchObject({ published: 5, dropped: 15 })
      await Effect.runPromise(Scope.close(scope, Exit.void))
    } finally {
      await server.close()
      await mock.close()
    }
  })

  it("OBSERVABILITY_ENABLED=false publishes nothing", async () => {
    const mock = await startMockUpstream()
    const server = await start(mock, { enabled: false })
    try {
      const t = await projectAndToken(server.manage)
      expect((await call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })).status).toBe(200)
      expect(await Effect.runPromise(server.bus.stats)).toMatchObject({ published: 0, dropped: 0 })
    } finally {
      await server.close()
      await mock.close()
    }
  })
})

describe.skipIf(!redisUrl)("events from serve through Redis Streams", () => {
  const prefix = `llm-proxy-test:serve-events:${process.pid}:${Date.now()}:`
  afterAll(() => flushRedisPrefix(redisUrl!, prefix))

  it("1,000 events published by serve all arrive in the dispatcher's file", async () => {
    const streamKey = `${prefix}events`
    const mock = await startMockUpstream()
    const server = await start(mock, { bus: "redis-streams", streamKey }, { redisUrl: redisUrl! })
    const path = join(dir, "redis-dispatcher.jsonl")
    const dispatcher = await buildLayer(
      Dispatcher.layer({
        group: "dispatcher-file",
        consumer: "test-dispatcher",
        batchSize: 100,
        flushIntervalMs: 200,
        buffer: 1000,
        deadLetterPath: join(dir, "redis-dead.jsonl"),
        keepAliveMs: 10_000,
        status: "off"
      }).pipe(Layer.provide(Layer.mergeAll(
        RedisStreamsBus.layerSource({
          url: Redacted.make(redisUrl!),
          streamKey,
          maxLen: 0,
          bufferSize: 1000,
          claimIdleMs: 30_000
        }),
        fileBackend(path),
        TokenCounter.layer
      )))
    )
    try {
      const t = await projectAndToken(server.manage)
      const ids: Array<string> = []
      for (let i = 0; i < 50; i++) {
        const replies = await Promise.all(
          Array.from(
            { length: 20 },
            () => call(server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
          )
        )
        for (const r of replies) {
          expect(r.status).toBe(200)
          ids.push(r.headers["x-request-id"] as string)
        }
      }
      await waitFor(() => lines(path).length >= 1000, 30_000, "1000 events in the file")
      const got = lines(path)
      expect(new Set(got.map((l) => l.request_id))).toEqual(new Set(ids))
      expect(got.every((l) => l.token_id === t.tokenId && l.status === 200 && l.usage?.total_tokens === 12)).toBe(true)
      expect(await Effect.runPromise(server.bus.stats)).toMatchObject({
        published: 1000,
        written: 1000,
        dropped: 0,
        failed: 0
      })
    } finally {
      await dispatcher.close()
      await server.close()
      await mock.close()
    }
  }, 90_000)
})
