import { brotliCompressSync, deflateSync, gzipSync } from "node:zlib"
import { describe, expect, it } from "vitest"
import { parseDuration } from "../../src/config/AppConfig.js"
import { outcomeOfStatus } from "../../src/dispatcher/Backend.js"
import { LUNARY_CREDENTIAL_STATUSES } from "../../src/dispatcher/backends.js"
import {
  asText,
  decodeContent,
  interpretBody,
  MAX_DECODED_BODY_BYTES,
  mergeOpenAiChunks,
  parseSse,
  reassembleSse
} from "../../src/dispatcher/bodies.js"
import type * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { backoffMs, formatStatus } from "../../src/dispatcher/Dispatcher.js"
import { encodingForModel, loadTokenCounter } from "../../src/dispatcher/tokens.js"
import { completionText, promptText, transformEvent, usageFromResponse } from "../../src/dispatcher/transform.js"
import { body, makeEvent, sse } from "../support/events.js"

const count = await loadTokenCounter()

const chatChunks = [
  {
    id: "c1",
    object: "chat.completion.chunk",
    created: 1,
    model: "gpt-4o",
    choices: [{ index: 0, delta: { role: "assistant", content: "" } }]
  },
  {
    id: "c1",
    object: "chat.completion.chunk",
    created: 1,
    model: "gpt-4o",
    choices: [{ index: 0, delta: { content: "Hel" } }]
  },
  {
    id: "c1",
    object: "chat.completion.chunk",
    created: 1,
    model: "gpt-4o",
    choices: [{ index: 0, delta: { content: "lo" }, finish_reason: null }]
  },
  {
    id: "c1",
    object: "chat.completion.chunk",
    created: 1,
    model: "gpt-4o",
    choices: [{ index: 0, delta: {}, finish_reason: "stop" }]
  }
]

describe("SSE reassembly", () => {
  it.each([
    ["chat chunks → one chat.completion", sse(chatChunks), {
      id: "c1",
      object: "chat.completion",
      created: 1,
      model: "gpt-4o",
      choices: [{ index: 0, message: { role: "assistant", content: "Hello" }, finish_reason: "stop" }]
    }],
    [
      "usage chunk (stream_options.include_usage) is kept",
      sse([...chatChunks, {
        id: "c1",
        object: "chat.completion.chunk",
        choices: [],
        usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }
      }]),
      {
        usage: { prompt_tokens: 5, completion_tokens: 2, total_tokens: 7 }
      }
    ],
    [
      "tool calls merged by index",
      sse([
        {
          id: "t",
          object: "chat.completion.chunk",
          choices: [{
            index: 0,
            delta: {
              role: "assistant",
              tool_calls: [{ index: 0, id: "call_1", type: "function", function: { name: "get_", arguments: "" } }]
            }
          }]
        },
        {
          id: "t",
          object: "chat.completion.chunk",
          choices: [{
            index: 0,
            delta: { tool_calls: [{ index: 0, function: { name: "weather", arguments: "{\"city\":" } }] }
          }]
        },
        {
          id: "t",
          object: "chat.completion.chunk",
          choices: [{
            index: 0,
            delta: { tool_calls: [{ index: 0, function: { arguments: "\"Oslo\"}" } }] },
            finish_reason: "tool_calls"
          }]
        }
      ]),
      {
        choices: [{
          index: 0,
          message: {
            role: "assistant",
            content: null,
            tool_calls: [{
              id: "call_1",
              type: "function",
              function: { name: "get_weather", arguments: "{\"city\":\"Oslo\"}" }
            }]
          },
          finish_reason: "tool_calls"
        }]
      }
    ],
    [
      "two choices kept apart",
      sse([
        {
          id: "m",
          object: "chat.completion.chunk",
          choices: [{ index: 1, delta: { content: "B" } }, { index: 0, delta: { content: "A" } }]
        },
        {
          id: "m",
          object: "chat.completion.chunk",
          choices: [{ index: 0, delta: { content: "a" }, finish_reason: "stop" }, {
            index: 1,
            delta: { content: "b" },
            finish_reason: "stop"
          }]
        }
      ]),
      {
        choices: [
          { index: 0, message: { role: "assistant", content: "Aa" }, finish_reason: "stop" },
          { index: 1, message: { role: "assistant", content: "Bb" }, finish_reason: "stop" }
        ]
      }
    ],
    [
      "legacy completions",
      sse([
        { id: "x", object: "text_completion", model: "gpt-3.5-turbo-instruct", choices: [{ index: 0, text: "Once" }] },
        { id: "x", object: "text_completion", choices: [{ index: 0, text: " upon", finish_reason: "length" }] }
      ]),
      { object: "text_completion", choices: [{ index: 0, text: "Once upon", finish_reason: "length" }] }
    ],
    [
      "Responses API: the completed response",
      `event: response.created\ndata: {"type":"response.created","response":{"id":"r1","status":"in_progress"}}\n\nevent: response.output_text.delta\ndata: {"delta":"Hi"}\n\nevent: response.completed\ndata: {"type":"response.completed","response":{"id":"r1","status":"completed","usage":{"input_tokens":3,"output_tokens":1}}}\n\n`,
      {
        id: "r1",
        status: "completed"
      }
    ],
    [
      "Anthropic messages",
      `event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1","model":"claude","usage":{"input_tokens":10,"output_tokens":1}}}\n\nevent: content_block_delta\ndata: {"type":"content_block_delta","delta":{"type":"text_delta","text":"Hey"}}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":4}}\n\n`,
      {
        id: "msg_1",
        content: [{ type: "text", text: "Hey" }],
        stop_reason: "end_turn",
        usage: { input_tokens: 10, output_tokens: 4 }
      }
    ],
    ["unknown events stay a list", "data: {\"a\":1}\n\ndata: not json\n\n", [{ a: 1 }, "not json"]]
  ])("%s", (_name, text, expected) => {
    const value = reassembleSse(text)
    if (Array.isArray(expected)) expect(value).toEqual(expected)
    else expect(value).toMatchObject(expected as object)
  })

  it("parses multi-line data, comments, CRLF", () => {
    expect(parseSse(": keep-alive\r\n\r\nevent: x\r\ndata: a\r\ndata: b\r\n\r\ndata\n\n")).toEqual([
      { event: "x", data: "a\nb" },
      { event: undefined, data: "" }
    ])
  })

  it("returns undefined for payloads that are not OpenAI chunks", () => {
    expect(mergeOpenAiChunks([{ hello: 1 }])).toBeUndefined()
    expect(mergeOpenAiChunks([])).toBeUndefined()
  })
})

