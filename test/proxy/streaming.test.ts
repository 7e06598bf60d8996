/**
 * Streaming through the proxy (docs/behaviour.md scenarios 96–98): chunk-by-chunk delivery proven without timing
 * (the mock writes the next chunk only after the client has received the previous one), a client going away
 * aborts the upstream request, and — SLOW, ~90 s — a 90-second stream completes.
 */
import { type IncomingMessage, request as httpRequest } from "node:http"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { backends } from "../http/harness.js"
import { chatChunks, handler, hang, sse } from "../support/mockUpstream.js"
import {
  chatBody,
  eventually,
  type ProjectAndToken,
  projectAndToken,
  type Stack,
  startStack,
  tokenRow
} from "./stack.js"

let stack: Stack
let t: ProjectAndToken
beforeAll(async () => {
  stack = await startStack(await backends[0]!.create())
  t = await projectAndToken(stack.manage)
})
afterAll(() => stack.close())
beforeEach(() => stack.mock.reset())

/**
 * Opens a streaming request and resolves with the response as soon as its headers arrive. The client asks for usage
 * (as the OpenAI SDKs do when told to): a client that does not gets the stream without its usage chunk (spend.test.ts).
 */
const open = (body: unknown = chatBody({ stream: true, stream_options: { include_usage: true } }), token = t.token) =>
  new Promise<{ res: IncomingMessage; destroy: () => void }>((resolve, reject) => {
    const u = new URL(stack.server.url)
    const text = JSON.stringify(body)
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      method: "POST",
      path: "/v1/chat/completions",
      agent: false,
      headers: {
        authorization: `Bearer ${token}`,
        "content-type": "application/json",
        "content-length": Buffer.byteLength(text)
      }
    }, (res) => resolve({ res, destroy: () => req.destroy() }))
    req.on("error", (e) => (e.message.includes("socket hang up") ? undefined : reject(e)))
    req.end(text)
  })

const nextChunk = (res: IncomingMessage) =>
  new Promise<string>((resolve, reject) => {
    res.once("data", (d: Buffer) => resolve(d.toString()))
    res.once("error", reject)
  })

