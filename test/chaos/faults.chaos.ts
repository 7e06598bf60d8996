/**
 * Faults injected at the mock upstream, one per test, each ending in a defined status or a cleanly closed stream
 * and with the request's completion record (what the events/audit hooks receive) and its usage counted:
 *
 *   reset before headers · reset mid-stream · garbage instead of HTTP · stalled before headers (504) · stalled
 *   stream (held until the client leaves, then the upstream is aborted) · 10 MB JSON and SSE answers (byte-exact)
 *   · invalid SSE (pass-through, no crash) · a slow-reading client (back-pressure: what the upstream can push and
 *   the process's memory stay bounded)
 */
import { createHash } from "node:crypto"
import { request as httpRequest } from "node:http"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import type { ProxyRequestContext } from "../../src/proxy/ProxyHooks.js"
import { type BackendInstance, backends } from "../http/harness.js"
import {
  call,
  chatBody,
  eventually,
  type ProjectAndToken,
  projectAndToken,
  sleep,
  type Stack,
  startStack,
  tokenRow
} from "../proxy/stack.js"
import { chatChunks, handler, hang, json, reset, sse } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { printTally, tally } from "./support.js"

const TITLE = "faults injected"

let backend: BackendInstance
let stack: Stack
let t: ProjectAndToken
const completed: Array<ProxyRequestContext> = []
let requests = 0

beforeAll(async () => {
  backend = await backends[0]!.create()
  const hooks = { onComplete: [(ctx: ProxyRequestContext) => void completed.push(ctx)] }
  stack = await startStack(backend, { requestTimeoutMs: 1_000, circuitBreakerThreshold: 1_000 }, undefined, undefined, {
    proxyHooks: hooks
  })
  t = await projectAndToken(stack.manage)
})
afterAll(async () => {
  printTally(TITLE)
  await stack?.close()
  await backend?.cleanup()
})
beforeEach(() => stack.mock.reset())

/** The one completion record of the last request, once it is there. */
const lastCompleted = async () => {
  await eventually(() => completed.length === requests)
  return completed.at(-1)!
}

/** request_count counts every forwarded request, whatever the upstream did. */
const expectCounted = async (usage?: { prompt: number; completion: number }) => {
  await eventually(async () => Number((await tokenRow(stack.backend, t.tokenId)).request_count) === requests)
  if (usage) {
    const row = await tokenRow(stack.backend, t.tokenId)
    expect(Number(row.prompt_tokens)).toBeGreaterThanOrEqual(usage.prompt)
  }
}

interface Streamed {
  readonly status: number
  readonly bytes: number
  readonly sha256: string
  /** The response ended normally (false: the connection was cut). */
  readonly complete: boolean
  readonly ms: number
}

/** A POST whose answer is read to its end (or its cut), optionally slowly. */
const stream = (body: unknown, options: { readonly pauseMs?: number; readonly abortAfterMs?: number } = {}) =>
  new Promise<Streamed>((resolve, reject) => {
    requests++
    const u = new URL(stack.server.url)
    const text = JSON.stringify(body)
    const started = Date.now()
    const hash = createHash("sha256")
    let bytes = 0
    let status = 0
    let settled = false
    const done = (complete: boolean) => {
      if (settled) return
      settled = true
      resolve({ status, bytes, sha256: hash.digest("hex"), complete, ms: Date.now() - started })
    }
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      method: "POST",
      path: "/v1/chat/completions",
      agent: false,
      headers: {
        authorization: `Bearer ${t.token}`,
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text)
      }
    }, (res) => {
      status = res.statusCode ?? 0
      if (options.pauseMs) {
        res.pause()
        setTimeout(() => res.resume(), options.pauseMs)
      }
      if (options.abortAfterMs !== undefined) setTimeout(() => req.destroy(), options.abortAfterMs)
      res.on("data", (d: Buffer) => {
        bytes += d.length
        hash.update(d)
      })
      res.on("end", () => done(true))
      res.on("aborted", () => done(false))
      res.on("error", () => done(false))
      res.on("close", () => done(res.complete))
    })
    req.on("error", (e) => (status !== 0 || options.abortAfterMs !== undefined ? done(false) : reject(e)))
    req.end(text)
  })

