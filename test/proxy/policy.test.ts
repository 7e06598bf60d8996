import { Either } from "effect"
import { describe, expect, it } from "vitest"
import type { ProviderConfig } from "../../src/config/Providers.js"
import { builtInOpenAi, endpoint, parseProvidersYaml } from "../../src/config/Providers.js"
import {
  Answers,
  bearerCredential,
  checkOrigin,
  checkParams,
  compileGlob,
  corsHeaders,
  downstreamHeaders,
  endpointMatches,
  hasQueryCredential,
  isJsonContentType,
  isProxyPath,
  isSafePath,
  methodsFor,
  preflight,
  requestIdOf,
  routeOf,
  routeRefusal,
  serverTiming,
  splitUrl,
  upstreamRequestHeaders
} from "../../src/proxy/policy.js"

const base = builtInOpenAi("http://upstream.test").all[0]!
const provider = (over: Partial<ProviderConfig> = {}): ProviderConfig => ({ ...base, ...over })
/** A provider from one providers-YAML entry (the keys under `apis.p`). */
const fromYaml = (entry: string): ProviderConfig =>
  Either.getOrThrow(
    parseProvidersYaml(`apis:\n  p:\n    base_url: http://upstream.test\n${entry.replace(/^/gm, "    ")}\n`)
  ).get("p")!

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

  it.each([
    ["/v1/models/..;/files", false],
    ["/v1/models;a=b", false],
    ["/v1/models/%3B", false],
    ["/v1/chat/completions#x", false]
  ])("isSafePath(%s) = %s: `;` and `#` are refused", (path, expected) => expect(isSafePath(path)).toBe(expected))

  const prefixes = [endpoint("/v1/models", ["GET"], true), endpoint("/v1/chat/completions", ["POST"], true)]
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
  ])(
    "prefix endpoints match %s on segment boundaries = %s",
    (path, expected) => expect(prefixes.some((e) => endpointMatches(path, e))).toBe(expected)
  )

  it.each([
    ["/v1/responses", endpoint("/v1/responses", ["POST"], false), true],
    ["/v1/responses/resp_1", endpoint("/v1/responses", ["POST"], false), false],
    ["/v1/responses/", endpoint("/v1/responses", ["POST"], false), false],
    ["/v1/models/gpt-4o", endpoint("/v1/models/{id}", ["GET"], false), true],
    ["/v1/models/ft:gpt-4o:org:x", endpoint("/v1/models/{id}", ["GET"], false), true],
    ["/v1/models", endpoint("/v1/models/{id}", ["GET"], false), false],
    ["/v1/models/", endpoint("/v1/models/{id}", ["GET"], false), false],
    ["/v1/models/a/b", endpoint("/v1/models/{id}", ["GET"], false), false],
    ["/v1/modelsX/a", endpoint("/v1/models/{id}", ["GET"], false), false],
    ["/v1/files/f1/content", endpoint("/v1/files/{id}/content", ["GET"], false), true],
    ["/v1/files/f1/contents", endpoint("/v1/files/{id}/content", ["GET"], false), false],
    ["/v1/files/f1/content/x", endpoint("/v1/files/{id}", ["GET"], true), true],
    ["/v1/files/f1", endpoint("/v1/files/{id}", ["GET"], true), true],
    ["/v1/files", endpoint("/v1/files/{id}", ["GET"], true), false]
  ])(
    "exact, prefix and {id} matching: %s against %o = %s",
    (path, e, expected) => expect(endpointMatches(path, e)).toBe(expected)
  )

  it("a '/' prefix admits everything", () =>
    expect(endpointMatches("/v1/anything", endpoint("/", ["GET"], true))).toBe(true))
})