describe("SSE through the proxy", () => {
  it("96 chunks reach the client one by one while the upstream is still sending (no buffering)", async () => {
    const chunks = chatChunks(["one", "two", "three", "four", "five"])
    const received: Array<() => void> = []
    const wait = (i: number) => new Promise<void>((r) => (received[i] = r))
    stack.mock.enqueue(handler(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      for (let i = 0; i < chunks.length; i++) {
        const gotIt = wait(i)
        res.write(chunks[i])
        // The upstream does not send chunk i+1 before the client has chunk i: buffering would deadlock here.
        await gotIt
      }
      res.end()
    }))
    const { res } = await open()
    expect(res.statusCode).toBe(200)
    expect(res.headers["content-type"]).toBe("text/event-stream")
    let all = ""
    for (let i = 0; i < chunks.length; i++) {
      const c = await nextChunk(res)
      all += c
      expect(c).toBe(chunks[i])
      expect(stack.mock.requests[0]!.closedAt).toBeUndefined()
      received[i]!()
    }
    await new Promise((r) => res.once("end", r))
    expect(all).toBe(chunks.join(""))
    // The stream's usage chunk was counted.
    await eventually(async () => Number((await tokenRow(stack.backend, t.tokenId)).completion_tokens) >= 5)
  })

  it("the client has the headers while the upstream waits to send the first event", async () => {
    // The proxy sends the headers with the first events when they come together, and on their own when they do not:
    // this upstream sends its first event only once the client has the headers (a proxy that waited would hang).
    let headersSeen!: () => void
    const seen = new Promise<void>((r) => (headersSeen = r))
    const chunks = chatChunks(["late"])
    stack.mock.enqueue(handler(async (_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      res.flushHeaders()
      await seen
      res.end(chunks.join(""))
    }))
    const { res } = await open()
    expect(res.statusCode).toBe(200)
    expect(res.headers["content-type"]).toBe("text/event-stream")
    headersSeen()
    let all = ""
    res.on("data", (d: Buffer) => (all += d.toString()))
    await new Promise((r) => res.once("end", r))
    expect(all).toBe(chunks.join(""))
  })

  it("96 the mock's timed chunks (5 × 200 ms) arrive as separate chunks, the first before the stream ends", async () => {
    const chunks = chatChunks(["a", "b", "c", "d", "e"])
    stack.mock.enqueue(sse(chunks, { intervalMs: 200 }))
    const { res } = await open()
    const first = await nextChunk(res)
    expect(first).toBe(chunks[0])
    expect(stack.mock.requests[0]!.closedAt).toBeUndefined()
    const rest: Array<string> = []
    res.on("data", (d: Buffer) => rest.push(d.toString()))
    await new Promise((r) => res.once("end", r))
    expect([first, ...rest].join("")).toBe(chunks.join(""))
    expect(rest.length).toBeGreaterThan(1)
  })

  it("events the upstream sends at once reach the client together, byte for byte, without the usage it did not ask for", async () => {
    // 40 events in one go (one chunk of the upstream's chunked body each): the proxy reads and writes them together.
    const deltas = Array.from({ length: 40 }, (_, i) => `wörd${i} `)
    const chunks = chatChunks(deltas, { prompt_tokens: 11, completion_tokens: 40 })
    stack.mock.enqueue(handler((_req, res) => {
      res.writeHead(200, { "content-type": "text/event-stream" })
      for (const c of chunks) res.write(c)
      res.end()
    }))
    // A token of its own: the other tests' usage, written in batches, does not land in its counters.
    const own = await projectAndToken(stack.manage)
    const { res } = await open(chatBody({ stream: true }), own.token)
    const pieces: Array<string> = []
    res.on("data", (d: Buffer) => pieces.push(d.toString()))
    await new Promise((r) => res.once("end", r))
    // The client did not ask for usage: the proxy asked for it, read it, and left its event out.
    expect(pieces.join("")).toBe(chunks.filter((c) => !c.includes("\"usage\":{")).join(""))
    // Event by event they would be 42 writes and 42 pieces here; together, one or a few.
    expect(pieces.length).toBeLessThan(chunks.length / 2)
    await eventually(async () => Number((await tokenRow(stack.backend, own.tokenId)).completion_tokens) === 40)
    expect(Number((await tokenRow(stack.backend, own.tokenId)).prompt_tokens)).toBe(11)
  })

  it("98 a client that disconnects mid-stream aborts the upstream request within 1 s", async () => {
    stack.mock.enqueue(sse(Array.from({ length: 200 }, (_, i) => `data: {"i":${i}}\n\n`), { intervalMs: 100 }))
    const { res, destroy } = await open()
    await nextChunk(res)
    const rec = stack.mock.requests[0]!
    const gone = Date.now()
    destroy()
    await rec.closed
    expect(rec.aborted).toBe(true)
    expect(rec.closedAt! - gone).toBeLessThan(1000)
  })

  it("a client that disconnects before the upstream answered aborts the upstream request too", async () => {
    stack.mock.enqueue(hang)
    const u = new URL(stack.server.url)
    const text = JSON.stringify(chatBody())
    const req = httpRequest({
      host: u.hostname,
      port: u.port,
      method: "POST",
      path: "/v1/chat/completions",
      agent: false,
      headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json", "content-length": text.length }
    })
    req.on("error", () => {})
    req.end(text)
    await stack.mock.waitForRequests(1)
    const rec = stack.mock.requests[0]!
    const gone = Date.now()
    req.destroy()
    await rec.closed
    expect(rec.aborted).toBe(true)
    expect(rec.closedAt! - gone).toBeLessThan(1000)
  })

  it(
    "97 [SLOW: takes 90 s] a 90-second stream completes (no overall timeout on streams)",
    async () => {
      const chunks = Array.from({ length: 90 }, (_, i) => `data: {"second":${i}}\n\n`).concat("data: [DONE]\n\n")
      stack.mock.enqueue(sse(chunks, { intervalMs: 1000 }))
      const started = Date.now()
      const { res } = await open()
      let all = ""
      res.on("data", (d: Buffer) => (all += d.toString()))
      await new Promise((r) => res.once("end", r))
      expect(all).toBe(chunks.join(""))
      expect(Date.now() - started).toBeGreaterThanOrEqual(89_000)
    },
    150_000
  )
})
