/**
 * The proxy as a boundary for callers it does not trust: the token is decided from the headers before a byte of
 * the body is read; a refused request's body is never buffered and its connection closes lingering, so even a client
 * that keeps sending reads its answer (a 413 included); hostile whitelist values get 400; the quota is taken only
 * for answered requests; strangers put no label into the metrics. Real serve stack, raw sockets where a client
 * library would hide the bytes.
 */
import { execFile } from "node:child_process"
import { connect } from "node:net"
import { join } from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { parsePrometheus, value } from "../observability/prometheus.js"
import { json } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import {
  call,
  chatBody,
  eventually,
  type ProjectAndToken,
  projectAndToken,
  type Stack,
  startStack,
  tokenRow
} from "./stack.js"

const YAML = `
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions, /v1/models, /v1/audio/transcriptions]
    allowed_methods: [GET, POST]
    param_whitelist:
      model: ["*gpt*"]
`

const MAX_BODY = 100_000

interface Exchange {
  /** Everything the server sent, latin1. */
  readonly text: string
  /** The server closed the connection (FIN or reset) before our deadline. */
  readonly closed: boolean
  /** Our write failed (EPIPE / ECONNRESET), if it did. */
  readonly writeError: string | undefined
}

/**
 * Writes `head`, then `body` parts; with `keepSending`, writes `chunk` in a loop for as long as the socket lets it.
 * Resolves when the server closes the connection or after `timeoutMs`.
 */
const exchange = (
  port: number,
  head: string,
  options: { body?: string; keepSending?: Buffer; timeoutMs?: number; until?: (text: string) => boolean } = {}
): Promise<Exchange> =>
  new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1")
    let text = ""
    let writeError: string | undefined
    let done = false
    const finish = (closed: boolean) => {
      if (done) return
      done = true
      clearTimeout(timer)
      socket.destroy()
      resolve({ text, closed, writeError })
    }
    const timer = setTimeout(() => finish(false), options.timeoutMs ?? 5_000)
    socket.on("data", (d: Buffer) => {
      text += d.toString("latin1")
      if (options.until?.(text)) finish(false)
    })
    socket.on("error", (e: NodeJS.ErrnoException) => {
      writeError ??= e.code
    })
    socket.on("close", () => finish(true))
    socket.on("connect", () => {
      socket.write(head)
      if (options.body !== undefined) socket.write(options.body)
      const chunk = options.keepSending
      if (chunk === undefined) return
      const pump = () => {
        while (!done && !socket.destroyed) {
          if (!socket.write(chunk)) return void socket.once("drain", pump)
        }
      }
      pump()
    })
  })

const statusOf = (text: string) => Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
const finalStatus = (text: string) =>
  Number([...text.matchAll(/HTTP\/1\.1 (\d{3})/g)].filter((m) => m[1] !== "100").at(0)?.[1] ?? 0)
const headerOf = (text: string, name: string) =>
  new RegExp(`\\r\\n${name}: ([^\\r]*)\\r\\n`, "i").exec(text.slice(0, text.indexOf("\r\n\r\n") + 2))?.[1]
const bodyOf = (text: string) => JSON.parse(text.slice(text.indexOf("\r\n\r\n") + 4))

let backend: BackendInstance
let stack: Stack
let t: ProjectAndToken
let port: number

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, { maxRequestSize: MAX_BODY }, YAML)
  port = Number(new URL(stack.server.url).port)
  t = await projectAndToken(stack.manage)
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})
beforeEach(() => stack.mock.reset())

const post = (headers: string) =>
  `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${headers}\r\n`

