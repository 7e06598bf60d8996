import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Layer } from "effect"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parseDuration } from "../../src/config/AppConfig.js"
import { builtInOpenAi, parseProvidersYaml, type ProviderConfig, Providers } from "../../src/config/Providers.js"
import { routeOf } from "../../src/proxy/policy.js"

const SHIPPED = `
default_api: openai
apis:
  openai:
    base_url: https://api.openai.com/some/path
    allowed_endpoints: [/v1/chat/completions, /v1/models/, v1/embeddings]
    allowed_methods: [get, POST, OPTIONS]
    timeouts:
      request: 120s
      response_header: 30s
      idle_connection: 90s
    connection:
      max_idle_conns: 100
      max_idle_conns_per_host: 20
    param_whitelist:
      model: [gpt-4o, "gpt-4o-*"]
    allowed_origins: [https://www.example.com]
    required_headers: [Origin]
  anthropic:
    base_url: https://api.anthropic.com
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key
    auth_scheme: ""
`

describe("providers YAML (docs/proxy.md \"Providers\", auth_header/auth_scheme included)", () => {
  it("decodes every key", () => {
    const p = Either.getOrThrow(parseProvidersYaml(SHIPPED))
    expect([...p.names]).toEqual(["openai", "anthropic"])
    expect(p.defaultProvider).toBe("openai")
    const openai = p.get("openai")!
    const methods = ["GET", "POST", "OPTIONS"]
    expect(openai).toMatchObject({
      origin: "https://api.openai.com",
      basePath: "/some/path",
      allowedEndpoints: ["/v1/chat/completions", "/v1/models", "/v1/embeddings"].map((path) => ({
        path,
        prefix: true,
        methods
      })),
      allowedOrigins: ["https://www.example.com"],
      requireOrigin: true,
      authHeader: "authorization",
      authScheme: "Bearer",
      responseHeaderTimeoutMs: 30_000,
      requestTimeoutMs: 120_000,
      idleConnectionMs: 90_000,
      maxIdleConnections: 20
    })
    expect(openai.paramWhitelist.get("model")).toEqual(["gpt-4o", "gpt-4o-*"])
    expect(p.get("anthropic")).toMatchObject({
      authHeader: "x-api-key",
      authScheme: "",
      requireOrigin: false,
      allowedOrigins: []
    })
    expect(p.get("nope")).toBeUndefined()
  })

  it("string entries of allowed_endpoints keep their meaning: prefixes on segment boundaries, allowed_methods", () => {
    const openai = Either.getOrThrow(parseProvidersYaml(SHIPPED)).get("openai")!
    for (
      const [method, path] of [["GET", "/v1/chat/completions"], ["POST", "/v1/models/gpt-4o"], ["GET", "/v1/models/"], [
        "POST",
        "/v1/embeddings/x"
      ]]
    ) {
      expect(routeOf(method!, path!, openai), `${method} ${path}`).toBeUndefined()
    }
    expect(routeOf("DELETE", "/v1/models", openai)?.headers).toEqual({ allow: "GET, POST, OPTIONS" })
    expect(routeOf("GET", "/v1/modelsX", openai)?.status).toBe(404)
  })

  it("object entries: exact by default, match: prefix, their own methods (default allowed_methods), {name} segments", () => {
    const p = Either.getOrThrow(parseProvidersYaml(`apis:
  openai:
    base_url: http://a
    allowed_methods: [get]
    allowed_endpoints:
      - /v1/chat/completions
      - { path: /v1/responses, methods: [post] }
      - { path: /v1/audio/, match: prefix, methods: [POST] }
      - { path: "/v1/models/{id}", methods: [GET, DELETE] }
      - { path: /v1/files, match: exact }
`)).get("openai")!
    expect(p.allowedEndpoints.map(({ methods, path, prefix }) => ({ path, prefix, methods }))).toEqual([
      { path: "/v1/chat/completions", prefix: true, methods: ["GET"] },
      { path: "/v1/responses", prefix: false, methods: ["POST"] },
      { path: "/v1/audio", prefix: true, methods: ["POST"] },
      { path: "/v1/models/{id}", prefix: false, methods: ["GET", "DELETE"] },
      { path: "/v1/files", prefix: false, methods: ["GET"] }
    ])
    const admits = (method: string, path: string) => routeOf(method, path, p) === undefined
    expect(admits("POST", "/v1/responses")).toBe(true)
    expect(admits("POST", "/v1/responses/r")).toBe(false)
    expect(admits("POST", "/v1/audio/speech")).toBe(true)
    expect(admits("DELETE", "/v1/models/ft:x")).toBe(true)
    expect(admits("GET", "/v1/models")).toBe(false)
    expect(admits("GET", "/v1/files")).toBe(true)
    expect(admits("GET", "/v1/files/f")).toBe(false)
  })

  it("allowed_methods may be left out when every entry has its own methods", () => {
    const p = parseProvidersYaml(
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1/messages, methods: [POST] }]\n"
    )
    expect(routeOf("POST", "/v1/messages", Either.getOrThrow(p).get("a")!)).toBeUndefined()
  })

  it("forward_headers and headers", () => {
    const p = Either.getOrThrow(parseProvidersYaml(`apis:
  a:
    base_url: http://a
    allowed_endpoints: [/v1]
    allowed_methods: [POST]
    forward_headers: [X-Custom, "x-my-*"]
    headers:
      OpenAI-Organization: org-123
      OpenAI-Project: " proj_1 "
`)).get("a")!
    const forwarded = [
      "x-custom",
      "content-type",
      "x-stainless-os",
      "x-my-a",
      "x-my-",
      "openai-organization",
      "x-myb",
      "x-customs"
    ]
      .filter(p.forwardsHeader)
    expect(forwarded).toEqual(["x-custom", "content-type", "x-stainless-os", "x-my-a", "x-my-"])
    expect(p.fixedHeaders).toEqual([["openai-organization", "org-123"], ["openai-project", "proj_1"]])
  })

  it("default_api falls back to openai, else the first provider", () => {
    const one = "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n"
    expect(Either.getOrThrow(parseProvidersYaml(one)).defaultProvider).toBe("a")
  })

  it.each([
    ["not YAML", "apis: [", /not valid YAML/],
    ["no apis", "default_api: x\n", /apis/],
    ["empty apis", "apis: {}\n", /at least one provider/],
    [
      "missing base_url",
      "apis:\n  a:\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /apis\.a\.base_url/
    ],
    [
      "empty endpoints",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: []\n    allowed_methods: [GET]\n",
      /allowed_endpoints/
    ],
    [
      "bad URL",
      "apis:\n  a:\n    base_url: nope\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /base_url is not a URL/
    ],
    [
      "ftp URL",
      "apis:\n  a:\n    base_url: ftp://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /http/
    ],
    [
      "bad duration",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    timeouts:\n      response_header: soon\n",
      /response_header/
    ],
    [
      "unknown default",
      "default_api: b\napis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /default_api/
    ],
    [
      "string entries without allowed_methods",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n",
      /apis\.a\.allowed_methods: is missing/
    ],
    [
      "an object entry without methods and no allowed_methods",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1 }]\n",
      /apis\.a\.allowed_methods: is missing/
    ],
    [
      "a misspelt key in an entry",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1, method: [GET] }]\n",
      /apis\.a\.allowed_endpoints\.0: unknown key "method"/
    ],
    [
      "an unknown key in a provider (a misspelling would otherwise do nothing)",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    timeout: 10s\n",
      /^apis\.a\.timeout: unknown key \(expected one of base_url, .*timeouts/
    ],
    [
      "an unknown key under timeouts",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    timeouts:\n      headers: 10s\n",
      /^apis\.a\.timeouts\.headers: unknown key \(expected one of request, response_header, idle_connection/
    ],
    [
      "an unknown key under connection",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    connection:\n      max_conn_per_host: 3\n",
      /^apis\.a\.connection\.max_conn_per_host: unknown key \(expected one of max_idle_conns/
    ],
    [
      "an unknown top-level key",
      "apiz: {}\napis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /^apiz: unknown key/
    ],
    [
      "flush_interval (every chunk is written as it arrives)",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    timeouts:\n      flush_interval: 10ms\n",
      /^apis\.a\.timeouts\.flush_interval is not supported: the proxy writes every chunk .* remove it$/
    ],
    [
      "a query in base_url",
      "apis:\n  a:\n    base_url: http://a/x?v=1\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /apis\.a\.base_url: a query goes under query/
    ],
    [
      "credentials in base_url",
      "apis:\n  a:\n    base_url: http://u:p@a/x\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n",
      /apis\.a\.base_url must not carry credentials/
    ],
    [
      "an entry without path",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ methods: [GET] }]\n",
      /allowed_endpoints\.0\.path/
    ],
    [
      "an empty path",
      "apis:\n  a:\n    base_url: http://a\n    allowed_methods: [GET]\n    allowed_endpoints: [\"\"]\n",
      /allowed_endpoints\.0: expected a path/
    ],
    [
      "a number entry",
      "apis:\n  a:\n    base_url: http://a\n    allowed_methods: [GET]\n    allowed_endpoints: [/v1, 3]\n",
      /allowed_endpoints\.1: expected a path or/
    ],
    [
      "bad match",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1, match: glob, methods: [GET] }]\n",
      /allowed_endpoints\.0\.match/
    ],
    [
      "empty methods",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1, methods: [] }]\n",
      /allowed_endpoints\.0\.methods/
    ],
    [
      "bad method",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [{ path: /v1, methods: [\"GET POST\"] }]\n",
      /allowed_endpoints\.0\.methods/
    ],
    [
      "forwarding OpenAI-Organization from clients",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    forward_headers: [OpenAI-Organization]\n",
      /apis\.a\.forward_headers\.0: "openai-organization" is never taken from clients/
    ],
    [
      "forwarding the auth header",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    auth_header: x-goog-api-key\n    forward_headers: [x-goog-api-key]\n",
      /forward_headers\.0: "x-goog-api-key"/
    ],
    [
      "a prefix covering a client address header",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    forward_headers: [\"x-forwarded-*\"]\n",
      /forward_headers\.0/
    ],
    [
      "forwarding a client address",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    forward_headers: [CF-Connecting-IP]\n",
      /forward_headers\.0: "cf-connecting-ip" is never taken from clients/
    ],
    [
      "a bad header name",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    forward_headers: [\"a b\"]\n",
      /forward_headers\.0: expected a header name/
    ],
    [
      "a bad fixed header name",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    headers: { \"a b\": x }\n",
      /apis\.a\.headers: "a b" is not a header name/
    ],
    [
      "a fixed auth header",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    headers: { Authorization: Bearer x }\n",
      /apis\.a\.headers\.Authorization: set by the proxy itself/
    ],
    [
      "a fixed Host",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    headers: { Host: evil }\n",
      /headers\.Host: set by the proxy itself/
    ],
    [
      "a fixed value with a line break",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    headers: { X-A: \"a\\r\\nb\" }\n",
      /headers\.X-A: the value/
    ],
    [
      "bad auth header",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    auth_header: \"x y\"\n",
      /auth_header/
    ]
  ])("%s → one line naming the key", (_n, text, re) => {
    const r = parseProvidersYaml(text)
    expect(Either.isLeft(r)).toBe(true)
    expect(Either.getLeft(r).pipe((o) => (o._tag === "Some" ? o.value : ""))).toMatch(re)
  })

  it("the built-in provider serves OPENAI_API_URL", () => {
    const p = builtInOpenAi("http://127.0.0.1:9/ignored")
    expect(p.get("openai")?.origin).toBe("http://127.0.0.1:9")
    expect(p.defaultProvider).toBe("openai")
  })

  it("the built-in provider admits exactly the inference API: POST to the endpoints, GET on the models", () => {
    const openai = builtInOpenAi("http://x").get("openai")!
    expect(openai.allowedEndpoints.map((e) => `${e.methods.join(",")} ${e.path}${e.prefix ? "/*" : ""}`)).toEqual([
      "POST /v1/responses",
      "POST /v1/chat/completions",
      "POST /v1/completions",
      "POST /v1/embeddings",
      "POST /v1/moderations",
      "POST /v1/audio/*",
      "POST /v1/images/*",
      "GET /v1/models",
      "GET /v1/models/{id}"
    ])
    expect(openai.fixedHeaders).toEqual([])
  })

  // The providers YAML examples of the docs, before and after entries could carry their own methods: each loads,
  // and the old one means what it meant.
  const docsYamlBlocks = () => {
    const text = readFileSync(join(import.meta.dirname, "../../docs/proxy.md"), "utf8")
    return [...text.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!)
  }
  const OLD_DOCS_EXAMPLE = `
default_api: openai
apis:
  openai:
    base_url: https://api.openai.com          # only scheme, host and port are used
    allowed_endpoints:                        # path prefixes, matched on segment boundaries
      - /v1/chat/completions
      - /v1/models                            # admits /v1/models and /v1/models/gpt-4o, not /v1/modelsX
    allowed_methods: [GET, POST]
    timeouts:
      response_header: 60s                    # this provider's upstream header timeout (default REQUEST_TIMEOUT)
      idle_connection: 90s                    # keep-alive connections idle longer than this are closed
    connection:
      max_conns_per_host: 512                 # connections per pool (default: unbounded)
    param_whitelist:                          # top-level JSON parameters → glob patterns (* ? [..])
      model: [gpt-4o, "gpt-4o-*", "gpt-4.1*"]
    allowed_origins: [https://app.example.com] # exact origins; empty/absent = any origin
    required_headers: [origin]                # only \`origin\` has an effect: requests without Origin → 400
  anthropic:
    base_url: https://api.anthropic.com
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key                    # default Authorization
    auth_scheme: ""                           # default Bearer; "" sends the bare key
`

  it("the example file of the docs before this change still loads and means the same", () => {
    const p = Either.getOrThrow(parseProvidersYaml(OLD_DOCS_EXAMPLE))
    const openai = p.get("openai")!
    const anthropic = p.get("anthropic")!
    const admitted = (provider: ProviderConfig) =>
      [
        ["GET", "/v1/chat/completions"],
        ["POST", "/v1/chat/completions"],
        ["GET", "/v1/models/gpt-4o"],
        ["POST", "/v1/models"],
        ["POST", "/v1/messages"],
        ["DELETE", "/v1/models/x"]
      ]
        .filter(([m, path]) => routeOf(m!, path!, provider) === undefined)
        .map(([m, path]) => `${m} ${path}`)
    expect(admitted(openai)).toEqual([
      "GET /v1/chat/completions",
      "POST /v1/chat/completions",
      "GET /v1/models/gpt-4o",
      "POST /v1/models"
    ])
    expect(admitted(anthropic)).toEqual(["POST /v1/messages"])
  })

  it("every providers YAML block in docs/proxy.md loads", () => {
    const blocks = docsYamlBlocks().filter((b) => /^apis:/m.test(b))
    expect(blocks.length).toBeGreaterThanOrEqual(2)
    for (const b of blocks) expect(Either.getLeft(parseProvidersYaml(b))._tag, b.slice(0, 80)).toBe("None")
  })

  it.effect("load reads the file, and names the variable when it cannot", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "providers-"))
      const path = join(dir, "p.yaml")
      writeFileSync(path, SHIPPED)
      const get = (l: Layer.Layer<Providers, unknown>) => Effect.either(Effect.provide(Providers, l))
      const ok = yield* get(Providers.load(path, "http://x"))
      expect(Either.isRight(ok) && [...ok.right.names]).toEqual(["openai", "anthropic"])
      const builtIn = yield* get(Providers.load(undefined, "http://x:1"))
      expect(Either.isRight(builtIn) && builtIn.right.get("openai")?.origin).toBe("http://x:1")
      const missing = yield* get(Providers.load(join(dir, "missing.yaml"), "http://x"))
      expect(Either.isLeft(missing) && (missing.left as { message: string }).message).toMatch(
        /^API_CONFIG_PATH: cannot read .*ENOENT/
      )
      writeFileSync(path, "apis: {}")
      const bad = yield* get(Providers.load(path, "http://x"))
      expect(Either.isLeft(bad) && (bad.left as { message: string }).message).toMatch(
        /^API_CONFIG_PATH \(.*\): apis: at least one provider/
      )
    }))

  it.each([
    ["120s", 120_000],
    ["500ms", 500],
    ["2m", 120_000],
    ["1h", 3_600_000],
    ["30", 30_000],
    ["1.5s", 1_500],
    ["soon", undefined],
    ["-1s", undefined]
  ])("parseDuration(%s) = %s", (s, ms) => expect(parseDuration(s)).toBe(ms))
})
