import { describe, expect, it } from "vitest"
import { chunkFacts, type Facts, finishUsage, mergeAnswer, mergeUsage, UsageCapture } from "../../src/proxy/usage.js"
import { chatChunks } from "../support/mockUpstream.js"

/** The chunks through `capture` as the proxy relays them: what the client gets, one entry per chunk handed back. */
const run = async (capture: UsageCapture, chunks: ReadonlyArray<string | Buffer>) => {
  const out: Array<Buffer> = []
  for (const c of chunks) {
    const passed = capture.pass(typeof c === "string" ? Buffer.from(c) : c)
    if (passed !== undefined) out.push(passed)
  }
  const rest = capture.end()
  if (rest !== undefined) out.push(rest)
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
    for (
      const doc of [null, 1, "x", { usage: null }, { usage: { prompt_tokens: -1 } }, { usage: { prompt_tokens: "3" } }]
    ) {
      mergeUsage(acc, doc)
    }
    expect(finishUsage(acc)).toBeUndefined()
    mergeUsage(acc, { response: { usage: { input_tokens: 4 } } })
    expect(finishUsage(acc)).toEqual({ prompt_tokens: 4, completion_tokens: 0, total_tokens: 4 })
  })
})

describe("AnswerFacts read on the side", () => {
  const facts = (c: UsageCapture) => ({
    model: c.reader.responseModel,
    id: c.reader.responseId,
    finish: c.reader.finishReasons,
    input: c.reader.inputTokens,
    cacheRead: c.reader.cacheReadTokens,
    cacheCreation: c.reader.cacheCreationTokens
  })

  it("OpenAI chat stream: id and model from the first chunk, finish reasons per choice, cached prompt tokens", async () => {
    const frame = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`
    const base = { id: "chatcmpl-9", object: "chat.completion.chunk", model: "gpt-4o-mini-2024-07-18" }
    const c = new UsageCapture("sse", 0)
    const before = performance.now()
    await run(c, [
      frame({
        ...base,
        choices: [{ index: 0, delta: { role: "assistant", content: "" }, finish_reason: null }, {
          index: 1,
          delta: { content: "" },
          finish_reason: null
        }]
      }),
      frame({
        ...base,
        id: "chatcmpl-other",
        model: "other",
        choices: [{ index: 1, delta: { content: "b" }, finish_reason: null }]
      }),
      // choice 1 ends first; spaced JSON is recognised too
      `data: {"id":"chatcmpl-9","choices":[{"index":1,"delta":{},"finish_reason": "length"}]}\n\n`,
      frame({ ...base, choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }),
      frame({
        ...base,
        choices: [],
        usage: {
          prompt_tokens: 20,
          completion_tokens: 4,
          total_tokens: 24,
          prompt_tokens_details: { cached_tokens: 16 }
        }
      }),
      "data: [DONE]\n\n"
    ])
    expect(facts(c)).toEqual({
      model: "gpt-4o-mini-2024-07-18",
      id: "chatcmpl-9",
      finish: ["stop", "length"],
      input: 20,
      cacheRead: 16,
      cacheCreation: undefined
    })
    expect(c.reader.firstChunkAt).toBeGreaterThanOrEqual(before)
    expect(c.usage).toEqual({ prompt_tokens: 20, completion_tokens: 4, total_tokens: 24 })
  })

  it("Anthropic stream: id and model from message_start, stop_reason from message_delta, cached input counted in", async () => {
    const c = new UsageCapture("sse", 0)
    await run(c, [
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null," +
      "\"usage\":{\"input_tokens\":10,\"cache_read_input_tokens\":100,\"cache_creation_input_tokens\":5,\"output_tokens\":1}}}\n\n",
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":12}}\n\n"
    ])
    // The usage counters stay as the provider reports them; the GenAI input count includes the cached tokens.
    expect(c.usage).toEqual({ prompt_tokens: 10, completion_tokens: 12, total_tokens: 22 })
    expect(facts(c)).toEqual({
      model: "claude-sonnet-4-5",
      id: "msg_1",
      finish: ["end_turn"],
      input: 115,
      cacheRead: 100,
      cacheCreation: 5
    })
  })

  it("JSON answers: OpenAI chat, Anthropic message, OpenAI response, embeddings", async () => {
    const read = async (doc: unknown) => {
      const c = new UsageCapture("json", 0)
      await run(c, [JSON.stringify(doc)])
      return facts(c)
    }
    expect(
      await read({
        id: "chatcmpl-1",
        model: "gpt-4o",
        choices: [{ index: 0, finish_reason: "tool_calls" }],
        usage: { prompt_tokens: 3, completion_tokens: 1 }
      })
    )
      .toEqual({
        model: "gpt-4o",
        id: "chatcmpl-1",
        finish: ["tool_calls"],
        input: 3,
        cacheRead: undefined,
        cacheCreation: undefined
      })
    expect(
      await read({
        id: "msg_2",
        type: "message",
        model: "claude-haiku",
        stop_reason: "max_tokens",
        usage: { input_tokens: 7, output_tokens: 2 }
      })
    )
      .toEqual({
        model: "claude-haiku",
        id: "msg_2",
        finish: ["max_tokens"],
        input: 7,
        cacheRead: undefined,
        cacheCreation: undefined
      })
    expect(
      await read({
        id: "resp_3",
        object: "response",
        model: "gpt-4.1",
        usage: { input_tokens: 8, output_tokens: 2, input_tokens_details: { cached_tokens: 6 } }
      })
    )
      .toEqual({ model: "gpt-4.1", id: "resp_3", finish: undefined, input: 8, cacheRead: 6, cacheCreation: undefined })
    expect(
      await read({
        object: "list",
        model: "text-embedding-3-small",
        data: [],
        usage: { prompt_tokens: 5, total_tokens: 5 }
      })
    )
      .toEqual({
        model: "text-embedding-3-small",
        id: undefined,
        finish: undefined,
        input: 5,
        cacheRead: undefined,
        cacheCreation: undefined
      })
  })

  it("bounds what the upstream may put in: long ids cut to 256 characters, at most 16 choices, junk ignored", async () => {
    const c = new UsageCapture("json", 0)
    const choices = Array.from({ length: 40 }, (_, i) => ({ index: i, finish_reason: `r${i}` }))
    await run(c, [JSON.stringify({ id: "i".repeat(1000), model: 42, choices })])
    expect(c.reader.responseId).toBe("i".repeat(256))
    expect(c.reader.responseModel).toBeUndefined()
    expect(c.reader.finishReasons).toEqual(Array.from({ length: 16 }, (_, i) => `r${i}`))
    const junk = new UsageCapture("json", 0)
    await run(junk, [
      JSON.stringify({
        choices: [null, { index: 0, finish_reason: 7 }, { index: 99, finish_reason: "stop" }, {
          index: 1.5,
          finish_reason: "x"
        }, { index: 1, finish_reason: "" }]
      })
    ])
    expect(junk.reader.finishReasons).toBeUndefined()
  })

  it("a stream that never sent a byte has no first chunk; no facts without an answer", async () => {
    const c = new UsageCapture("sse", 0)
    await run(c, [])
    expect(c.reader.firstChunkAt).toBeUndefined()
    expect(facts(c)).toEqual({
      model: undefined,
      id: undefined,
      finish: undefined,
      input: undefined,
      cacheRead: undefined,
      cacheCreation: undefined
    })
  })
})

describe("chunkFacts (an OpenAI chunk's facts without parsing it)", () => {
  const viaParse = (line: string): Facts => {
    const f: Facts = {}
    mergeAnswer(f, JSON.parse(line.slice(5)))
    return f
  }
  const viaScan = (line: string): Facts | undefined => {
    const f: Facts = {}
    return chunkFacts(f, line) ? f : undefined
  }

  it("reads the usual chunks itself", () => {
    for (
      const doc of [
        {
          id: "chatcmpl-1",
          object: "chat.completion.chunk",
          created: 1,
          model: "gpt-4o-mini",
          choices: [{ index: 0, delta: { role: "assistant", content: "" }, logprobs: null, finish_reason: null }]
        },
        {
          id: "chatcmpl-1",
          object: "chat.completion.chunk",
          created: 1,
          model: "gpt-4o-mini",
          system_fingerprint: "fp_1",
          choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: "stop" }]
        },
        {
          id: "c",
          model: "m",
          choices: [{ index: 1, delta: {}, finish_reason: "length" }, { index: 0, delta: {}, finish_reason: "stop" }]
        }
      ]
    ) {
      const line = `data: ${JSON.stringify(doc)}`
      expect(viaScan(line), line).toEqual(viaParse(line))
    }
  })

  it("gives the same facts as JSON.parse on 3,000 generated lines, or leaves them to it", () => {
    let seed = 7
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648
      return seed % n
    }
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[rand(xs.length)]!
    let scanned = 0
    for (let k = 0; k < 3000; k++) {
      const choices = Array.from({ length: rand(3) }, (_, i) => ({
        index: pick([i, i + 1, 0]),
        delta: pick([{}, { content: "x" }, {
          tool_calls: [{ index: rand(3), id: "call_1", function: { name: "f" } }]
        }]),
        ...(rand(2) === 0 ? { logprobs: pick([null, { content: [{ token: "a" }] }]) } : {}),
        finish_reason: pick([null, "stop", "length", "tool_calls", "we\"ird", "back\\slash"])
      }))
      const doc: Record<string, unknown> = {}
      for (const key of [pick(["id", "x"]), "object", pick(["model", "y"]), "choices"]) {
        doc[key] = key === "choices" ? choices : pick(["chatcmpl-1", "", "q\"uote", "gpt-4o", "ü-model"])
      }
      if (rand(4) === 0) doc["usage"] = null
      const json = JSON.stringify(doc)
      const line = `data: ${rand(3) === 0 ? json.replaceAll("\":", "\": ") : json}`
      const scan = viaScan(line)
      if (scan === undefined) continue
      scanned++
      expect(scan, line).toEqual(viaParse(line))
    }
    // Most lines take the fast path.
    expect(scanned).toBeGreaterThan(1000)
  })

  it("leaves lines without choices to the parser", () => {
    expect(viaScan("data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}")).toBeUndefined()
  })
})
