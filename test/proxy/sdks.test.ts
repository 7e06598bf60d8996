/**
 * The official `openai` and `@anthropic-ai/sdk` clients against the proxy (mock upstream behind it), as applications
 * use them: the proxy token as their key, the proxy as their base URL. Chat (plain and streamed), the Responses API,
 * embeddings, models, and the typed errors they raise from the proxy's own refusals (with `code`), which they do not
 * retry when the proxy says so (`x-should-retry: false`).
 */
import Anthropic from "@anthropic-ai/sdk"
import OpenAI from "openai"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { chatChunks, json, sse } from "../support/mockUpstream.js"
import { type ProjectAndToken, projectAndToken, type Stack, startStack } from "./stack.js"

const YAML = `
default_api: openai
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models]
    allowed_methods: [GET, POST]
  anthropic:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key
    auth_scheme: ""
`

let backend: BackendInstance
let stack: Stack
let t: ProjectAndToken
/** Requests the SDK made, counted by its own fetch. */
let sent = 0
const counting: typeof fetch = (input, init) => {
  sent++
  return fetch(input, init)
}

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, {}, YAML)
  t = await projectAndToken(stack.manage)
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})
beforeEach(() => {
  stack.mock.reset()
  sent = 0
})

const openai = (apiKey: string, maxRetries = 0) =>
  new OpenAI({ apiKey, baseURL: `${stack.server.url}/v1`, maxRetries, fetch: counting })

describe("openai", () => {
  it("chat completions: the answer, and the upstream got the project key, never the token", async () => {
    const c = await openai(t.token).chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "Hi" }]
    })
    expect(c.choices[0]!.message.content).toBe("Hello!")
    expect(c.usage?.total_tokens).toBe(12)
    expect(stack.mock.requests[0]!.headers["authorization"]).toBe(`Bearer ${t.apiKey}`)
  })

  it("chat completions streamed: every delta in order", async () => {
    stack.mock.enqueue(sse(chatChunks(["Hel", "lo ", "world"])))
    const stream = await openai(t.token).chat.completions.create({
      model: "gpt-4o-mini",
      messages: [{ role: "user", content: "Hi" }],
      stream: true,
      stream_options: { include_usage: true }
    })
    let text = ""
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? ""
    expect(text).toBe("Hello world")
  })

  it("the Responses API", async () => {
    stack.mock.route(
      "/v1/responses",
      json({
        id: "resp_1",
        object: "response",
        created_at: 1_700_000_000,
        status: "completed",
        model: "gpt-4o-mini",
        output: [{
          type: "message",
          id: "msg_1",
          status: "completed",
          role: "assistant",
          content: [{ type: "output_text", text: "Hi from responses", annotations: [] }]
        }],
        usage: { input_tokens: 5, output_tokens: 3, total_tokens: 8 }
      })
    )
    const r = await openai(t.token).responses.create({ model: "gpt-4o-mini", input: "Hi" })
    expect(r.output_text).toBe("Hi from responses")
    expect(stack.mock.requests[0]!.path).toBe("/v1/responses")
  })

  it("embeddings and models", async () => {
    stack.mock.route(
      "/v1/embeddings",
      json({
        object: "list",
        data: [{ object: "embedding", index: 0, embedding: [0.25, -0.5] }],
        model: "text-embedding-3-small",
        usage: { prompt_tokens: 2, total_tokens: 2 }
      })
    )
    stack.mock.route(
      "/v1/models",
      json({ object: "list", data: [{ id: "gpt-4o-mini", object: "model", created: 1, owned_by: "openai" }] })
    )
    const client = openai(t.token)
    const e = await client.embeddings.create({ model: "text-embedding-3-small", input: "hi", encoding_format: "float" })
    expect(e.data[0]!.embedding).toEqual([0.25, -0.5])
    const ids: Array<string> = []
    for await (const m of client.models.list()) ids.push(m.id)
    expect(ids).toEqual(["gpt-4o-mini"])
  })

  it("typed errors with code and type: AuthenticationError, RateLimitError (quota, not retried), PermissionDeniedError", async () => {
    const bad = await openai("sk-not-a-proxy-token").chat.completions.create({ model: "gpt-4o-mini", messages: [] })
      .catch((e) => e)
    expect(bad).toBeInstanceOf(OpenAI.AuthenticationError)
    expect(bad).toMatchObject({ status: 401, code: "invalid_token", type: "authentication_error" })

    const limited = await projectAndToken(stack.manage, { max_requests: 1 })
    const client = openai(limited.token, 2)
    await client.chat.completions.create({ model: "gpt-4o-mini", messages: [] })
    sent = 0
    const quota = await client.chat.completions.create({ model: "gpt-4o-mini", messages: [] }).catch((e) => e)
    expect(quota).toBeInstanceOf(OpenAI.RateLimitError)
    expect(quota).toMatchObject({ status: 429, code: "rate_limit_exceeded", type: "insufficient_quota" })
    // maxRetries 2, but the proxy said no retry can help: one request.
    expect(sent).toBe(1)

    const inactive = await projectAndToken(stack.manage)
    await stack.manage.patch(`/manage/projects/${inactive.projectId}`, { is_active: false })
    const denied = await openai(inactive.token).chat.completions.create({ model: "gpt-4o-mini", messages: [] }).catch((
      e
    ) => e)
    expect(denied).toBeInstanceOf(OpenAI.PermissionDeniedError)
    expect(denied).toMatchObject({ status: 403, code: "project_inactive", type: "permission_error" })
    expect(stack.mock.requests).toHaveLength(1)
  })
})

describe("@anthropic-ai/sdk", () => {
  let a: ProjectAndToken
  beforeAll(async () => {
    a = await projectAndToken(stack.manage, { provider: "anthropic" })
  })
  const anthropic = (apiKey: string) => new Anthropic({ apiKey, baseURL: stack.server.url, maxRetries: 0 })

  it("messages with the proxy token as apiKey: the upstream gets the project's key", async () => {
    stack.mock.route(
      "/v1/messages",
      json({
        id: "msg_1",
        type: "message",
        role: "assistant",
        model: "claude-sonnet-4-5",
        content: [{ type: "text", text: "Hi from Claude" }],
        stop_reason: "end_turn",
        stop_sequence: null,
        usage: { input_tokens: 4, output_tokens: 3 }
      })
    )
    const m = await anthropic(a.token).messages.create({
      model: "claude-sonnet-4-5",
      max_tokens: 16,
      messages: [{ role: "user", content: "Hi" }]
    })
    expect(m.content[0]).toMatchObject({ type: "text", text: "Hi from Claude" })
    expect(stack.mock.requests[0]!.headers["x-api-key"]).toBe(a.apiKey)
  })

  it("the proxy's refusals are Anthropic's typed errors", async () => {
    const bad = await anthropic("sk-not-a-proxy-token").messages.create({
      model: "claude-sonnet-4-5",
      max_tokens: 16,
      messages: [{ role: "user", content: "Hi" }]
    }).catch((e) => e)
    expect(bad).toBeInstanceOf(Anthropic.AuthenticationError)
    expect(bad.status).toBe(401)
    expect(bad.error).toMatchObject({
      type: "error",
      error: { type: "authentication_error", message: "Invalid token", code: "invalid_token" }
    })
  })
})
