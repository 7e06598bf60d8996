/**
 * The backends' payloads (pure): chat-shaped input / output of every provider shape, the event id, Lunary's events,
 * batches split by bytes and per-event results, Helicone's log per provider route. The services' rules these follow
 * are applied by the receivers of test/dispatcher/services.ts (services.test.ts); here are the tables of cases.
 */
import { describe, expect, it } from "vitest"
import { chatInput, chatOutput } from "../../src/dispatcher/chat.js"
import {
  errorMessage,
  eventId,
  headerValue,
  HELICONE_MAX_BODY_CHARS,
  heliconeBase,
  heliconeLog,
  heliconeOutcome,
  LUNARY_EVENT_ATTEMPTS,
  LUNARY_MAX_BODY_BYTES,
  lunaryBody,
  lunaryEvents,
  lunaryOutcomes,
  lunaryRequests,
  lunaryTokens
} from "../../src/dispatcher/formats.js"
import { loadTokenCounter } from "../../src/dispatcher/tokens.js"
import { transformEvent } from "../../src/dispatcher/transform.js"
import type { DeliveredEvent, ProxyEvent } from "../../src/domain/ProxyEvent.js"
import { body, makeEvent, sse } from "../support/events.js"

const count = await loadTokenCounter()
const delivered = (overrides: Partial<ProxyEvent> = {}): DeliveredEvent => transformEvent(makeEvent(overrides), count)
const json = (value: unknown) => body(JSON.stringify(value), { content_type: "application/json" })

describe("chat-shaped input", () => {
  it.each([
    ["OpenAI chat: the messages, text parts joined, images kept", "/v1/chat/completions", {
      messages: [
        { role: "system", content: "Be brief" },
        { role: "user", content: [{ type: "text", text: "What is" }, { type: "text", text: "this?" }] },
        {
          role: "user",
          content: [{ type: "text", text: "Look" }, { type: "image_url", image_url: { url: "https://x/y.png" } }]
        },
        {
          role: "assistant",
          content: null,
          tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }]
        },
        { role: "tool", tool_call_id: "c1", content: "42" }
      ]
    }, [
      { role: "system", content: "Be brief" },
      { role: "user", content: "What is\nthis?" },
      {
        role: "user",
        content: [{ type: "text", text: "Look" }, { type: "image_url", image_url: { url: "https://x/y.png" } }]
      },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "c1", type: "function", function: { name: "f", arguments: "{}" } }]
      },
      { role: "tool", tool_call_id: "c1", content: "42" }
    ]],
    [
      "Anthropic: system first, tool_use → tool_calls, tool_result → tool message, images as image_url",
      "/v1/messages",
      {
        model: "claude-3-5-haiku",
        system: [{ type: "text", text: "You are terse." }],
        messages: [
          {
            role: "user",
            content: [{ type: "image", source: { type: "base64", media_type: "image/png", data: "iVBOR" } }, {
              type: "text",
              text: "Weather?"
            }]
          },
          {
            role: "assistant",
            content: [{ type: "text", text: "Checking." }, {
              type: "tool_use",
              id: "tu_1",
              name: "weather",
              input: { city: "Oslo" }
            }]
          },
          {
            role: "user",
            content: [{ type: "tool_result", tool_use_id: "tu_1", content: [{ type: "text", text: "-3°C" }] }, {
              type: "text",
              text: "And tomorrow?"
            }]
          }
        ]
      },
      [
        { role: "system", content: "You are terse." },
        {
          role: "user",
          content: [{ type: "image_url", image_url: { url: "data:image/png;base64,iVBOR" } }, {
            type: "text",
            text: "Weather?"
          }]
        },
        {
          role: "assistant",
          content: "Checking.",
          tool_calls: [{
            id: "tu_1",
            type: "function",
            function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" }
          }]
        },
        { role: "tool", tool_call_id: "tu_1", content: "-3°C" },
        { role: "user", content: "And tomorrow?" }
      ]
    ],
    ["Responses API: instructions as system, a string input as the user", "/v1/responses", {
      model: "gpt-4.1",
      instructions: "Answer in French",
      input: "Hello"
    }, [{ role: "system", content: "Answer in French" }, { role: "user", content: "Hello" }]],
    ["Responses API: input items (messages, function calls and outputs; reasoning left out)", "/v1/responses", {
      input: [
        {
          type: "message",
          role: "user",
          content: [{ type: "input_text", text: "Sum 2+2" }, { type: "input_image", image_url: "https://x/z.png" }]
        },
        { type: "reasoning", summary: [] },
        { type: "function_call", call_id: "fc_1", name: "add", arguments: "{\"a\":2,\"b\":2}" },
        { type: "function_call_output", call_id: "fc_1", output: "4" },
        { role: "developer", content: "Be exact" }
      ]
    }, [
      {
        role: "user",
        content: [{ type: "text", text: "Sum 2+2" }, { type: "image_url", image_url: { url: "https://x/z.png" } }]
      },
      {
        role: "assistant",
        content: null,
        tool_calls: [{ id: "fc_1", type: "function", function: { name: "add", arguments: "{\"a\":2,\"b\":2}" } }]
      },
      { role: "tool", tool_call_id: "fc_1", content: "4" },
      { role: "developer", content: "Be exact" }
    ]],
    ["legacy completions: the prompt as the user", "/v1/completions", { prompt: ["Once", "upon"] }, [{
      role: "user",
      content: "Once\nupon"
    }]],
    ["embeddings: not a conversation, kept as sent", "/v1/embeddings", {
      input: ["a", "b"],
      model: "text-embedding-3-small"
    }, {
      input: ["a", "b"],
      model: "text-embedding-3-small"
    }],
    [
      "not JSON: kept",
      "/v1/audio/transcriptions",
      "<multipart body omitted, 10 bytes>",
      "<multipart body omitted, 10 bytes>"
    ]
  ])("%s", (_name, path, request, expected) => {
    expect(chatInput(path, request)).toEqual(expected)
  })
})

