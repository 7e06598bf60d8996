/**
 * Fuzzing the /v1 data plane and the HTTP layer under it:
 *
 *   requests   random methods × paths (encoded traversal, `//`, dot segments, unicode look-alikes, absolute-form
 *              targets) × query strings × headers × tokens (none, garbage, unknown, revoked, valid) → never a 5xx;
 *              nothing reaches the provider without the valid token; what reaches it is exactly the path sent,
 *              safe, and a method + path the built-in provider admits, with no credential in its query and none of
 *              the client's OpenAI-Organization / OpenAI-Project / X-Forwarded-* / non-allow-listed headers
 *   strangers  requests without a valid token, any body framing (Content-Length up to far beyond MAX_REQUEST_SIZE,
 *              chunked, `Expect: 100-continue`) with the body only partly sent → a 401 (never a body-dependent answer,
 *              never `100 Continue`) before the body is complete, then the connection is closed
 *   raw HTTP   malformed bytes over node:net: random garbage, bad chunking, smuggling framings, pipelined garbage,
 *              slowloris headers and trickled bodies → a 4xx or a closed connection, never a hang; the server keeps
 *              answering everyone else meanwhile
 */
import { FastCheck as fc } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { builtInOpenAi } from "../../src/config/Providers.js"
import { hasQueryCredential, isSafePath, routeOf, splitUrl } from "../../src/proxy/policy.js"
import { type BackendInstance, backends } from "../http/harness.js"
import {
  call,
  chatBody,
  createToken,
  type ProjectAndToken,
  projectAndToken,
  type Stack,
  startStack
} from "../proxy/stack.js"
import { printTally, rawExchange, rawHttp, runs, sleep, tally } from "./support.js"

const TITLE = "proxy and HTTP-layer fuzzing"
const BUILT_IN = builtInOpenAi("http://upstream.invalid").get("openai")!
/** Client headers the built-in provider may forward (the rest of what the mock sees is set by the proxy or Node). */
const FORWARDABLE =
  /^(content-type|accept|accept-language|if-none-match|if-modified-since|user-agent|origin|idempotency-key|openai-beta|anthropic-version|anthropic-beta|anthropic-dangerous-direct-browser-access|x-stainless-.*)$/
const PROXY_SET = new Set([
  "host",
  "connection",
  "content-length",
  "transfer-encoding",
  "authorization",
  "x-request-id",
  "accept-encoding"
])

let backend: BackendInstance
let stack: Stack
let port: number
let live: ProjectAndToken
let revoked: string

beforeAll(async () => {
  backend = await backends[0]!.create()
  // Short client timeouts so slowloris and trickled bodies are cut within the test.
  stack = await startStack(backend, { headersTimeoutMs: 2_000, clientRequestTimeoutMs: 4_000 })
  port = Number(new URL(stack.server.url).port)
  live = await projectAndToken(stack.manage)
  const r = await createToken(stack.manage, live.projectId)
  await stack.manage.delete(`/manage/tokens/${r.tokenId}`)
  revoked = r.token
})
afterAll(async () => {
  printTally(TITLE)
  await stack?.close()
  await backend?.cleanup()
})

const healthy = async () => {
  expect((await fetch(`${stack.server.url}/health`)).status).toBe(200)
  const p = await call(stack.server.url, "/v1/chat/completions", { token: live.token, body: chatBody() })
  expect(p.status).toBe(200)
}

