/** Asking a streamed request for usage (body splices) and removing the usage-only chunk the client did not ask for. */
import { describe, expect, it } from "vitest"
import { UsageCapture } from "../../src/proxy/usage.js"
import { askForUsage, estimateCutShort } from "../../src/spend/streamUsage.js"
import { chatChunks } from "../support/mockUpstream.js"

const ask = (body: string, path = "/v1/chat/completions") => {
  const r = askForUsage(path, Buffer.from(body))
  return r === undefined ? undefined : { body: r.body.toString(), strip: r.strip }
}

describe("askForUsage", () => {
  it("adds stream_options to a streamed request, every other byte unchanged", () => {
    expect(ask("{\"model\":\"m\", \"stream\" : true,\"messages\":[]}")).toEqual({
      body: "{\"stream_options\":{\"include_usage\":true},\"model\":\"m\", \"stream\" : true,\"messages\":[]}",
      strip: true
    })
  })

  it("sets include_usage in stream_options given without it (null, empty, false), keeping the other keys", () => {
    expect(ask("{\"stream\":true,\"stream_options\":null}")).toEqual({
      body: "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
      strip: true
    })
    expect(ask("{\"stream\":true,\"stream_options\":{\"x\":1,\"include_usage\":false}}")).toEqual({
      body: "{\"stream\":true,\"stream_options\":{\"x\":1,\"include_usage\":true}}",
      strip: true
    })
  })

  it.each([
    [
      "a client that asked for usage",
      "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
      "/v1/chat/completions"
    ],
    ["a request that does not stream", "{\"stream\":false,\"model\":\"m\"}", "/v1/chat/completions"],
    [
      "no stream key",
      "{\"model\":\"m\",\"messages\":[{\"content\":\"\\\"stream\\\": true\"}]}",
      "/v1/chat/completions"
    ],
    ["stream named twice (ambiguous)", "{\"stream\":true,\"stream\":false}", "/v1/chat/completions"],
    [
      "stream_options named twice",
      "{\"stream\":true,\"stream_options\":{},\"stream_options\":{}}",
      "/v1/chat/completions"
    ],
    ["stream_options not an object", "{\"stream\":true,\"stream_options\":\"yes\"}", "/v1/chat/completions"],
    ["a body that is not an object", "[{\"stream\":true}]", "/v1/chat/completions"],
    ["a truncated body", "{\"stream\":true,\"model\":\"m\"", "/v1/chat/completions"],
    ["another endpoint (Responses API streams report usage)", "{\"stream\":true}", "/v1/responses"]
  ])("leaves %s alone", (_what, body, path) => {
    expect(ask(body, path)).toBeUndefined()
  })

  it("completions (legacy) are asked too", () => {
    expect(ask("{\"stream\":true}", "/v1/completions")?.strip).toBe(true)
  })
})

/** What the client gets of `pieces` through `capture`, as the proxy relays them. */
const through = async (capture: UsageCapture, pieces: ReadonlyArray<Buffer>) => {
  const out: Array<Buffer> = []
  for (const p of pieces) {
    const passed = capture.pass(p)
    if (passed !== undefined) out.push(passed)
  }
  const rest = capture.end()
  if (rest !== undefined) out.push(rest)
  return Buffer.concat(out).toString()
}

describe("UsageCapture removing the usage-only chunk", () => {
  const chunks = chatChunks(["Hel", "lo ", "wörld"], { prompt_tokens: 7, completion_tokens: 3 })
  const withoutUsage = chunks.filter((c) => !c.includes("\"usage\":{")).join("")

  it.each([1, 3, 7, 64, 10_000])(
    "split every %i bytes: the client gets every other byte, the usage is still read",
    async (step) => {
      const bytes = Buffer.from(chunks.join(""))
      const pieces: Array<Buffer> = []
      for (let i = 0; i < bytes.length; i += step) pieces.push(bytes.subarray(i, i + step))
      const c = new UsageCapture("sse", 0, true, true)
      expect(await through(c, pieces)).toBe(withoutUsage)
      expect(c.usage).toEqual({ prompt_tokens: 7, completion_tokens: 3, total_tokens: 10 })
    }
  )

  it("a chunk with content and usage is kept whole (only a usage-only event goes)", async () => {
    const mixed = `data: ${
      JSON.stringify({
        choices: [{ index: 0, delta: { content: "x" } }],
        usage: { prompt_tokens: 1, completion_tokens: 1 }
      })
    }\n\n`
    const c = new UsageCapture("sse", 0, false, true)
    expect(await through(c, [Buffer.from(mixed)])).toBe(mixed)
  })

  it("CRLF events", async () => {
    const crlf = chunks.map((c) => c.replace(/\n/g, "\r\n"))
    const c = new UsageCapture("sse", 0, false, true)
    expect(await through(c, crlf.map((x) => Buffer.from(x)))).toBe(
      crlf.filter((x) => !x.includes("\"usage\":{")).join("")
    )
  })
})

