/** Pure parts of observability, table-driven. */
import { describe, expect, it } from "@effect/vitest"
import { Cause, ConfigProvider, Effect, Either, Option, Redacted } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import {
  appConfig,
  formatConfigError,
  type OtlpConfig,
  parseOtlpHeaders,
  parseResourceAttributes
} from "../../src/config/AppConfig.js"
import { routeTemplate } from "../../src/http/Server.js"
import { make as makeMetrics, statusClass } from "../../src/observability/Metrics.js"
import { encodeResource, encodeScope, exportHeader, keyField, ProtoWriter } from "../../src/observability/otlpProto.js"
import {
  accessEntry,
  accessJson,
  cacheStatusOf,
  genAiProviderOf,
  modelOf,
  parseTraceparent,
  redactedQuery
} from "../../src/observability/ProxyObservability.js"
import {
  make as makeProxySpans,
  makeEncoder,
  nanos,
  type ProxySpanRecord,
  type UpstreamSpanRecord
} from "../../src/observability/ProxySpans.js"
import { ProxyRequestContext } from "../../src/proxy/ProxyHooks.js"
import { decodeTraces } from "./otlpDecode.js"
import { parsePrometheus, value } from "./prometheus.js"

describe("modelOf", () => {
  it.each([
    ["{\"model\":\"gpt-4o-mini\",\"messages\":[]}", "gpt-4o-mini"],
    ["{ \"messages\": [], \"model\" : \"claude-3-5-sonnet\" }", "claude-3-5-sonnet"],
    ["{\"messages\":[{\"content\":\"the \\\"model\\\" word\"}]}", undefined],
    ["{\"model\": 42}", undefined],
    ["not json at all", undefined],
    ["", undefined],
    [`{"messages":"${"x".repeat(9000)}","model":"late"}`, undefined]
  ])("%s → %s", (body, model) => {
    expect(modelOf(body === "" ? Buffer.alloc(0) : Buffer.from(body))).toBe(model)
  })
  it("undefined body", () => expect(modelOf(undefined)).toBeUndefined())
})

describe("modelOf against the regular expression it replaces", () => {
  // The previous implementation: native search in the first 8 KiB, then this pattern on 160 latin1 characters.
  const reference = (body: Buffer): string | undefined => {
    const at = (body.length > 8192 ? body.subarray(0, 8192) : body).indexOf("\"model\"")
    if (at === -1) return undefined
    return /^"model"\s*:\s*"([^"\\]{1,128})"/.exec(body.toString("latin1", at, Math.min(body.length, at + 160)))?.[1]
  }
  it("gives the same answer on 5,000 generated bodies", () => {
    let seed = 7
    const rand = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31
      return seed % n
    }
    const pieces = [
      "\"model\"",
      ":",
      " ",
      "\t",
      "\n",
      "\"",
      "\\",
      "gpt-4o",
      "é",
      "\u00a0",
      "x".repeat(60),
      "{",
      ",",
      "\"messages\":[]",
      "m"
    ]
    for (let i = 0; i < 5000; i++) {
      const pad = rand(4) === 0 ? "y".repeat(rand(9000)) : ""
      let text = pad
      const parts = 1 + rand(12)
      for (let j = 0; j < parts; j++) text += pieces[rand(pieces.length)]
      if (rand(2) === 0) {
        text = pad + "{\"model\"" + " ".repeat(rand(3)) + ":" + " ".repeat(rand(3)) + "\"" + "abc".repeat(rand(50)) +
          (rand(3) === 0 ? "\\" : "") + "\"" + text
      }
      const body = Buffer.from(text, rand(2) === 0 ? "latin1" : "utf8")
      expect(modelOf(body), JSON.stringify(text.slice(0, 80))).toBe(reference(body))
    }
  })
})

describe("cacheStatusOf", () => {
  it.each([
    [{ "x-proxy-cache": "stored", "cache-status": "llm-proxy; stored" }, "stored"],
    [{ "x-proxy-cache": "BYPASS" }, "bypass"],
    [{ "cache-status": "llm-proxy; miss" }, "miss"],
    [{ "cache-status": "llm-proxy; stored (forced)" }, "stored"],
    [{ "cache-status": "llm-proxy; conditional-hit" }, "conditional-hit"],
    [{ "cache-status": "othercache; hit" }, "none"],
    [{ "x-proxy-cache": "weird" }, "none"],
    [{}, "none"]
  ])("%j → %s", (headers, status) => expect(cacheStatusOf(headers)).toBe(status))
})

describe("statusClass", () => {
  it.each([[200, "2xx"], [204, "2xx"], [301, "3xx"], [404, "4xx"], [499, "4xx"], [503, "5xx"], [0, "none"], [
    600,
    "none"
  ]])(
    "%i → %s",
    (status, cls) => expect(statusClass(status)).toBe(cls)
  )
})

describe("routeTemplate", () => {
  it.each([
    ["/manage/projects", "/manage/projects"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60", "/manage/projects/:id"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60/tokens/revoke", "/manage/projects/:id/tokens/revoke"],
    ["/manage/tokens/abc123", "/manage/tokens/:id"],
    ["/manage/cache/purge", "/manage/cache/purge"],
    ["/manage/openapi.json", "/manage/openapi.json"]
  ])("%s → %s", (path, template) => expect(routeTemplate(path)).toBe(template))
})