describe("the /v1 data plane under hostile requests", () => {
  it("requests: never a 5xx, never the provider without a valid token, only safe allowed paths upstream", async () => {
    const segment = fc.oneof(
      fc.constantFrom(
        "v1",
        "chat",
        "completions",
        "models",
        "embeddings",
        "files",
        "manage",
        "projects",
        "admin",
        "..",
        ".",
        "",
        "%2e%2e",
        "%2E%2e",
        ".%2e",
        "%2f",
        "%2F",
        "%5c",
        "\\",
        "%00",
        "%252e%252e",
        "%c0%ae",
        "..;",
        "%09",
        "V1",
        "%76%31",
        "v1%2fchat",
        "ｖ１",
        "chat%2Fcompletions",
        "completions%3F",
        "completions#x",
        "e\u0301",
        "\u212a",
        "models\u0000"
      ),
      fc.stringMatching(/^[A-Za-z0-9._~%-]{0,12}$/)
    )
    const path = fc.oneof(
      // Paths the built-in provider admits (for some method), so that the upstream invariants below get exercised.
      {
        arbitrary: fc.constantFrom(
          "/v1/chat/completions",
          "/v1/responses",
          "/v1/embeddings",
          "/v1/models",
          "/v1/models/gpt-4o",
          "/v1/audio/speech"
        ),
        weight: 2
      },
      fc.array(segment, { minLength: 1, maxLength: 5 }).map((s) => `/v1/${s.join("/")}`),
      fc.array(segment, { minLength: 1, maxLength: 5 }).map((s) => `/${s.join("/")}`),
      fc.constantFrom(
        "/v1/chat/completions",
        "/v1/chat/completions/",
        "//v1/chat/completions",
        "/v1//chat/completions",
        "/v1/chat/completions/..",
        "/v1/chat/../../manage/projects",
        "/v1/%2e%2e/manage/projects",
        "/v1/models%2f..%2f..%2fmanage",
        "/./v1/chat/completions",
        "/v1/chat/completionsX",
        "/v1",
        "/v1?x=1",
        "http://evil.example/v1/chat/completions",
        "http://127.0.0.1/v1/chat/completions",
        "*",
        "/V1/chat/completions",
        "/v1/models/gpt-4o",
        "/v1/files/file-x/content",
        "/v1/models/..;/files",
        "/v1/responses",
        "/v1/audio/speech"
      )
    )
    const query = fc.oneof(
      fc.constant(""),
      fc.array(fc.tuple(fc.stringMatching(/^[a-z_]{1,8}$/), fc.stringMatching(/^[A-Za-z0-9%._~-]{0,16}$/)), {
        maxLength: 3
      })
        .map((p) => "?" + p.map(([k, v]) => `${k}=${v}`).join("&")),
      fc.constantFrom(
        "?",
        "??",
        "?%",
        "?%zz",
        "?a=%00",
        "?__proto__[x]=1",
        "?url=http://evil.example",
        "?" + "a".repeat(2000)
      ),
      fc.tuple(
        fc.constantFrom(
          "key",
          "KEY",
          "api-key",
          "api_key",
          "Api_Key",
          "apikey",
          "access_token",
          "token",
          "auth",
          "%6Bey",
          "limit",
          "after"
        ),
        fc.constantFrom("=AIza-secret", "=", "", "=x;y=1"),
        fc.constantFrom("", "&a=1", ";b=2")
      ).map(([k, v, rest]) => `?${k}${v}${rest}`)
    )
    const method = fc.constantFrom(
      "GET",
      "POST",
      "GET",
      "POST",
      "PUT",
      "DELETE",
      "PATCH",
      "HEAD",
      "OPTIONS",
      "TRACE",
      "FOO",
      "get"
    )
    const token = fc.constantFrom<"none" | "garbage" | "unknown" | "revoked" | "valid" | "management">(
      "none",
      "garbage",
      "unknown",
      "revoked",
      "valid",
      "valid",
      "management"
    )
    const extra = fc.array(
      fc.tuple(
        fc.constantFrom(
          "Host",
          "X-Forwarded-Host",
          "X-Forwarded-For",
          "Origin",
          "X-Request-ID",
          "Content-Type",
          "X-Api-Key",
          "Forwarded",
          "X-Original-URL",
          "X-Rewrite-URL",
          "OpenAI-Organization",
          "OpenAI-Project",
          "X-Forwarded-User-Agent",
          "X-Forwarded-Server",
          "Proxy-Status",
          "Cookie",
          "Traceparent",
          "X-Stainless-Lang",
          "OpenAI-Beta",
          "X-Custom"
        ),
        fc.oneof(
          fc.stringMatching(/^[ -~]{0,40}$/),
          fc.constantFrom("evil.example", "127.0.0.1:1", "http://evil.example", "../../", "application/json")
        )
      ),
      { maxLength: 3 }
    )
    const credentialOf = (t: string): Array<readonly [string, string]> => {
      switch (t) {
        case "none":
          return []
        case "garbage":
          return [["Authorization", "Bearer not-a-token"]]
        case "unknown":
          return [["Authorization", `Bearer sk-${"A".repeat(43)}`]]
        case "revoked":
          return [["Authorization", `Bearer ${revoked}`]]
        case "management":
          return [["Authorization", `Bearer ${stack.server.token}`]]
        default:
          return [["Authorization", `Bearer ${live.token}`]]
      }
    }
    await fc.assert(
      fc.asyncProperty(method, path, query, token, extra, fc.boolean(), async (m, p, q, t, headers, withBody) => {
        tally(TITLE, `/v1 requests (token: ${t})`)
        const target = p === "*" ? "*" : p + q
        const body = withBody ? JSON.stringify(chatBody()) : undefined
        // The raw client sends its own Host; a generated Host goes first (Node keeps the first).
        const h: Array<readonly [string, string]> = [
          ...credentialOf(t),
          ...headers.filter(([k]) => k !== "Host"),
          ...(body !== undefined
            ? [["Content-Type", "application/json"] as const, ["Content-Length", String(body.length)] as const]
            : [])
        ]
        const seen = stack.mock.requests.length
        const r = await rawHttp(port, m, target, h, body)
        expect(r.timedOut).toBe(false)
        if (!r.dropped && r.status >= 500) throw new Error(`${m} ${target} (${t}): ${r.status} ${r.body.slice(0, 200)}`)
        const reached = stack.mock.requests.slice(seen)
        if (reached.length === 0) return
        if (t !== "valid") throw new Error(`${m} ${target} reached the provider with token "${t}"`)
        for (const u of reached) {
          tally(TITLE, "/v1 requests that reached the provider")
          expect(u.url).toBe(target)
          expect(isSafePath(u.path)).toBe(true)
          expect(routeOf(u.method, u.path, BUILT_IN), `${u.method} ${u.path}`).toBeUndefined()
          expect(hasQueryCredential(splitUrl(u.url).query), u.url).toBe(false)
          expect(u.headers.authorization).toBe(`Bearer ${live.apiKey}`)
          for (const name of Object.keys(u.headers)) {
            if (!PROXY_SET.has(name) && !FORWARDABLE.test(name)) {
              throw new Error(`${m} ${target}: client header ${name} reached the provider`)
            }
          }
        }
      }),
      { numRuns: runs(1000) }
    )
    await healthy()
  })
})

