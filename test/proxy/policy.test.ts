import { describe, expect, it } from "vitest"
import type { ProviderConfig } from "../../src/config/Providers.js"
import { builtInOpenAi } from "../../src/config/Providers.js"
import {
  Answers,
  bearerCredential,
  checkOrigin,
  checkParams,
  compileGlob,
  corsHeaders,
  downstreamHeaders,
  endpointAllowed,
  isJsonContentType,
  isProxyPath,
  isSafePath,
  preflight,
  requestIdOf,
  serverTiming,
  splitUrl,
  upstreamRequestHeaders
} from "../../src/proxy/policy.js"

const base = builtInOpenAi("http://upstream.test").all[0]!
const provider = (over: Partial<ProviderConfig> = {}): ProviderConfig => ({ ...base, ...over })

describe("paths", () => {
  it.each([
    ["/v1", true],
    ["/v1/", true],
    ["/v1/chat/completions", true],
    ["/v1?x=1", true],
    ["/v10/x", false],
    ["/v1x", false],
    ["/v2/models", false],
    ["/manage/projects", false],
    ["/", false]
  ])("isProxyPath(%s) = %s", (url, expected) => expect(isProxyPath(url)).toBe(expected))

  it.each([
    ["/v1/models?b=2&a=1", "/v1/models", "?b=2&a=1"],
    ["/v1/models", "/v1/models", ""]
  ])("splitUrl(%s)", (url, path, query) => expect(splitUrl(url)).toEqual({ path, query }))

  it.each([
    ["/v1/models", true],
    ["/v1/models/gpt-4o", true],
    ["/v1/files/file-abc/content", true],
    ["/v1/models/../../manage", false],
    ["/v1/./models", false],
    ["/v1/models/..", false],
    ["/v1//models", false],
    ["/v1/models%2F..%2F", false],
    ["/v1/%2e%2e/manage", false],
    ["/v1\\models", false],
    ["/v1/models x", false],
    ["/v1/a%00", false],
    ["v1/models", false]
  ])("isSafePath(%s) = %s", (path, expected) => expect(isSafePath(path)).toBe(expected))

  const endpoints = ["/v1/models", "/v1/chat/completions"]
  it.each([
    ["/v1/models", true],
    ["/v1/models/", true],
    ["/v1/models/gpt-4o", true],
    ["/v1/modelsX", false],
    ["/v1/model", false],
    ["/v1/chat/completions", true],
    ["/v1/chat/completionsfoo", false],
    ["/v1/chat", false],
    ["/v1/fine_tuning/jobs", false]
  ])("endpointAllowed(%s) on segment boundaries = %s", (path, expected) => expect(endpointAllowed(path, endpoints)).toBe(expected))

  it("a '/' endpoint admits everything", () => expect(endpointAllowed("/v1/anything", ["/"])).toBe(true))
})

describe("origin rules", () => {
  it.each([
    ["no origin, not required", provider(), undefined, undefined],
    ["no origin, required", provider({ requireOrigin: true }), undefined, Answers.originRequired],
    ["empty origin, required", provider({ requireOrigin: true }), "", Answers.originRequired],
    ["any origin when the list is empty", provider(), "https://x.example", undefined],
    ["listed origin", provider({ allowedOrigins: ["https://a.example"] }), "https://a.example", undefined],
    ["unlisted origin", provider({ allowedOrigins: ["https://a.example"] }), "https://b.example", Answers.originNotAllowed],
    ["exact match only", provider({ allowedOrigins: ["https://a.example"] }), "https://a.example/", Answers.originNotAllowed]
  ])("%s", (_name, p, origin, expected) => expect(checkOrigin(origin, p)).toEqual(expected))
})

