/**
 * Upstream routing against the mock upstream: several keys per project spread by weight, cool-downs, retries on the
 * next key and fallback to other providers' keys, the bounds on retries, and providers reached through a base_url
 * with a path, their own auth header and fixed query (Azure-, Gemini- and vLLM-style).
 */
import { randomBytes } from "node:crypto"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { chatChunks, json, reset, sse, startMockUpstream } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { withEncryptionKey } from "../support/server.js"
import { call, chatBody, createToken, eventually, projectAndToken, type Stack, startStack } from "./stack.js"

const ENDPOINTS = "[/v1/chat/completions, /v1/models, /v1/embeddings]"
const YAML = `
default_api: openai
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
    timeouts:
      response_header: 5s
      request: 700ms
  backup:
    base_url: {{MOCK}}/backup/v1
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
    auth_header: x-api-key
    auth_scheme: ""
  azure:
    base_url: {{MOCK}}/openai/v1
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
    auth_header: api-key
    auth_scheme: ""
    query:
      api-version: preview
  gemini:
    base_url: {{MOCK}}/v1beta/openai/
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
  refused:
    base_url: http://127.0.0.1:9
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
  vllm:
    base_url: {{MOCK}}/v1
    allowed_endpoints: ${ENDPOINTS}
    allowed_methods: [GET, POST]
    headers:
      X-Tenant: team-a
`

let backend: BackendInstance
let stack: Stack

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(
    backend,
    { upstreamRetries: 2, ...withEncryptionKey(randomBytes(32).toString("base64")) },
    YAML
  )
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})
beforeEach(() => stack.mock.reset())

const key = (name: string) => `sk-${name}-${crypto.randomUUID().replaceAll("-", "")}`

interface Keyed {
  readonly projectId: string
  readonly token: string
  readonly keys: ReadonlyArray<string>
}

/** A project with `api_keys` and a token for it. */
const project = async (
  keys: ReadonlyArray<{ readonly key: string; readonly weight?: number; readonly provider?: string }>,
  provider = "openai"
): Promise<Keyed> => {
  const r = await stack.manage.post("/manage/projects", {
    name: `routing-${crypto.randomUUID()}`,
    api_keys: keys,
    provider
  })
  if (r.status !== 201) throw new Error(`create project: ${r.status} ${r.text}`)
  const t = await createToken(stack.manage, r.json.id)
  return { projectId: r.json.id, token: t.token, keys: keys.map((k) => k.key) }
}

const chat = (p: Keyed, extra: Record<string, unknown> = {}) =>
  call(stack.server.url, "/v1/chat/completions", { token: p.token, body: chatBody(extra) })

/** The provider key each upstream request carried (Bearer, x-api-key or api-key). */
const keysSeen = () =>
  stack.mock.requests.map((r) =>
    String(r.headers["authorization"] ?? r.headers["x-api-key"] ?? r.headers["api-key"] ?? "").replace(/^Bearer /, "")
  )

const attemptsOf = (serverTiming: unknown) => Number(/attempts;desc=(\d+)/.exec(String(serverTiming))?.[1] ?? 0)

