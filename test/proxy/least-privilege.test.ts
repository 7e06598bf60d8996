/**
 * What a token holder can make the upstream do, against the in-process mock upstream: the built-in provider admits
 * the inference API only (reading stored data and DELETE are opt-in through the providers YAML of docs/proxy.md),
 * client headers go upstream through an allow-list (never OpenAI-Organization / OpenAI-Project, which a provider may
 * fix), credentials in the query and `;` in the path are refused, and a preflight is granted only by providers that
 * admit its origin, path and method. Every refusal is checked at the mock: the request never reached it.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { proxyError } from "../support/proxyErrors.js"
import { call, chatBody, type ProjectAndToken, projectAndToken, type Stack, startStack } from "./stack.js"

/** The "Opt-in: stored data and DELETE" snippet of docs/proxy.md, as a user would paste it. */
const optInSnippet = (): string => {
  const docs = readFileSync(join(import.meta.dirname, "../../docs/proxy.md"), "utf8")
  const block = [...docs.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!).find((b) => b.includes("opt-in: files"))
  if (block === undefined) throw new Error("docs/proxy.md has no opt-in snippet")
  return block
}

let backend: BackendInstance
beforeAll(async () => {
  backend = await backends[0]!.create()
})
afterAll(() => backend.cleanup())