describe("chat-shaped output", () => {
  it.each([
    ["chat completion: the message", { choices: [{ message: { role: "assistant", content: "Hi!", refusal: null } }] }, {
      role: "assistant",
      content: "Hi!",
      refusal: null
    }],
    ["chat completion with tool calls", {
      choices: [{
        message: {
          role: "assistant",
          content: null,
          tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{}" } }]
        }
      }]
    }, {
      role: "assistant",
      content: null,
      tool_calls: [{ id: "c", type: "function", function: { name: "f", arguments: "{}" } }]
    }],
    ["legacy completion: the text", { choices: [{ text: "Once upon" }] }, { role: "assistant", content: "Once upon" }],
    ["Anthropic message: text joined, tool_use as tool_calls, thinking left out", {
      type: "message",
      role: "assistant",
      content: [
        { type: "thinking", thinking: "hmm" },
        { type: "text", text: "Let me check." },
        { type: "tool_use", id: "tu_2", name: "weather", input: { city: "Oslo" } }
      ]
    }, {
      role: "assistant",
      content: "Let me check.",
      tool_calls: [{ id: "tu_2", type: "function", function: { name: "weather", arguments: "{\"city\":\"Oslo\"}" } }]
    }],
    ["Responses: output text and function calls", {
      object: "response",
      output: [
        { type: "reasoning", summary: [] },
        { type: "message", role: "assistant", content: [{ type: "output_text", text: "Bonjour" }] },
        { type: "function_call", call_id: "fc_2", name: "f", arguments: "{}" }
      ]
    }, {
      role: "assistant",
      content: "Bonjour",
      tool_calls: [{ id: "fc_2", type: "function", function: { name: "f", arguments: "{}" } }]
    }],
    ["Responses: a refusal", { output: [{ type: "message", content: [{ type: "refusal", refusal: "No." }] }] }, {
      role: "assistant",
      content: null,
      refusal: "No."
    }],
    ["embeddings: kept", { object: "list", data: [] }, { object: "list", data: [] }],
    ["text: kept", "plain", "plain"]
  ])("%s", (_name, response, expected) => {
    expect(chatOutput(response)).toEqual(expected)
  })
})