describe("parseOtlpHeaders", () => {
  it.each([
    ["", {}],
    ["api-key=abc", { "api-key": "abc" }],
    ["A=1, b=x%20y ,", { a: "1", b: "x y" }],
    ["x-honeycomb-team=k=v", { "x-honeycomb-team": "k=v" }]
  ])("%s", (input, out) => expect(parseOtlpHeaders(input)).toEqual(Either.right(out)))
  it.each(["novalue", "=v", "bad key=v", "k=%E0%A4%A"])(
    "rejects %s",
    (input) => expect(Either.isLeft(parseOtlpHeaders(input))).toBe(true)
  )
})

const upstream = (over: Partial<UpstreamSpanRecord> = {}): UpstreamSpanRecord => ({
  startMs: 1_700_000_000_001,
  endMs: 1_700_000_000_010,
  error: false,
  errorType: undefined,
  status: 200,
  headersMs: 1.25,
  operation: "chat",
  genAiProvider: "openai",
  serverAddress: "api.openai.com",
  serverPort: 443,
  urlFull: "https://api.openai.com/v1/chat/completions",
  requestModel: "gpt-4o-mini",
  responseModel: "gpt-4o-mini-2024-07-18",
  responseId: "chatcmpl-1",
  finishReasons: ["stop"],
  inputTokens: 9,
  outputTokens: 0,
  cacheReadTokens: undefined,
  cacheCreationTokens: undefined,
  firstChunkSeconds: undefined,
  attempts: 1,
  keyIndex: 0,
  upstreamRequestId: undefined,
  retried: undefined,
  ...over
})

const record = (over: Partial<ProxySpanRecord> = {}): ProxySpanRecord => ({
  startMs: 1_700_000_000_000.5,
  endMs: 1_700_000_000_010,
  error: false,
  method: "POST",
  route: "/v1/chat/completions",
  path: "/v1/chat/completions",
  status: 200,
  requestId: "req-1",
  provider: "openai",
  cache: "miss",
  projectId: "p-1",
  tokenId: "t-1",
  errorCode: undefined,
  parent: undefined,
  upstream: upstream(),
  ...over
})

/** Encodes records with the exporter's encoder for `protocol` and reads the export back in the OTLP/JSON shape. */
const roundTrip = (
  protocol: "http/protobuf" | "http/json",
  records: ReadonlyArray<ProxySpanRecord>,
  attributes: Record<string, string> = {}
) => {
  const encoder = makeEncoder(protocol, "svc", "1.2.3", attributes)
  for (const r of records) encoder.add(r)
  expect(encoder.size()).toBe(records.length)
  const body = encoder.take()
  expect(encoder.size()).toBe(0)
  return (protocol === "http/json" ? JSON.parse(body.toString("utf8")) : decodeTraces(body)) as {
    resourceSpans: Array<{ resource: { attributes: Array<any> }; scopeSpans: Array<{ scope: any; spans: Array<any> }> }>
  }
}

/** An attribute value as a plain JS value (OTLP/JSON gives int64 as number or string), with its OTLP type. */
const valueOf = (v: Record<string, any>): unknown =>
  v["intValue"] !== undefined
    ? Number(v["intValue"])
    : v["arrayValue"] !== undefined
    ? (v["arrayValue"].values as Array<Record<string, any>>).map(valueOf)
    : v["stringValue"] ?? v["doubleValue"] ?? v["boolValue"]
const plain = (attrs: Array<{ key: string; value: Record<string, unknown> }>) =>
  Object.fromEntries(attrs.map(({ key, value: v }) => [key, valueOf(v)]))
const typeOf = (attrs: Array<{ key: string; value: Record<string, unknown> }>, key: string) =>
  Object.keys(attrs.find((a) => a.key === key)!.value)[0]