describe("the route: path + method", () => {
  const notAllowed = (...allow: Array<string>) => Answers.methodNotAllowed(allow)
  it.each([
    // the inference API
    ["POST", "/v1/responses", undefined],
    ["POST", "/v1/chat/completions", undefined],
    ["POST", "/v1/completions", undefined],
    ["POST", "/v1/embeddings", undefined],
    ["POST", "/v1/moderations", undefined],
    ["POST", "/v1/audio/transcriptions", undefined],
    ["POST", "/v1/audio/speech", undefined],
    ["POST", "/v1/images/generations", undefined],
    ["POST", "/v1/images/edits", undefined],
    ["GET", "/v1/models", undefined],
    ["GET", "/v1/models/gpt-4o", undefined],
    // reading stored data, deleting, retired endpoints
    ["GET", "/v1/chat/completions", notAllowed("POST")],
    ["GET", "/v1/chat/completions/chatcmpl-1", Answers.endpointNotFound],
    ["GET", "/v1/responses/resp_1", Answers.endpointNotFound],
    ["GET", "/v1/files/file-1/content", Answers.endpointNotFound],
    ["DELETE", "/v1/files/file-1", Answers.endpointNotFound],
    ["DELETE", "/v1/models/ft:gpt-4o:org:x", notAllowed("GET")],
    ["POST", "/v1/models", notAllowed("GET")],
    ["GET", "/v1/audio/speech", notAllowed("POST")],
    ["POST", "/v1/edits", Answers.endpointNotFound],
    ["POST", "/v1/fine-tunes", Answers.endpointNotFound],
    ["POST", "/v1/fine_tuning/jobs", Answers.endpointNotFound],
    ["POST", "/v1/files", Answers.endpointNotFound],
    ["PUT", "/v1/chat/completions", notAllowed("POST")],
    ["POST", "/v1/chat/completions/", Answers.endpointNotFound]
  ])("built-in provider: %s %s → %o", (method, path, expected) => expect(routeOf(method, path, base)).toEqual(expected))

  it("the built-in provider's 405 names the methods of the matched endpoint", () =>
    expect(routeOf("DELETE", "/v1/models/x", base)?.headers).toEqual({ allow: "GET" }))

  const yaml = fromYaml(`allowed_methods: [GET, POST, DELETE]
allowed_endpoints:
  - /v1/chat/completions
  - { path: /v1/responses, methods: [POST] }
  - { path: /v1/audio/, match: prefix, methods: [POST] }
  - { path: "/v1/models/{id}", methods: [GET] }
  - { path: "/v1/models/{id}", methods: [DELETE] }
  - { path: /v1/files, match: prefix }`)
  it.each([
    ["GET", "/v1/chat/completions", undefined],
    ["DELETE", "/v1/chat/completions/c1", undefined],
    ["POST", "/v1/responses", undefined],
    ["GET", "/v1/responses", notAllowed("POST")],
    ["POST", "/v1/responses/r1", Answers.endpointNotFound],
    ["POST", "/v1/audio/speech", undefined],
    ["GET", "/v1/audio/speech", notAllowed("POST")],
    ["GET", "/v1/models/m", undefined],
    ["DELETE", "/v1/models/ft:m", undefined],
    ["POST", "/v1/models/m", notAllowed("GET", "DELETE")],
    ["GET", "/v1/models", Answers.endpointNotFound],
    ["GET", "/v1/files/f/content", undefined],
    ["DELETE", "/v1/files/f", undefined]
  ])(
    "YAML entries with their own methods: %s %s → %o",
    (method, path, expected) => expect(routeOf(method, path, yaml)).toEqual(expected)
  )

  it("methodsFor is the union of the matching entries", () => {
    expect(methodsFor("/v1/models/m", yaml)).toEqual(["GET", "DELETE"])
    expect(methodsFor("/v1/nope", yaml)).toEqual([])
  })

  it("several providers: 405 names what any of them admits on the path, else 404", () => {
    const anthropic = fromYaml("allowed_endpoints: [/v1/messages]\nallowed_methods: [POST]")
    expect(routeRefusal("/v1/models/m", [base, anthropic, yaml])).toEqual(notAllowed("GET", "DELETE"))
    expect(routeRefusal("/v1/messages", [base, anthropic])).toEqual(notAllowed("POST"))
    expect(routeRefusal("/v1/nope", [base, anthropic])).toEqual(Answers.endpointNotFound)
  })
})

describe("credentials in the query", () => {
  it.each([
    ["?key=abc", true],
    ["?KEY=abc", true],
    ["?api-key=abc", true],
    ["?api_key=abc", true],
    ["?apikey=", true],
    ["?access_token=abc", true],
    ["?token=abc", true],
    ["?auth=abc", true],
    ["?a=1&Key=abc", true],
    ["?a=1;key=abc", true],
    ["?%6Bey=abc", true],
    ["?api%5Fkey=abc", true],
    ["?key", true],
    ["?key+=abc", true],
    ["key=abc", true],
    ["?", false],
    ["", false],
    ["?limit=10&after=x", false],
    ["?keyword=abc", false],
    ["?monkey=abc", false],
    ["?api-version=2024-10-21", false],
    ["?x=key", false],
    ["?x=1&&y=token", false],
    ["?%zz=1", false]
  ])("hasQueryCredential(%s) = %s", (query, expected) => expect(hasQueryCredential(query)).toBe(expected))

  it("the answer never echoes the value", () => {
    expect(Answers.credentialInQuery.status).toBe(400)
    expect(Answers.credentialInQuery.code).toBe("credential_in_query")
  })
})