describe("several keys per project", () => {
  it("api_keys are stored encrypted, shown obfuscated with index, weight, provider and state; api_key and api_keys together are refused", async () => {
    const a = key("alpha")
    const b = key("bravo")
    const r = await stack.manage.post("/manage/projects", {
      name: `keys-${crypto.randomUUID()}`,
      api_keys: [{ key: a, weight: 3 }, { key: b, provider: "backup" }]
    })
    expect(r.status, r.text).toBe(201)
    expect(r.text).not.toContain(a)
    expect(r.text).not.toContain(b)
    expect(r.json.api_keys).toEqual([
      { index: 0, key: `${a.slice(0, 8)}...${a.slice(-4)}`, weight: 3, provider: "openai", state: "ok" },
      { index: 1, key: `${b.slice(0, 8)}...${b.slice(-4)}`, weight: 1, provider: "backup", state: "ok" }
    ])
    expect(r.json.api_key).toBe(r.json.api_keys[0].key)
    const row = (await backend.rows("projects")).find((p) => p["id"] === r.json.id)!
    expect(JSON.stringify(row)).not.toContain(a)
    expect(JSON.stringify(row)).not.toContain(b)
    expect(String(row["api_keys"])).toContain("enc:v1:")

    const both = await stack.manage.post("/manage/projects", {
      name: `keys-${crypto.randomUUID()}`,
      api_key: a,
      api_keys: [{ key: b }]
    })
    expect([both.status, both.json.error]).toEqual([400, "give api_key or api_keys, not both"])
    const unknown = await stack.manage.post("/manage/projects", {
      name: `keys-${crypto.randomUUID()}`,
      api_keys: [{ key: b, provider: "nope" }]
    })
    expect([unknown.status, unknown.json.error]).toEqual([400, "unknown provider \"nope\""])
    const weight = await stack.manage.post("/manage/projects", {
      name: `keys-${crypto.randomUUID()}`,
      api_keys: [{ key: b, weight: 0 }]
    })
    expect([weight.status, weight.json.error]).toEqual([400, "api_keys weight must be an integer from 1 to 1000"])
    const empty = await stack.manage.post("/manage/projects", { name: `keys-${crypto.randomUUID()}`, api_keys: [] })
    expect(empty.status).toBe(400)

    // PATCH replaces the keys; the proxy uses the new ones at once.
    const c = key("charlie")
    const patched = await stack.manage.patch(`/manage/projects/${r.json.id}`, { api_keys: [{ key: c }] })
    expect(patched.json.api_keys).toEqual([{
      index: 0,
      key: `${c.slice(0, 8)}...${c.slice(-4)}`,
      weight: 1,
      provider: "openai",
      state: "ok"
    }])
    const t = await createToken(stack.manage, r.json.id)
    expect((await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })).status).toBe(
      200
    )
    expect(keysSeen()).toEqual([c])
  })

  it("requests are spread by weight (3:1 gives exactly 30 and 10 of 40, interleaved)", async () => {
    const p = await project([{ key: key("heavy"), weight: 3 }, { key: key("light"), weight: 1 }])
    for (let i = 0; i < 40; i++) expect((await chat(p)).status).toBe(200)
    const seen = keysSeen()
    expect(seen.filter((k) => k === p.keys[0])).toHaveLength(30)
    expect(seen.filter((k) => k === p.keys[1])).toHaveLength(10)
    // Smooth weighted round-robin: every 4 consecutive requests hold one of the light key.
    for (let i = 0; i + 4 <= 40; i += 4) expect(seen.slice(i, i + 4).filter((k) => k === p.keys[1])).toHaveLength(1)
  })

  it("a 429 on key A is retried on key B: the client sees one 200; A cools down for its Retry-After and takes nothing meanwhile", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }])
    stack.mock.enqueue(
      json({ error: { message: "slow down" } }, {
        status: 429,
        headers: { "retry-after": "30", "x-request-id": "req_a" }
      }),
      json({ id: "from-b" }, { headers: { "x-request-id": "req_b" } })
    )
    const r = await chat(p)
    expect([r.status, r.json.id]).toEqual([200, "from-b"])
    expect(keysSeen()).toEqual(p.keys)
    expect(attemptsOf(r.headers["server-timing"])).toBe(2)
    expect(r.headers["x-upstream-request-id"]).toBe("req_b")
    // Honoured Retry-After: A is out for ~30 s, so the next requests all go to B.
    for (let i = 0; i < 4; i++) expect((await chat(p)).status).toBe(200)
    expect(keysSeen().slice(2)).toEqual([p.keys[1], p.keys[1], p.keys[1], p.keys[1]])
    const view = await stack.manage.get(`/manage/projects/${p.projectId}`)
    expect(view.json.api_keys[0]).toMatchObject({ index: 0, state: "cooling_down" })
    const until = Date.parse(view.json.api_keys[0].until)
    expect(until - Date.now()).toBeGreaterThan(25_000)
    expect(until - Date.now()).toBeLessThanOrEqual(30_000)
    expect(view.json.api_keys[1]).toMatchObject({ index: 1, state: "ok" })
  })

  it("a stream whose first key fails before the first byte succeeds on the second", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }])
    stack.mock.enqueue(json({ error: { message: "overloaded" } }, { status: 503 }), sse(chatChunks(["Hel", "lo"])))
    const r = await chat(p, { stream: true })
    expect(r.status).toBe(200)
    expect(r.text).toContain("Hel")
    expect(r.text).toContain("[DONE]")
    expect(keysSeen()).toEqual(p.keys)
  })

  it("a stream that fails after its first byte is not retried: the client's response is cut", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }])
    stack.mock.enqueue(reset(chatChunks(["a"]).slice(0, 1)))
    await expect(chat(p, { stream: true })).rejects.toThrow()
    expect(stack.mock.requests).toHaveLength(1)
  })

  it("a non-idempotent request is not sent again after a 500 (the provider may have started it); a 502 is", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }, { key: key("c") }])
    stack.mock.enqueue(json({ error: { message: "boom" } }, { status: 500 }))
    const r = await chat(p)
    expect(r.status).toBe(500)
    expect(stack.mock.requests).toHaveLength(1)
    stack.mock.reset()
    stack.mock.enqueue(json({ error: { message: "bad gateway" } }, { status: 502 }), json({ id: "ok" }))
    const retried = await chat(p)
    expect([retried.status, retried.json.id]).toEqual([200, "ok"])
    expect(stack.mock.requests).toHaveLength(2)
  })

  it("when every key of the project's provider cools down, the other provider's key takes the request (its own path and auth)", async () => {
    const p = await project([{ key: key("own") }, { key: key("spare"), provider: "backup" }])
    // The spare key takes nothing while the project's own key is fine.
    for (let i = 0; i < 3; i++) expect((await chat(p)).status).toBe(200)
    expect(keysSeen()).toEqual([p.keys[0], p.keys[0], p.keys[0]])
    stack.mock.reset()
    stack.mock.enqueue(
      json({ error: { message: "limit" } }, { status: 429, headers: { "retry-after": "20" } }),
      json({ id: "backup" })
    )
    const r = await chat(p)
    expect([r.status, r.json.id]).toEqual([200, "backup"])
    expect(keysSeen()).toEqual(p.keys)
    expect(stack.mock.requests[1]!.url).toBe("/backup/v1/chat/completions")
    expect(stack.mock.requests[1]!.headers["authorization"]).toBeUndefined()
  })

  it("every key down → the last answer, then a clear 503 upstream_unavailable with Retry-After until one is back", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }])
    stack.mock.setDefault(json({ error: { message: "limit" } }, { status: 429, headers: { "retry-after": "5" } }))
    const first = await chat(p)
    expect(first.status).toBe(429)
    expect(stack.mock.requests).toHaveLength(2)
    const down = await chat(p)
    expect(down.status).toBe(503)
    expect(proxyError(down.json)).toMatchObject({
      code: "upstream_unavailable",
      message: "Upstream unavailable (every key is cooling down)"
    })
    expect(Number(down.headers["retry-after"])).toBeGreaterThanOrEqual(4)
    expect(Number(down.headers["retry-after"])).toBeLessThanOrEqual(5)
    // Nothing more reached the provider, and no quota-like finality: the client may retry later.
    expect(stack.mock.requests).toHaveLength(2)
    expect(down.headers["x-should-retry"]).toBeUndefined()
  })

  it("retries are bounded in count (UPSTREAM_RETRIES = 2: at most 3 attempts)", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }, { key: key("c") }, { key: key("d") }])
    stack.mock.setDefault(json({ error: { message: "busy" } }, { status: 503 }))
    const r = await chat(p)
    expect(r.status).toBe(503)
    expect(stack.mock.requests).toHaveLength(3)
    expect(attemptsOf(r.headers["server-timing"])).toBe(3)
  })

  it("retries are bounded in time (timeouts.request bounds every attempt together)", async () => {
    const p = await project([{ key: key("a") }, { key: key("b") }, { key: key("c") }])
    // Each key answers 503 after 400 ms: a third attempt would be allowed by count, not by the 700 ms bound.
    stack.mock.setDefault(json({ error: { message: "busy" } }, { status: 503, delayMs: 400 }))
    const started = performance.now()
    const r = await chat(p)
    const took = performance.now() - started
    expect([503, 504]).toContain(r.status)
    expect(stack.mock.requests).toHaveLength(2)
    expect(took).toBeLessThan(2_500)
  })

  it("a connection refused is retried on the next key even for POST (the provider never saw it)", async () => {
    const p = await project(
      [{ key: key("gone"), provider: "refused" }, { key: key("ok"), provider: "refused" }],
      "refused"
    )
    const r = await chat(p)
    // Both keys of this provider point at a closed port: two attempts, then the proxy's 502.
    expect(r.status).toBe(502)
    expect(proxyError(r.json).code).toBe("upstream_error")
    expect(attemptsOf(r.headers["server-timing"])).toBe(2)
  })
})

