/**
 * The seam later features plug into (ProxyHooks): one completion per request — rejected, proxied, streamed,
 * abandoned — with ids, status, timings, usage and the bounded response body; a beforeUpstream hook answering from
 * "cache" (after the quota is taken; counted as a request and a cache hit); decorateResponse adding headers; and the
 * order every part's hooks run in (src/Layers.ts `proxyHooksLayer`).
 */
import { layer } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { request as httpRequest } from "node:http"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import * as AuditLog from "../../src/audit/AuditLog.js"
import { Providers } from "../../src/config/Providers.js"
import { EventBus, EventSource } from "../../src/eventbus/EventBus.js"
import * as InMemoryBus from "../../src/eventbus/InMemoryBus.js"
import { proxyHooksLayer, responseCacheLayer } from "../../src/Layers.js"
import * as Metrics from "../../src/observability/Metrics.js"
import * as ProxySpans from "../../src/observability/ProxySpans.js"
import { ProxyHooks, type ProxyHooksShape, ProxyRequestContext } from "../../src/proxy/ProxyHooks.js"
import { backends } from "../http/harness.js"
import { chatChunks, hang, sse } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { testConfig } from "../support/server.js"
import {
  call,
  chatBody,
  eventually,
  type ProjectAndToken,
  projectAndToken,
  type Stack,
  startStack,
  tokenRow
} from "./stack.js"

const completed: Array<ProxyRequestContext> = []
let serveFromCache = false
let failIn: "before" | "decorate" | undefined
/** What the given decorateResponse hook saw: the cache's header set, observability's stamp not yet. */
const decorated: Array<{ cacheStatus: unknown; headersWrittenAt: number | undefined }> = []

const hooks = ProxyHooks.combine(
  {
    beforeUpstream: [(ctx) => {
      if (failIn === "before") throw new Error("hook bug")
      if (!serveFromCache) return undefined
      return (res) => {
        res.writeHead(200, {
          "content-type": "application/json",
          "x-request-id": ctx.requestId,
          "cache-status": "llm-proxy; hit"
        })
        res.end(JSON.stringify({ cached: true }))
      }
    }],
    decorateResponse: [(ctx, status, headers) => {
      if (failIn === "decorate") throw new Error("hook bug")
      decorated.push({ cacheStatus: headers["cache-status"], headersWrittenAt: ctx.headersWrittenAt })
      headers["x-decorated"] = String(status)
    }],
    captureResponseBytes: 64
  },
  {
    beforeUpstream: [() => Promise.resolve(undefined)],
    onComplete: [(ctx) => void completed.push(ctx), () => {
      throw new Error("a failing hook is ignored")
    }],
    captureResponseBytes: 16
  }
)

let stack: Stack
let t: ProjectAndToken
beforeAll(async () => {
  const backend = await backends[0]!.create()
  // only the hooks under test: instrumentation events (on by default) would ask for a larger response capture
  const events = { ...testConfig(backend.database).events, enabled: false }
  stack = await startStack(backend, { events }, undefined, undefined, { proxyHooks: hooks })
  t = await projectAndToken(stack.manage, { max_requests: 100 })
})
afterAll(() => stack.close())
beforeEach(() => {
  completed.length = 0
  decorated.length = 0
  serveFromCache = false
  failIn = undefined
  stack.mock.reset()
})

const last = async () => {
  await eventually(() => completed.length > 0)
  return completed[completed.length - 1]!
}

