/**
 * OTLP/HTTP export against a local receiver (a tiny node:http server in the test), with the tracing configuration
 * read from OpenTelemetry environment variables as a deployment sets them: spans of the management API, store
 * queries and proxied requests arrive with the names and attributes of the HTTP and GenAI semantic conventions and
 * the right parent links; gzip bodies when asked; resource attributes from OTEL_RESOURCE_ATTRIBUTES; a caller's trace
 * is continued only with TRUST_INCOMING_TRACE_CONTEXT; no secret appears anywhere in what was exported; trace
 * context never reaches the provider; OTEL_SDK_DISABLED exports nothing.
 */
import { ConfigProvider, Effect, Option } from "effect"
import { createServer, type IncomingHttpHeaders, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { gunzipSync } from "node:zlib"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { appConfig, type OtlpConfig } from "../../src/config/AppConfig.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, type ProjectAndToken, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { chatChunks, json, reset, sse } from "../support/mockUpstream.js"
import { withEncryptionKey } from "../support/server.js"
import { decodeTraces } from "./otlpDecode.js"

interface AnyValue {
  readonly stringValue?: string
  readonly intValue?: number | string
  readonly doubleValue?: number
  readonly arrayValue?: { readonly values: ReadonlyArray<AnyValue> }
}

interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly kind: number
  readonly attributes: ReadonlyArray<{ key: string; value: AnyValue }>
  readonly status?: { readonly code?: number }
}

const valueOf = (v: AnyValue | undefined): unknown =>
  v === undefined
    ? undefined
    : v.arrayValue !== undefined
    ? v.arrayValue.values.map(valueOf)
    : v.stringValue ?? (v.intValue !== undefined ? Number(v.intValue) : v.doubleValue)
const attr = (s: OtlpSpan, key: string) => valueOf(s.attributes.find((a) => a.key === key)?.value)
const attrs = (s: OtlpSpan) => Object.fromEntries(s.attributes.map((a) => [a.key, valueOf(a.value)]))

const sqlite = backends.find((b) => b.name === "sqlite")!
const ENCRYPTION_KEY = Buffer.alloc(32, 7).toString("base64")
const CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
const CLIENT_SPAN = "b7ad6b7169203331"
const RESOURCE_ATTRIBUTES = "deployment.environment.name=ci,team=ai%20gateway,service.name=ignored"

/** The tracing settings `serve` would read from these environment variables. */
const otlpFromEnv = (env: Record<string, string>): Option.Option<OtlpConfig> =>
  Effect.runSync(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env))))).otlp

