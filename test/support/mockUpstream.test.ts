import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { chatChunks, hang, json, type MockUpstream, reset, sse, startMockUpstream } from "./mockUpstream.js"

describe("mock upstream", () => {
  let mock: MockUpstream
  beforeAll(async () => {
    mock = await startMockUpstream()
  })
  afterAll(() => mock.close())

  it("answers the default chat completion and records the request", async () => {
    mock.reset()
    const r = await fetch(`${mock.url}/v1/chat/completions?x=1`, {
      method: "POST",
      headers: { authorization: "Bearer k", "content-type": "application/json" },
      body: JSON.stringify({ model: "m" })
    })
    expect(r.status).toBe(200)
    expect(((await r.json()) as any).usage.total_tokens).toBe(12)
    expect(mock.requests[0]).toMatchObject({
      method: "POST",
      path: "/v1/chat/completions",
      url: "/v1/chat/completions?x=1"
    })
    expect(mock.requests[0]!.headers.authorization).toBe("Bearer k")
    expect(JSON.parse(mock.requests[0]!.body)).toEqual({ model: "m" })
  })

  it("plays routes, the queue and statuses", async () => {
    mock.reset()
    mock.route("/v1/models", json({ data: [] }, { headers: { "cache-control": "public, max-age=60" } }))
    mock.enqueue(json({ error: "x" }, { status: 503 }))
    const models = await fetch(`${mock.url}/v1/models`)
    expect(models.headers.get("cache-control")).toBe("public, max-age=60")
    expect((await fetch(`${mock.url}/v1/chat/completions`, { method: "POST" })).status).toBe(503)
    expect((await fetch(`${mock.url}/v1/chat/completions`, { method: "POST" })).status).toBe(200)
  })

  it("streams SSE chunks with delays", async () => {
    mock.reset()
    mock.enqueue(sse(chatChunks(["a", "b"]), { intervalMs: 30 }))
    const r = await fetch(`${mock.url}/v1/chat/completions`, { method: "POST" })
    expect(r.headers.get("content-type")).toBe("text/event-stream")
    const text = await r.text()
    expect(text).toContain("\"content\":\"a\"")
    expect(text.endsWith("data: [DONE]\n\n")).toBe(true)
  })

  it("resets connections, hangs, and notices clients going away", async () => {
    mock.reset()
    mock.enqueue(reset())
    await expect(fetch(`${mock.url}/v1/x`)).rejects.toThrow()
    mock.enqueue(hang)
    const ac = new AbortController()
    const p = fetch(`${mock.url}/v1/x`, { signal: ac.signal }).catch(() => "aborted")
    await mock.waitForRequests(2)
    ac.abort()
    expect(await p).toBe("aborted")
    await mock.requests[1]!.closed
    expect(mock.requests[1]!.aborted).toBe(true)
  })
})