describe("ProxyHooks", () => {
  it("onComplete sees a proxied request: ids, status, timings, usage, bounded body", async () => {
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.headers["x-decorated"]).toBe("200")
    const ctx = await last()
    expect(ctx).toMatchObject({
      requestId: r.headers["x-request-id"],
      method: "POST",
      path: "/v1/chat/completions",
      tokenId: t.tokenId,
      projectId: t.projectId,
      provider: "openai",
      status: 200,
      upstreamStatus: 200,
      forwarded: true,
      stream: false,
      usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 },
      responseTruncated: true
    })
    expect(ctx.responseBody!.length).toBe(64)
    expect(r.text.startsWith(ctx.responseBody!.toString())).toBe(true)
    expect(JSON.parse(ctx.requestBody!.toString())).toEqual(chatBody())
    expect(ctx.proxyMs).toBeGreaterThanOrEqual(0)
    expect(ctx.upstreamMs).toBeGreaterThanOrEqual(0)
    expect(ctx.durationMs).toBeGreaterThanOrEqual(ctx.upstreamMs!)
    expect(completed).toHaveLength(1)
  })

  it("onComplete sees rejected requests with their code (and the denial reason of an inactive project)", async () => {
    await call(stack.server.url, "/v1/chat/completions", { body: chatBody() })
    expect(await last()).toMatchObject({ status: 401, code: "invalid_token", tokenId: undefined, forwarded: false })
    const p = await projectAndToken(stack.manage)
    await stack.manage.patch(`/manage/projects/${p.projectId}`, { is_active: false })
    await call(stack.server.url, "/v1/chat/completions", { token: p.token, body: chatBody() })
    expect(await last()).toMatchObject({
      status: 403,
      code: "project_inactive",
      denial: "project_inactive",
      projectId: p.projectId,
      tokenId: p.tokenId
    })
    expect(completed).toHaveLength(2)
  })

  it("onComplete sees streams with their usage", async () => {
    stack.mock.enqueue(sse(chatChunks(["x", "y"], { prompt_tokens: 4, completion_tokens: 2 })))
    await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody({ stream: true }) })
    expect(await last()).toMatchObject({ stream: true, status: 200, usage: { total_tokens: 6 } })
  })

  it("onComplete sees a client that went away (499)", async () => {
    stack.mock.enqueue(hang)
    const u = new URL(stack.server.url)
    const body = JSON.stringify(chatBody())
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      method: "POST",
      path: "/v1/chat/completions",
      headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json", "content-length": body.length }
    })
    req.on("error", () => {})
    req.end(body)
    await stack.mock.waitForRequests(1)
    req.destroy()
    expect(await last()).toMatchObject({ status: 499, error: "client closed the connection" })
  })

  it("a beforeUpstream hook that answers skips the upstream; the answer takes quota and counts a cache hit", async () => {
    const before = Number((await tokenRow(stack.backend, t.tokenId)).request_count)
    serveFromCache = true
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.json).toEqual({ cached: true })
    expect(stack.mock.requests).toHaveLength(0)
    expect(await last()).toMatchObject({ cacheHit: true, forwarded: false, status: 200 })
    await eventually(async () => Number((await tokenRow(stack.backend, t.tokenId)).cache_hit_count) === 1)
    expect(Number((await tokenRow(stack.backend, t.tokenId)).request_count)).toBe(before + 1)
  })

  it("a hook's answer is not given when the quota is spent: 429, not a cache hit", async () => {
    const one = await projectAndToken(stack.manage, { max_requests: 1 })
    serveFromCache = true
    expect((await call(stack.server.url, "/v1/chat/completions", { token: one.token, body: chatBody() })).json).toEqual(
      { cached: true }
    )
    const r = await call(stack.server.url, "/v1/chat/completions", { token: one.token, body: chatBody() })
    expect(r.status).toBe(429)
    expect(proxyError(r.json).description).toBe("request quota (max_requests) exhausted")
    expect(await last()).toMatchObject({ cacheHit: false, rejectedBy: "quota", status: 429 })
  })

  it("a hook that throws → 500 internal_error (no details), before or after the upstream answered", async () => {
    for (const where of ["before", "decorate"] as const) {
      failIn = where
      const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
      expect(r.status).toBe(500)
      expect(proxyError(r.json)).toMatchObject({ message: "Internal error", code: "internal_error" })
      expect(r.text).not.toContain("hook bug")
      expect(await last()).toMatchObject({ status: 500, error: "internal error" })
    }
  })

  it("hooks never see requests refused before authentication as cache hits", async () => {
    serveFromCache = true
    const r = await call(stack.server.url, "/v1/chat/completions", {
      token: "sk-" + "A".repeat(42) + "E",
      body: chatBody()
    })
    expect(r.status).toBe(401)
  })

  it("hooks given to serve run after the response cache's and before observability's", async () => {
    // A request the cache looks at (a miss: its body is new), so the cache's decorateResponse sets Cache-Status.
    const r = await call(stack.server.url, "/v1/chat/completions", {
      token: t.token,
      body: chatBody({ user: crypto.randomUUID() }),
      headers: { "cache-control": "public, max-age=30" }
    })
    // The cache's Cache-Status was there when ours ran; observability's stamp came after ours.
    expect(r.headers["cache-status"]).toMatch(/^llm-proxy;/)
    expect(decorated).toEqual([{ cacheStatus: r.headers["cache-status"], headersWrittenAt: undefined }])
    expect((await last()).headersWrittenAt).toBeGreaterThan(0)
  })
})