describe("CORS", () => {
  it("preflight without Origin has no CORS headers", () => expect(preflight(undefined, "authorization", [base])).toEqual({}))

  it("preflight echoes an admitted origin, the configured methods and the requested headers", () => {
    const h = preflight("https://a.example", "authorization,content-type", [base])
    expect(h).toMatchObject({
      "access-control-allow-origin": "https://a.example",
      "access-control-allow-methods": "GET, POST, DELETE, OPTIONS",
      "access-control-allow-headers": "authorization,content-type",
      "access-control-max-age": "86400"
    })
    expect(h["access-control-allow-credentials"]).toBeUndefined()
  })

  it("preflight defaults the allowed headers", () =>
    expect(preflight("https://a.example", undefined, [base])["access-control-allow-headers"]).toBe(
      "Authorization, Content-Type, X-Requested-With"
    ))

  it("preflight for an origin no provider admits has no CORS headers", () =>
    expect(preflight("https://evil.example", undefined, [provider({ allowedOrigins: ["https://a.example"] })])).toEqual({}))

  it("answers echo the origin, expose X-Request-ID and vary on Origin", () => {
    expect(corsHeaders(undefined)).toEqual({})
    const h = corsHeaders("https://a.example")
    expect(h["access-control-allow-origin"]).toBe("https://a.example")
    expect(h["access-control-expose-headers"]).toContain("X-Request-ID")
    expect(h.vary).toBe("Origin")
  })
})

describe("parameter whitelist", () => {
  it.each([
    ["application/json", true],
    ["application/json; charset=utf-8", true],
    ["Application/JSON;charset=UTF-8", true],
    ["application/vnd.api+json", true],
    ["text/plain", false],
    ["multipart/form-data; boundary=x", false],
    [undefined, false]
  ])("isJsonContentType(%s) = %s", (ct, expected) => expect(isJsonContentType(ct)).toBe(expected))

  it.each([
    ["gpt-4o", "gpt-4o", true],
    ["gpt-4o-*", "gpt-4o-mini", true],
    ["gpt-4o-*", "gpt-4o", false],
    ["gpt-?", "gpt-4", true],
    ["gpt-?", "gpt-45", false],
    ["*", "a/b", false],
    ["gpt-[34]", "gpt-3", true],
    ["gpt-[^34]", "gpt-3", false],
    ["gpt-[^34]", "gpt-5", true],
    ["gpt-[0-9]", "gpt-7", true],
    ["a\\*", "a*", true],
    ["a\\*", "ab", false],
    ["a.b", "aXb", false],
    ["(x)", "(x)", true]
  ])("glob %s matches %s = %s", (pattern, value, expected) => expect(compileGlob(pattern)?.test(value) === true).toBe(expected))

  it.each([["[abc"], ["x\\"], ["[]"]])("malformed pattern %s matches nothing", (pattern) => expect(compileGlob(pattern)).toBeNull())

  const whitelist = new Map([["model", ["gpt-4o", "gpt-4o-*"]]])
  it.each([
    ["allowed value", { model: "gpt-4o-mini" }, undefined],
    ["no model", { messages: [] }, undefined],
    ["not an object", [1, 2], undefined],
    ["null", null, undefined]
  ])("%s passes", (_n, body, expected) => expect(checkParams(body, whitelist)).toEqual(expected))

  it("a disallowed value names the parameter, the value and the patterns", () =>
    expect(checkParams({ model: "gpt-3.5-turbo" }, whitelist)).toEqual({
      status: 400,
      body: {
        error: "Parameter 'model' value 'gpt-3.5-turbo' is not allowed. Allowed patterns: [gpt-4o gpt-4o-*]",
        code: "param_not_allowed"
      }
    }))

  it("non-string values are compared in their text form", () => {
    expect(checkParams({ n: 2 }, new Map([["n", ["1", "2"]]]))).toBeUndefined()
    expect(checkParams({ n: true }, new Map([["n", ["false"]]]))?.status).toBe(400)
    expect(checkParams({ n: { a: 1 } }, new Map([["n", ["x"]]]))?.body.error).toContain(`'{"a":1}'`)
  })

  it("long values are cut in the message", () =>
    expect(checkParams({ model: "x".repeat(500) }, whitelist)!.body.error.length).toBeLessThan(300))

  it("an empty whitelist checks nothing", () => expect(checkParams({ model: "anything" }, new Map())).toBeUndefined())
})