describe("strangers' bodies are never read", () => {
  it("any framing, any size, only partly sent: 401 before the body is complete, no 100 Continue, connection closed", async () => {
    const seen = stack.mock.requests.length
    const credential = fc.constantFrom<string | undefined>(
      undefined,
      "Bearer not-a-token",
      `Bearer sk-${"A".repeat(43)}`,
      "Basic eDp5"
    )
    const framing = fc.oneof(
      fc.integer({ min: 1, max: 2 ** 36 }).map((n) => ({
        header: `Content-Length: ${n}\r\n`,
        declared: n,
        chunked: false
      })),
      fc.constant({ header: "Transfer-Encoding: chunked\r\n", declared: Infinity, chunked: true })
    )
    await fc.assert(
      fc.asyncProperty(
        credential,
        framing,
        fc.boolean(),
        fc.constantFrom("application/json", "multipart/form-data; boundary=x", "text/plain"),
        fc.constantFrom("/v1/chat/completions", "/v1/audio/transcriptions", "/v1/embeddings"),
        fc.integer({ min: 0, max: 4_000 }),
        async (auth, f, expectContinue, contentType, path, sent) => {
          tally(TITLE, "strangers' partial bodies")
          const head = `POST ${path} HTTP/1.1\r\nHost: x\r\nContent-Type: ${contentType}\r\n${f.header}` +
            (auth !== undefined ? `Authorization: ${auth}\r\n` : "") +
            (expectContinue ? "Expect: 100-continue\r\n" : "") + "\r\n"
          // Strictly less than declared: the request is never complete.
          const n = Math.min(sent, Number.isFinite(f.declared) ? f.declared - 1 : sent)
          const body = f.chunked ? (n > 0 ? `${n.toString(16)}\r\n${"x".repeat(n)}\r\n` : "") : "x".repeat(n)
          const r = await rawExchange(port, [Buffer.from(head + body, "latin1")], { timeoutMs: 8_000, idleMs: 8_000 })
          expect(r.timedOut, head).toBe(false)
          expect(r.statuses, head).toEqual([401])
          expect(r.text).not.toContain("100 Continue")
          expect(r.text).toMatch(/\r\nConnection: close\r\n/i)
          expect(r.closed).toBe(true)
        }
      ),
      { numRuns: runs(60) }
    )
    expect(stack.mock.requests.length).toBe(seen)
    await healthy()
  })
})