describe.each(["http/protobuf", "http/json"] as const)("proxy span encoding (%s)", (protocol) => {
  it("builds a server span named by method and route and a GenAI client child named by operation and model", () => {
    const doc = roundTrip(protocol, [record({
      upstream: upstream({
        firstChunkSeconds: 2,
        cacheReadTokens: 4,
        outputTokens: 3,
        attempts: 2,
        keyIndex: 1,
        upstreamRequestId: "req_up_1",
        retried: ["key 0 (openai): 429 in 3.5 ms"]
      })
    })], {
      "deployment.environment.name": "staging"
    })
    expect(doc.resourceSpans).toHaveLength(1)
    expect(plain(doc.resourceSpans[0]!.resource.attributes)).toEqual({
      "deployment.environment.name": "staging",
      "service.name": "svc",
      "service.version": "1.2.3"
    })
    const scope = doc.resourceSpans[0]!.scopeSpans[0]!
    expect(scope.scope).toMatchObject({ name: "llm-proxy/proxy", version: "1.2.3" })
    const [root, up] = scope.spans
    expect(root.name).toBe("POST /v1/chat/completions")
    expect(root.kind).toBe(2)
    expect(root.traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(root.spanId).toMatch(/^[0-9a-f]{16}$/)
    expect(root.parentSpanId ?? "").toBe("")
    expect(String(root.startTimeUnixNano)).toBe("1700000000000500000")
    expect(String(root.endTimeUnixNano)).toBe("1700000000010000000")
    expect(plain(root.attributes)).toEqual({
      "http.request.method": "POST",
      "url.scheme": "http",
      "http.route": "/v1/chat/completions",
      "url.path": "/v1/chat/completions",
      "http.response.status_code": 200,
      "llm_proxy.request_id": "req-1",
      "llm_proxy.provider": "openai",
      "llm_proxy.cache": "miss",
      "llm_proxy.project_id": "p-1",
      "llm_proxy.token_id": "t-1"
    })
    expect(root.status).toEqual({ code: 1 })
    expect(up).toMatchObject({
      name: "chat gpt-4o-mini",
      kind: 3,
      traceId: root.traceId,
      parentSpanId: root.spanId,
      status: { code: 1 }
    })
    expect(up.spanId).not.toBe(root.spanId)
    expect(plain(up.attributes)).toEqual({
      "http.request.method": "POST",
      "server.address": "api.openai.com",
      "server.port": 443,
      "url.full": "https://api.openai.com/v1/chat/completions",
      "gen_ai.operation.name": "chat",
      "gen_ai.provider.name": "openai",
      "gen_ai.request.model": "gpt-4o-mini",
      "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
      "gen_ai.response.id": "chatcmpl-1",
      "gen_ai.response.finish_reasons": ["stop"],
      "http.response.status_code": 200,
      "gen_ai.usage.input_tokens": 9,
      "gen_ai.usage.output_tokens": 3,
      "gen_ai.usage.cache_read.input_tokens": 4,
      "gen_ai.response.time_to_first_chunk": 2,
      "llm_proxy.upstream_headers_ms": 1.25,
      "llm_proxy.upstream_attempts": 2,
      "llm_proxy.key_index": 1,
      "llm_proxy.upstream_request_id": "req_up_1",
      "llm_proxy.retried_attempts": ["key 0 (openai): 429 in 3.5 ms"]
    })
    // Integral seconds stay a double, token counts are integers.
    expect(typeOf(up.attributes, "gen_ai.response.time_to_first_chunk")).toBe("doubleValue")
    expect(typeOf(up.attributes, "gen_ai.usage.input_tokens")).toBe("intValue")
    expect(typeOf(up.attributes, "gen_ai.response.finish_reasons")).toBe("arrayValue")
  })

  it("marks 5xx and upstream failures as errors with error.type", () => {
    const doc = roundTrip(protocol, [
      record({
        error: true,
        status: 502,
        upstream: upstream({
          error: true,
          errorType: "502",
          status: 502,
          responseId: undefined,
          finishReasons: undefined
        })
      }),
      record({
        error: true,
        status: 502,
        errorCode: "upstream_error",
        upstream: upstream({ error: true, errorType: "ECONNREFUSED", status: undefined, headersMs: undefined })
      }),
      record({ error: false, status: 200, upstream: upstream({ error: true, errorType: undefined }) })
    ])
    const spans = doc.resourceSpans[0]!.scopeSpans[0]!.spans
    const [root1, up1, root2, up2, , up3] = spans
    expect(root1.status.code).toBe(2)
    expect(plain(root1.attributes)["error.type"]).toBe("502")
    expect(up1.status.code).toBe(2)
    expect(plain(up1.attributes)["error.type"]).toBe("502")
    expect(plain(root2.attributes)["llm_proxy.error_code"]).toBe("upstream_error")
    expect(up2.status.code).toBe(2)
    expect(plain(up2.attributes)["error.type"]).toBe("ECONNREFUSED")
    expect(plain(up2.attributes)["http.response.status_code"]).toBeUndefined()
    expect(up3.status.code).toBe(2)
    expect(plain(up3.attributes)["error.type"]).toBe("_OTHER")
    expect(spans.filter((s) => s.status.code === 1)).toHaveLength(1)
  })

  it("names a non-GenAI call by its method only, with no gen_ai attributes; an unknown route by the method", () => {
    const doc = roundTrip(protocol, [
      record({
        method: "GET",
        route: "/v1/models",
        path: "/v1/models",
        upstream: upstream({
          operation: undefined,
          requestModel: undefined,
          responseModel: undefined,
          responseId: undefined,
          finishReasons: undefined,
          inputTokens: undefined,
          outputTokens: undefined,
          urlFull: "https://api.openai.com/v1/models?limit=REDACTED"
        })
      }),
      record({ method: "GET", route: "other", path: "/v1/unknown/1", status: 404, upstream: undefined })
    ])
    const [root, up, other] = doc.resourceSpans[0]!.scopeSpans[0]!.spans
    expect(root.name).toBe("GET /v1/models")
    expect(up.name).toBe("GET")
    expect(Object.keys(plain(up.attributes)).filter((k) => k.startsWith("gen_ai."))).toEqual([])
    expect(plain(up.attributes)["url.full"]).toBe("https://api.openai.com/v1/models?limit=REDACTED")
    expect(other.name).toBe("GET")
    expect(plain(other.attributes)["http.route"]).toBeUndefined()
    expect(plain(other.attributes)["url.path"]).toBe("/v1/unknown/1")
  })

  it("continues a trusted caller's trace: its trace id, our server span the child of its span", () => {
    const parent = { traceId: "0af7651916cd43dd8448eb211c80319c", spanId: "b7ad6b7169203331" }
    const doc = roundTrip(protocol, [record({ parent }), record()])
    const [root, up, other] = doc.resourceSpans[0]!.scopeSpans[0]!.spans
    expect(root.traceId).toBe(parent.traceId)
    expect(root.parentSpanId).toBe(parent.spanId)
    expect(up.traceId).toBe(parent.traceId)
    expect(up.parentSpanId).toBe(root.spanId)
    expect(other.traceId).not.toBe(parent.traceId)
  })

  it("keeps unusual strings intact: quotes and newlines, non-ASCII, 200 bytes, 20 KB", () => {
    const odd = ["we\"ird\\model\n", "modèle-日本語-🙂", "m".repeat(200), "x".repeat(20_000)]
    const doc = roundTrip(
      protocol,
      odd.map((model, i) =>
        record({
          requestId: `r-${i}`,
          error: true,
          status: 500,
          upstream: upstream({ requestModel: model, finishReasons: [model, "stop"] })
        })
      )
    )
    const spans = doc.resourceSpans[0]!.scopeSpans[0]!.spans
    const clients = spans.filter((s) => s.kind === 3)
    expect(clients.map((s) => plain(s.attributes)["gen_ai.request.model"])).toEqual(odd)
    expect(clients.map((s) => plain(s.attributes)["gen_ai.response.finish_reasons"])).toEqual(
      odd.map((m) => [m, "stop"])
    )
    expect(clients.map((s) => s.name)).toEqual(odd.map((m) => `chat ${m}`))
    const servers = spans.filter((s) => s.kind === 2)
    expect(servers.map((s) => plain(s.attributes)["llm_proxy.request_id"])).toEqual(["r-0", "r-1", "r-2", "r-3"])
    expect(servers.every((s) => s.status.code === 2 && s.name === "POST /v1/chat/completions")).toBe(true)
  })

  it("encodes 1,000 requests in one body, each its own trace", () => {
    const doc = roundTrip(
      protocol,
      Array.from(
        { length: 1000 },
        (_, i) => record({ requestId: `r-${i}`, upstream: upstream({ inputTokens: i * 1000, responseId: `c-${i}` }) })
      )
    )
    const spans = doc.resourceSpans[0]!.scopeSpans[0]!.spans
    expect(spans).toHaveLength(2000)
    expect(new Set(spans.map((s) => s.traceId)).size).toBe(1000)
    const clients = spans.filter((s) => s.kind === 3).map((s) => plain(s.attributes))
    expect(clients.map((a) => a["gen_ai.usage.input_tokens"])).toEqual(Array.from({ length: 1000 }, (_, i) => i * 1000))
    expect(clients.map((a) => a["gen_ai.response.id"])).toEqual(Array.from({ length: 1000 }, (_, i) => `c-${i}`))
  })
})

describe("GenAI naming helpers", () => {
  it.each([
    [{ name: "openai", origin: "http://127.0.0.1:9999" }, "openai"],
    [{ name: "anthropic", origin: "https://api.anthropic.com" }, "anthropic"],
    [{ name: "claude", origin: "https://api.anthropic.com" }, "anthropic"],
    [{ name: "eu", origin: "https://my-res.openai.azure.com" }, "azure.ai.openai"],
    [{ name: "Mistral", origin: "https://example.net" }, "mistral_ai"],
    [{ name: "gemini", origin: "https://generativelanguage.googleapis.com" }, "gcp.gemini"],
    [{ name: "fast", origin: "https://api.groq.com" }, "groq"],
    [{ name: "local-llm", origin: "http://10.0.0.5:8000" }, "local-llm"]
  ])("gen_ai.provider.name of %j is %s", (p, expected) => expect(genAiProviderOf(p)).toBe(expected))

  it.each([
    ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", {
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      sampled: true
    }],
    ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", {
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      sampled: false
    }],
    // a future version may append fields
    ["01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03-extra", {
      traceId: "0af7651916cd43dd8448eb211c80319c",
      spanId: "b7ad6b7169203331",
      sampled: true
    }],
    ["00-00000000000000000000000000000000-b7ad6b7169203331-01", undefined],
    ["00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", undefined],
    ["ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", undefined],
    ["00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", undefined],
    ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra", undefined],
    ["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331", undefined],
    ["garbage", undefined],
    [[
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ], undefined],
    [undefined, undefined]
  ])("traceparent %j → %j", (h, expected) => expect(parseTraceparent(h as string | undefined)).toEqual(expected))

  it.each([
    ["/v1/models", ""],
    ["/v1/models?", ""],
    ["/v1/models?limit=5&after=abc", "?limit=REDACTED&after=REDACTED"],
    ["/v1/files?purpose", "?purpose"],
    ["/v1/x?key=sk-secret&sig=abc%3D", "?key=REDACTED&sig=REDACTED"]
  ])("query of %s → %s", (url, expected) => expect(redactedQuery(url)).toBe(expected))
})