describe("body decoding", () => {
  const json = JSON.stringify({ ok: true, text: "é".repeat(50) })
  it.each([
    ["plain JSON", Buffer.from(json), undefined, undefined, { ok: true }],
    ["gzip", gzipSync(json), "gzip", "application/json", { ok: true }],
    ["br", brotliCompressSync(json), "br", "application/json", { ok: true }],
    ["SSE by content type, gzip", gzipSync(sse(chatChunks)), "gzip", "text/event-stream", { object: "chat.completion" }]
  ])("%s", (_n, raw, encoding, contentType, expected) => {
    expect(interpretBody(raw, { contentEncoding: encoding, contentType, truncated: false }).value).toMatchObject(
      expected
    )
  })

  it.each([
    ["text stays text", Buffer.from("hello"), {}, "hello"],
    ["binary is omitted", Buffer.from([0, 1, 2, 255]), {}, "<binary body omitted, 4 bytes>"],
    ["images are omitted", Buffer.from("PNG"), { contentType: "image/png" }, "<binary body omitted, 3 bytes>"],
    [
      "multipart is omitted",
      Buffer.from("--x"),
      { contentType: "multipart/form-data; boundary=x" },
      "<multipart body omitted, 3 bytes>"
    ],
    [
      "bad gzip is reported",
      Buffer.from("not gzip"),
      { contentEncoding: "gzip" },
      "<undecodable gzip body omitted, 8 bytes>"
    ],
    ["truncated JSON becomes text", Buffer.from("{\"a\": [1, 2"), {}, "{\"a\": [1, 2"]
  ])("%s", (_n, raw, opts, expected) => {
    expect(interpretBody(raw, { truncated: false, ...opts }).value).toBe(expected)
  })

  it("a truncated gzip stream yields what was decodable", () => {
    const full = gzipSync("x".repeat(100_000) + "END")
    const { bytes, decoded } = decodeContent(full.subarray(0, Math.floor(full.length / 2)), "gzip")
    expect(decoded).toBe(true)
    expect(bytes.length).toBeGreaterThan(0)
    expect(decodeContent(Buffer.from("abc"), "identity").bytes.toString()).toBe("abc")
    expect(decodeContent(Buffer.from("abc"), "zstd").decoded).toBe(false)
  })

  describe("zip bombs: a body that decompresses past MAX_DECODED_BODY_BYTES is left out, never fully inflated", () => {
    // 64 MiB of zeros is ~64 KiB of gzip / a few hundred bytes of brotli: 8 times the limit
    const zeros = Buffer.alloc(8 * MAX_DECODED_BODY_BYTES)
    it.each([
      ["gzip", gzipSync(zeros)],
      ["deflate", deflateSync(zeros)],
      ["br", brotliCompressSync(zeros)]
    ])("%s", (encoding, bomb) => {
      expect(bomb.length).toBeLessThan(128 * 1024)
      const before = process.memoryUsage().arrayBuffers
      const body = interpretBody(bomb, { contentEncoding: encoding, contentType: "application/json", truncated: false })
      expect(body).toEqual({
        value: `<${encoding} body omitted: decompresses to more than ${MAX_DECODED_BODY_BYTES} bytes>`,
        sse: false,
        tooLarge: true
      })
      // zlib stopped at the limit instead of allocating the 64 MiB
      expect(process.memoryUsage().arrayBuffers - before).toBeLessThan(4 * MAX_DECODED_BODY_BYTES)
    })

    it("the limit is 8 MiB; exactly the limit still decodes, one byte more does not", () => {
      expect(MAX_DECODED_BODY_BYTES).toBe(8 * 1024 * 1024)
      const text = gzipSync("x".repeat(1000))
      expect(decodeContent(text, "gzip", 1000)).toMatchObject({ decoded: true })
      expect(decodeContent(text, "gzip", 999)).toMatchObject({ decoded: false, tooLarge: true })
      // not a zip bomb, just not gzip: undecodable, and not counted as too large
      expect(decodeContent(Buffer.from("not gzip"), "gzip")).toMatchObject({ decoded: false, tooLarge: false })
    })

    it("the event is still delivered, without that body, and the omission is reported", () => {
      let tooLarge = 0
      const e = transformEvent(
        makeEvent({
          response_body: body(gzipSync(zeros), {
            content_type: "application/json",
            content_encoding: "gzip",
            truncated: false
          })
        }),
        count,
        () => tooLarge++
      )
      expect(tooLarge).toBe(1)
      expect(e).toMatchObject({
        status: 200,
        request_body: { messages: [{ role: "user", content: "Hello there" }] },
        response_body: `<gzip body omitted: decompresses to more than ${MAX_DECODED_BODY_BYTES} bytes>`,
        usage: null
      })
    })
  })

  it("a multi-byte character cut by truncation is dropped, not fatal", () => {
    const cut = Buffer.from("héllo é").subarray(0, 8)
    expect(asText(cut, true)).toBe("héllo ")
    expect(asText(cut, false)).toBeUndefined()
  })
})