describe("malformed HTTP over raw sockets", () => {
  const chat = JSON.stringify(chatBody())
  const head = (extra: string, path = "/v1/chat/completions") =>
    `POST ${path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${live.token}\r\nContent-Type: application/json\r\n${extra}`

  const expectRefusedOrClosed = (
    r: { statuses: ReadonlyArray<number>; closed: boolean; timedOut: boolean; text: string },
    what: string
  ) => {
    if (r.timedOut) throw new Error(`${what}: the connection hung`)
    if (r.statuses.some((s) => s >= 500)) throw new Error(`${what}: ${r.text.slice(0, 200)}`)
  }

  it("garbage: random bytes, then a half-close, get a 400 or a close", async () => {
    const seen = stack.mock.requests.length
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.uint8Array({ minLength: 1, maxLength: 300 }).map((b) => Buffer.from(b)),
          fc.string({ maxLength: 200 }).map((s) => Buffer.from(s)),
          fc.constantFrom(
            "GET / HTTP/1.1\r\n\r\n",
            "GET /v1/models HTTP/9.9\r\nHost: x\r\n\r\n",
            "GET /v1/models\r\n\r\n",
            "\r\n\r\n\r\n",
            "GET /v1/models HTTP/1.1\nHost: x\n\n",
            "GET\t/v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/mo dels HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/models HTTP/1.1\r\nHost: x\r\n Folded: y\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
            "GET /v1/models HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "\u0016\u0003\u0001\u0000\u00a5\u0001\u0000\u0000\u00a1\u0003\u0003"
          ).map((s) => Buffer.from(s, "latin1"))
        ),
        async (bytes) => {
          tally(TITLE, "raw: garbage")
          const r = await rawExchange(port, [bytes], { endWrite: true, timeoutMs: 8_000, idleMs: 2_000 })
          expectRefusedOrClosed(r, JSON.stringify(bytes.toString("latin1").slice(0, 80)))
        }
      ),
      { numRuns: runs(200) }
    )
    expect(stack.mock.requests.length).toBe(seen)
    await healthy()
  })

  it("bad chunking and smuggling framings: a 4xx or a close, never a request upstream", async () => {
    const seen = stack.mock.requests.length
    const cases: ReadonlyArray<readonly [string, string]> = [
      ["size not hex", head("Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")],
      ["size larger than the data", head("Transfer-Encoding: chunked\r\n\r\nff\r\n{}\r\n0\r\n\r\n")],
      ["size smaller than the data", head(`Transfer-Encoding: chunked\r\n\r\n2\r\n${chat}\r\n0\r\n\r\n`)],
      [
        "missing CRLF after the data",
        head(`Transfer-Encoding: chunked\r\n\r\n${chat.length.toString(16)}\r\n${chat}0\r\n\r\n`)
      ],
      ["negative size", head("Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n")],
      ["64-bit size", head("Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n")],
      ["huge chunk extension", head(`Transfer-Encoding: chunked\r\n\r\n2;${"x".repeat(20_000)}\r\n{}\r\n0\r\n\r\n`)],
      [
        "CL and TE together",
        head(
          `Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n`
        )
      ],
      ["two Content-Lengths", head(`Content-Length: 2\r\nContent-Length: ${chat.length}\r\n\r\n${chat}`)],
      ["TE chunked, identity", head(`Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n`)],
      ["TE with obs-fold", head(`Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n`)],
      ["TE xchunked", head(`Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n`)],
      ["Content-Length with sign", head(`Content-Length: +${chat.length}\r\n\r\n${chat}`)],
      ["Content-Length beyond MAX_REQUEST_SIZE", head(`Content-Length: 99999999999\r\n\r\n{}`)],
      ["bare LF in a header value", head(`X-A: a\nb\r\nContent-Length: 2\r\n\r\n{}`)],
      ["NUL in a header value", head(`X-A: a\u0000b\r\nContent-Length: 2\r\n\r\n{}`)],
      ["space before the colon", head(`Content-Length : 2\r\n\r\n{}`)],
      ["16 KB of headers", head(`X-Big: ${"a".repeat(17_000)}\r\nContent-Length: 2\r\n\r\n{}`)]
    ]
    for (const [name, bytes] of cases) {
      tally(TITLE, "raw: framing")
      const r = await rawExchange(port, [Buffer.from(bytes, "latin1")], {
        endWrite: true,
        timeoutMs: 8_000,
        idleMs: 1_000
      })
      expectRefusedOrClosed(r, name)
      const first = r.statuses[0]
      // A framing the parser accepts as something else (e.g. a short chunk) may reach the upstream only as a
      // complete, valid request; the ones below must not.
      if (first !== undefined && first < 400 && !["size smaller than the data"].includes(name)) {
        throw new Error(`${name}: answered ${first}`)
      }
    }
    // Smuggled second requests never surfaced upstream as their own request.
    expect(stack.mock.requests.slice(seen).every((u) => u.path === "/v1/chat/completions")).toBe(true)
    await healthy()
  })

  it("pipelining: valid requests are answered in order, garbage after them gets a 400 and a close", async () => {
    const one = `GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${live.token}\r\n\r\n`
    tally(TITLE, "raw: pipelined", 4)
    const ten = await rawExchange(port, [Buffer.from(one.repeat(10))], { timeoutMs: 8_000, idleMs: 1_000 })
    expect(ten.statuses).toEqual(Array(10).fill(200))
    // Garbage in the same packet as valid requests: the parser fails on the packet, the connection gets a 400 and
    // is closed (the requests before it are broken HTTP too).
    const packed = await rawExchange(port, [Buffer.from(one + one + "GARBAGE / HTTP/1.1\r\n\r\n" + one)], {
      timeoutMs: 8_000,
      idleMs: 1_000
    })
    expect(packed.statuses.every((s) => s === 200 || s === 400)).toBe(true)
    expect(packed.statuses.at(-1)).toBe(400)
    expect(packed.closed).toBe(true)
    // Garbage after the answers went out: those stand, then 400 and close.
    const later = await rawExchange(port, [
      Buffer.from(one + one),
      { delayMs: 300 },
      Buffer.from("GARBAGE / HTTP/1.1\r\n\r\n" + one)
    ], { timeoutMs: 8_000, idleMs: 1_000 })
    expect(later.statuses).toEqual([200, 200, 400])
    expect(later.closed).toBe(true)
    const unauth = await rawExchange(port, [Buffer.from("GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5))], {
      timeoutMs: 8_000,
      idleMs: 1_000
    })
    expect(unauth.statuses).toEqual(Array(5).fill(401))
  })

  it("slowloris: trickled headers and bodies get a 408 and a close; everyone else is served meanwhile", async () => {
    const slowHeaders = Array.from({ length: 40 }, () =>
      rawExchange(port, [
        Buffer.from("POST /v1/chat/completions HTTP/1.1\r\n"),
        ...Array.from({ length: 30 }, (_, i) => [{ delayMs: 250 }, Buffer.from(`X-${i}: y\r\n`)]).flat()
      ], { timeoutMs: 15_000, idleMs: 15_000 }))
    const silent = Array.from({ length: 20 }, () => rawExchange(port, [], { timeoutMs: 15_000, idleMs: 15_000 }))
    const slowBody = Array.from({ length: 20 }, () =>
      rawExchange(port, [
        Buffer.from(head(`Content-Length: ${chat.length}\r\n\r\n`)),
        ...Array.from({ length: 40 }, (_, i) => [{ delayMs: 250 }, Buffer.from(chat[i] ?? " ")]).flat()
      ], { timeoutMs: 15_000, idleMs: 15_000 }))
    // Without a token a trickled body is not waited for: 401 at once, the connection closed after a short linger.
    const strangerBody = Array.from({ length: 20 }, () =>
      rawExchange(port, [
        Buffer.from(
          `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${chat.length}\r\n\r\n`
        ),
        ...Array.from({ length: 40 }, (_, i) => [{ delayMs: 250 }, Buffer.from(chat[i] ?? " ")]).flat()
      ], { timeoutMs: 15_000, idleMs: 15_000 }))
    tally(TITLE, "raw: slowloris headers", 40)
    tally(TITLE, "raw: silent connections", 20)
    tally(TITLE, "raw: trickled bodies", 20)
    tally(TITLE, "raw: trickled bodies without a token", 20)
    // Meanwhile the gateway answers normal traffic promptly.
    const started = Date.now()
    for (let i = 0; i < 20; i++) {
      const r = await call(stack.server.url, "/v1/chat/completions", { token: live.token, body: chatBody() })
      expect(r.status).toBe(200)
    }
    expect(Date.now() - started).toBeLessThan(10_000)
    for (const r of await Promise.all(slowHeaders)) {
      expect(r.timedOut).toBe(false)
      expect(r.closed).toBe(true)
      expect(r.statuses).toEqual([408])
      expect(r.ms).toBeLessThan(6_000)
    }
    for (const r of await Promise.all(silent)) {
      expect(r.timedOut).toBe(false)
      expect(r.closed).toBe(true)
    }
    for (const r of await Promise.all(slowBody)) {
      expect(r.timedOut).toBe(false)
      expect(r.closed).toBe(true)
      expect(r.statuses.every((s) => s === 408)).toBe(true)
    }
    for (const r of await Promise.all(strangerBody)) {
      expect(r.timedOut).toBe(false)
      expect(r.closed).toBe(true)
      expect(r.statuses).toEqual([401])
      // answered long before CLIENT_REQUEST_TIMEOUT (4 s here) would have cut it
      expect(r.ms).toBeLessThan(3_500)
    }
    await sleep(100)
    await healthy()
  })
})