describe("access line JSON", () => {
  const ctx = (over: Partial<ProxyRequestContext>) => {
    const c = new ProxyRequestContext(
      "req-\"1\"",
      "POST",
      "/v1/chat/completions",
      "/v1/chat/completions",
      undefined,
      1,
      Date.now()
    )
    Object.assign(c, over)
    return c
  }
  it.each([
    ["a bare local error", ctx({ status: 401, code: "invalid_token", error: "token not found" }), {
      durationMs: 0.1234567,
      overheadMs: 0.1,
      model: undefined,
      cache: "none"
    }],
    [
      "a forwarded stream with usage",
      ctx({
        status: 200,
        provider: "openai",
        projectId: "p",
        tokenId: "t",
        stream: true,
        forwarded: true,
        upstreamMs: 12.3456,
        usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 }
      }),
      { durationMs: 20, overheadMs: 0.5, model: "gpt-4o-mini", cache: "miss" }
    ],
    [
      "a request retried on a second key",
      ctx({
        status: 200,
        provider: "openai",
        forwarded: true,
        upstreamMs: 40,
        attemptCount: 2,
        keyIndex: 1,
        upstreamRequestId: "req_\"b\"",
        retried: [{
          keyIndex: 0,
          provider: "openai",
          status: 429,
          error: undefined,
          startMs: 1,
          durationMs: 3.25,
          upstreamRequestId: undefined
        }]
      }),
      { durationMs: 50, overheadMs: 1, model: undefined, cache: "none" }
    ],
    ["odd strings", ctx({ status: 502, error: "upstream \"x\"\n\u2028 lost", provider: "é" }), {
      durationMs: 1,
      overheadMs: 1,
      model: "m\\\"\u0000",
      cache: "bypass"
    }],
    [
      "a token with a name, an end user and metadata",
      ctx({
        status: 200,
        tokenId: "t",
        tokenName: "checkout \"beta\"",
        user: "user-8812",
        tokenMetadata: { plan: "pro", "odd\nkey": "v\u2028" }
      }),
      { durationMs: 2, overheadMs: 0.2, model: "gpt-4o-mini", cache: "none" }
    ]
  ])("%s: the same text as JSON.stringify of the entry", (_, c, f) => {
    expect(accessJson(c, f)).toBe(JSON.stringify(accessEntry(c, f)))
    expect(JSON.parse(accessJson(c, f))).toEqual(JSON.parse(JSON.stringify(accessEntry(c, f))))
  })

  it("carries the token's name, end user and metadata", () => {
    const c = ctx({ status: 200, tokenId: "t", tokenName: "n", user: "u-1", tokenMetadata: { plan: "pro" } })
    expect(JSON.parse(accessJson(c, { durationMs: 1, overheadMs: 1, model: undefined, cache: "none" }))).toMatchObject({
      token_id: "t",
      token_name: "n",
      user: "u-1",
      token_metadata: { plan: "pro" }
    })
  })

  it("a retried request's line names every attempt", () => {
    const c = ctx({
      status: 200,
      forwarded: true,
      attemptCount: 2,
      keyIndex: 1,
      retried: [{
        keyIndex: 0,
        provider: "openai",
        status: 429,
        error: undefined,
        startMs: 1,
        durationMs: 3.25,
        upstreamRequestId: undefined
      }]
    })
    expect(JSON.parse(accessJson(c, { durationMs: 5, overheadMs: 1, model: undefined, cache: "none" }))).toMatchObject({
      attempts: 2,
      key_index: 1,
      retried: "key 0 (openai): 429 in 3.25 ms"
    })
  })
})

