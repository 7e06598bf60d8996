/**
 * OTLP/HTTP export against a local receiver (a tiny node:http server in the test): spans of the management API,
 * store queries and proxied requests arrive with the right names and parent links, and no secret appears
 * anywhere in what was exported. Trace context never reaches the provider.
 */
import { Option, Redacted } from "effect"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { backends, type BackendInstance } from "../http/harness.js"
import { call, chatBody, projectAndToken, type ProjectAndToken, startStack, type Stack } from "../proxy/stack.js"
import { chatChunks, sse } from "../support/mockUpstream.js"
import { withEncryptionKey } from "../support/server.js"
import { decodeTraces } from "./otlpDecode.js"

interface OtlpSpan {
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId?: string
  readonly name: string
  readonly kind: number
  readonly attributes: ReadonlyArray<{ key: string; value: { stringValue?: string; intValue?: number | string } }>
}

const attr = (s: OtlpSpan, key: string) => {
  const v = s.attributes.find((a) => a.key === key)?.value
  return v?.stringValue ?? (v?.intValue !== undefined ? Number(v.intValue) : undefined)
}

const sqlite = backends.find((b) => b.name === "sqlite")!
const ENCRYPTION_KEY = Buffer.alloc(32, 7).toString("base64")

describe.each(["http/protobuf", "http/json"] as const)("tracing over OTLP/HTTP (%s)", (protocol) => {
  let receiver: Server
  const bodies: Array<Buffer> = []
  const paths: Array<string> = []
  const headers: Array<Record<string, string | string[] | undefined>> = []
  let backend: BackendInstance
  let stack: Stack
  let pt: ProjectAndToken
  let spans: Array<OtlpSpan>
  let resourceAttrs: ReadonlyArray<{ key: string; value: { stringValue?: string } }>

  beforeAll(async () => {
    receiver = createServer((req, res) => {
      const parts: Array<Buffer> = []
      req.on("data", (d: Buffer) => parts.push(d))
      req.on("end", () => {
        paths.push(req.url ?? "")
        headers.push(req.headers)
        bodies.push(Buffer.concat(parts))
        res.writeHead(200, { "content-type": "application/json" })
        res.end("{}")
      })
    })
    await new Promise<void>((r) => receiver.listen(0, "127.0.0.1", r))
    const port = (receiver.address() as AddressInfo).port
    backend = await sqlite.create()
    stack = await startStack(backend, {
      ...withEncryptionKey(ENCRYPTION_KEY),
      otlp: Option.some({
        tracesUrl: `http://127.0.0.1:${port}/v1/traces`,
        protocol,
        headers: Redacted.make({ "x-otlp-api-key": "otlp-secret-header-value" }),
        serviceName: "llm-proxy-test",
        exportIntervalMs: 200,
        sampleRatio: 1
      })
    })
    pt = await projectAndToken(stack.manage)
    expect((await stack.manage.get(`/manage/projects/${pt.projectId}`)).status).toBe(200)
    expect((await call(stack.server.url, "/v1/chat/completions", {
      token: pt.token,
      body: chatBody(),
      headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", tracestate: "vendor=secret" }
    })).status).toBe(200)
    stack.mock.enqueue(sse(chatChunks(["a", "b"])))
    expect((await call(stack.server.url, "/v1/chat/completions", { token: pt.token, body: chatBody({ stream: true }) })).status).toBe(200)
    expect((await call(stack.server.url, "/v1/chat/completions", { token: "sk-" + "Z".repeat(43), body: chatBody() })).status).toBe(401)
    // Probes and scrapes are not traced.
    await fetch(`${stack.server.url}/health`)
    await fetch(`${stack.server.url}/metrics`)
    // Closing the server flushes the exporter.
    await stack.close()
    spans = bodies.flatMap((b, i) => {
      // Each export says how it is encoded; both exporters (management spans, proxy spans) follow `protocol`.
      const doc = (headers[i]!["content-type"] === "application/x-protobuf" ? decodeTraces(b) : JSON.parse(b.toString("utf8"))) as {
        resourceSpans: Array<{ resource: { attributes: typeof resourceAttrs }; scopeSpans: Array<{ spans: Array<OtlpSpan> }> }>
      }
      resourceAttrs = doc.resourceSpans[0]?.resource.attributes ?? []
      return doc.resourceSpans.flatMap((r) => r.scopeSpans.flatMap((s) => s.spans))
    })
  }, 60_000)

  afterAll(async () => {
    await new Promise((r) => receiver.close(r))
    await backend?.cleanup()
  })

  it(`posts ${protocol} to the traces endpoint with the configured headers and service name`, () => {
    expect(bodies.length).toBeGreaterThan(0)
    expect(new Set(paths)).toEqual(new Set(["/v1/traces"]))
    for (const h of headers) {
      expect(h["x-otlp-api-key"]).toBe("otlp-secret-header-value")
      expect(h["content-type"]).toMatch(protocol === "http/json" ? /^application\/json/ : /^application\/x-protobuf$/)
    }
    expect(resourceAttrs.find((a) => a.key === "service.name")?.value.stringValue).toBe("llm-proxy-test")
  })

  it("has management API spans named by method and route template", () => {
    const names = spans.map((s) => s.name)
    expect(names).toContain("POST /manage/projects")
    expect(names).toContain("POST /manage/tokens")
    expect(names).toContain("GET /manage/projects/:id")
    expect(names.some((n) => n.startsWith("GET /health") || n.startsWith("GET /metrics"))).toBe(false)
  })

  it("has store query spans under the management spans", () => {
    const create = spans.find((s) => s.name === "POST /manage/projects")!
    const sql = spans.filter((s) => s.name === "sql.execute")
    expect(sql.length).toBeGreaterThan(0)
    expect(sql.some((s) => s.traceId === create.traceId)).toBe(true)
    expect(sql.every((s) => typeof attr(s, "db.query.text") === "string")).toBe(true)
  })

  it("has a proxy.request span per /v1 request and a proxy.upstream child for forwarded ones", () => {
    const requests = spans.filter((s) => s.name === "proxy.request")
    expect(requests).toHaveLength(3)
    const upstream = spans.filter((s) => s.name === "proxy.upstream")
    expect(upstream).toHaveLength(2)
    for (const u of upstream) {
      const parent = requests.find((r) => r.spanId === u.parentSpanId)
      expect(parent).toBeDefined()
      expect(parent!.traceId).toBe(u.traceId)
      expect(attr(u, "http.response.status_code")).toBe(200)
    }
    const ok = requests.filter((r) => attr(r, "http.response.status_code") === 200)
    expect(ok).toHaveLength(2)
    for (const r of ok) {
      expect(attr(r, "llm_proxy.token_id")).toBe(pt.tokenId)
      expect(attr(r, "llm_proxy.project_id")).toBe(pt.projectId)
      expect(attr(r, "gen_ai.request.model")).toBe("gpt-4o-mini")
      expect(attr(r, "http.route")).toBe("/v1/chat/completions")
    }
    expect(requests.find((r) => attr(r, "http.response.status_code") === 401)).toBeDefined()
  })

  it("exports no secret: management token, provider key, proxy token, encryption key, OTLP headers", () => {
    // Protobuf strings are UTF-8 bytes in the body: a latin1 view finds them as they are.
    const all = bodies.map((b) => b.toString("latin1")).join("\n")
    for (const secret of [stack.server.token, pt.apiKey, pt.token, ENCRYPTION_KEY, "otlp-secret-header-value", "vendor=secret"]) {
      expect(all.includes(secret), secret.slice(0, 6)).toBe(false)
    }
    // The client's Authorization header is recorded redacted, if at all.
    expect(all).not.toMatch(/Bearer\s+sk-/)
  })

  it("never forwards trace context to the provider", () => {
    expect(stack.mock.requests.length).toBe(2)
    for (const r of stack.mock.requests) {
      for (const h of ["traceparent", "tracestate", "b3", "x-b3-traceid"]) expect(r.headers[h], h).toBeUndefined()
    }
  })
})