describe("the built-in provider", () => {
  let stack: Stack
  let t: ProjectAndToken
  beforeAll(async () => {
    stack = await startStack(backend)
    t = await projectAndToken(stack.manage)
  })
  afterAll(() => stack.close())
  beforeEach(() => stack.mock.reset())

  const send = (
    method: string,
    path: string,
    options: { headers?: Record<string, string>; token?: string | null } = {}
  ) =>
    call(stack.server.url, path, {
      method,
      token: options.token === undefined ? t.token : options.token,
      headers: options.headers ?? {},
      ...(method === "POST" ? { body: chatBody() } : {})
    })

  it("reading stored data, DELETE and retired endpoints are refused before the upstream", async () => {
    const refused: ReadonlyArray<readonly [string, string, number, string | undefined]> = [
      ["GET", "/v1/chat/completions", 405, "POST"],
      ["GET", "/v1/chat/completions/chatcmpl-1", 404, undefined],
      ["GET", "/v1/responses/resp_1", 404, undefined],
      ["GET", "/v1/files", 404, undefined],
      ["GET", "/v1/files/file-x/content", 404, undefined],
      ["DELETE", "/v1/files/file-x", 404, undefined],
      ["DELETE", "/v1/models/ft:gpt-4o-mini:org:x", 405, "GET"],
      ["DELETE", "/v1/responses/resp_1", 404, undefined],
      ["POST", "/v1/edits", 404, undefined],
      ["POST", "/v1/fine-tunes", 404, undefined],
      ["POST", "/v1/fine_tuning/jobs", 404, undefined],
      ["POST", "/v1/models", 405, "GET"]
    ]
    for (const [method, path, status, allow] of refused) {
      const r = await send(method, path)
      expect({ what: `${method} ${path}`, status: r.status, code: proxyError(r.json).code, allow: r.headers.allow })
        .toEqual({
          what: `${method} ${path}`,
          status,
          code: status === 405 ? "method_not_allowed" : "endpoint_not_found",
          allow
        })
    }
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("the inference API and the model list reach the upstream unchanged", async () => {
    const admitted = [
      ["POST", "/v1/responses"],
      ["POST", "/v1/chat/completions"],
      ["POST", "/v1/completions"],
      ["POST", "/v1/embeddings"],
      ["POST", "/v1/moderations"],
      ["POST", "/v1/audio/speech"],
      ["POST", "/v1/audio/transcriptions"],
      ["POST", "/v1/images/generations"],
      ["GET", "/v1/models"],
      ["GET", "/v1/models/ft:gpt-4o-mini:org:x?limit=1"]
    ] as const
    for (const [method, path] of admitted) expect((await send(method, path)).status, `${method} ${path}`).toBe(200)
    expect(stack.mock.requests.map((r) => `${r.method} ${r.url}`)).toEqual(admitted.map(([m, p]) => `${m} ${p}`))
    for (const r of stack.mock.requests) expect(r.headers.authorization).toBe(`Bearer ${t.apiKey}`)
  })

  it("client headers go upstream through the allow-list: never OpenAI-Organization / OpenAI-Project", async () => {
    const r = await send("POST", "/v1/chat/completions", {
      headers: {
        "openai-organization": "org-client",
        "openai-project": "proj_client",
        "x-forwarded-user-agent": "1.2.3.4",
        "x-forwarded-server": "proxy.internal",
        "proxy-status": "x",
        "x-custom": "1",
        "content-encoding": "identity",
        "user-agent": "OpenAI/JS 4.77.0",
        accept: "application/json",
        "openai-beta": "assistants=v2",
        "idempotency-key": "stainless-node-retry-abc",
        "x-stainless-lang": "js",
        "x-stainless-retry-count": "0"
      }
    })
    expect(r.status).toBe(200)
    const h = stack.mock.requests[0]!.headers
    for (
      const name of [
        "openai-organization",
        "openai-project",
        "x-forwarded-user-agent",
        "x-forwarded-server",
        "proxy-status",
        "x-custom",
        "content-encoding"
      ]
    ) {
      expect(h[name], name).toBeUndefined()
    }
    expect(h).toMatchObject({
      "user-agent": "OpenAI/JS 4.77.0",
      accept: "application/json",
      "openai-beta": "assistants=v2",
      "idempotency-key": "stainless-node-retry-abc",
      "x-stainless-lang": "js",
      "x-stainless-retry-count": "0",
      "content-type": "application/json",
      authorization: `Bearer ${t.apiKey}`
    })
    expect(JSON.stringify(stack.mock.requests[0]!.rawHeaders)).not.toMatch(/org-client|proj_client|1\.2\.3\.4/)
  })

  it("credentials in the query string → 400 credential_in_query without the value, with or without a token", async () => {
    const secret = "AIzaSyD-secret-value-123"
    for (
      const query of [
        `?key=${secret}`,
        `?api-key=${secret}`,
        `?API_KEY=${secret}`,
        `?limit=1;key=${secret}`,
        `?%6Bey=${secret}`,
        "?key="
      ]
    ) {
      for (const token of [t.token, null]) {
        const r = await send("GET", `/v1/models${query}`, { token })
        expect({ query, status: r.status, code: proxyError(r.json).code }).toEqual({
          query,
          status: 400,
          code: "credential_in_query"
        })
        expect(r.text).not.toContain(secret)
      }
    }
    expect(stack.mock.requests).toHaveLength(0)
    expect((await send("GET", "/v1/models?limit=1&monkey=2")).status).toBe(200)
    expect(stack.mock.requests.map((r) => r.url)).toEqual(["/v1/models?limit=1&monkey=2"])
  })

  it("a `;` in the path → 404 endpoint_not_found", async () => {
    for (
      const path of [
        "/v1/models/..;/files",
        "/v1/models;x=y",
        "/v1/models/gpt-4o;v=1",
        "/v1/chat/completions;a=b",
        "/v1/models/%3B"
      ]
    ) {
      const method = path.startsWith("/v1/chat") ? "POST" : "GET"
      const r = await send(method, path)
      expect({ path, status: r.status, code: proxyError(r.json).code }).toEqual({
        path,
        status: 404,
        code: "endpoint_not_found"
      })
    }
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("a preflight is granted only for a path and method the provider admits, listing that path's methods", async () => {
    const preflight = (path: string, method: string) =>
      call(stack.server.url, path, {
        method: "OPTIONS",
        headers: { origin: "https://app.example", "access-control-request-method": method }
      })
    const chat = await preflight("/v1/chat/completions", "POST")
    expect(chat.status).toBe(204)
    expect(chat.headers["access-control-allow-origin"]).toBe("https://app.example")
    expect(chat.headers["access-control-allow-methods"]).toBe("POST")
    expect((await preflight("/v1/models/gpt-4o", "GET")).headers["access-control-allow-methods"]).toBe("GET")
    for (
      const [path, method] of [["/v1/chat/completions", "GET"], ["/v1/files/f/content", "GET"], [
        "/v1/models/ft:x",
        "DELETE"
      ], ["/v1/models;x", "GET"]]
    ) {
      const r = await preflight(path!, method!)
      expect(r.status).toBe(204)
      expect(r.headers["access-control-allow-origin"], `${method} ${path}`).toBeUndefined()
      expect(r.headers["access-control-allow-methods"], `${method} ${path}`).toBeUndefined()
    }
    expect(stack.mock.requests).toHaveLength(0)
  })
})

describe("the documented opt-in YAML, with fixed and extra forwarded headers", () => {
  let stack: Stack
  let t: ProjectAndToken
  beforeAll(async () => {
    const yaml = optInSnippet().replace(
      "base_url: https://api.openai.com",
      "base_url: {{MOCK}}\n    forward_headers: [x-custom]\n    headers: { OpenAI-Organization: org-fixed, OpenAI-Project: proj_fixed }"
    )
    stack = await startStack(backend, {}, yaml)
    t = await projectAndToken(stack.manage)
  })
  afterAll(() => stack.close())
  beforeEach(() => stack.mock.reset())

  it("re-enables reading stored data and DELETE, and still admits the inference API", async () => {
    const requests = [
      ["GET", "/v1/chat/completions?limit=5"],
      ["GET", "/v1/chat/completions/chatcmpl-1"],
      ["GET", "/v1/responses/resp_1"],
      ["GET", "/v1/files/file-x/content"],
      ["DELETE", "/v1/models/ft:gpt-4o-mini:org:x"],
      ["DELETE", "/v1/files/file-x"],
      ["POST", "/v1/chat/completions"],
      ["GET", "/v1/models/gpt-4o"]
    ] as const
    for (const [method, path] of requests) {
      const r = await call(stack.server.url, path, {
        method,
        token: t.token,
        ...(method === "POST" ? { body: chatBody() } : {})
      })
      expect(r.status, `${method} ${path}`).toBe(200)
    }
    expect(stack.mock.requests.map((r) => `${r.method} ${r.url}`)).toEqual(requests.map(([m, p]) => `${m} ${p}`))
    expect((await call(stack.server.url, "/v1/batches", { method: "POST", token: t.token, body: {} })).status).toBe(404)
    expect(stack.mock.requests).toHaveLength(requests.length)
  })

  it("the provider's fixed OpenAI-Organization / OpenAI-Project reach the upstream, the client's never; forward_headers adds", async () => {
    const r = await call(stack.server.url, "/v1/chat/completions", {
      token: t.token,
      body: chatBody(),
      headers: {
        "openai-organization": "org-client",
        "openai-project": "proj_client",
        "x-custom": "yes",
        "x-other": "no"
      }
    })
    expect(r.status).toBe(200)
    const h = stack.mock.requests[0]!.headers
    expect(h["openai-organization"]).toBe("org-fixed")
    expect(h["openai-project"]).toBe("proj_fixed")
    expect(h["x-custom"]).toBe("yes")
    expect(h["x-other"]).toBeUndefined()
    expect(JSON.stringify(stack.mock.requests[0]!.rawHeaders)).not.toMatch(/org-client|proj_client/)
  })
})

describe("preflights with several providers", () => {
  let stack: Stack
  beforeAll(async () => {
    stack = await startStack(
      backend,
      {},
      `
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions]
    allowed_methods: [POST]
    allowed_origins: [https://a.example]
  anthropic:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key
    auth_scheme: ""
`
    )
  })
  afterAll(() => stack.close())

  const preflight = (path: string, origin: string, method = "POST") =>
    call(stack.server.url, path, { method: "OPTIONS", headers: { origin, "access-control-request-method": method } })

  it("a provider without allowed_origins does not open the preflights of another provider's paths", async () => {
    const foreign = await preflight("/v1/chat/completions", "https://evil.example")
    expect(foreign.status).toBe(204)
    expect(foreign.headers["access-control-allow-origin"]).toBeUndefined()
    const own = await preflight("/v1/messages", "https://evil.example")
    expect(own.headers["access-control-allow-origin"]).toBe("https://evil.example")
    expect(own.headers["access-control-allow-methods"]).toBe("POST")
    const listed = await preflight("/v1/chat/completions", "https://a.example")
    expect(listed.headers["access-control-allow-origin"]).toBe("https://a.example")
    expect(listed.headers["access-control-allow-methods"]).toBe("POST")
    expect((await preflight("/v1/messages", "https://evil.example", "GET")).headers["access-control-allow-origin"])
      .toBeUndefined()
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("a method no provider admits on a known path → 405 with the path's methods", async () => {
    const r = await call(stack.server.url, "/v1/messages", { method: "GET" })
    expect(r.status).toBe(405)
    expect(r.headers.allow).toBe("POST")
  })
})