describe("otlpProto", () => {
  it("writes fixed64 nanoseconds exactly (against BigInt)", () => {
    const w = new ProtoWriter(16)
    for (let i = 0; i < 2000; i++) {
      const ms = Math.floor(Math.random() * 4_102_444_800_000) + Math.round(Math.random() * 1e6) / 1e6
      w.pos = 0
      w.fixed64Nanos(0x39, ms)
      const whole = Math.floor(ms)
      let frac = Math.round((ms - whole) * 1e6)
      const expected = BigInt(whole) * 1_000_000n + BigInt(frac)
      expect(w.buf.readBigUInt64LE(1)).toBe(expected)
      frac = 0
    }
  })

  it.each([0, 1, 127, 128, 16_383, 16_384, 2 ** 31, 2 ** 32 + 5, Number.MAX_SAFE_INTEGER])("varint %d", (n) => {
    const w = new ProtoWriter(4)
    w.varint(n)
    let v = 0n
    for (let i = 0; i < w.pos; i++) v |= BigInt(w.buf[i]! & 0x7f) << BigInt(7 * i)
    expect(v).toBe(BigInt(n))
    expect(w.buf[w.pos - 1]! & 0x80).toBe(0)
  })

  it("writes doubles as doubles, integral ones and long keys included, and string arrays", () => {
    const long = "k".repeat(200)
    const w = new ProtoWriter(8)
    // A span: name, then the attributes, decoded by the independent reader.
    const at = w.begin(0x12)
    w.string(0x2a, "s")
    w.attrDouble(keyField("short"), 2)
    w.attrDouble(keyField(long), 0.25)
    w.attrDouble(keyField("absent"), undefined)
    w.attrStrings(keyField("reasons"), ["stop", "länge", ""])
    w.end(at)
    const header = exportHeader(encodeResource([]), encodeScope("t", "1"), w.pos)
    const doc = decodeTraces(Buffer.concat([header, w.view()]))
    const scopeSpans = doc.resourceSpans[0]!.scopeSpans as Array<
      { spans: Array<{ attributes: Array<{ key: string; value: unknown }> }> }
    >
    const attributes = scopeSpans[0]!.spans[0]!.attributes
    expect(attributes).toEqual([
      { key: "short", value: { doubleValue: 2 } },
      { key: long, value: { doubleValue: 0.25 } },
      {
        key: "reasons",
        value: { arrayValue: { values: [{ stringValue: "stop" }, { stringValue: "länge" }, { stringValue: "" }] } }
      }
    ])
  })

  it("grows its buffer and keeps what was written", () => {
    const w = new ProtoWriter(8)
    for (let i = 0; i < 100; i++) w.attribute(0x0a, `k${i}`, i % 3 === 0 ? `v${i}` : i % 3 === 1 ? i : -i - 0.5)
    // ExportTraceServiceRequest { resource_spans { resource { attributes… } } }
    const resource = Buffer.concat([Buffer.from([0x0a]), varint(w.pos), w.view()])
    const attrs = decodeTraces(Buffer.concat([Buffer.from([0x0a]), varint(resource.length), resource]))
      .resourceSpans[0]!.resource
      .attributes as Array<any>
    expect(attrs).toHaveLength(100)
    expect(plain(attrs)["k99"]).toBe("v99") // 99 is a multiple of 3: a string
    expect(plain(attrs)["k1"]).toBe(1)
    expect(plain(attrs)["k2"]).toBe(-2.5)
  })
})