describe("the text of a stream cut short", () => {
  // Content deltas, with CRLF, a comment and a multi-byte character split between chunks; no usage (cut short).
  const events = chatChunks(["Hel", "lo ", "wörld", ", and", " more"], null).filter((c) => !c.includes("[DONE]"))
  const stream = Buffer.from(": keep-alive\r\n\r\n" + events.join("").replace(/\n/g, "\r\n"))
  const split = (step: number) => {
    const pieces: Array<Buffer> = []
    for (let i = 0; i < stream.length; i += step) pieces.push(stream.subarray(i, i + step))
    return pieces
  }

  // The capture holds the stream's first bytes for the event; while it holds all of them the text is read back from
  // it, past its limit the lines are kept: every limit (none, cut mid-stream, all) gives the same text.
  /** The stream in whole events, as upstreams send them (most are read without decoding: `UsageReader.skim`). */
  const byEvent = () => {
    const pieces: Array<Buffer> = []
    for (let start = 0; start < stream.length;) {
      const end = stream.indexOf("\r\n\r\n", start) + 4
      pieces.push(stream.subarray(start, end))
      start = end
    }
    return pieces
  }

  it.each([0, 1, 150, 400, 262_144])("capture limit %i bytes, split every 1, 7 and 64 bytes and by event", (limit) => {
    // Also the first event alone and the rest in one chunk, as a fast upstream's arrive (the rest skimmed at once).
    const firstThenRest = () => {
      const [first, ...rest] = byEvent()
      return [first!, Buffer.concat(rest)]
    }
    for (const pieces of [split(1), split(7), split(64), byEvent(), firstThenRest()]) {
      const c = new UsageCapture("sse", limit, true)
      const passed: Array<Buffer> = []
      for (const piece of pieces) passed.push(c.pass(piece)!)
      c.reader.settle()
      expect(Buffer.concat(passed).equals(stream)).toBe(true)
      expect(c.reader.streamedText()).toEqual({ text: "Hello wörld, and more", overflowChars: 0 })
      expect(c.captured.equals(stream.subarray(0, limit))).toBe(true)
      expect(c.truncated).toBe(stream.length > limit)
    }
  })
})

describe("a stream read in whole events or byte by byte", () => {
  // Plain deltas are skimmed when they come as whole events; the first event, the finish reason and the usage are
  // read in any case.
  const stream = Buffer.from(
    chatChunks(["Hel", "lo", " there", "!"], { prompt_tokens: 9, completion_tokens: 4 }).join("")
  )
  const events = stream.toString().split(/(?<=\n\n)/).map((e) => Buffer.from(e))
  const read = (pieces: ReadonlyArray<Buffer>) => {
    const c = new UsageCapture("sse", 262_144, true)
    for (const piece of pieces) c.pass(piece)
    c.reader.finish()
    const r = c.reader
    return { usage: r.usage, final: r.usageFinal, model: r.responseModel, id: r.responseId, finish: r.finishReasons }
  }

  it("gives the same usage, model, id and finish reasons", () => {
    const bytes = [...stream].map((b) => Buffer.from([b]))
    expect(events.length).toBeGreaterThan(4)
    const whole = read(events)
    expect(whole).toEqual(read(bytes))
    // A fast upstream's events come many to a chunk: the finish reason and the usage are found among them.
    expect(whole).toEqual(read([events[0]!, Buffer.concat(events.slice(1))]))
    expect(whole).toEqual(read([stream]))
    expect(whole).toEqual({
      usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 },
      final: true,
      model: "gpt-4o-mini",
      id: "chatcmpl-mock",
      finish: ["stop"]
    })
  })
})

describe("estimateCutShort", () => {
  // A stand-in counter: one token per character, so that the arithmetic is visible.
  const count = (_e: string, text: string) => text.length
  const streamed = { text: "abcdef", overflowChars: 8 }

  it("nothing reported: the input from the request, the output from the text (overflow at 4 characters a token)", () => {
    const body = Buffer.from(JSON.stringify({ messages: [{ role: "user", content: "hello" }] }))
    const d = estimateCutShort(count, "gpt-4o", undefined, streamed, body)
    expect(d.completion).toBe(6 + 2)
    expect(d.prompt).toBeGreaterThanOrEqual(5)
  })

  it("reported usage is kept; the output is at least what was streamed", () => {
    const reported = { prompt: 30, completion: 1, cacheRead: 5, cacheWrite: 0, cacheWrite1h: 0, cacheApart: true }
    expect(estimateCutShort(count, "m", reported, streamed, undefined)).toEqual({ ...reported, completion: 8 })
    expect(estimateCutShort(count, "m", { ...reported, completion: 50 }, streamed, undefined).completion).toBe(50)
  })
})