describe("event id", () => {
  it("a UUID from the event's identity: the same event gives the same id, a reused X-Request-ID does not", () => {
    const first = makeEvent({ request_id: "client-chosen" })
    const again = transformEvent(JSON.parse(JSON.stringify(first)), count)
    const second = makeEvent({ request_id: "client-chosen", timestamp: "2026-12-01T12:00:00.500Z" })
    const sameMillisecond = makeEvent({ request_id: "client-chosen", duration_ms: 121.5 })
    expect(eventId(transformEvent(first, count))).toBe(eventId(again))
    expect(eventId(transformEvent(first, count))).toMatch(
      /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
    )
    expect(new Set([first, second, sameMillisecond].map((e) => eventId(transformEvent(e, count)))).size).toBe(3)
  })
})

describe("Lunary events", () => {
  it("a start and an end with one run id: chat input and output, params, metadata, the project as the user, tokens", () => {
    const e = delivered({
      request_body: json({
        model: "gpt-4o-mini",
        temperature: 0.2,
        stream: true,
        messages: [{ role: "user", content: "Hello there" }]
      })
    })
    const [start, end] = lunaryEvents(e)
    expect(start).toEqual({
      type: "llm",
      event: "start",
      runId: eventId(e),
      name: "gpt-4o-mini",
      timestamp: "2026-12-01T12:00:00.000Z",
      input: [{ role: "user", content: "Hello there" }],
      params: { temperature: 0.2 },
      metadata: {
        request_id: e.request_id,
        project_id: e.project_id,
        token_id: e.token_id,
        method: "POST",
        path: "/v1/chat/completions",
        status: 200,
        duration_ms: 120,
        upstream_ms: 100,
        stream: false,
        usage_source: "response"
      },
      tags: ["llm-proxy"],
      userId: e.project_id
    })
    expect(end).toMatchObject({
      type: "llm",
      event: "end",
      runId: eventId(e),
      timestamp: "2026-12-01T12:00:00.120Z",
      output: { role: "assistant", content: "Hi!" },
      tokensUsage: { prompt: 9, completion: 2 }
    })
    expect(end).not.toHaveProperty("tokensUsage.promptCached")
    expect(lunaryBody([e]).events).toEqual([start, end])
  })

  it("an error: the status, our code and the provider's message; no output", () => {
    const e = delivered({
      status: 429,
      error: "rate_limit_exceeded",
      response_body: json({ error: { message: "Slow down", type: "requests" } })
    })
    const [, end] = lunaryEvents(e)
    expect(end).toMatchObject({
      event: "error",
      error: {
        message: "HTTP 429 rate_limit_exceeded: Slow down",
        stack: "{\"error\":{\"message\":\"Slow down\",\"type\":\"requests\"}}"
      }
    })
    expect(end).not.toHaveProperty("output")
    const bare = delivered({ status: 502, error: "upstream_error", response_body: null })
    expect(lunaryEvents(bare)[1]).toMatchObject({ event: "error", error: { message: "HTTP 502 upstream_error" } })
    expect(errorMessage(delivered({ status: 400, error: null, response_body: body("bad request") }))).toBe(
      "HTTP 400: bad request"
    )
  })

  it.each([
    ["OpenAI: cached prompt tokens", {
      prompt_tokens: 1000,
      completion_tokens: 10,
      total_tokens: 1010,
      prompt_tokens_details: { cached_tokens: 768 }
    }, { prompt: 1000, completion: 10, promptCached: 768 }],
    ["Responses: cached input tokens", {
      input_tokens: 500,
      output_tokens: 5,
      input_tokens_details: { cached_tokens: 256 }
    }, { prompt: 500, completion: 5, promptCached: 256 }],
    ["Anthropic: cache reads and writes are prompt tokens too", {
      input_tokens: 20,
      output_tokens: 7,
      cache_read_input_tokens: 900,
      cache_creation_input_tokens: 100
    }, { prompt: 1020, completion: 7, promptCached: 900 }],
    ["no cache", { prompt_tokens: 9, completion_tokens: 2 }, { prompt: 9, completion: 2 }]
  ])("tokensUsage — %s", (_name, usage, expected) => {
    expect(
      lunaryTokens(
        delivered({ response_body: json({ choices: [{ message: { role: "assistant", content: "x" } }], usage }) })
      )
    ).toEqual(expected)
  })

  it("the limit is Lunary's 20 MB body limit", () => {
    expect(LUNARY_MAX_BODY_BYTES).toBe(20 * 1024 * 1024)
  })

  it("batches are split so that no body is over the limit; order kept, start and end together", () => {
    const events = Array.from(
      { length: 9 },
      (_, i) =>
        delivered({
          request_body: json({
            model: "gpt-4o-mini",
            messages: [{ role: "user", content: `${i} ${"é".repeat(3000)}` }]
          })
        })
    )
    const limit = 20_000
    const requests = lunaryRequests(events, limit)
    expect(requests.length).toBeGreaterThan(1)
    for (const r of requests) {
      expect(Buffer.byteLength(r.body)).toBeLessThanOrEqual(limit)
      expect(JSON.parse(r.body)).toEqual({ events: r.events })
      expect(r.events.length).toBe(2 * r.indexes.length)
    }
    expect(requests.flatMap((r) => r.indexes)).toEqual(events.map((_, i) => i))
    expect(requests.flatMap((r) => r.events)).toEqual(lunaryBody(events).events)
    // one body when it fits
    expect(lunaryRequests(events)).toHaveLength(1)
  })

  it("an event too large for a body of its own gives up its input and output, not its run", () => {
    const huge = delivered({
      request_body: json({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(50_000) }] })
    })
    const [request] = lunaryRequests([huge], 20_000)
    expect(Buffer.byteLength(request!.body)).toBeLessThanOrEqual(20_000)
    expect(request!.events[0]).toMatchObject({
      event: "start",
      runId: eventId(huge),
      input: expect.stringMatching(/^<omitted: this request's event is \d+ bytes/)
    })
    expect(request!.events[1]).toMatchObject({
      event: "end",
      tokensUsage: { prompt: 9, completion: 2 },
      output: expect.stringMatching(/^<omitted/)
    })
  })

  describe("per-event results", () => {
    // b arrived before a: Lunary answers in timestamp order (b's start, a's start, b's end, a's end … by time)
    const a = delivered({ request_id: "a", timestamp: "2026-12-01T12:00:01.000Z", duration_ms: 50 })
    const b = delivered({ request_id: "b", timestamp: "2026-12-01T12:00:00.000Z", duration_ms: 5000 })
    const [request] = lunaryRequests([a, b])
    const ok = (id: string) => ({ id, success: true })
    const fail = (id: string, error: string) => ({ id, success: false, error })
    const [ia, ib] = [eventId(a), eventId(b)]

    it("are read in Lunary's order (sorted by timestamp): each event accepted or retried on its own", () => {
      // sorted: b.start (12:00:00), a.start (12:00:01), a.end (12:00:01.05), b.end (12:00:05)
      expect(lunaryOutcomes(request!, { results: [ok(ib), ok(ia), ok(ia), fail(ib, "write CONNECTION_CLOSED")] }))
        .toEqual([
          { _tag: "Accepted" },
          {
            _tag: "Retry",
            reason: "Lunary refused the event (end: write CONNECTION_CLOSED)",
            attempts: LUNARY_EVENT_ATTEMPTS
          }
        ])
    })

    it("a start whose run exists already (a redelivery) counts as accepted; an end that failed does not", () => {
      const dup = "Run with this ID already exists in the database."
      expect(lunaryOutcomes(request!, { results: [fail(ib, dup), fail(ia, dup), ok(ia), ok(ib)] })).toEqual([{
        _tag: "Accepted"
      }, { _tag: "Accepted" }])
      expect(lunaryOutcomes(request!, { results: [ok(ib), ok(ia), fail(ia, dup), ok(ib)] })[0]).toMatchObject({
        _tag: "Retry"
      })
    })

    it("other answers: no results (older Lunary) accepts all; a different count is matched by run id; a missing one is retried", () => {
      expect(lunaryOutcomes(request!, {})).toEqual([{ _tag: "Accepted" }, { _tag: "Accepted" }])
      expect(lunaryOutcomes(request!, "ok")).toEqual([{ _tag: "Accepted" }, { _tag: "Accepted" }])
      expect(lunaryOutcomes(request!, { results: [ok(ia), ok(ia), ok(ib)] })).toEqual([
        { _tag: "Accepted" },
        {
          _tag: "Retry",
          reason: "Lunary refused the event (no result for its end event)",
          attempts: LUNARY_EVENT_ATTEMPTS
        }
      ])
    })
  })
})

