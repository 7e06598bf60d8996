/**
 * Regression tests for the defects the chaos suite (test/chaos, `npm run test:chaos`) found, so `npm test` keeps
 * them fixed: slow clients are cut (CLIENT_HEADERS_TIMEOUT / CLIENT_REQUEST_TIMEOUT), the HTTP parser's refusals
 * carry JSON, two Authorization headers are refused, lone surrogates are not names or keys, and `//` in a
 * management path is not collapsed into another endpoint.
 */
import { ConfigProvider, Effect, Either } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"
import { rawExchange, rawHttp } from "../chaos/support.js"
import { call, chatBody, type ProjectAndToken, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { proxyError } from "../support/proxyErrors.js"
import { type BackendInstance, backends } from "./harness.js"

let backend: BackendInstance
let stack: Stack
let port: number
let t: ProjectAndToken

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, { headersTimeoutMs: 1_000, clientRequestTimeoutMs: 2_000 })
  port = Number(new URL(stack.server.url).port)
  t = await projectAndToken(stack.manage)
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})

const auth = () => ["Authorization", `Bearer ${stack.server.token}`] as const

describe("slow clients", () => {
  it("headers sent one line at a time are cut with a JSON 408 after CLIENT_HEADERS_TIMEOUT", async () => {
    const r = await rawExchange(port, [
      Buffer.from("GET /manage/projects HTTP/1.1\r\n"),
      ...Array.from({ length: 20 }, (_, i) => [{ delayMs: 300 }, Buffer.from(`X-${i}: y\r\n`)]).flat()
    ], { timeoutMs: 10_000, idleMs: 10_000 })
    expect(r.closed).toBe(true)
    expect(r.statuses).toEqual([408])
    expect(r.text).toContain("{\"error\":\"request timeout\"}")
  })

  it("a connection that sends nothing is closed", async () => {
    const r = await rawExchange(port, [], { timeoutMs: 10_000, idleMs: 10_000 })
    expect(r.closed).toBe(true)
    expect(r.timedOut).toBe(false)
  })

  it("a trickled body is cut after CLIENT_REQUEST_TIMEOUT; the upstream never sees it", async () => {
    const body = JSON.stringify(chatBody())
    const r = await rawExchange(port, [
      Buffer.from(
        `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${t.token}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n`
      ),
      ...Array.from({ length: 30 }, (_, i) => [{ delayMs: 200 }, Buffer.from(body[i]!)]).flat()
    ], { timeoutMs: 10_000, idleMs: 10_000 })
    expect(r.closed).toBe(true)
    expect(r.statuses).toEqual([408])
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("keep-alive connections between requests are not cut by the headers timeout", async () => {
    const one = "GET /live HTTP/1.1\r\nHost: x\r\n\r\n"
    const r = await rawExchange(port, [Buffer.from(one), { delayMs: 1_500 }, Buffer.from(one)], {
      timeoutMs: 10_000,
      idleMs: 3_000
    })
    expect(r.statuses).toEqual([200, 200])
  })
})

describe("what the HTTP parser refuses gets a JSON error", () => {
  it("a malformed request line → 400 JSON and close", async () => {
    const r = await rawExchange(port, [Buffer.from("GARBAGE\r\n\r\n")], { timeoutMs: 5_000 })
    expect(r.statuses).toEqual([400])
    expect(r.text).toMatch(/content-type: application\/json/i)
    expect(r.text).toContain("{\"error\":\"malformed HTTP request\"}")
    expect(r.closed).toBe(true)
  })

  it("headers over 16 KB → 431 JSON", async () => {
    const r = await rawExchange(port, [
      Buffer.from(`GET /live HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(17_000)}\r\n\r\n`)
    ], { timeoutMs: 5_000 })
    expect(r.statuses).toEqual([431])
    expect(r.text).toContain("{\"error\":\"request headers too large\"}")
  })
})

describe("two Authorization headers", () => {
  it("management: refused with 400 even when the first one is valid", async () => {
    for (
      const pair of [[auth(), ["Authorization", "Bearer wrong"]], [["Authorization", "Bearer wrong"], auth()]] as const
    ) {
      const r = await rawHttp(port, "GET", "/manage/projects", pair)
      expect(r.status).toBe(400)
      expect(r.json).toEqual({ error: "more than one Authorization header" })
    }
    expect((await rawHttp(port, "GET", "/manage/projects", [auth()])).status).toBe(200)
  })

  it("/v1: refused with 400 invalid_token, the upstream never called", async () => {
    stack.mock.reset()
    const r = await rawHttp(port, "GET", "/v1/models", [["Authorization", `Bearer ${t.token}`], [
      "authorization",
      `Bearer ${t.token}`
    ]])
    expect(r.status).toBe(400)
    expect(proxyError(r.json)).toMatchObject({
      message: "Invalid token",
      code: "invalid_token",
      description: "more than one Authorization header"
    })
    expect(stack.mock.requests).toHaveLength(0)
    expect((await call(stack.server.url, "/v1/models", { token: t.token })).status).toBe(200)
  })
})

describe("management input", () => {
  it("lone UTF-16 surrogates in a name or key → 400 (not stored, not a database error)", async () => {
    const send = (method: string, path: string, text: string) =>
      rawHttp(port, method, path, [auth(), ["Content-Type", "application/json"], [
        "Content-Length",
        String(Buffer.byteLength(text))
      ]], text)
    const create = await send("POST", "/manage/projects", "{\"name\":\"a\\ud800b\",\"api_key\":\"sk-abc\"}")
    expect(create.status).toBe(400)
    expect(create.json.error).toBe("name must be valid Unicode text")
    const key = await send("POST", "/manage/projects", "{\"name\":\"ok-name\",\"api_key\":\"sk-\\udc00\"}")
    expect(key.json.error).toBe("api_key must be valid Unicode text")
    const patch = await send("PATCH", `/manage/projects/${t.projectId}`, "{\"name\":\"\\udfff\"}")
    expect(patch.status).toBe(400)
    // A proper pair (an emoji) is fine.
    expect(
      (await send(
        "POST",
        "/manage/projects",
        `{"name":"emoji-\\ud83d\\ude00-${crypto.randomUUID()}","api_key":"sk-abc"}`
      )).status
    ).toBe(201)
  })

  it("`//` inside a management path is not collapsed into another endpoint", async () => {
    const r = await rawHttp(port, "POST", `/manage/projects/${t.projectId}//tokens/revoke`, [auth()])
    expect(r.status).toBe(400)
    expect((await rawHttp(port, "GET", "//manage/projects", [auth()])).status).toBe(404)
    expect((await rawHttp(port, "GET", "/manage//projects", [auth()])).status).toBe(404)
    const token = await stack.manage.get(`/manage/tokens/${t.tokenId}`)
    expect(token.json.is_active).toBe(true)
  })
})

describe("client timeout configuration", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSync(
      Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )

  it("defaults 30 s and 10 min; bad values name the variable", () => {
    const ok = load({})
    if (Either.isLeft(ok)) throw new Error(formatConfigError(ok.left))
    expect(ok.right.headersTimeoutMs).toBe(30_000)
    expect(ok.right.clientRequestTimeoutMs).toBe(600_000)
    const custom = load({ CLIENT_HEADERS_TIMEOUT: "5s", CLIENT_REQUEST_TIMEOUT: "1m" })
    expect(Either.isRight(custom) && [custom.right.headersTimeoutMs, custom.right.clientRequestTimeoutMs]).toEqual([
      5_000,
      60_000
    ])
    for (const name of ["CLIENT_HEADERS_TIMEOUT", "CLIENT_REQUEST_TIMEOUT"]) {
      const bad = load({ [name]: "soon" })
      expect(Either.isLeft(bad) && formatConfigError(bad.left)).toContain(name)
    }
  })
})