describe("nothing before the token", () => {
  it("an anonymous request is answered 401 while its body is still on the way, and the connection is closed", async () => {
    // 10 of 1,000,000 declared bytes: the answer cannot have waited for the body.
    const r = await exchange(port, post("Content-Length: 1000000\r\n"), { body: "{\"model\":\"" })
    expect(statusOf(r.text)).toBe(401)
    expect(proxyError(bodyOf(r.text))).toMatchObject({
      message: "Invalid token",
      code: "invalid_token",
      description: "missing or invalid authorization header"
    })
    expect(headerOf(r.text, "connection")).toBe("close")
    expect(r.closed).toBe(true)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it.each([
    ["unknown", `Bearer sk-${"A".repeat(42)}E`, "token_not_found"],
    ["malformed", "Bearer nope", "invalid_token"]
  ])(
    "an %s token with a body over MAX_REQUEST_SIZE gets its 401 (not 413): the size is not looked at first",
    async (_n, auth, code) => {
      const r = await exchange(port, post(`Authorization: ${auth}\r\nContent-Length: ${MAX_BODY * 300}\r\n`), {
        body: "{"
      })
      expect(statusOf(r.text)).toBe(401)
      expect(proxyError(bodyOf(r.text)).code).toBe(code)
    }
  )

  it("an anonymous request with a disallowed model gets 401, not the whitelist's 400", async () => {
    const r = await call(stack.server.url, "/v1/chat/completions", { body: chatBody({ model: "claude" }) })
    expect(proxyError(r.json).code).toBe("invalid_token")
  })

  it("Expect: 100-continue — a stranger never gets `100 Continue` (its body is never sent); a token holder does", async () => {
    const refused = await exchange(port, post("Expect: 100-continue\r\nContent-Length: 20\r\n"))
    expect(refused.text).not.toContain("100 Continue")
    expect(statusOf(refused.text)).toBe(401)
    const body = JSON.stringify(chatBody())
    const head = post(`Authorization: Bearer ${t.token}\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n`)
    const socket = connect(port, "127.0.0.1")
    const text = await new Promise<string>((resolve, reject) => {
      let got = ""
      socket.on("error", reject)
      socket.on("data", (d: Buffer) => {
        got += d.toString("latin1")
        if (got.startsWith("HTTP/1.1 100 Continue\r\n\r\n") && got.length === 25) socket.write(body)
        if (/\r\n\r\n[\s\S]*\r\n\r\n/.test(got) && got.includes("chat.completion")) resolve(got)
      })
      socket.on("connect", () => socket.write(head))
    })
    socket.destroy()
    expect(text.startsWith("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")).toBe(true)
    expect(finalStatus(text)).toBe(200)
  })

  it("a refused request on a keep-alive connection without a body keeps the connection open", async () => {
    const r = await exchange(port, "GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n", { timeoutMs: 300 })
    expect(statusOf(r.text)).toBe(401)
    expect(headerOf(r.text, "connection")).toBe("keep-alive")
    expect(r.closed).toBe(false)
  })
})

describe("a 413 the client can read (lingering close)", () => {
  const client = join(import.meta.dirname, "keep-sending-client.mjs")

  it.each([
    ["Content-Length", `Content-Length: ${MAX_BODY * 100}\r\n`, "cl"],
    ["chunked", "Transfer-Encoding: chunked\r\n", "chunked"]
  ])(
    "%s: a client (own process) that keeps sending after the 413 still reads it, every time",
    async (_n, framing, mode) => {
      const head = post(`Authorization: Bearer ${t.token}\r\n${framing}`)
      // Not execFileSync: the server under test runs in this process.
      const { stdout } = await promisify(execFile)(process.execPath, [
        client,
        String(port),
        mode,
        "10",
        JSON.stringify(head)
      ], { timeout: 60_000 })
      const attempts = stdout.trim().split("\n").map((l) =>
        JSON.parse(l) as { status: number; body: string; error: string | null }
      )
      expect(attempts).toHaveLength(10)
      for (const a of attempts) {
        expect({ status: a.status, error: a.status === 413 ? null : a.error }).toEqual({ status: 413, error: null })
        expect(proxyError(JSON.parse(a.body))).toMatchObject({
          message: "Request body too large",
          code: "request_too_large"
        })
      }
      expect(stack.mock.requests).toHaveLength(0)
    }
  )

  it("after the 413 the server closes the connection by itself, even if the client never stops sending", async () => {
    const r = await exchange(port, post(`Authorization: Bearer ${t.token}\r\nContent-Length: ${MAX_BODY * 100}\r\n`), {
      keepSending: Buffer.alloc(64 * 1024, 0x61),
      timeoutMs: 10_000
    })
    expect(statusOf(r.text)).toBe(413)
    expect(headerOf(r.text, "connection")).toBe("close")
    expect(r.closed).toBe(true)
  })
})

describe("hostile whitelist values (a token holder)", () => {
  it("a 1 MB model against a `*gpt*` whitelist → 400 param_not_allowed, echoing at most a prefix", async () => {
    const r = await call(stack.server.url, "/v1/chat/completions", {
      token: t.token,
      body: chatBody({ model: "gp".repeat(45_000) })
    })
    expect(r.status).toBe(400)
    expect(proxyError(r.json).code).toBe("param_not_allowed")
    expect(r.text.length).toBeLessThan(300)
  })

  it("a deeply nested model → 400 param_not_allowed, not a 500", async () => {
    const nested = `{"model":${"[".repeat(40_000)}${"]".repeat(40_000)}}`
    const r = await call(stack.server.url, "/v1/chat/completions", { token: t.token, body: nested })
    expect(r.status).toBe(400)
    expect(proxyError(r.json)).toMatchObject({
      message: "Parameter 'model' value is longer than 4096 characters or nested too deeply",
      code: "param_not_allowed"
    })
    expect(stack.mock.requests).toHaveLength(0)
  })
})

describe("the quota is taken only for answered requests", () => {
  it("a request the open circuit breaker refuses uses no quota", async () => {
    const local = await startStack(await backends[0]!.create(), {
      circuitBreakerThreshold: 1,
      circuitBreakerCooldownMs: 60_000
    })
    try {
      const l = await projectAndToken(local.manage, { max_requests: 5 })
      local.mock.enqueue(json({}, { status: 503 }))
      const go = () => call(local.server.url, "/v1/chat/completions", { token: l.token, body: chatBody() })
      expect((await go()).status).toBe(503)
      for (let i = 0; i < 3; i++) expect(proxyError((await go()).json).code).toBe("upstream_unavailable")
      expect(local.mock.requests).toHaveLength(1)
      expect(Number((await tokenRow(local.backend, l.tokenId)).request_count)).toBe(1)
    } finally {
      await local.close()
    }
  })
})

describe("metric labels come only from authenticated traffic", () => {
  it("300 anonymous requests with made-up models do not use up the model label set", async () => {
    const local = await startStack(await backends[0]!.create(), {}, undefined)
    try {
      const l = await projectAndToken(local.manage)
      for (let i = 0; i < 300; i += 50) {
        await Promise.all(
          Array.from(
            { length: 50 },
            (_, j) =>
              call(local.server.url, "/v1/chat/completions", {
                token: null,
                body: chatBody({ model: `junk-${i + j}` })
              })
          )
        )
      }
      expect(
        (await call(local.server.url, "/v1/chat/completions", {
          token: l.token,
          body: chatBody({ model: "real-model" })
        })).status
      ).toBe(200)
      await eventually(async () => {
        const s = parsePrometheus(await (await fetch(`${local.server.url}/metrics`)).text())
        return value(s, "llm_proxy_tokens_total", { model: "real-model", kind: "prompt" }) === 9
      })
      const text = await (await fetch(`${local.server.url}/metrics`)).text()
      expect(text).not.toContain("junk-")
    } finally {
      await local.close()
    }
  })
})