const varint = (n: number) => {
  const w = new ProtoWriter(8)
  w.varint(n)
  return Buffer.from(w.view())
}

describe("nanos", () => {
  it.each([
    [1000, "1000000000"],
    [1.5, "1500000"],
    [1_700_000_000_000 + 0.9999999, "1700000000001000000"],
    [1_700_000_000_123.25, "1700000000123250000"]
  ])("nanos(%d) = %s", (ms, ns) => expect(nanos(ms)).toBe(ns))
})

describe("observability configuration", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSyncExit(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  const ok = (env: Record<string, string>) => {
    const exit = load(env)
    if (exit._tag !== "Success") throw new Error(String(exit.cause))
    return exit.value
  }
  const error = (env: Record<string, string>) => {
    const exit = load(env)
    if (exit._tag === "Success") throw new Error("expected a configuration error")
    const failure = Cause.failureOption(exit.cause)
    return failure._tag === "Some" ? formatConfigError(failure.value) : ""
  }

  it("is off without an endpoint; metrics and access log default on", () => {
    const c = ok({})
    expect(Option.isNone(c.otlp)).toBe(true)
    expect([c.enableMetrics, c.accessLog]).toEqual([true, true])
    expect([ok({ ENABLE_METRICS: "false", ACCESS_LOG: "0" }).enableMetrics, ok({ ACCESS_LOG: "0" }).accessLog]).toEqual(
      [false, false]
    )
  })

  it("appends /v1/traces to the generic endpoint; the traces endpoint is used as is", () => {
    const a = Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318/" }).otlp)
    expect(a).toMatchObject({
      tracesUrl: "http://collector:4318/v1/traces",
      protocol: "http/protobuf",
      serviceName: "llm-proxy",
      exportIntervalMs: 5000,
      sampleRatio: 1
    })
    const b = Option.getOrThrow(
      ok({
        OTEL_EXPORTER_OTLP_ENDPOINT: "http://collector:4318",
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "https://vendor.example/otlp/traces",
        OTEL_EXPORTER_OTLP_HEADERS: "api-key=s3cret",
        OTEL_SERVICE_NAME: "gw-eu",
        OTEL_EXPORT_INTERVAL: "1s",
        OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
        OTEL_TRACES_SAMPLER_ARG: "0.25"
      }).otlp
    )
    expect(b).toMatchObject({
      tracesUrl: "https://vendor.example/otlp/traces",
      serviceName: "gw-eu",
      exportIntervalMs: 1000,
      sampleRatio: 0.25
    })
    expect(Redacted.value(b.headers)).toEqual({ "api-key": "s3cret" })
    expect(String(b.headers)).not.toContain("s3cret")
    expect(
      Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_SAMPLER: "always_off" }).otlp)
        .sampleRatio
    ).toBe(0)
  })

  it("takes the protocol from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then OTEL_EXPORTER_OTLP_PROTOCOL, else protobuf", () => {
    const protocol = (env: Record<string, string>) =>
      Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", ...env }).otlp).protocol
    expect(protocol({})).toBe("http/protobuf")
    expect(protocol({ OTEL_EXPORTER_OTLP_PROTOCOL: "HTTP/JSON" })).toBe("http/json")
    expect(protocol({ OTEL_EXPORTER_OTLP_PROTOCOL: "http/json", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "http/protobuf" }))
      .toBe("http/protobuf")
  })

  it("reads the OpenTelemetry SDK variables; the standard name wins over the project's alias", () => {
    const otlp = (env: Record<string, string>) =>
      Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", ...env }).otlp)
    expect(otlp({})).toMatchObject({
      exportIntervalMs: 5000,
      compression: "none",
      timeoutMs: 10_000,
      maxQueueSize: 20_000,
      maxExportBatchSize: 1_000,
      resourceAttributes: {},
      parentBased: true,
      trustIncomingTrace: false
    })
    expect(otlp({ OTEL_BSP_SCHEDULE_DELAY: "250" }).exportIntervalMs).toBe(250)
    expect(otlp({ OTEL_EXPORT_INTERVAL: "2s" }).exportIntervalMs).toBe(2000)
    expect(otlp({ OTEL_EXPORT_INTERVAL: "2s", OTEL_BSP_SCHEDULE_DELAY: "750" }).exportIntervalMs).toBe(750)
    expect(otlp({ OTEL_EXPORTER_OTLP_COMPRESSION: "GZIP" }).compression).toBe("gzip")
    expect(otlp({ OTEL_EXPORTER_OTLP_COMPRESSION: "gzip", OTEL_EXPORTER_OTLP_TRACES_COMPRESSION: "none" }).compression)
      .toBe("none")
    expect(otlp({ OTEL_EXPORTER_OTLP_TIMEOUT: "3000" }).timeoutMs).toBe(3000)
    expect(otlp({ OTEL_EXPORTER_OTLP_TIMEOUT: "3000", OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: "500" }).timeoutMs).toBe(500)
    expect(otlp({ OTEL_BSP_MAX_QUEUE_SIZE: "100" })).toMatchObject({ maxQueueSize: 100, maxExportBatchSize: 100 })
    expect(otlp({ OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "50" }).maxExportBatchSize).toBe(50)
    expect(otlp({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.5" })).toMatchObject({
      sampleRatio: 0.5,
      parentBased: false
    })
    expect(otlp({ TRUST_INCOMING_TRACE_CONTEXT: "true" }).trustIncomingTrace).toBe(true)
  })

  it("OTEL_SDK_DISABLED=true turns tracing off even with an endpoint", () => {
    expect(Option.isNone(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "true" }).otlp)).toBe(
      true
    )
    expect(Option.isSome(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "false" }).otlp)).toBe(
      true
    )
  })

  it("takes resource attributes from OTEL_RESOURCE_ATTRIBUTES; OTEL_SERVICE_NAME wins over its service.name", () => {
    const otlp = (env: Record<string, string>) =>
      Option.getOrThrow(ok({ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", ...env }).otlp)
    const a = otlp({
      OTEL_RESOURCE_ATTRIBUTES:
        "deployment.environment.name=prod,team=ai%20platform,service.name=from-attrs,service.version=9"
    })
    expect(a.resourceAttributes).toEqual({ "deployment.environment.name": "prod", team: "ai platform" })
    expect(a.serviceName).toBe("from-attrs")
    expect(otlp({ OTEL_RESOURCE_ATTRIBUTES: "service.name=from-attrs", OTEL_SERVICE_NAME: "gw" }).serviceName).toBe(
      "gw"
    )
    expect(parseResourceAttributes("Host.Name=a")).toEqual(Either.right({ "Host.Name": "a" }))
  })

  it.each([
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_SDK_DISABLED: "perhaps" }, "OTEL_SDK_DISABLED"],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_RESOURCE_ATTRIBUTES: "no-equals-sign" },
      "OTEL_RESOURCE_ATTRIBUTES"
    ],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_COMPRESSION: "zstd" },
      "OTEL_EXPORTER_OTLP_COMPRESSION"
    ],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_TIMEOUT: "10s" }, "OTEL_EXPORTER_OTLP_TIMEOUT"],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_BSP_SCHEDULE_DELAY: "0" }, "OTEL_BSP_SCHEDULE_DELAY"],
    [{
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
      OTEL_BSP_MAX_QUEUE_SIZE: "10",
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: "20"
    }, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", TRUST_INCOMING_TRACE_CONTEXT: "sometimes" },
      "TRUST_INCOMING_TRACE_CONTEXT"
    ]
  ])("%j → one line naming %s", (env, variable) => {
    expect(error(env)).toMatch(new RegExp(`^invalid configuration: ${variable}: `))
  })

  it.each([
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "collector:4318" }, "OTEL_EXPORTER_OTLP_ENDPOINT"],
    [{ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "ftp://x" }, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_HEADERS: "nonsense" },
      "OTEL_EXPORTER_OTLP_HEADERS"
    ],
    [{ OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_TRACES_SAMPLER: "jaeger_remote" }, "OTEL_TRACES_SAMPLER"],
    [{
      OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318",
      OTEL_TRACES_SAMPLER: "traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "2"
    }, "OTEL_TRACES_SAMPLER_ARG"],
    [{ ENABLE_METRICS: "maybe" }, "ENABLE_METRICS"],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" },
      "OTEL_EXPORTER_OTLP_PROTOCOL"
    ],
    [
      { OTEL_EXPORTER_OTLP_ENDPOINT: "http://c:4318", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "thrift" },
      "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
    ]
  ])("%j → one line naming %s", (env, variable) => {
    expect(error(env)).toMatch(new RegExp(`^invalid configuration: ${variable}: `))
  })
})