describe("usage", () => {
  it.each([
    ["OpenAI", { usage: { prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 } }, {
      prompt_tokens: 3,
      completion_tokens: 4,
      total_tokens: 7
    }],
    ["Responses/Anthropic", { usage: { input_tokens: 3, output_tokens: 4 } }, {
      prompt_tokens: 3,
      completion_tokens: 4,
      total_tokens: 7
    }],
    ["embeddings (prompt only)", { usage: { prompt_tokens: 8, total_tokens: 8 } }, {
      prompt_tokens: 8,
      completion_tokens: 0,
      total_tokens: 8
    }],
    ["none", { id: 1 }, null],
    ["not an object", "text", null]
  ])("%s", (_n, response, expected) => {
    expect(usageFromResponse(response)).toEqual(expected)
  })

  it.each([
    ["gpt-4o", "o200k_base"],
    ["gpt-4o-mini-2024-07-18", "o200k_base"],
    ["openai/gpt-4.1", "o200k_base"],
    ["o3-mini", "o200k_base"],
    ["gpt-5", "o200k_base"],
    ["gpt-4", "cl100k_base"],
    ["gpt-3.5-turbo", "cl100k_base"],
    ["text-embedding-3-small", "cl100k_base"],
    [null, "cl100k_base"]
  ])("%s uses %s", (model, encoding) => {
    expect(encodingForModel(model)).toBe(encoding)
  })

  it("long runs without spaces are counted in pieces (BPE is quadratic in one word's length)", () => {
    expect(count("o200k_base", "y".repeat(50_000))).toBe(12_500)
    expect(count("cl100k_base", `start ${"ab".repeat(300)} end`)).toBeGreaterThan(2)
    expect(count("o200k_base", "")).toBe(0)
  })

  it("prompt and completion text of the common request and response shapes", () => {
    expect(
      promptText({ instructions: "Be brief", messages: [{ role: "user", content: [{ type: "text", text: "Hi" }] }] })
    ).toBe("Be brief\nHi")
    expect(promptText({ prompt: ["a", "b"] })).toBe("a\nb")
    expect(promptText({ input: "question" })).toBe("question")
    expect(promptText("raw")).toBe("raw")
    expect(completionText({ output: [{ content: [{ type: "output_text", text: "answer" }] }] })).toBe("answer")
    expect(
      completionText({
        choices: [{ message: { content: null, tool_calls: [{ function: { name: "f", arguments: "{}" } }] } }]
      })
    ).toBe("f\n{}")
    expect(completionText(null)).toBe("")
  })

  it("counts with the tokenizer when the response has no usage (streamed without include_usage)", () => {
    const e = transformEvent(
      makeEvent({
        stream: true,
        model: "gpt-4o",
        response_body: body(sse(chatChunks), { content_type: "text/event-stream" })
      }),
      count
    )
    expect(e.response_body).toMatchObject({ object: "chat.completion", choices: [{ message: { content: "Hello" } }] })
    expect(e.usage_source).toBe("tokenizer")
    expect(e.usage).toEqual({ prompt_tokens: 2, completion_tokens: 1, total_tokens: 3 })
  })

  it("takes usage from the response, then from the event, and counts nothing for rejected requests", () => {
    expect(transformEvent(makeEvent(), count)).toMatchObject({ usage: { total_tokens: 11 }, usage_source: "response" })
    const fromEvent = transformEvent(
      makeEvent({ response_body: null, usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } }),
      count
    )
    expect(fromEvent).toMatchObject({ usage: { total_tokens: 2 }, usage_source: "response", response_body: null })
    const rejected = transformEvent(
      makeEvent({ status: 401, response_body: body("{\"error\":\"invalid token\"}"), error: "invalid token" }),
      count
    )
    expect(rejected).toMatchObject({ usage: null, usage_source: null, response_body: { error: "invalid token" } })
    const get = transformEvent(
      makeEvent({ method: "GET", path: "/v1/models", request_body: null, response_body: body("{\"data\":[]}") }),
      count
    )
    expect(get).toMatchObject({ usage: null, request_body: null, request_body_truncated: false })
  })
})