describe("authorization and ids", () => {
  it.each([
    ["Bearer sk-abc", "sk-abc"],
    ["bearer sk-abc", "sk-abc"],
    ["BEARER   sk-abc  ", "sk-abc"],
    ["Basic abc", undefined],
    ["Bearer ", undefined],
    ["Bearer a b", undefined],
    ["sk-abc", undefined],
    [undefined, undefined]
  ])("bearerCredential(%s) = %s", (header, expected) => expect(bearerCredential(header)).toBe(expected))

  it("keeps a safe client request id and replaces anything else", () => {
    expect(requestIdOf("abc-123_x.y:z")).toBe("abc-123_x.y:z")
    for (const bad of [undefined, "", "a b", "x".repeat(129), "<script>", "a\nb"]) {
      const id = requestIdOf(bad)
      expect(id).not.toBe(bad)
      expect(id).toMatch(/^[0-9a-f-]{36}$/)
    }
  })

  it("Server-Timing names both phases", () => {
    expect(serverTiming(1.234, undefined)).toBe("proxy;dur=1.23")
    expect(serverTiming(0.5, 10)).toBe("proxy;dur=0.50, upstream;dur=10.00")
  })
})

describe("header hygiene", () => {
  const client = {
    host: "proxy.example",
    authorization: "Bearer sk-client-token",
    "x-api-key": "sk-client-token",
    cookie: "session=1",
    connection: "keep-alive, x-drop-me",
    "x-drop-me": "1",
    "keep-alive": "timeout=5",
    "transfer-encoding": "chunked",
    "content-length": "999",
    "x-forwarded-for": "1.2.3.4",
    "x-real-ip": "1.2.3.4",
    "cf-connecting-ip": "1.2.3.4",
    "x-client-ip": "1.2.3.4",
    forwarded: "for=1.2.3.4",
    traceparent: "00-abc-def-01",
    tracestate: "x=y",
    "x-b3-traceid": "abc",
    "x-request-id": "client-id",
    "x-proxy-id": "project",
    "accept-encoding": "gzip, br",
    "content-type": "application/json",
    "openai-organization": "org-1",
    "user-agent": "test"
  }

  it("sends the provider key in its scheme and nothing the client should not leak", () => {
    const h = upstreamRequestHeaders(client, base, "sk-real", "rid-1", 42)
    expect(h).toEqual({
      authorization: "Bearer sk-real",
      "x-request-id": "rid-1",
      "accept-encoding": "identity",
      "content-length": "42",
      "content-type": "application/json",
      "openai-organization": "org-1",
      "user-agent": "test"
    })
  })

  it("x-api-key providers get the bare key and no Authorization", () => {
    const h = upstreamRequestHeaders(client, provider({ authHeader: "x-api-key", authScheme: "" }), "sk-ant", "rid", undefined)
    expect(h["x-api-key"]).toBe("sk-ant")
    expect(h.authorization).toBeUndefined()
    expect(h["content-length"]).toBeUndefined()
  })

  it("strips hop-by-hop headers from the answer", () => {
    expect(
      downstreamHeaders({
        "content-type": "application/json",
        connection: "keep-alive, x-internal",
        "x-internal": "1",
        "keep-alive": "timeout=5",
        "transfer-encoding": "chunked",
        "set-cookie": ["a=1", "b=2"],
        "openai-processing-ms": "12",
        "x-undefined": undefined
      })
    ).toEqual({ "content-type": "application/json", "set-cookie": ["a=1", "b=2"], "openai-processing-ms": "12" })
  })
})