/** An OTLP/HTTP receiver that keeps every export, decoded from gzip when it says so. */
const startReceiver = async () => {
  const exports: Array<
    { readonly path: string; readonly headers: IncomingHttpHeaders; readonly body: Buffer; readonly raw: Buffer }
  > = []
  const server: Server = createServer((req, res) => {
    const parts: Array<Buffer> = []
    req.on("data", (d: Buffer) => parts.push(d))
    req.on("end", () => {
      const raw = Buffer.concat(parts)
      const body = req.headers["content-encoding"] === "gzip" ? gunzipSync(raw) : raw
      exports.push({ path: req.url ?? "", headers: req.headers, body, raw })
      res.writeHead(200, { "content-type": "application/json" })
      res.end("{}")
    })
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`
  const decoded = () =>
    exports.map((e) => {
      // Each export says how it is encoded; both exporters (management spans, proxy spans) follow the protocol.
      const doc = (e.headers["content-type"] === "application/x-protobuf"
        ? decodeTraces(e.body)
        : JSON.parse(e.body.toString("utf8"))) as {
          resourceSpans: Array<
            { resource: { attributes: OtlpSpan["attributes"] }; scopeSpans: Array<{ spans: Array<OtlpSpan> }> }
          >
        }
      return doc.resourceSpans
    })
  return {
    url,
    exports,
    spans: () => decoded().flatMap((rs) => rs.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans))),
    resources: () => decoded().flatMap((rs) => rs.map((r) => r.resource.attributes)),
    close: () => new Promise<void>((r) => server.close(() => r()))
  }
}

type Receiver = Awaited<ReturnType<typeof startReceiver>>

describe.each(["http/protobuf", "http/json"] as const)("tracing over OTLP/HTTP (%s)", (protocol) => {
  let receiver: Receiver
  let backend: BackendInstance
  let stack: Stack
  let pt: ProjectAndToken
  let spans: Array<OtlpSpan>
  let managementTrace: string | undefined

  beforeAll(async () => {
    receiver = await startReceiver()
    backend = await sqlite.create()
    // As in a deployment, the variable is in the environment too: nothing may read it a second time on its own.
    process.env["OTEL_RESOURCE_ATTRIBUTES"] = RESOURCE_ATTRIBUTES
    stack = await startStack(backend, {
      ...withEncryptionKey(ENCRYPTION_KEY),
      otlp: otlpFromEnv({
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
        OTEL_EXPORTER_OTLP_HEADERS: "x-otlp-api-key=otlp-secret-header-value",
        OTEL_EXPORTER_OTLP_COMPRESSION: "gzip",
        OTEL_SERVICE_NAME: "llm-proxy-test",
        OTEL_RESOURCE_ATTRIBUTES: RESOURCE_ATTRIBUTES,
        OTEL_BSP_SCHEDULE_DELAY: "200"
      })
    })
    pt = await projectAndToken(stack.manage)
    const { mock, server } = stack
    const url = server.url
    const traceparent = `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01`
    // A management request with a caller's trace context: not trusted, so not continued.
    const m = await fetch(`${url}/manage/projects/${pt.projectId}`, {
      headers: { authorization: `Bearer ${server.token}`, traceparent }
    })
    expect(m.status).toBe(200)
    // 1. JSON chat answer (with a caller's trace context, not trusted).
    mock.enqueue(json({
      id: "chatcmpl-json-1",
      object: "chat.completion",
      model: "gpt-4o-mini-2024-07-18",
      choices: [{ index: 0, message: { role: "assistant", content: "Hello" }, finish_reason: "stop" }],
      usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12, prompt_tokens_details: { cached_tokens: 4 } }
    }))
    expect(
      (await call(url, "/v1/chat/completions", {
        token: pt.token,
        body: chatBody(),
        headers: { traceparent, tracestate: "vendor=secret" }
      })).status
    ).toBe(200)
    // 2. Streamed answer, its chunks 20 ms apart.
    mock.enqueue(sse(chatChunks(["a", "b", "c"]), { intervalMs: 20 }))
    expect(
      (await call(url, "/v1/chat/completions", { token: pt.token, body: chatBody({ model: "gpt-4.1", stream: true }) }))
        .status
    ).toBe(200)
    // 3. Unknown token: answered locally, no upstream span.
    expect((await call(url, "/v1/chat/completions", { token: "sk-" + "Z".repeat(43), body: chatBody() })).status).toBe(
      401
    )
    // 4. Upstream 503.
    mock.enqueue(json({ error: { message: "overloaded" } }, { status: 503 }))
    expect((await call(url, "/v1/chat/completions", { token: pt.token, body: chatBody() })).status).toBe(503)
    // 5. Upstream drops the connection without an answer.
    mock.enqueue(reset())
    expect((await call(url, "/v1/chat/completions", { token: pt.token, body: chatBody() })).status).toBe(502)
    // 6. Embeddings.
    mock.enqueue(
      json({ object: "list", model: "text-embedding-3-small", data: [], usage: { prompt_tokens: 5, total_tokens: 5 } })
    )
    expect(
      (await call(url, "/v1/embeddings", { token: pt.token, body: { model: "text-embedding-3-small", input: "hi" } }))
        .status
    ).toBe(200)
    // 7. Not a GenAI operation, with a query.
    mock.enqueue(json({ object: "list", data: [] }))
    expect((await call(url, "/v1/models?limit=5&after=secret-cursor", { token: pt.token })).status).toBe(200)
    // Probes and scrapes are not traced.
    await fetch(`${url}/health`)
    await fetch(`${url}/metrics`)
    // Closing the server flushes the exporters.
    await stack.close()
    spans = receiver.spans()
    managementTrace = spans.find((s) => s.name === "GET /manage/projects/:id")?.traceId
  }, 60_000)

  afterAll(async () => {
    delete process.env["OTEL_RESOURCE_ATTRIBUTES"]
    await receiver?.close()
    await backend?.cleanup()
  })

  it(`posts gzip-compressed ${protocol} to the traces endpoint with the configured headers`, () => {
    expect(receiver.exports.length).toBeGreaterThan(0)
    for (const e of receiver.exports) {
      expect(e.path).toBe("/v1/traces")
      expect(e.headers["x-otlp-api-key"]).toBe("otlp-secret-header-value")
      expect(e.headers["content-type"]).toMatch(
        protocol === "http/json" ? /^application\/json/ : /^application\/x-protobuf$/
      )
      expect(e.headers["content-encoding"]).toBe("gzip")
      // gzip magic number: the body really is compressed
      expect([e.raw[0], e.raw[1]]).toEqual([0x1f, 0x8b])
    }
  })

  it("puts OTEL_RESOURCE_ATTRIBUTES on every resource, with one service.name (OTEL_SERVICE_NAME's)", () => {
    const resources = receiver.resources()
    // Both exporters: management / store spans and the data plane's.
    expect(resources.length).toBeGreaterThanOrEqual(2)
    for (const r of resources) {
      expect(r.filter((a) => a.key === "service.name").map((a) => a.value.stringValue)).toEqual(["llm-proxy-test"])
      expect(r.find((a) => a.key === "deployment.environment.name")?.value.stringValue).toBe("ci")
      expect(r.find((a) => a.key === "team")?.value.stringValue).toBe("ai gateway")
    }
  })

  it("has management API spans named by method and route template, and store query spans under them", () => {
    const names = spans.map((s) => s.name)
    expect(names).toContain("POST /manage/projects")
    expect(names).toContain("POST /manage/tokens")
    expect(names).toContain("GET /manage/projects/:id")
    expect(names.some((n) => n.startsWith("GET /health") || n.startsWith("GET /metrics"))).toBe(false)
    const create = spans.find((s) => s.name === "POST /manage/projects")!
    const sql = spans.filter((s) => s.name === "sql.execute")
    expect(sql.some((s) => s.traceId === create.traceId)).toBe(true)
    expect(sql.every((s) => typeof attr(s, "db.query.text") === "string")).toBe(true)
  })

  it("has a server span per /v1 request, named by method and route, and a client child per forwarded one", () => {
    const servers = spans.filter((s) => s.kind === 2 && (attr(s, "url.path") as string | undefined)?.startsWith("/v1/"))
    expect(servers.map((s) => s.name).sort()).toEqual([
      "GET /v1/models",
      "POST /v1/chat/completions",
      "POST /v1/chat/completions",
      "POST /v1/chat/completions",
      "POST /v1/chat/completions",
      "POST /v1/chat/completions",
      "POST /v1/embeddings"
    ])
    const clients = spans.filter((s) => s.kind === 3 && servers.some((r) => r.spanId === s.parentSpanId))
    // Every forwarded request (all but the unknown token), in the trace of its server span.
    expect(clients).toHaveLength(6)
    for (const c of clients) expect(c.traceId).toBe(servers.find((r) => r.spanId === c.parentSpanId)!.traceId)
    const unknown = servers.find((s) => attr(s, "http.response.status_code") === 401)!
    expect(attrs(unknown)).toMatchObject({
      "http.request.method": "POST",
      "http.route": "/v1/chat/completions",
      "url.scheme": "http"
    })
    expect(attr(unknown, "llm_proxy.token_id")).toBeUndefined()
    const ok = servers.find((s) =>
      attr(s, "http.response.status_code") === 200 && s.name === "POST /v1/chat/completions"
    )!
    expect(attrs(ok)).toMatchObject({
      "llm_proxy.token_id": pt.tokenId,
      "llm_proxy.project_id": pt.projectId,
      "llm_proxy.provider": "openai"
    })
    // The GenAI attributes are on the client span only (a backend counts each call and its tokens once).
    expect(servers.flatMap((s) => s.attributes.map((a) => a.key)).filter((k) => k.startsWith("gen_ai."))).toEqual([])
  })

  it("names the GenAI client span `{operation} {model}` and records what the JSON answer said", () => {
    const span = spans.find((s) => attr(s, "gen_ai.response.id") === "chatcmpl-json-1")!
    expect(span.name).toBe("chat gpt-4o-mini")
    expect(span.kind).toBe(3)
    expect(span.status?.code).toBe(1)
    expect(attrs(span)).toEqual({
      "http.request.method": "POST",
      "server.address": "127.0.0.1",
      "server.port": stack.mock.port,
      "url.full": `${stack.mock.url}/v1/chat/completions`,
      "gen_ai.operation.name": "chat",
      "gen_ai.provider.name": "openai",
      "gen_ai.request.model": "gpt-4o-mini",
      "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
      "gen_ai.response.id": "chatcmpl-json-1",
      "gen_ai.response.finish_reasons": ["stop"],
      "http.response.status_code": 200,
      "gen_ai.usage.input_tokens": 9,
      "gen_ai.usage.output_tokens": 3,
      "gen_ai.usage.cache_read.input_tokens": 4,
      "llm_proxy.upstream_headers_ms": attr(span, "llm_proxy.upstream_headers_ms"),
      "llm_proxy.upstream_attempts": 1,
      "llm_proxy.key_index": 0
    })
    expect(attr(span, "llm_proxy.upstream_headers_ms")).toBeGreaterThan(0)
  })

  it("records a streamed answer's id, model, finish reason, usage and time to first chunk", () => {
    const span = spans.find((s) => s.name === "chat gpt-4.1")!
    expect(attrs(span)).toMatchObject({
      "gen_ai.request.model": "gpt-4.1",
      "gen_ai.response.model": "gpt-4o-mini",
      "gen_ai.response.id": "chatcmpl-mock",
      "gen_ai.response.finish_reasons": ["stop"],
      "gen_ai.usage.input_tokens": 5,
      "gen_ai.usage.output_tokens": 3
    })
    // The first chunk came before the end of the stream (3 more chunks, 20 ms apart).
    const first = attr(span, "gen_ai.response.time_to_first_chunk") as number
    expect(first).toBeGreaterThan(0)
    const spanSeconds = Number(BigInt((span as any).endTimeUnixNano) - BigInt((span as any).startTimeUnixNano)) / 1e9
    expect(first).toBeLessThan(spanSeconds)
  })

  it("marks a 5xx from upstream and an upstream that failed without an answer as errors, with error.type", () => {
    const failed = spans.filter((s) =>
      s.kind === 2 && s.status?.code === 2 && (attr(s, "url.path") as string | undefined)?.startsWith("/v1/")
    )
    expect(failed.map((s) => attr(s, "error.type")).sort()).toEqual(["502", "503"])
    const overloaded = spans.find((s) => s.kind === 3 && attr(s, "http.response.status_code") === 503)!
    expect(overloaded.status?.code).toBe(2)
    expect(attr(overloaded, "error.type")).toBe("503")
    const dropped = spans.find((s) =>
      s.kind === 3 && s.status?.code === 2 && attr(s, "http.response.status_code") === undefined
    )!
    expect(dropped.name).toBe("chat gpt-4o-mini")
    // the client library's error code (undici: the socket closed before a response)
    expect(attr(dropped, "error.type")).toMatch(/^(UND_ERR_SOCKET|ECONNRESET)$/)
    const server = spans.find((s) => s.spanId === dropped.parentSpanId)!
    expect(attrs(server)).toMatchObject({
      "http.response.status_code": 502,
      "llm_proxy.error_code": expect.any(String)
    })
  })

  it("names embeddings `embeddings {model}`; a non-GenAI call is a plain HTTP client span with its query redacted", () => {
    const embeddings = spans.find((s) => s.name === "embeddings text-embedding-3-small")!
    expect(attrs(embeddings)).toMatchObject({
      "gen_ai.operation.name": "embeddings",
      "gen_ai.response.model": "text-embedding-3-small",
      "gen_ai.usage.input_tokens": 5
    })
    const models = spans.find((s) =>
      s.kind === 3 && (attr(s, "url.full") as string | undefined)?.includes("/v1/models")
    )!
    expect(models.name).toBe("GET")
    expect(attr(models, "url.full")).toBe(`${stack.mock.url}/v1/models?limit=REDACTED&after=REDACTED`)
    expect(models.attributes.map((a) => a.key).filter((k) => k.startsWith("gen_ai."))).toEqual([])
    // The server span's path has no query either.
    expect(
      spans.find((s) => s.name === "GET /v1/models" && s.kind === 2)!.attributes.some((a) =>
        JSON.stringify(a).includes("secret-cursor")
      )
    ).toBe(false)
  })

  it("does not continue a caller's trace without TRUST_INCOMING_TRACE_CONTEXT (management API and /v1)", () => {
    expect(managementTrace).toBeDefined()
    expect(managementTrace).not.toBe(CLIENT_TRACE)
    expect(spans.some((s) => s.traceId === CLIENT_TRACE || s.parentSpanId === CLIENT_SPAN)).toBe(false)
  })

  it("exports no secret: management token, provider key, proxy token, encryption key, OTLP headers, query values", () => {
    // Protobuf strings are UTF-8 bytes in the body: a latin1 view finds them as they are.
    const all = receiver.exports.map((e) => e.body.toString("latin1")).join("\n")
    for (
      const secret of [
        stack.server.token,
        pt.apiKey,
        pt.token,
        ENCRYPTION_KEY,
        "otlp-secret-header-value",
        "vendor=secret",
        "secret-cursor"
      ]
    ) {
      expect(all.includes(secret), secret.slice(0, 6)).toBe(false)
    }
    // The client's Authorization header is recorded redacted, if at all.
    expect(all).not.toMatch(/Bearer\s+sk-/)
  })

  it("never forwards trace context to the provider", () => {
    expect(stack.mock.requests.length).toBe(6)
    for (const r of stack.mock.requests) {
      for (const h of ["traceparent", "tracestate", "b3", "x-b3-traceid"]) expect(r.headers[h], h).toBeUndefined()
    }
  })
})

describe.each(["http/protobuf", "http/json"] as const)("TRUST_INCOMING_TRACE_CONTEXT=true (%s)", (protocol) => {
  let receiver: Receiver
  let backend: BackendInstance
  let stack: Stack
  let spans: Array<OtlpSpan>

  beforeAll(async () => {
    receiver = await startReceiver()
    backend = await sqlite.create()
    stack = await startStack(backend, {
      otlp: otlpFromEnv({
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: protocol,
        OTEL_BSP_SCHEDULE_DELAY: "200",
        TRUST_INCOMING_TRACE_CONTEXT: "true"
      })
    })
    const pt = await projectAndToken(stack.manage)
    const url = stack.server.url
    const m = await fetch(`${url}/manage/projects/${pt.projectId}`, {
      headers: { authorization: `Bearer ${stack.server.token}`, traceparent: `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01` }
    })
    expect(m.status).toBe(200)
    // Sampled by the caller: continued.
    expect(
      (await call(url, "/v1/chat/completions", {
        token: pt.token,
        body: chatBody(),
        headers: { traceparent: `00-${CLIENT_TRACE}-${CLIENT_SPAN}-01` }
      })).status
    ).toBe(200)
    // Not sampled by the caller: the default parent-based sampler records nothing for it.
    expect(
      (await call(url, "/v1/chat/completions", {
        token: pt.token,
        body: chatBody({ model: "unsampled" }),
        headers: { traceparent: `00-${"1".repeat(32)}-${"2".repeat(16)}-00` }
      })).status
    ).toBe(200)
    // Malformed: a trace of our own.
    expect(
      (await call(url, "/v1/chat/completions", {
        token: pt.token,
        body: chatBody({ model: "malformed" }),
        headers: { traceparent: "00-xyz-01" }
      })).status
    ).toBe(200)
    await stack.close()
    spans = receiver.spans()
  }, 60_000)

  afterAll(async () => {
    await receiver?.close()
    await backend?.cleanup()
  })

  it("continues the caller's trace: the /v1 server span is a child of the caller's span, the upstream span of it", () => {
    const server = spans.find((s) =>
      s.kind === 2 && s.name === "POST /v1/chat/completions" && s.traceId === CLIENT_TRACE
    )!
    expect(server.parentSpanId).toBe(CLIENT_SPAN)
    const client = spans.find((s) => s.parentSpanId === server.spanId)!
    expect(client).toMatchObject({ traceId: CLIENT_TRACE, name: "chat gpt-4o-mini", kind: 3 })
  })

  it("continues it on the management API too", () => {
    const span = spans.find((s) => s.name === "GET /manage/projects/:id")!
    expect(span.traceId).toBe(CLIENT_TRACE)
    expect(span.parentSpanId).toBe(CLIENT_SPAN)
  })

  it("follows the caller's sampled flag, and ignores a malformed traceparent", () => {
    expect(spans.some((s) => s.name === "chat unsampled" || s.traceId === "1".repeat(32))).toBe(false)
    const own = spans.find((s) => s.name === "chat malformed")!
    expect(own.traceId).not.toBe(CLIENT_TRACE)
    const parent = spans.find((s) => s.spanId === own.parentSpanId)!
    expect(parent.kind).toBe(2)
    expect(parent.parentSpanId ?? "").toBe("")
  })

  it("still never forwards trace context to the provider", () => {
    expect(stack.mock.requests.length).toBe(3)
    for (const r of stack.mock.requests) expect(r.headers["traceparent"]).toBeUndefined()
  })
})

describe("OTEL_SDK_DISABLED=true", () => {
  it("exports nothing, although an endpoint is set", async () => {
    const receiver = await startReceiver()
    const backend = await sqlite.create()
    const otlp = otlpFromEnv({
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url.replace(/\/v1\/traces$/, ""),
      OTEL_SDK_DISABLED: "true",
      OTEL_BSP_SCHEDULE_DELAY: "50"
    })
    expect(Option.isNone(otlp)).toBe(true)
    const stack = await startStack(backend, { otlp })
    try {
      const pt = await projectAndToken(stack.manage)
      expect((await call(stack.server.url, "/v1/chat/completions", { token: pt.token, body: chatBody() })).status).toBe(
        200
      )
    } finally {
      await stack.close()
    }
    // The same traffic with tracing on exported within the 50 ms interval or at close; here nothing came.
    expect(receiver.exports).toHaveLength(0)
    await receiver.close()
    await backend.cleanup()
  })
})