describe("Metrics sources read at scrape time", () => {
  it.effect("exposes the cache, bus and dispatcher counters they report; a failing or slow source leaves the last values", () =>
    Effect.gen(function*() {
      const m = yield* makeMetrics({ processMetrics: false })
      let cacheHits = 5
      m.attachCache(
        Effect.sync(() => ({
          hits: cacheHits,
          misses: 7,
          bypass: 2,
          stores: 3,
          evictions: 1,
          expired: 4,
          bytes: 1234,
          entries: 9,
          errors: 0
        }))
      )
      m.attachBus(Effect.succeed({ published: 11, dropped: 1, lag: 3 }))
      m.attachDispatcher(Effect.succeed({ delivered: 10, retries: 2, deadLettered: 1, batches: 4, lag: 6 }))
      m.attachTokenCache(() => ({ hits: 8, loads: 2, size: 2 }))
      m.tokenCacheInvalidated("project")
      yield* m.prometheus
      cacheHits = 6
      yield* m.prometheus
      // A source that fails keeps what was read last.
      m.attachBus(Effect.fail(new Error("bus down")))
      const s = parsePrometheus(yield* m.prometheus)
      const json = yield* m.json
      expect(value(s, "llm_proxy_cache_hits_total")).toBe(6)
      expect(value(s, "llm_proxy_cache_evictions_total")).toBe(1)
      expect(value(s, "llm_proxy_cache_bytes")).toBe(1234)
      expect(value(s, "llm_proxy_bus_published_total")).toBe(11)
      expect(value(s, "llm_proxy_bus_lag_events")).toBe(3)
      expect(value(s, "llm_proxy_dispatcher_delivered_total")).toBe(10)
      expect(value(s, "llm_proxy_dispatcher_retries_total")).toBe(2)
      expect(value(s, "llm_proxy_dispatcher_dead_lettered_total")).toBe(1)
      expect(value(s, "llm_proxy_dispatcher_lag_events")).toBe(6)
      expect(value(s, "llm_proxy_token_cache_hits_total")).toBe(8)
      expect(value(s, "llm_proxy_token_cache_invalidations_total", { scope: "project" })).toBe(1)
      expect(json).toMatchObject({
        cache_hits: 6,
        cache_misses: 7,
        cache_bypass: 2,
        cache_stores: 3,
        request_count: 0,
        error_count: 0
      })
    }))
})