describe("delivery policy", () => {
  it.each([
    [200, "Accepted"],
    [204, "Accepted"],
    [400, "Rejected"],
    [401, "Unauthorized"],
    [403, "Unauthorized"],
    [404, "Rejected"],
    [413, "Rejected"],
    [422, "Rejected"],
    [408, "Retry"],
    [429, "Retry"],
    [500, "Retry"],
    [503, "Retry"]
  ])("HTTP %i → %s", (status, tag) => {
    expect(outcomeOfStatus(status, "")._tag).toBe(tag)
  })

  it("each service says which statuses mean a refused key (Lunary: 401, 402, 403, 404)", () => {
    expect([401, 402, 403, 404, 400].map((status) => outcomeOfStatus(status, "", LUNARY_CREDENTIAL_STATUSES)._tag))
      .toEqual(["Unauthorized", "Unauthorized", "Unauthorized", "Unauthorized", "Rejected"])
    expect(outcomeOfStatus(401, "{\"message\":\"Invalid API key\"}")).toEqual({
      _tag: "Unauthorized",
      reason: "HTTP 401: {\"message\":\"Invalid API key\"}"
    })
  })

  it("exponential backoff with jitter, capped", () => {
    expect(backoffMs(0, 500, 30_000, () => 0)).toBe(250)
    expect(backoffMs(0, 500, 30_000, () => 1)).toBe(500)
    expect(backoffMs(3, 500, 30_000, () => 1)).toBe(4000)
    expect(backoffMs(20, 500, 30_000, () => 1)).toBe(30_000)
    expect(backoffMs(20, 500, 30_000, () => 0)).toBe(15_000)
  })

  it("durations", () => {
    expect(parseDuration("30s")).toBe(30_000)
    expect(parseDuration("250ms")).toBe(250)
    expect(parseDuration("2m")).toBe(120_000)
    expect(parseDuration("5")).toBe(5000)
    expect(parseDuration("soon")).toBeUndefined()
  })

  it("status line", () => {
    const stats: Dispatcher.DispatcherStats = {
      received: 0,
      redelivered: 1,
      delivered: 10,
      retries: 2,
      deadLettered: 3,
      invalid: 0,
      batches: 1,
      credentialFailures: 0,
      pausedSince: null,
      bodiesTooLarge: 0,
      lastDeliveryAt: null,
      buffered: 4,
      lag: 5,
      pending: 6,
      ratePerSecond: 2.5
    }
    expect(formatStatus(stats, "file"))
      .toBe(
        "dispatcher file: 10 delivered (2.5/s) · 1 redelivered · 3 dead-lettered · 2 retries · lag 5 · pending 6 · buffered 4"
      )
    expect(formatStatus({ ...stats, credentialFailures: 3, pausedSince: 1 }, "lunary"))
      .toBe(
        "dispatcher lunary: 10 delivered (2.5/s) · 1 redelivered · 3 dead-lettered · 2 retries · lag 5 · pending 6 · buffered 4 · PAUSED: lunary refuses the API key"
      )
  })
})