describe("providers reached through base_url paths, auth headers, fixed headers and query", () => {
  const cases = [
    {
      name: "Azure OpenAI v1 (api-key header, api-version query)",
      provider: "azure",
      url: "/openai/v1/chat/completions?api-version=preview",
      auth: ["api-key", (k: string) => k] as const
    },
    {
      name: "Gemini's OpenAI-compatible API",
      provider: "gemini",
      url: "/v1beta/openai/chat/completions",
      auth: ["authorization", (k: string) => `Bearer ${k}`] as const
    },
    {
      name: "vLLM (an OpenAI-compatible server at /v1, a fixed header)",
      provider: "vllm",
      url: "/v1/chat/completions",
      auth: ["authorization", (k: string) => `Bearer ${k}`] as const
    }
  ]
  it.each(cases)("$name", async (c) => {
    const p = await project([{ key: key(c.provider) }], c.provider)
    const r = await chat(p)
    expect(r.status).toBe(200)
    const seen = stack.mock.requests[0]!
    expect(seen.url).toBe(c.url)
    expect(seen.headers[c.auth[0]]).toBe(c.auth[1](p.keys[0]!))
    if (c.provider !== "vllm") expect(seen.headers["x-tenant"]).toBeUndefined()
    else expect(seen.headers["x-tenant"]).toBe("team-a")
  })

  it("a client's query is kept first; a fixed parameter it names already is not added twice", async () => {
    const p = await project([{ key: key("azure") }], "azure")
    await call(stack.server.url, "/v1/models?limit=2", { token: p.token })
    await call(stack.server.url, "/v1/models?api-version=2024-10-21", { token: p.token })
    expect(stack.mock.requests.map((r) => r.url)).toEqual([
      "/openai/v1/models?limit=2&api-version=preview",
      "/openai/v1/models?api-version=2024-10-21"
    ])
  })
})

describe("connection: max_idle_conns", () => {
  it("idle keep-alive connections beyond the bound are closed (the others stay open for reuse)", async () => {
    const mock = await startMockUpstream()
    const own = await startStack(
      backend,
      {},
      `
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions]
    allowed_methods: [POST]
    connection:
      max_idle_conns: 10
      max_idle_conns_per_host: 2
`,
      mock
    )
    try {
      const t = await projectAndToken(own.manage)
      mock.setDefault(json({ id: "slow" }, { delayMs: 150 }))
      // Six at once: six upstream connections.
      const answers = await Promise.all(
        Array.from(
          { length: 6 },
          () => call(own.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
        )
      )
      expect(answers.map((a) => a.status)).toEqual([200, 200, 200, 200, 200, 200])
      expect(mock.openConnections()).toBe(6)
      // Within a couple of sweeps, the smaller bound (2) is what stays idle.
      await eventually(() => mock.openConnections() === 2, 5_000)
      expect(mock.openConnections()).toBe(2)
    } finally {
      await own.close()
      await mock.close()
    }
  })
})