describe("faults at the upstream", () => {
  it("connection reset before the headers → 502 upstream_error, recorded and counted", async () => {
    tally(TITLE, "reset before headers")
    stack.mock.enqueue(reset())
    requests++
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.status).toBe(502)
    expect(proxyError(r.json).code).toBe("upstream_error")
    const c = await lastCompleted()
    expect(c.status).toBe(502)
    expect(c.error).toMatch(/upstream request failed/)
    await expectCounted()
  })

  it("garbage instead of HTTP → 502, recorded", async () => {
    tally(TITLE, "garbage instead of HTTP")
    stack.mock.enqueue(handler((req) => {
      req.socket.write("SSH-2.0-OpenSSH_9.6\r\n\r\n")
      req.socket.destroy()
    }))
    requests++
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.status).toBe(502)
    expect((await lastCompleted()).status).toBe(502)
    await expectCounted()
  })

  it("connection reset mid-stream → the client's stream is cut cleanly (no hang), recorded with the error", async () => {
    tally(TITLE, "reset mid-stream")
    stack.mock.enqueue(reset(chatChunks(["Hel", "lo"]).slice(0, 2)))
    const s = await stream(chatBody({ stream: true }))
    expect(s.status).toBe(200)
    expect(s.complete).toBe(false)
    expect(s.bytes).toBeGreaterThan(0)
    expect(s.ms).toBeLessThan(5_000)
    const c = await lastCompleted()
    expect(c.status).toBe(200)
    expect(c.error).toBe("upstream connection lost mid-response")
    await expectCounted()
  })

  it("stalled before the headers → 504 timeout after REQUEST_TIMEOUT, the upstream request abandoned", async () => {
    tally(TITLE, "stalled before headers")
    stack.mock.enqueue(hang)
    requests++
    const started = Date.now()
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.status).toBe(504)
    expect(proxyError(r.json).code).toBe("timeout")
    expect(Date.now() - started).toBeLessThan(5_000)
    await stack.mock.requests[0]!.closed
    expect((await lastCompleted()).status).toBe(504)
    await expectCounted()
  })

  it("a stalled stream stays open (streams are never cut) until the client leaves; then the upstream is aborted", async () => {
    tally(TITLE, "stalled stream")
    stack.mock.enqueue(handler((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      res.write(chatChunks(["stalled"])[0])
      // ...and nothing more, ever.
    }))
    const s = await stream(chatBody({ stream: true }), { abortAfterMs: 1_500 })
    expect(s.status).toBe(200)
    expect(s.complete).toBe(false)
    const upstream = stack.mock.requests[0]!
    await Promise.race([upstream.closed, sleep(3_000)])
    expect(upstream.aborted).toBe(true)
    const c = await lastCompleted()
    expect(c.error).toBe("response not completed")
    await expectCounted()
  })

  it("a 10 MB JSON answer and a 10 MB SSE answer arrive byte for byte", async () => {
    tally(TITLE, "10 MB answers", 2)
    const big = JSON.stringify({ ...{ id: "x", object: "chat.completion" }, data: "x".repeat(10 * 1024 * 1024) })
    stack.mock.enqueue(json(big))
    const a = await stream(chatBody())
    expect(a.status).toBe(200)
    expect(a.complete).toBe(true)
    expect(a.bytes).toBe(Buffer.byteLength(big))
    expect(a.sha256).toBe(createHash("sha256").update(big).digest("hex"))
    await lastCompleted()
    const frames = Array.from(
      { length: 1024 },
      (_, i) => `data: ${JSON.stringify({ i, pad: "y".repeat(10 * 1024) })}\n\n`
    )
    frames.push(
      `data: ${JSON.stringify({ usage: { prompt_tokens: 7, completion_tokens: 1024 } })}\n\n`,
      "data: [DONE]\n\n"
    )
    stack.mock.enqueue(sse(frames))
    const b = await stream(chatBody({ stream: true }))
    expect(b.complete).toBe(true)
    expect(b.sha256).toBe(createHash("sha256").update(frames.join("")).digest("hex"))
    const c = await lastCompleted()
    expect(c.usage).toEqual({ prompt_tokens: 7, completion_tokens: 1024, total_tokens: 1031 })
    await expectCounted({ prompt: 7, completion: 1024 })
  })

  it("invalid SSE passes through unchanged and the stream ends cleanly", async () => {
    const nasty = [
      "data: {not json\n\n",
      "event: x\ndata: \u0000\u0001\u0002\n\n",
      ": comment only\n\n",
      "data: " + "z".repeat(2 * 1024 * 1024) + "\n\n",
      "no field at all\r\n\r\n",
      "data: {\"usage\": {\"prompt_tokens\": \"NaN\", \"completion_tokens\": -1}}\n\n",
      "data: {\"usage\": {\"prompt_tokens\": 1e400}}\n\n",
      "\xff\xfe binary \ud800\n\n",
      "data: [DONE]\n\ndata: after done\n\n"
    ]
    tally(TITLE, "invalid SSE", nasty.length)
    for (const chunk of nasty) {
      stack.mock.enqueue(sse([chunk, "data: {\"choices\":[]}\n\n"]))
      const s = await stream(chatBody({ stream: true }))
      expect(s.status).toBe(200)
      expect(s.complete).toBe(true)
      expect(s.sha256).toBe(
        createHash("sha256").update(Buffer.from(chunk + "data: {\"choices\":[]}\n\n")).digest("hex")
      )
      const c = await lastCompleted()
      // Nonsense numbers are never taken as usage.
      for (const v of Object.values(c.usage ?? {})) expect(Number.isFinite(v) && v >= 0).toBe(true)
    }
    await expectCounted()
  })

  it("a slow-reading client: back-pressure holds the upstream back and memory stays bounded", async () => {
    tally(TITLE, "slow-reading client")
    const TOTAL = 64 * 1024 * 1024
    const CHUNK = Buffer.alloc(64 * 1024, "a")
    let pushed = 0
    let pushedWhilePaused = -1
    stack.mock.enqueue(handler((_req, res) => {
      res.writeHead(200, { "content-type": "application/octet-stream", "content-length": TOTAL })
      const pump = () => {
        while (pushed < TOTAL) {
          pushed += CHUNK.length
          if (!res.write(CHUNK)) return void res.once("drain", pump)
        }
        res.end()
      }
      pump()
    }))
    const rssBefore = process.memoryUsage().rss
    let rssPeak = rssBefore
    const sampler = setInterval(() => (rssPeak = Math.max(rssPeak, process.memoryUsage().rss)), 50)
    // The client reads nothing for 3 s, then everything.
    const pending = stream(chatBody(), { pauseMs: 3_000 })
    await sleep(2_500)
    pushedWhilePaused = pushed
    const s = await pending
    clearInterval(sampler)
    expect(s.complete).toBe(true)
    expect(s.bytes).toBe(TOTAL)
    // Socket buffers and stream high-water marks on three hops, not the 64 MB answer.
    console.log(
      `[chaos] slow reader: upstream pushed ${(pushedWhilePaused / 1048576).toFixed(1)} MB of ${
        TOTAL / 1048576
      } MB while the client read nothing; RSS +${((rssPeak - rssBefore) / 1048576).toFixed(1)} MB at peak`
    )
    expect(pushedWhilePaused).toBeLessThan(16 * 1024 * 1024)
    expect(rssPeak - rssBefore).toBeLessThan(48 * 1024 * 1024)
    await lastCompleted()
    await expectCounted()
  })

  it("after every fault the gateway still answers normally", async () => {
    requests++
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
    expect(r.status).toBe(200)
    expect((await fetch(`${stack.server.url}/health`)).status).toBe(200)
    await expectCounted()
  })
})