describe("proxyHooksLayer", () => {
  const config = testConfig({ _tag: "sqlite", path: ":memory:" }, { accessLog: false })
  const order: Array<string> = []
  const givenLookup: ProxyHooksShape["beforeUpstream"][number] = () => undefined
  const given: Partial<ProxyHooksShape> = {
    beforeUpstream: [givenLookup],
    onComplete: [() => void order.push("given")]
  }
  /** A chat completion's request context, as the proxy makes one when a request arrives. */
  const chatRequest = (id: string) =>
    new ProxyRequestContext(
      id,
      "POST",
      "/v1/chat/completions",
      "/v1/chat/completions",
      undefined,
      performance.now(),
      Date.now()
    )
  const parts = Layer.mergeAll(
    responseCacheLayer(config),
    InMemoryBus.layer(100),
    AuditLog.layer.pipe(Layer.provide(Layer.succeed(AuditLog.AuditSinks, []))),
    Metrics.layer,
    Providers.load(undefined, "http://127.0.0.1:1"),
    ProxySpans.layer(Option.none(), "test")
  )

  // The real clock: the audit log and the access log flush on timers when the layer closes.
  layer(proxyHooksLayer(config, given).pipe(Layer.provideMerge(parts)), { excludeTestServices: true })((it) => {
    it.scoped("the hooks run in the documented order: cache, events, the given hooks, audit, observability", () =>
      Effect.gen(function*() {
        const hooks = yield* ProxyHooks
        const bus = yield* EventBus
        // A subscriber, as an in-process dispatcher is: without one the in-memory bus builds no event (below).
        yield* (yield* EventSource).subscribe("file", "test")
        const audit = yield* AuditLog.AuditLog
        const metrics = yield* Metrics.Metrics
        // The cache's lookup comes first: its hit ends the request before any other hook looks at it.
        expect(hooks.beforeUpstream).toHaveLength(2)
        expect(hooks.beforeUpstream[1]).toBe(givenLookup)
        // What each part leaves behind when its onComplete ran: an event published, a denial counted, a request
        // counted in the metrics.
        const traces = Effect.all([
          Effect.map(bus.stats, (s) => s.published),
          Effect.map(audit.stats, (s) => s.denials),
          Effect.map(metrics.json, (j) => j.request_count)
        ])
        // A request every part acts on: authenticated (events), refused for its project (audit), finished (metrics).
        const ctx = chatRequest("req-order")
        ctx.authenticated = true
        ctx.denial = "project_inactive"
        ctx.code = "project_inactive"
        ctx.status = 403
        ctx.tokenId = "token-1"
        ctx.projectId = "project-1"
        ctx.provider = "openai"
        for (const hook of hooks.onComplete) {
          const before = yield* traces
          hook(ctx)
          const after = yield* traces
          ;(["events", "audit", "observability"] as const).forEach((part, i) => {
            if (after[i] !== before[i]) order.push(part)
          })
        }
        expect(order).toEqual(["events", "given", "audit", "observability"])
      }))

    it.effect("with no one subscribed to the in-memory bus no event is built, and none is counted as published", () =>
      Effect.gen(function*() {
        const hooks = yield* ProxyHooks
        const bus = yield* EventBus
        expect(bus.listened()).toBe(false)
        const published = (yield* bus.stats).published
        const ctx = chatRequest("req-alone")
        ctx.authenticated = true
        ctx.status = 200
        for (const hook of hooks.onComplete) hook(ctx)
        expect((yield* bus.stats).published).toBe(published)
      }))
  })
})