describe("origin rules", () => {
  it.each([
    ["no origin, not required", provider(), undefined, undefined],
    ["no origin, required", provider({ requireOrigin: true }), undefined, Answers.originRequired],
    ["empty origin, required", provider({ requireOrigin: true }), "", Answers.originRequired],
    ["any origin when the list is empty", provider(), "https://x.example", undefined],
    ["listed origin", provider({ allowedOrigins: ["https://a.example"] }), "https://a.example", undefined],
    [
      "unlisted origin",
      provider({ allowedOrigins: ["https://a.example"] }),
      "https://b.example",
      Answers.originNotAllowed
    ],
    [
      "exact match only",
      provider({ allowedOrigins: ["https://a.example"] }),
      "https://a.example/",
      Answers.originNotAllowed
    ]
  ])("%s", (_name, p, origin, expected) => expect(checkOrigin(origin, p)).toEqual(expected))
})

describe("CORS", () => {
  const chat = "/v1/chat/completions"
  it("preflight without Origin or without Access-Control-Request-Method has no CORS headers", () => {
    expect(preflight(undefined, "POST", chat, "authorization", [base])).toEqual({})
    expect(preflight("https://a.example", undefined, chat, "authorization", [base])).toEqual({})
  })

  it("preflight echoes an admitted origin and the requested headers; lists the methods admitted on the path", () => {
    const h = preflight("https://a.example", "POST", chat, "authorization,content-type", [base])
    expect(h).toMatchObject({
      "access-control-allow-origin": "https://a.example",
      "access-control-allow-methods": "POST",
      "access-control-allow-headers": "authorization,content-type",
      "access-control-max-age": "86400"
    })
    expect(h["access-control-allow-credentials"]).toBeUndefined()
    expect(
      preflight("https://a.example", "get", "/v1/models/gpt-4o", undefined, [base])["access-control-allow-methods"]
    ).toBe("GET")
  })

  it.each([
    ["a method the path does not admit", "GET", chat],
    ["a path no provider admits", "POST", "/v1/files"],
    ["an unsafe path", "POST", "/v1/models/..;/files"],
    ["DELETE on a model", "DELETE", "/v1/models/ft:x"]
  ])(
    "preflight for %s has no CORS headers",
    (_n, method, path) => expect(preflight("https://a.example", method, path, undefined, [base])).toEqual({})
  )

  it("preflight defaults the allowed headers", () =>
    expect(preflight("https://a.example", "POST", chat, undefined, [base])["access-control-allow-headers"]).toBe(
      "Authorization, Content-Type, X-Requested-With"
    ))

  it("preflight for an origin no provider admits has no CORS headers", () =>
    expect(
      preflight("https://evil.example", "POST", chat, undefined, [provider({ allowedOrigins: ["https://a.example"] })])
    ).toEqual({}))

  it("a provider without allowed_origins opens preflights only for what it admits", () => {
    const openai = provider({ allowedOrigins: ["https://a.example"] })
    const anthropic = fromYaml("allowed_endpoints: [/v1/messages]\nallowed_methods: [POST]")
    expect(preflight("https://evil.example", "POST", chat, undefined, [openai, anthropic])).toEqual({})
    expect(
      preflight("https://evil.example", "POST", "/v1/messages", undefined, [
        openai,
        anthropic
      ])["access-control-allow-origin"]
    )
      .toBe("https://evil.example")
    expect(preflight("https://a.example", "POST", chat, undefined, [openai, anthropic])["access-control-allow-methods"])
      .toBe("POST")
  })

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
  ])(
    "glob %s matches %s = %s",
    (pattern, value, expected) => expect(compileGlob(pattern)?.test(value) === true).toBe(expected)
  )

  it.each([["[abc"], ["x\\"], ["[]"]])(
    "malformed pattern %s matches nothing",
    (pattern) => expect(compileGlob(pattern)).toBeNull()
  )

  const whitelist = new Map([["model", ["gpt-4o", "gpt-4o-*"]]])
  it.each([
    ["allowed value", { model: "gpt-4o-mini" }, undefined],
    ["no model", { messages: [] }, undefined],
    ["not an object", [1, 2], undefined],
    ["null", null, undefined]
  ])("%s passes", (_n, body, expected) => expect(checkParams(body, whitelist)).toEqual(expected))

  it("a disallowed value names the parameter, the value and the patterns", () =>
    expect(checkParams({ model: "gpt-3.5-turbo" }, whitelist)).toMatchObject({
      status: 400,
      message: "Parameter 'model' value 'gpt-3.5-turbo' is not allowed. Allowed patterns: [gpt-4o gpt-4o-*]",
      code: "param_not_allowed"
    }))

  it("non-string values are compared in their text form", () => {
    expect(checkParams({ n: 2 }, new Map([["n", ["1", "2"]]]))).toBeUndefined()
    expect(checkParams({ n: true }, new Map([["n", ["false"]]]))?.status).toBe(400)
    expect(checkParams({ n: { a: 1 } }, new Map([["n", ["x"]]]))?.message).toContain(`'{"a":1}'`)
  })

  it("long values are cut in the message", () =>
    expect(checkParams({ model: "x".repeat(500) }, whitelist)!.message.length).toBeLessThan(300))

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
    "api-key": "sk-client-token",
    cookie: "session=1",
    connection: "keep-alive, x-drop-me",
    "x-drop-me": "1",
    "keep-alive": "timeout=5",
    "transfer-encoding": "chunked",
    "content-length": "999",
    "x-forwarded-for": "1.2.3.4",
    "x-forwarded-user-agent": "1.2.3.4",
    "x-forwarded-server": "1.2.3.4",
    "proxy-authorization": "Basic x",
    "proxy-x": "1",
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
    "content-encoding": "gzip",
    "openai-organization": "org-1",
    "openai-project": "proj-1",
    "x-custom": "1",
    "content-type": "application/json",
    accept: "application/json",
    "accept-language": "de",
    "if-none-match": "\"v1\"",
    "user-agent": "OpenAI/JS 4.0",
    origin: "https://a.example",
    "idempotency-key": "stainless-node-retry-1",
    "openai-beta": "assistants=v2",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "x",
    "x-stainless-lang": "js",
    "x-stainless-retry-count": "0"
  }
  const forwarded = {
    "content-type": "application/json",
    accept: "application/json",
    "accept-language": "de",
    "if-none-match": "\"v1\"",
    "user-agent": "OpenAI/JS 4.0",
    origin: "https://a.example",
    "idempotency-key": "stainless-node-retry-1",
    "openai-beta": "assistants=v2",
    "anthropic-version": "2023-06-01",
    "anthropic-beta": "x",
    "x-stainless-lang": "js",
    "x-stainless-retry-count": "0"
  }

  it("forwards only the allow-listed client headers, plus the provider key in its scheme and what the proxy sets", () => {
    const h = upstreamRequestHeaders(client, base, "sk-real", "rid-1", 42)
    expect(h).toEqual({
      ...forwarded,
      authorization: "Bearer sk-real",
      "x-request-id": "rid-1",
      "accept-encoding": "identity",
      "content-length": "42"
    })
  })

  it("a header named by Connection is not forwarded even when allow-listed", () => {
    const h = upstreamRequestHeaders(
      { connection: "user-agent", "user-agent": "x", accept: "y" },
      base,
      "k",
      "r",
      undefined
    )
    expect(h["user-agent"]).toBeUndefined()
    expect(h.accept).toBe("y")
  })

  it("x-api-key providers get the bare key and no Authorization", () => {
    const h = upstreamRequestHeaders(
      client,
      provider({ authHeader: "x-api-key", authScheme: "" }),
      "sk-ant",
      "rid",
      undefined
    )
    expect(h["x-api-key"]).toBe("sk-ant")
    expect(h.authorization).toBeUndefined()
    expect(h["content-length"]).toBeUndefined()
  })

  it("forward_headers adds names and prefixes; headers sets fixed values that replace the client's", () => {
    const p = fromYaml(`allowed_endpoints: [/v1]
allowed_methods: [POST]
forward_headers: [X-Custom, "x-my-*"]
headers: { OpenAI-Organization: org-fixed, OpenAI-Beta: assistants=v1 }`)
    const h = upstreamRequestHeaders({ ...client, "x-my-a": "1", "x-myb": "2" }, p, "sk", "rid", undefined)
    expect(h).toEqual({
      ...forwarded,
      "x-custom": "1",
      "x-my-a": "1",
      "openai-organization": "org-fixed",
      "openai-beta": "assistants=v1",
      authorization: "Bearer sk",
      "x-request-id": "rid",
      "accept-encoding": "identity"
    })
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
