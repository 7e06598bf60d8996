import { Readable, Writable } from "node:stream"
import { pipeline } from "node:stream/promises"
import { describe, expect, it } from "vitest"
import { BodyCapture } from "../../src/cache/capture.js"

const sink = () => {
  const got: Array<Buffer> = []
  return { got, stream: new Writable({ write: (c, _e, cb) => void (got.push(c), cb()) }) }
}

describe("BodyCapture", () => {
  it("passes every chunk through and hands over the whole body when it ends within the bound", async () => {
    const stored: Array<string> = []
    const capture = new BodyCapture(100, (b) => stored.push(b.toString()))
    const out = sink()
    await pipeline(Readable.from([Buffer.from("data: a\n\n"), Buffer.from("data: b\n\n")]), capture, out.stream)
    expect(Buffer.concat(out.got).toString()).toBe("data: a\n\ndata: b\n\n")
    expect(stored).toEqual(["data: a\n\ndata: b\n\n"])
    expect(capture.truncated).toBe(false)
  })

  it("stores nothing when the body grows past the bound, but still delivers all of it", async () => {
    const stored: Array<Buffer> = []
    const capture = new BodyCapture(10, (b) => stored.push(b))
    const out = sink()
    await pipeline(Readable.from([Buffer.alloc(6), Buffer.alloc(6), Buffer.alloc(6)]), capture, out.stream)
    expect(Buffer.concat(out.got).length).toBe(18)
    expect(stored).toEqual([])
    expect(capture.truncated).toBe(true)
  })

  it("stores nothing when the stream fails midway (upstream reset, client gone)", async () => {
    const stored: Array<Buffer> = []
    const capture = new BodyCapture(100, (b) => stored.push(b))
    const source = new Readable({ read() {} })
    const done = pipeline(source, capture, sink().stream)
    source.push(Buffer.from("data: a\n\n"))
    source.destroy(new Error("reset"))
    await expect(done).rejects.toThrow("reset")
    expect(stored).toEqual([])
  })

  it("a failing store callback never breaks the response", async () => {
    const capture = new BodyCapture(100, () => {
      throw new Error("boom")
    })
    const out = sink()
    await pipeline(Readable.from([Buffer.from("x")]), capture, out.stream)
    expect(Buffer.concat(out.got).toString()).toBe("x")
  })
})