const spansConfig = (over: Partial<OtlpConfig> = {}): OtlpConfig => ({
  tracesUrl: "http://127.0.0.1:9/v1/traces",
  headers: Redacted.make({}),
  serviceName: "t",
  resourceAttributes: {},
  protocol: "http/json",
  exportIntervalMs: 60_000,
  maxQueueSize: 20_000,
  maxExportBatchSize: 1_000,
  compression: "none",
  timeoutMs: 10_000,
  sampleRatio: 1,
  parentBased: true,
  trustIncomingTrace: false,
  ...over
})

describe("ProxySpans exporter", () => {
  /** A collector that answers after `delayMs` (never, for Infinity) and counts what it received. */
  const collector = async (delayMs: number) => {
    const received: Array<Buffer> = []
    const server = createServer((req, res) => {
      const parts: Array<Buffer> = []
      req.on("data", (d: Buffer) => parts.push(d))
      req.on("end", () => {
        received.push(Buffer.concat(parts))
        if (Number.isFinite(delayMs)) setTimeout(() => res.writeHead(200).end("{}"), delayMs)
      })
    })
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
    return {
      url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
      received,
      close: () => {
        server.closeAllConnections()
        return new Promise<void>((r) => server.close(() => r()))
      }
    }
  }

  /** `collector`, closed with the test's scope. */
  const scopedCollector = (delayMs: number) =>
    Effect.acquireRelease(Effect.promise(() => collector(delayMs)), (c) => Effect.promise(c.close))

  // The real clock: exports go to a real collector over HTTP.
  it.scopedLive("gives an export up after OTEL_EXPORTER_OTLP_TIMEOUT and counts its spans as dropped", () =>
    Effect.gen(function*() {
      const c = yield* scopedCollector(Infinity)
      const dropped = yield* Effect.scoped(Effect.gen(function*() {
        const spans = yield* makeProxySpans(
          spansConfig({ tracesUrl: c.url, timeoutMs: 200, maxExportBatchSize: 1 }),
          "v"
        )
        // A full batch (1 record) is sent at once.
        spans.record(record())
        yield* Effect.sleep("600 millis")
        return spans.dropped()
      }))
      expect(c.received).toHaveLength(1)
      expect(dropped).toBe(1)
    }))

  it.scopedLive("finishes the export under way at shutdown, and sends what is still buffered", () =>
    Effect.gen(function*() {
      const c = yield* scopedCollector(300)
      const spans = yield* Effect.scoped(Effect.gen(function*() {
        const spans = yield* makeProxySpans(spansConfig({ tracesUrl: c.url, maxExportBatchSize: 2 }), "v")
        spans.record(record({ requestId: "a" }))
        spans.record(record({ requestId: "b" }))
        // the export of a and b is under way; c waits in the buffer when the scope closes
        spans.record(record({ requestId: "c" }))
        yield* Effect.sleep("50 millis")
        return spans
      }))
      expect(spans.dropped()).toBe(0)
      const ids = c.received.flatMap((b) =>
        (JSON.parse(b.toString("utf8")) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: Array<any> }> }> })
          .resourceSpans[0]!.scopeSpans[0]!.spans.filter((s) => s.kind === 2).map((s) =>
            plain(s.attributes)["llm_proxy.request_id"]
          )
      )
      expect(ids).toEqual(["a", "b", "c"])
    }))
})

describe("ProxySpans sampling", () => {
  it.scoped.each<readonly [boolean, number, boolean | undefined, boolean]>([
    [true, 0, true, true],
    [true, 1, false, false],
    [true, 0, undefined, false],
    [false, 0, true, false],
    [false, 1, false, true]
  ])(
    "parentBased %s, ratio %d, parent sampled %s → %s",
    ([parentBased, ratio, parentSampled, expected]) =>
      Effect.map(makeProxySpans(spansConfig({ sampleRatio: ratio, parentBased }), "v"), (s) => {
        expect(s.sample(parentSampled)).toBe(expected)
      })
  )

  it.scoped.each<readonly [number, boolean]>([[0, false], [1, true]])(
    "ratio %d → sample() %s",
    ([ratio, expected]) =>
      Effect.map(makeProxySpans(spansConfig({ sampleRatio: ratio }), "v"), (s) => {
        expect([s.sample(), s.sample(), s.sample()]).toEqual([expected, expected, expected])
      })
  )

  it.scoped("a ratio of 0.5 samples some requests, not all", () =>
    Effect.map(makeProxySpans(spansConfig({ sampleRatio: 0.5 }), "v"), (s) => {
      const n = Array.from({ length: 1000 }, () => s.sample()).filter(Boolean).length
      expect(n).toBeGreaterThan(300)
      expect(n).toBeLessThan(700)
    }))
})
