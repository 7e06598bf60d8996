/**
 * What answers cost, through the real proxy (serve stack + mock upstream), on SQLite and PostgreSQL: `spent_usd` and
 * `tokens_used` on the token and its project (GET and list), `cost_usd` in the usage rollups (hours and totals), on
 * events and in `llm_proxy_cost_usd_total`; a model without a price counts 0 USD and is counted as unpriced.
 * Prices come from a PRICES_PATH file so that every figure is computed by hand.
 */
import { Option } from "effect"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { request } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, eventually, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { chatChunks, chatCompletion, json, sse } from "../support/mockUpstream.js"
import { testConfig } from "../support/server.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-spend-"))
const pricesPath = join(dir, "prices.yaml")
// $1 per million input tokens, $0.25 cached, $2 output: an answer with 9 prompt and 3 completion tokens costs
// 9 × 1 + 3 × 2 = 15 millionths of a dollar.
writeFileSync(
  pricesPath,
  "models:\n  gpt-4o-mini: { input: 1, cached_input: 0.25, output: 2 }\n  \"house-*\": { input: 4, output: 8 }\n"
)
const lines = (path: string): Array<Record<string, any>> =>
  existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l)) : []

describe.each(backends)("spend on $name", (b) => {
  let backend: BackendInstance
  let stack: Stack
  const events = join(dir, `events-${b.name}.jsonl`)
  beforeAll(async () => {
    backend = await b.create()
    const base = testConfig(backend.database)
    stack = await startStack(backend, {
      pricesPath: Option.some(pricesPath),
      events: { ...base.events, fileEventLog: Option.some(events) }
    })
  })
  afterAll(async () => {
    await stack.close()
    await backend.cleanup()
  })
  beforeEach(() => stack.mock.reset())

  const go = (token: string, extra: Record<string, unknown> = {}) =>
    call(stack.server.url, "/v1/chat/completions", { token, body: chatBody(extra) })

  it("JSON answers: spent_usd and tokens_used on the token and the project, cost_usd in the rollups, events and metrics", async () => {
    const t = await projectAndToken(stack.manage)
    const replies = [await go(t.token), await go(t.token), await go(t.token)]
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200])
    await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 36)
    const token = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
    expect(token.spent_usd).toBeCloseTo(45e-6, 12)
    expect(token).toMatchObject({ tokens_used: 36, max_cost_usd: null, max_tokens: null, budget_period: "total" })
    const project = (await stack.manage.get(`/manage/projects/${t.projectId}`)).json
    expect(project.spent_usd).toBeCloseTo(45e-6, 12)
    expect(project.tokens_used).toBe(36)
    const listed = (await stack.manage.get(`/manage/tokens?project_id=${t.projectId}`)).json
    expect(listed[0].spent_usd).toBeCloseTo(45e-6, 12)
    const projects = (await stack.manage.get("/manage/projects")).json as Array<Record<string, any>>
    expect(projects.find((p) => p.id === t.projectId)!.tokens_used).toBe(36)

    await eventually(async () =>
      (await stack.manage.get(`/manage/usage?token_id=${t.tokenId}`)).json.totals.requests === 3
    )
    const usage = (await stack.manage.get(`/manage/usage?token_id=${t.tokenId}`)).json
    expect(usage.totals.cost_usd).toBeCloseTo(45e-6, 12)
    expect(usage.hours).toHaveLength(1)
    expect(usage.hours[0].cost_usd).toBeCloseTo(45e-6, 12)

    const requestId = replies[0]!.headers["x-request-id"] as string
    await eventually(() => lines(events).some((e) => e.request_id === requestId))
    expect(lines(events).find((e) => e.request_id === requestId)!.cost_usd).toBeCloseTo(15e-6, 12)

    const metrics = await (await fetch(`${stack.server.url}/metrics`)).text()
    const line = metrics.split("\n").find((l) =>
      l.startsWith("llm_proxy_cost_usd_total{provider=\"openai\",model=\"gpt-4o-mini\"}")
    )
    expect(line).toBeDefined()
    expect(Number(line!.split(" ").at(-1))).toBeGreaterThanOrEqual(45e-6 - 1e-12)
  })

  it("a streamed answer is charged from its usage chunk; cached prompt tokens at the cached rate", async () => {
    const t = await projectAndToken(stack.manage)
    const chunks = chatChunks(["Hel", "lo"], { prompt_tokens: 100, completion_tokens: 2 })
    // 40 of the 100 prompt tokens were read from the cache: 60 × 1 + 40 × 0.25 + 2 × 2 = 74 millionths.
    chunks[chunks.length - 2] = chunks[chunks.length - 2]!.replace(
      "\"total_tokens\":102",
      "\"total_tokens\":102,\"prompt_tokens_details\":{\"cached_tokens\":40}"
    )
    stack.mock.enqueue(sse(chunks))
    const r = await go(t.token, { stream: true, stream_options: { include_usage: true } })
    expect(r.status).toBe(200)
    await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 102)
    expect((await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.spent_usd).toBeCloseTo(74e-6, 12)
  })

  it("the answer's dated model falls back to its base name; a glob prices a family", async () => {
    const t = await projectAndToken(stack.manage)
    stack.mock.enqueue(
      json({
        ...chatCompletion(),
        model: "house-large-2025-01-01",
        usage: { prompt_tokens: 10, completion_tokens: 10, total_tokens: 20 }
      })
    )
    expect((await go(t.token, { model: "house-large" })).status).toBe(200)
    // 10 × 4 + 10 × 8 = 120 millionths
    await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 20)
    expect((await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.spent_usd).toBeCloseTo(120e-6, 12)
  })

  it("a model without a price counts its tokens, 0 USD, and the unpriced metric", async () => {
    const t = await projectAndToken(stack.manage)
    stack.mock.enqueue(json({ ...chatCompletion(), model: "mystery-1" }))
    expect((await go(t.token, { model: "mystery-1" })).status).toBe(200)
    await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 12)
    expect((await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.spent_usd).toBe(0)
    const metrics = await (await fetch(`${stack.server.url}/metrics`)).text()
    expect(metrics).toMatch(/llm_proxy_unpriced_answers_total\{provider="openai",model="mystery-1"\} 1/)
  })

  it("a stream the client abandons after the usage arrived is charged", async () => {
    const t = await projectAndToken(stack.manage)
    // Anthropic-style usage arrives first (message_start), then the client goes away mid-stream.
    const start = `event: message_start\ndata: ${
      JSON.stringify({
        type: "message_start",
        message: { id: "m", model: "gpt-4o-mini", usage: { input_tokens: 30, output_tokens: 1 } }
      })
    }\n\n`
    const delta = `event: content_block_delta\ndata: ${
      JSON.stringify({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "x" } })
    }\n\n`
    stack.mock.enqueue(sse([start, ...Array.from({ length: 50 }, () => delta)], { intervalMs: 40 }))
    const url = new URL(stack.server.url)
    await new Promise<void>((resolve, reject) => {
      const body = JSON.stringify(chatBody({ stream: true }))
      const req = request(
        {
          host: url.hostname,
          port: url.port,
          method: "POST",
          path: "/v1/chat/completions",
          headers: {
            authorization: `Bearer ${t.token}`,
            "content-type": "application/json",
            "content-length": String(Buffer.byteLength(body))
          }
        },
        (res) => {
          res.once("data", () =>
            setTimeout(() => {
              req.destroy()
              resolve()
            }, 100))
        }
      )
      req.on("error", () => {})
      req.on("close", () => resolve())
      req.end(body)
      setTimeout(() => reject(new Error("no answer")), 5_000)
    })
    // 30 input tokens as reported; output: at least the 1 reported, or more as counted from the text streamed.
    // Usage counts (prompt_tokens, completion_tokens) are written in batches, spend at once: wait for both.
    const charged = async () => {
      const j = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
      return j.prompt_tokens > 0 && j.tokens_used === j.prompt_tokens + j.completion_tokens
    }
    await eventually(charged)
    const token = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
    expect(token.prompt_tokens).toBe(30)
    expect(token.completion_tokens).toBeGreaterThanOrEqual(1)
    expect(token.spent_usd).toBeCloseTo((30 * 1 + token.completion_tokens * 2) / 1e6, 12)
  })

  /** A streamed request read to its end: the status, the text the client got, the upstream's copy of the body. */
  const stream = async (token: string, extra: Record<string, unknown>, chunks: ReadonlyArray<string>) => {
    stack.mock.enqueue(sse(chunks))
    const r = await go(token, { stream: true, ...extra })
    return {
      status: r.status,
      text: r.text,
      upstream: JSON.parse(stack.mock.requests.at(-1)!.body) as Record<string, any>
    }
  }

  it("a stream whose client did not ask for usage: the upstream is asked, the client sees no usage chunk, the token is charged", async () => {
    const t = await projectAndToken(stack.manage)
    const chunks = chatChunks(["Hel", "lo"], { prompt_tokens: 7, completion_tokens: 2 })
    const r = await stream(t.token, {}, chunks)
    expect(r.status).toBe(200)
    expect(r.upstream.stream_options).toEqual({ include_usage: true })
    // Every chunk but the usage-only one, byte for byte.
    expect(r.text).toBe(chunks.filter((c) => !c.includes("\"usage\":{")).join(""))
    expect(r.text).toContain("data: [DONE]")
    await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 9)
    // 7 × 1 + 2 × 2 = 11 millionths
    expect((await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.spent_usd).toBeCloseTo(11e-6, 12)
  })

  it("a client that asked for usage gets the usage chunk and its body unchanged; other stream_options are kept", async () => {
    const t = await projectAndToken(stack.manage)
    const chunks = chatChunks(["a"], { prompt_tokens: 3, completion_tokens: 1 })
    const asked = await stream(t.token, { stream_options: { include_usage: true } }, chunks)
    expect(asked.text).toBe(chunks.join(""))
    expect(stack.mock.requests.at(-1)!.body).toBe(
      JSON.stringify(chatBody({ stream: true, stream_options: { include_usage: true } }))
    )
    const other = await stream(t.token, { stream_options: { include_obfuscation: false } }, chunks)
    expect(other.upstream.stream_options).toEqual({ include_obfuscation: false, include_usage: true })
    expect(other.text).not.toContain("\"usage\":{")
    const declined = await stream(t.token, { stream_options: { include_usage: false } }, chunks)
    expect(declined.upstream.stream_options).toEqual({ include_usage: true })
    expect(declined.text).not.toContain("\"usage\":{")
    // A request that does not stream is sent byte for byte.
    stack.mock.enqueue(json(chatCompletion()))
    expect((await go(t.token)).status).toBe(200)
    expect(stack.mock.requests.at(-1)!.body).toBe(JSON.stringify(chatBody()))
  })

  it("an OpenAI stream abandoned before its usage: input counted from the request, output from the text streamed", async () => {
    const t = await projectAndToken(stack.manage)
    const words = Array.from({ length: 60 }, (_, i) => `word${i} `)
    const chunks = chatChunks(words, { prompt_tokens: 999, completion_tokens: 999 })
    stack.mock.enqueue(sse(chunks, { intervalMs: 30 }))
    const url = new URL(stack.server.url)
    await new Promise<void>((resolve, reject) => {
      const body = JSON.stringify(
        chatBody({ stream: true, messages: [{ role: "user", content: "Tell me a long story about the sea" }] })
      )
      const req = request(
        {
          host: url.hostname,
          port: url.port,
          method: "POST",
          path: "/v1/chat/completions",
          headers: {
            authorization: `Bearer ${t.token}`,
            "content-type": "application/json",
            "content-length": String(Buffer.byteLength(body))
          }
        },
        (res) => {
          res.once("data", () =>
            setTimeout(() => {
              req.destroy()
              resolve()
            }, 200))
        }
      )
      req.on("error", () => {})
      req.end(body)
      setTimeout(() => reject(new Error("no answer")), 5_000)
    })
    // Usage counts (prompt_tokens, completion_tokens) are written in batches, spend at once: wait for both.
    await eventually(async () => {
      const j = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
      return j.prompt_tokens > 0 && j.tokens_used === j.prompt_tokens + j.completion_tokens
    })
    const token = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
    // Not the 999 + 999 the upstream would have reported at the end: the stream never got there.
    expect(token.prompt_tokens).toBeGreaterThan(0)
    expect(token.prompt_tokens).toBeLessThan(50)
    expect(token.completion_tokens).toBeGreaterThan(0)
    expect(token.completion_tokens).toBeLessThan(200)
    expect(token.spent_usd).toBeCloseTo((token.prompt_tokens * 1 + token.completion_tokens * 2) / 1e6, 12)
  })
})
