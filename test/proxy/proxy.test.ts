/**
 * The /v1 proxy as a client and the upstream see it, against the in-process mock upstream, on SQLite:
 * docs/behaviour.md scenarios 36–55, 66–73 and 102–104 (the store-dependent ones — quotas, revocation,
 * usage counters — run on every backend in store.test.ts), plus providers, header hygiene, timeouts and the
 * zero-query warm path.
 */
import { Option } from "effect"
import { connect } from "node:net"
import { Readable } from "node:stream"
import { Pool } from "undici"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { chatChunks, hang, json, reset, sse } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import {
  call,
  chatBody,
  createToken,
  exec,
  type ProjectAndToken,
  projectAndToken,
  sleep,
  type Stack,
  startStack
} from "./stack.js"

const YAML = `
default_api: openai
apis:
  openai:
    base_url: {{MOCK}}/
    allowed_endpoints: [/v1/chat/completions, /v1/completions, /v1/embeddings, /v1/models, /v1/files, /v1/audio/transcriptions]
    allowed_methods: [GET, POST, DELETE]
    param_whitelist:
      model: [gpt-4o, "gpt-4o-*"]
    allowed_origins: [https://a.example]
  anthropic:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key
    auth_scheme: ""
`

const MAX_BODY = 100_000

let backend: BackendInstance
let stack: Stack
let t: ProjectAndToken
let url: string

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, { maxRequestSize: MAX_BODY }, YAML)
  url = stack.server.url
  t = await projectAndToken(stack.manage)
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})
beforeEach(() => stack.mock.reset())

const post = (path: string, body: unknown, token: string | null = t.token, headers: Record<string, string> = {}) =>
  call(url, path, { token, body, headers })

/** A local `/v1` answer: `body` is `{ error: message, code, description? }`, read from OpenAI's error shape. */
const expectLocal = (
  r: { status: number; headers: Record<string, unknown>; json: any },
  status: number,
  body: { error: string; code: string; description?: string }
) => {
  const e = proxyError(r.json)
  expect({ status: r.status, error: e.message, code: e.code, description: e.description }).toEqual({
    status,
    description: undefined,
    ...body
  })
  expect(r.json.error.param).toBeNull()
  expect(typeof r.json.error.type).toBe("string")
  expect(r.headers["content-type"]).toBe("application/json")
  expect(r.headers["x-request-id"]).toMatch(/^[\w.:-]{1,128}$/)
  expect(r.headers["server-timing"]).toMatch(/^proxy;dur=\d+\.\d\d/)
}