describe("a token's labels in the dispatcher's formats", () => {
  const labelled = delivered({ token_name: "web session", user: "user-8812", token_metadata: { plan: "pro" } })

  it("are on the delivered event", () => {
    expect(labelled).toMatchObject({ token_name: "web session", user: "user-8812", token_metadata: { plan: "pro" } })
    expect(Object.keys(delivered())).not.toContain("user")
  })

  it("Lunary: the end user is the userId (else the project), name and user in the metadata", () => {
    const [start, end] = lunaryEvents(labelled)
    expect(start).toMatchObject({ userId: "user-8812", metadata: { token_name: "web session", user: "user-8812" } })
    expect(end).toMatchObject({ metadata: { token_name: "web session", user: "user-8812" } })
    expect(lunaryEvents(delivered())[0]).toMatchObject({ userId: labelled.project_id })
  })

  it("Helicone: the end user is Helicone-User-Id, the name a property", () => {
    const meta =
      (heliconeLog(labelled).body as { providerRequest: { meta: Record<string, string> } }).providerRequest.meta
    expect(meta).toMatchObject({ "Helicone-User-Id": "user-8812", "Helicone-Property-Token-Name": "web session" })
  })
})

describe("Helicone log", () => {
  const streamed = delivered({
    stream: true,
    upstream_ms: 312.4,
    request_body: json({
      model: "gpt-4o-mini",
      stream: true,
      stream_options: { include_usage: true },
      messages: [{ role: "user", content: "Hi" }]
    }),
    response_body: body(
      sse([
        {
          id: "c",
          object: "chat.completion.chunk",
          model: "gpt-4o-mini",
          choices: [{ index: 0, delta: { role: "assistant", content: "Hello" } }]
        },
        {
          id: "c",
          object: "chat.completion.chunk",
          model: "gpt-4o-mini",
          choices: [],
          usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 }
        }
      ]),
      { content_type: "text/event-stream" }
    )
  })

  it("OpenAI-style on /oai/v1/log: the request copy without its stream flag, the reassembled answer, meta as Helicone headers", () => {
    const log = heliconeLog(streamed)
    expect(log.route).toBe("/oai/v1/log")
    expect(log.body).toEqual({
      providerRequest: {
        url: "/v1/chat/completions",
        json: { model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] },
        meta: {
          "Helicone-Request-Id": eventId(streamed),
          "Helicone-User-Id": streamed.project_id,
          "Helicone-Property-Project": streamed.project_id,
          "Helicone-Property-Token": streamed.token_id,
          "Helicone-Property-Path": "/v1/chat/completions",
          "Helicone-Property-Request-Id": streamed.request_id,
          "Helicone-Property-Stream": "true"
        }
      },
      providerResponse: {
        status: 200,
        headers: {},
        json: expect.objectContaining({
          object: "chat.completion",
          usage: { prompt_tokens: 8, completion_tokens: 1, total_tokens: 9 }
        })
      },
      timing: {
        startTime: { seconds: 1796126400, milliseconds: 0 },
        endTime: { seconds: 1796126400, milliseconds: 120 },
        timeToFirstToken: 312
      }
    })
  })

  it("timeToFirstToken is the stream's first body bytes when the event has them (older events: the response headers)", () => {
    expect(heliconeLog({ ...streamed, first_chunk_ms: 401.6 }).body).toMatchObject({
      timing: { timeToFirstToken: 402 }
    })
    expect(heliconeLog({ ...streamed, first_chunk_ms: null }).body).toMatchObject({ timing: { timeToFirstToken: 312 } })
  })

  it("Anthropic on /anthropic/v1/log; usage counted by us is added in the provider's words", () => {
    const anthropic = delivered({
      path: "/v1/messages",
      model: "claude-3-5-haiku",
      request_body: json({ model: "claude-3-5-haiku", max_tokens: 10, messages: [{ role: "user", content: "Hi" }] }),
      response_body: json({ type: "message", role: "assistant", content: [{ type: "text", text: "Hello" }] })
    })
    const log = heliconeLog(anthropic)
    expect(log.route).toBe("/anthropic/v1/log")
    expect(anthropic.usage_source).toBe("tokenizer")
    expect((log.body["providerResponse"] as { json: unknown }).json).toMatchObject({
      usage: { input_tokens: anthropic.usage!.prompt_tokens, output_tokens: 1 }
    })
    expect(log.body["providerRequest"]).toMatchObject({ meta: { "Helicone-Property-Usage-Source": "tokenizer" } })
    expect(heliconeLog(delivered({ path: "/v1/threads/t/messages" })).route).toBe("/oai/v1/log")
  })

  it.each([
    [
      "an error without a body gets one with its message",
      { status: 502, error: "upstream_error", response_body: null },
      {
        error: { message: "HTTP 502 upstream_error", type: "llm_proxy", code: "upstream_error" }
      }
    ],
    ["an error in text", { status: 503, error: null, response_body: body("overloaded") }, {
      error: { message: "HTTP 503: overloaded", type: "llm_proxy", code: "http_503" }
    }],
    ["an unknown stream: its events", {
      stream: true,
      response_body: body("data: {\"a\":1}\n\n", { content_type: "text/event-stream" }),
      path: "/v1/audio/speech"
    }, {
      stream_events: [{ a: 1 }]
    }],
    ["a text answer", { response_body: body("hello"), path: "/v1/audio/transcriptions" }, { body: "hello" }]
  ])("%s", (_name, overrides, expected) => {
    expect(
      (heliconeLog(delivered(overrides as Partial<ProxyEvent>)).body["providerResponse"] as { json: unknown }).json
    ).toEqual(expected)
  })

  it("meta values are header values: non-ASCII percent-encoded, control characters too, bounded", () => {
    expect(headerValue("upstream said: ça ne va pas\n")).toBe("upstream said: %C3%A7a ne va pas%0A")
    expect(headerValue("€".repeat(2000))).toHaveLength(1000)
    const e = delivered({ status: 400, error: "Paramètre invalide — “model”" })
    expect(() => new Headers((heliconeLog(e).body["providerRequest"] as { meta: Record<string, string> }).meta)).not
      .toThrow()
  })

  it("a log over Helicone's 10 MB limit keeps its meta, model and usage; the bodies give way to a note", () => {
    const big = delivered({
      request_body: json({
        model: "gpt-4o-mini",
        messages: [{ role: "user", content: "x".repeat(HELICONE_MAX_BODY_CHARS) }]
      })
    })
    const log = heliconeLog(big)
    expect(JSON.stringify(log.body).length).toBeLessThan(HELICONE_MAX_BODY_CHARS)
    expect(log.body).toMatchObject({
      providerRequest: {
        json: { model: "gpt-4o-mini", llm_proxy_note: expect.stringMatching(/^<omitted/) },
        meta: { "Helicone-Request-Id": eventId(big) }
      },
      providerResponse: { json: { model: "gpt-4o-mini", usage: { prompt_tokens: 9 } } }
    })
  })

  it("answers: ok is stored; 200 {error} is a failure (a refused key when it says so); the base URL of a route URL", () => {
    expect(heliconeOutcome("ok")).toEqual({ _tag: "Accepted" })
    expect(heliconeOutcome("{\"error\":null}")).toEqual({ _tag: "Accepted" })
    expect(heliconeOutcome("{\"error\":\"kafka unavailable\"}")).toEqual({
      _tag: "Retry",
      reason: "Helicone could not store the log: kafka unavailable"
    })
    expect(heliconeOutcome("{\"error\":\"Auth failed! undefined\"}")).toMatchObject({ _tag: "Unauthorized" })
    expect(heliconeBase("https://api.worker.helicone.ai/custom/v1/log")).toBe("https://api.worker.helicone.ai")
    expect(heliconeBase("http://h:8787/oai/v1/log/")).toBe("http://h:8787")
    expect(heliconeBase("https://api.worker.helicone.ai")).toBe("https://api.worker.helicone.ai")
  })
})
