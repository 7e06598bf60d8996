import { Readable, Writable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { describe, expect, it } from "vitest"
import { finishUsage, mergeUsage, UsageCapture } from "../../src/proxy/usage.js"
import { chatChunks } from "../support/mockUpstream.js"

const run = async (capture: UsageCapture, chunks: ReadonlyArray<string | Buffer>) => {
  const out: Array<Buffer> = []
  await pipeline(
    Readable.from(chunks.map((c) => (typeof c === "string" ? Buffer.from(c) : c))),
    capture,
    new Writable({
      write(chunk: Buffer, _e, cb) {
        out.push(chunk)
        cb()
      }
    })
  )
  return out
}

describe("UsageCapture", () => {
  it("passes SSE bytes through untouched, chunk by chunk, and reads the final usage chunk", async () => {
    const chunks = chatChunks(["Hel", "lo ", "wörld"], { prompt_tokens: 7, completion_tokens: 3 })
    const c = new UsageCapture("sse", 0)
    const out = await run(c, chunks)
    expect(out.map((b) => b.toString())).toEqual(chunks)
    expect(c.usage).toEqual({ prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 })
    expect(c.captured.length).toBe(0)
  })

  it("finds usage in events split anywhere, even inside a multi-byte character", async () => {
    const text = chatChunks(["ä", "ö"], { prompt_tokens: 1, completion_tokens: 2 }).join("")
    const bytes = Buffer.from(text)
    const pieces: Array<Buffer> = []
    for (let i = 0; i < bytes.length; i += 7) pieces.push(bytes.subarray(i, i + 7))
    const c = new UsageCapture("sse", 1 << 20)
    const out = await run(c, pieces)
    expect(Buffer.concat(out).equals(bytes)).toBe(true)
    expect(c.usage?.total_tokens).toBe(3)
    expect(c.captured.equals(bytes)).toBe(true)
    expect(c.truncated).toBe(false)
  })

  it("reads Anthropic message_start / message_delta usage (CRLF lines too)", async () => {
    const c = new UsageCapture("sse", 0)
    await run(c, [
      "event: message_start\r\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\r\n\r\n",
      "event: message_delta\r\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":25}}\r\n\r\n"
    ])
    expect(c.usage).toEqual({ prompt_tokens: 11, completion_tokens: 25, total_tokens: 36 })
  })

  it("no usage in the stream: undefined; malformed events are skipped", async () => {
    const c = new UsageCapture("sse", 0)
    await run(c, ["data: {not json _tokens\n\n", ...chatChunks(["a"], null)])
    expect(c.usage).toBeUndefined()
  })

  it("a last line without a newline is still read", async () => {
    const c = new UsageCapture("sse", 0)
    await run(c, ["data: {\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}}"])
    expect(c.usage?.total_tokens).toBe(4)
  })

  it("JSON: reads usage from the whole body and keeps at most captureLimit for others", async () => {
    const body = JSON.stringify({ id: "x", usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 } })
    const c = new UsageCapture("json", 10)
    const out = await run(c, [body.slice(0, 5), body.slice(5)])
    expect(Buffer.concat(out).toString()).toBe(body)
    expect(c.usage).toEqual({ prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 })
    expect(c.bytes).toBe(body.length)
  })

  it("JSON that does not parse has no usage", async () => {
    const c = new UsageCapture("json", 0)
    await run(c, ["{\"usage\":"])
    expect(c.usage).toBeUndefined()
  })

  it("keeps only captureLimit bytes of a long SSE stream", async () => {
    const c = new UsageCapture("sse", 16)
    await run(c, ["x".repeat(10), "y".repeat(10)])
    expect(c.captured.toString()).toBe("x".repeat(10) + "y".repeat(6))
    expect(c.truncated).toBe(true)
  })

  it("mergeUsage ignores junk", () => {
    const acc = {}
    for (const doc of [null, 1, "x", { usage: null }, { usage: { prompt_tokens: -1 } }, { usage: { prompt_tokens: "3" } }]) {
      mergeUsage(acc, doc)
    }
    expect(finishUsage(acc)).toBeUndefined()
    mergeUsage(acc, { response: { usage: { input_tokens: 4 } } })
    expect(finishUsage(acc)).toEqual({ prompt_tokens: 4, completion_tokens: 0, total_tokens: 4 })
  })
})