describe("authentication (36–42)", () => {
  const invalid = {
    error: "Invalid token",
    description: "missing or invalid authorization header",
    code: "invalid_token"
  }

  it("36 no Authorization → 401 invalid_token, upstream not called", async () => {
    expectLocal(await post("/v1/chat/completions", chatBody(), null), 401, invalid)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("the refusal has OpenAI's error shape on OpenAI's paths, Anthropic's on Anthropic's; x-should-retry: false", async () => {
    const openai = await post("/v1/chat/completions", chatBody(), null)
    expect(openai.json).toEqual({
      error: {
        message: "Invalid token",
        type: "authentication_error",
        code: "invalid_token",
        param: null,
        description: "missing or invalid authorization header"
      }
    })
    expect(openai.headers["x-should-retry"]).toBe("false")
    const anthropic = await post("/v1/messages", { model: "claude", messages: [] }, null)
    expect(anthropic.status).toBe(401)
    expect(anthropic.json).toEqual({
      type: "error",
      error: {
        type: "authentication_error",
        message: "Invalid token",
        code: "invalid_token",
        description: "missing or invalid authorization header"
      }
    })
  })

  it("37 Basic credentials → the same 401", async () => {
    expectLocal(await post("/v1/chat/completions", chatBody(), null, { authorization: "Basic abc" }), 401, invalid)
  })

  it("38 malformed token → invalid_token; well-formed unknown token → token_not_found", async () => {
    expectLocal(await post("/v1/chat/completions", chatBody(), "not-a-token"), 401, {
      error: "Invalid token",
      description: "invalid token format",
      code: "invalid_token"
    })
    const unknown = "sk-" + "A".repeat(42) + "E"
    expectLocal(await post("/v1/chat/completions", chatBody(), unknown), 401, {
      error: "Token not found",
      code: "token_not_found"
    })
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("39 valid token → upstream gets the project key, never the token; status and body pass verbatim", async () => {
    const upstreamBody = JSON.stringify({ weird: "spacing", n: 1 }, null, 3)
    stack.mock.enqueue(json(upstreamBody, { status: 201, headers: { "x-upstream": "yes" } }))
    const r = await post("/v1/chat/completions?x=1&y=2", chatBody())
    expect(r.status).toBe(201)
    expect(r.text).toBe(upstreamBody)
    expect(r.headers["x-upstream"]).toBe("yes")
    const seen = stack.mock.requests[0]!
    expect(seen.url).toBe("/v1/chat/completions?x=1&y=2")
    expect(seen.headers.authorization).toBe(`Bearer ${t.apiKey}`)
    expect(JSON.parse(seen.body)).toEqual(chatBody())
    expect(seen.rawHeaders.join("\n")).not.toContain(t.token)
    expect(seen.rawHeaders.join("\n")).not.toContain(t.projectId)
  })

  it("40 lower-case scheme is accepted", async () => {
    const r = await post("/v1/chat/completions", chatBody(), null, { authorization: `bearer ${t.token}` })
    expect(r.status).toBe(200)
  })

  it("41 token in X-API-Key → 401, in ?token= → 400 credential_in_query (never forwarded)", async () => {
    expectLocal(await post("/v1/chat/completions", chatBody(), null, { "x-api-key": t.token }), 401, invalid)
    const inQuery = await post(`/v1/chat/completions?token=${t.token}`, chatBody(), null)
    expect(proxyError(inQuery.json).code).toBe("credential_in_query")
    expect(inQuery.text).not.toContain(t.token)
    expect(stack.mock.requests).toHaveLength(0)
    const r = await post("/v1/chat/completions", chatBody(), t.token, { "x-api-key": t.token })
    expect(r.status).toBe(200)
    expect(stack.mock.requests[0]!.headers["x-api-key"]).toBeUndefined()
  })

  it("on Anthropic's paths the token may come in x-api-key (Anthropic's SDKs), never forwarded; Authorization wins", async () => {
    const a = await projectAndToken(stack.manage, { provider: "anthropic" })
    const r = await post("/v1/messages", { model: "claude", messages: [] }, null, { "x-api-key": a.token })
    expect(r.status).toBe(200)
    // The upstream gets the project's key in its x-api-key, not the token.
    expect(stack.mock.requests[0]!.headers["x-api-key"]).toBe(a.apiKey)
    const both = await post("/v1/messages", { model: "claude", messages: [] }, "not-a-token", { "x-api-key": a.token })
    expect(both.status).toBe(401)
    expect((await post("/v1/messages", {}, null, { "x-api-key": "nope" })).status).toBe(401)
  })
})

describe("allow-lists and validation (43–49)", () => {
  it("43 method not allowed → 405 with Allow, before authentication", async () => {
    const r = await call(url, "/v1/chat/completions", { method: "PUT" })
    expectLocal(r, 405, { error: "Method not allowed", code: "method_not_allowed" })
    expect(r.headers.allow).toBe("GET, POST, DELETE")
  })

  it("43 a method some provider allows but not on this path → 405", async () => {
    const r = await call(url, "/v1/messages", { method: "GET" })
    expect(r.status).toBe(405)
  })

  it("44 path outside the allow-list → 404 endpoint_not_found, before authentication", async () => {
    expectLocal(await call(url, "/v1/fine_tuning/jobs"), 404, {
      error: "Endpoint not found",
      code: "endpoint_not_found"
    })
  })

  it("45 prefixes match on segment boundaries", async () => {
    stack.mock.route("/v1/models/gpt-4o", json({ id: "gpt-4o" }))
    expect((await call(url, "/v1/models/gpt-4o", { token: t.token })).json).toEqual({ id: "gpt-4o" })
    expect((await call(url, "/v1/modelsX", { token: t.token })).status).toBe(404)
    expect((await call(url, "/v1/models/../../manage/projects", { token: t.token })).status).toBe(404)
    expect((await call(url, "/v1/%2e%2e/manage", { token: t.token })).status).toBe(404)
    expect(stack.mock.requests.map((r) => r.path)).toEqual(["/v1/models/gpt-4o"])
  })

  it("46 paths outside /v1 are not proxied", async () => {
    const r = await call(url, "/v2/models", { token: t.token })
    expect(r.status).toBe(404)
    expect((await call(url, "/v1", { token: t.token })).status).toBe(404)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("47 param whitelist: allowed value forwarded, other value 400, absent parameter forwarded", async () => {
    expect((await post("/v1/chat/completions", chatBody({ model: "gpt-4o-mini" }))).status).toBe(200)
    expectLocal(await post("/v1/chat/completions", chatBody({ model: "gpt-3.5-turbo" })), 400, {
      error: "Parameter 'model' value 'gpt-3.5-turbo' is not allowed. Allowed patterns: [gpt-4o gpt-4o-*]",
      code: "param_not_allowed"
    })
    expect((await post("/v1/embeddings", { input: "x" })).status).toBe(200)
    expect(stack.mock.requests).toHaveLength(2)
  })

  it("47 the whitelist is checked after authentication: an anonymous request gets 401 whatever its body", async () => {
    expect(proxyError((await post("/v1/chat/completions", chatBody({ model: "gpt-3.5-turbo" }), null)).json).code).toBe(
      "invalid_token"
    )
  })

  it("48 the whitelist applies to any JSON content type", async () => {
    for (const ct of ["application/json; charset=utf-8", "application/vnd.custom+json"]) {
      const r = await post("/v1/chat/completions", chatBody({ model: "gpt-3.5-turbo" }), t.token, {
        "content-type": ct
      })
      expect(proxyError(r.json).code).toBe("param_not_allowed")
    }
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("a JSON body that does not parse goes upstream untouched (the provider answers the syntax error)", async () => {
    const r = await post("/v1/chat/completions", "{not json", t.token)
    expect(r.status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe("{not json")
  })

  it("49 a declared oversized body → 413 request_too_large before it is sent", async () => {
    const started = Date.now()
    const r = await new Promise<{ status: number; body: string; headers: Record<string, string> }>(
      (resolve, reject) => {
        const u = new URL(url)
        const socket = connect(Number(u.port), u.hostname, () => {
          socket.write(
            `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t.token}\r\n` +
              `Content-Type: application/json\r\nContent-Length: ${MAX_BODY * 100}\r\n\r\n{"model":`
          )
        })
        let data = ""
        socket.on("data", (d) => (data += d.toString()))
        socket.on("error", reject)
        socket.on("close", () => {
          const [head, body = ""] = data.split("\r\n\r\n")
          const lines = head!.split("\r\n")
          const headers = Object.fromEntries(
            lines.slice(1).map((l) => [l.split(":")[0]!.toLowerCase(), l.slice(l.indexOf(":") + 1).trim()])
          )
          resolve({ status: Number(lines[0]!.split(" ")[1]), body, headers })
        })
      }
    )
    expect(r.status).toBe(413)
    expect(proxyError(r.body)).toMatchObject({ message: "Request body too large", code: "request_too_large" })
    expect(r.headers.connection).toBe("close")
    expect(Date.now() - started).toBeLessThan(5_000)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("49 a chunked body that grows past the limit → 413; one just under it passes", async () => {
    const big = JSON.stringify({ model: "gpt-4o", pad: "x".repeat(MAX_BODY) })
    const r = await post("/v1/chat/completions", big, t.token, { "transfer-encoding": "chunked", "content-length": "" })
    expect(r.status).toBe(413)
    const fits = JSON.stringify({ model: "gpt-4o", pad: "x".repeat(MAX_BODY - 100) })
    expect((await post("/v1/chat/completions", fits)).status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe(fits)
  })

  it("non-JSON bodies stream through untouched (uploads), with and without a length", async () => {
    const form = "--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\nRIFF....\r\n--b--\r\n"
    const ct = { "content-type": "multipart/form-data; boundary=b" }
    expect((await post("/v1/audio/transcriptions", form, t.token, ct)).status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe(form)
    expect(stack.mock.requests[0]!.headers["content-length"]).toBe(String(form.length))
    expect(
      (await post("/v1/audio/transcriptions", form, t.token, {
        ...ct,
        "transfer-encoding": "chunked",
        "content-length": ""
      })).status
    ).toBe(200)
    expect(stack.mock.requests[1]!.body).toBe(form)
    // A cold token: the upload crosses the limit while the token is being looked up.
    const cold = await createToken(stack.manage, t.projectId)
    const huge = "y".repeat(MAX_BODY * 3)
    const r0 = await post("/v1/audio/transcriptions", huge, cold.token, {
      ...ct,
      "transfer-encoding": "chunked",
      "content-length": ""
    })
    expect(r0.status).toBe(413)
    const tooBig = "x".repeat(MAX_BODY + 1)
    const r = await post("/v1/audio/transcriptions", tooBig, t.token, {
      ...ct,
      "transfer-encoding": "chunked",
      "content-length": ""
    })
    expect(r.status).toBe(413)
  })
})

describe("connection reuse", () => {
  it("a refused chunked upload does not wedge its keep-alive connection", async () => {
    const pool = new Pool(url, { connections: 1 })
    try {
      const upload = async function*() {
        yield Buffer.from("--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\n")
        yield Buffer.alloc(64 * 1024, 1)
        yield Buffer.from("\r\n--b--\r\n")
      }
      const refused = await pool.request({
        path: "/v1/audio/transcriptions",
        method: "POST",
        headers: {
          authorization: "Bearer sk-" + "C".repeat(42) + "E",
          "content-type": "multipart/form-data; boundary=b"
        },
        body: Readable.from(upload())
      })
      expect(refused.statusCode).toBe(401)
      await refused.body.text()
      const ok = await pool.request({
        path: "/v1/chat/completions",
        method: "POST",
        headers: { authorization: `Bearer ${t.token}`, "content-type": "application/json" },
        body: JSON.stringify(chatBody())
      })
      expect(ok.statusCode).toBe(200)
      await ok.body.text()
    } finally {
      await pool.close()
    }
  })
})

describe("CORS (50–55)", () => {
  it("50 preflight → 204, echoes an allowed origin and the requested headers, the path's methods, no auth", async () => {
    const r = await call(url, "/v1/chat/completions", {
      method: "OPTIONS",
      headers: {
        origin: "https://a.example",
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization,content-type"
      }
    })
    expect(r.status).toBe(204)
    expect(r.headers["access-control-allow-origin"]).toBe("https://a.example")
    expect(r.headers["access-control-allow-headers"]).toBe("authorization,content-type")
    expect(r.headers["access-control-allow-methods"]).toBe("GET, POST, DELETE")
    expect(r.headers["access-control-max-age"]).toBe("86400")
    expect(r.headers["access-control-allow-credentials"]).toBeUndefined()
    expect(r.headers["x-request-id"]).toBeDefined()
  })

  it("51 preflight without Origin → 204 without CORS headers", async () => {
    const r = await call(url, "/v1/chat/completions", { method: "OPTIONS" })
    expect(r.status).toBe(204)
    expect(r.headers["access-control-allow-origin"]).toBeUndefined()
  })

  it("52 an allowed origin: the proxied answer carries ACAO, Vary: Origin and exposes X-Request-ID", async () => {
    stack.mock.enqueue(json({ ok: 1 }, { headers: { vary: "Accept-Encoding" } }))
    const r = await post("/v1/chat/completions", chatBody(), t.token, { origin: "https://a.example" })
    expect(r.status).toBe(200)
    expect(r.headers["access-control-allow-origin"]).toBe("https://a.example")
    expect(r.headers.vary).toBe("Accept-Encoding, Origin")
    expect(r.headers["access-control-expose-headers"]).toContain("X-Request-ID")
    expect(stack.mock.requests[0]!.headers.origin).toBe("https://a.example")
  })

  it("53 an origin not in allowed_origins → 403 origin_not_allowed, upstream not called", async () => {
    expectLocal(await post("/v1/chat/completions", chatBody(), t.token, { origin: "https://evil.example" }), 403, {
      error: "Origin not allowed",
      code: "origin_not_allowed"
    })
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("55 a local 401 for a request with Origin still carries ACAO", async () => {
    const r = await post("/v1/chat/completions", chatBody(), null, { origin: "https://a.example" })
    expect(r.status).toBe(401)
    expect(r.headers["access-control-allow-origin"]).toBe("https://a.example")
  })
})

describe("upstream errors and the circuit breaker (70–73)", () => {
  it("73 upstream 4xx/5xx bodies and headers pass through unchanged", async () => {
    for (const status of [400, 404, 422, 500]) {
      stack.mock.enqueue(json({ error: { message: `m${status}` } }, { status, headers: { "x-err": String(status) } }))
      const r = await post("/v1/chat/completions", chatBody())
      expect(r.status).toBe(status)
      expect(r.json).toEqual({ error: { message: `m${status}` } })
      expect(r.headers["x-err"]).toBe(String(status))
    }
  })

  it("a reset before the answer → 502 upstream_error", async () => {
    stack.mock.enqueue(reset())
    expectLocal(await post("/v1/chat/completions", chatBody()), 502, { error: "Proxy error", code: "upstream_error" })
  })

  it("a reset mid-stream cuts the client's response (no fake success)", async () => {
    stack.mock.enqueue(reset(chatChunks(["a"]).slice(0, 1)))
    await expect(post("/v1/chat/completions", chatBody({ stream: true }))).rejects.toThrow()
  })
})

describe("headers and ids (102–104)", () => {
  it("102 the upstream sees the response's X-Request-ID; a safe client id is kept, an unsafe one replaced", async () => {
    const r = await post("/v1/chat/completions", chatBody())
    expect(stack.mock.requests[0]!.headers["x-request-id"]).toBe(r.headers["x-request-id"])
    expect(r.headers["server-timing"]).toMatch(/^proxy;dur=\d+\.\d\d, upstream;dur=\d+\.\d\d, attempts;desc=1$/)
    expect(r.headers["x-upstream-request-id"]).toBeUndefined()
    const kept = await post("/v1/chat/completions", chatBody(), t.token, { "x-request-id": "client-abc.1" })
    expect(kept.headers["x-request-id"]).toBe("client-abc.1")
    expect(stack.mock.requests[1]!.headers["x-request-id"]).toBe("client-abc.1")
    const replaced = await post("/v1/chat/completions", chatBody(), t.token, { "x-request-id": "<bad id>" })
    expect(replaced.headers["x-request-id"]).not.toBe("<bad id>")
  })

  it("an upstream Server-Timing is kept after ours", async () => {
    stack.mock.enqueue(json({}, { headers: { "server-timing": "db;dur=5" } }))
    const r = await post("/v1/chat/completions", chatBody())
    expect(r.headers["server-timing"]).toMatch(/^proxy;dur=[\d.]+, upstream;dur=[\d.]+, attempts;desc=1, db;dur=5$/)
  })

  it("the upstream's x-request-id is passed on as X-Upstream-Request-ID; the proxy's own id stays in X-Request-ID", async () => {
    stack.mock.enqueue(json({}, { headers: { "x-request-id": "req_upstream_123" } }))
    const r = await post("/v1/chat/completions", chatBody(), t.token, { "x-request-id": "mine-1" })
    expect(r.headers["x-upstream-request-id"]).toBe("req_upstream_123")
    expect(r.headers["x-request-id"]).toBe("mine-1")
    // Browsers may read it.
    const cors = await post("/v1/chat/completions", chatBody(), t.token, { origin: "https://a.example" })
    expect(String(cors.headers["access-control-expose-headers"])).toContain("X-Upstream-Request-ID")
  })

  it("103/104 client addresses, trace context, cookies and hop-by-hop headers are not forwarded", async () => {
    await post("/v1/chat/completions", chatBody(), t.token, {
      "x-forwarded-for": "1.2.3.4",
      "x-real-ip": "1.2.3.4",
      "cf-connecting-ip": "1.2.3.4",
      "x-client-ip": "1.2.3.4",
      forwarded: "for=1.2.3.4",
      traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      tracestate: "a=b",
      cookie: "session=secret",
      "x-proxy-id": t.projectId,
      "x-forwarded-user-agent": "1.2.3.4",
      "x-forwarded-server": "1.2.3.4",
      "proxy-client-ip": "1.2.3.4",
      connection: "x-hop",
      "x-hop": "1"
    })
    const h = stack.mock.requests[0]!.headers
    for (
      const name of [
        "x-forwarded-for",
        "x-real-ip",
        "cf-connecting-ip",
        "x-client-ip",
        "forwarded",
        "traceparent",
        "tracestate",
        "cookie",
        "x-proxy-id",
        "x-hop",
        "x-forwarded-user-agent",
        "x-forwarded-server",
        "proxy-client-ip"
      ]
    ) {
      expect(h[name], name).toBeUndefined()
    }
    expect(JSON.stringify(h)).not.toContain("1.2.3.4")
  })

  it("hop-by-hop response headers are not passed to the client", async () => {
    stack.mock.enqueue(
      json({}, { headers: { connection: "x-secret-hop", "x-secret-hop": "1", "keep-alive": "timeout=1" } })
    )
    const r = await post("/v1/chat/completions", chatBody())
    expect(r.headers["x-secret-hop"]).toBeUndefined()
    expect(r.headers["keep-alive"]).toBeUndefined()
  })

  it("every local answer has X-Request-ID and Server-Timing", async () => {
    for (
      const r of [
        await call(url, "/v1/nope"),
        await call(url, "/v1/models"),
        await call(url, "/v1/models", { method: "PUT" })
      ]
    ) {
      expect(r.headers["x-request-id"]).toBeDefined()
      expect(r.headers["server-timing"]).toMatch(/^proxy;dur=/)
    }
  })
})

describe("providers", () => {
  it("an x-api-key provider (Anthropic style) gets the bare key and no Authorization", async () => {
    const a = await projectAndToken(stack.manage, { provider: "anthropic" })
    const r = await post("/v1/messages", { model: "claude", messages: [] }, a.token)
    expect(r.status).toBe(200)
    const h = stack.mock.requests[0]!.headers
    expect(h["x-api-key"]).toBe(a.apiKey)
    expect(h.authorization).toBeUndefined()
  })

  it("the project's provider decides: an openai project cannot use anthropic-only paths", async () => {
    expect((await post("/v1/messages", {}, t.token)).status).toBe(404)
    const a = await projectAndToken(stack.manage, { provider: "anthropic" })
    expect((await post("/v1/chat/completions", chatBody(), a.token)).status).toBe(404)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("a base_url without a path (or only `/`) keeps the request's path and query as received", async () => {
    await post("/v1/completions?a=1&b", { model: "gpt-4o", prompt: "x" })
    expect(stack.mock.requests[0]!.url).toBe("/v1/completions?a=1&b")
  })

  it("unknown providers are rejected on project create and update (400); known ones accepted", async () => {
    const bad = await stack.manage.post("/manage/projects", {
      name: `p-${crypto.randomUUID()}`,
      api_key: "sk-abcdefghijklmnop",
      provider: "nope"
    })
    expect(bad.status).toBe(400)
    expect(bad.json.error).toBe("unknown provider \"nope\"")
    const patched = await stack.manage.patch(`/manage/projects/${t.projectId}`, { provider: "nope" })
    expect(patched.status).toBe(400)
    const a = await projectAndToken(stack.manage)
    expect((await stack.manage.patch(`/manage/projects/${a.projectId}`, { provider: "anthropic" })).json.provider).toBe(
      "anthropic"
    )
    expect((await post("/v1/messages", {}, a.token)).status).toBe(200)
  })
})

describe("the warm path", () => {
  it("a warm unlimited token costs zero database queries per request; its uses are written at shutdown", async () => {
    const b = await backends[0]!.create()
    // Usage batches every 60 s, and no audit log (the management calls below would be written in the background):
    // nothing but the requests themselves could query the database in this window.
    const local = await startStack(b, {
      usageFlushIntervalMs: 60_000,
      audit: { enabled: false, file: Option.none(), storeInDb: true, retentionDays: 0 }
    })
    const u = await projectAndToken(local.manage)
    expect((await call(local.server.url, "/v1/chat/completions", { token: u.token, body: chatBody() })).status).toBe(
      200
    )
    const before = local.queries.count
    for (let i = 0; i < 50; i++) {
      expect((await call(local.server.url, "/v1/chat/completions", { token: u.token, body: chatBody() })).status).toBe(
        200
      )
    }
    expect(local.queries.count - before).toBe(0)
    await local.close()
    const row = (await b.rows("tokens")).find((r) => r.id === u.tokenId)!
    expect(Number(row.request_count)).toBe(51)
    expect(Number(row.prompt_tokens)).toBe(51 * 9)
    expect(Number(row.completion_tokens)).toBe(51 * 3)
    expect(row.last_used_at).not.toBeNull()
    await b.cleanup()
  })
})

describe("cold tokens", () => {
  it("20 concurrent first requests with one token share a single lookup; an unknown token is looked up once", async () => {
    const b = await backends[0]!.create()
    // No audit log: its background writes (token create, refused tokens) would be counted as queries too.
    const local = await startStack(b, {
      usageFlushIntervalMs: 60_000,
      audit: { enabled: false, file: Option.none(), storeInDb: true, retentionDays: 0 }
    })
    try {
      const u = await projectAndToken(local.manage)
      const go = (token: string) => call(local.server.url, "/v1/chat/completions", { token, body: chatBody() })
      const before = local.queries.count
      const replies = await Promise.all(Array.from({ length: 20 }, () => go(u.token)))
      expect(replies.map((r) => r.status)).toEqual(Array(20).fill(200))
      expect(local.queries.count - before).toBe(1)
      const unknown = "sk-" + "B".repeat(42) + "E"
      for (let i = 0; i < 5; i++) expect(proxyError((await go(unknown)).json).code).toBe("token_not_found")
      expect(local.queries.count - before).toBe(2)
    } finally {
      await local.close()
      await b.cleanup()
    }
  })
})

describe("the storage failing (42, 67)", () => {
  it("→ 503 service_unavailable with a generic message, never the database's text", async () => {
    const fresh = await createToken(stack.manage, t.projectId)
    await exec(backend, "ALTER TABLE projects RENAME TO projects_gone")
    try {
      const r = await post("/v1/chat/completions", chatBody(), fresh.token)
      expectLocal(r, 503, { error: "Service temporarily unavailable", code: "service_unavailable" })
      expect(r.text).not.toMatch(/sqlite|projects|table/i)
    } finally {
      await exec(backend, "ALTER TABLE projects_gone RENAME TO projects")
    }
    expect((await post("/v1/chat/completions", chatBody(), fresh.token)).status).toBe(200)
  })
})

describe("timeouts and unreachable upstreams (70, 504)", () => {
  let local: Stack
  beforeAll(async () => {
    local = await startStack(await backends[0]!.create(), { requestTimeoutMs: 300, circuitBreakerThreshold: 100 })
  })
  afterAll(() => local.close())

  it("no response headers within REQUEST_TIMEOUT → 504 timeout", async () => {
    const l = await projectAndToken(local.manage)
    local.mock.enqueue(hang)
    const r = await call(local.server.url, "/v1/chat/completions", { token: l.token, body: chatBody() })
    expectLocal(r, 504, { error: "Request timeout", code: "timeout" })
  })

  it("a slow stream is not cut by REQUEST_TIMEOUT once its headers arrived", async () => {
    const l = await projectAndToken(local.manage)
    local.mock.enqueue(sse(chatChunks(["a", "b", "c"]), { intervalMs: 200 }))
    const r = await call(local.server.url, "/v1/chat/completions", { token: l.token, body: chatBody({ stream: true }) })
    expect(r.status).toBe(200)
    expect(r.text.endsWith("data: [DONE]\n\n")).toBe(true)
  })

  it("70 upstream unreachable → 502 upstream_error", async () => {
    const closed = await startStack(await backends[0]!.create(), { openaiApiUrl: "http://127.0.0.1:1" })
    try {
      const l = await projectAndToken(closed.manage)
      const r = await call(closed.server.url, "/v1/chat/completions", { token: l.token, body: chatBody() })
      expectLocal(r, 502, { error: "Proxy error", code: "upstream_error" })
    } finally {
      await closed.close()
    }
  })
})

describe("circuit breaker (71, 72)", () => {
  let local: Stack
  let l: ProjectAndToken
  beforeAll(async () => {
    local = await startStack(await backends[0]!.create(), { circuitBreakerCooldownMs: 700 })
    l = await projectAndToken(local.manage)
  })
  afterAll(() => local.close())
  beforeEach(() => local.mock.reset())
  const go = () => call(local.server.url, "/v1/chat/completions", { token: l.token, body: chatBody() })

  it("72 4×503, 1×200, 4×503 → stays closed", async () => {
    local.mock.enqueue(
      ...Array(4).fill(json({}, { status: 503 })),
      json({}),
      ...Array(4).fill(json({}, { status: 503 }))
    )
    for (let i = 0; i < 9; i++) await go()
    expect((await go()).status).toBe(200)
    expect(local.mock.requests).toHaveLength(10)
  })

  it("71 5×503 in a row → the 6th is answered locally (503 upstream_unavailable); after the cooldown one probe reaches the mock", async () => {
    local.mock.enqueue(...Array(5).fill(json({ e: 1 }, { status: 503 })))
    for (let i = 0; i < 5; i++) expect((await go()).status).toBe(503)
    const sixth = await go()
    expectLocal(sixth, 503, { error: "Upstream unavailable (circuit breaker open)", code: "upstream_unavailable" })
    expect(local.mock.requests).toHaveLength(5)
    await sleep(800)
    expect((await go()).status).toBe(200)
    expect((await go()).status).toBe(200)
    expect(local.mock.requests).toHaveLength(7)
  })
})

describe("required origin (54), preflight of a foreign origin (50)", () => {
  it("required_headers: [origin] and no Origin → 400 origin_required", async () => {
    const local = await startStack(
      await backends[0]!.create(),
      {},
      "apis:\n  openai:\n    base_url: {{MOCK}}\n    allowed_endpoints: [/v1/chat/completions]\n    allowed_methods: [POST]\n" +
        "    required_headers: [origin]\n    allowed_origins: [https://a.example]\n"
    )
    try {
      const l = await projectAndToken(local.manage)
      expectLocal(await call(local.server.url, "/v1/chat/completions", { token: l.token, body: chatBody() }), 400, {
        error: "Origin header required",
        code: "origin_required"
      })
      const ok = await call(local.server.url, "/v1/chat/completions", {
        token: l.token,
        body: chatBody(),
        headers: { origin: "https://a.example" }
      })
      expect(ok.status).toBe(200)
      // 50: a preflight from an origin no provider allows gets no CORS headers.
      const pre = await call(local.server.url, "/v1/chat/completions", {
        method: "OPTIONS",
        headers: { origin: "https://evil.example" }
      })
      expect(pre.status).toBe(204)
      expect(pre.headers["access-control-allow-origin"]).toBeUndefined()
    } finally {
      await local.close()
    }
  })
})
