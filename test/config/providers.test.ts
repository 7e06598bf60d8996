import { Effect, Either, Layer } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { parseDuration } from "../../src/config/AppConfig.js"
import { builtInOpenAi, parseProvidersYaml, Providers } from "../../src/config/Providers.js"

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
      flush_interval: 10ms
    connection:
      max_idle_conns: 100
      max_idle_conns_per_host: 20
    param_whitelist:
      model: [gpt-4o, "gpt-4o-*"]
    allowed_origins: [https://www.example.com]
    required_headers: [Origin]
    some_future_key: ignored
  anthropic:
    base_url: https://api.anthropic.com
    allowed_endpoints: [/v1/messages]
    allowed_methods: [POST]
    auth_header: x-api-key
    auth_scheme: ""
`

describe("providers YAML (reference §5.1 + auth_header/auth_scheme)", () => {
  it("decodes every key", () => {
    const p = Either.getOrThrow(parseProvidersYaml(SHIPPED))
    expect([...p.names]).toEqual(["openai", "anthropic"])
    expect(p.defaultProvider).toBe("openai")
    const openai = p.get("openai")!
    expect(openai).toMatchObject({
      origin: "https://api.openai.com",
      allowedEndpoints: ["/v1/chat/completions", "/v1/models", "/v1/embeddings"],
      allowedMethods: ["GET", "POST", "OPTIONS"],
      allowedOrigins: ["https://www.example.com"],
      requireOrigin: true,
      authHeader: "authorization",
      authScheme: "Bearer",
      responseHeaderTimeoutMs: 30_000,
      idleConnectionMs: 90_000
    })
    expect(openai.paramWhitelist.get("model")).toEqual(["gpt-4o", "gpt-4o-*"])
    expect(p.get("anthropic")).toMatchObject({ authHeader: "x-api-key", authScheme: "", requireOrigin: false, allowedOrigins: [] })
    expect(p.get("nope")).toBeUndefined()
  })

  it("default_api falls back to openai, else the first provider", () => {
    const one = "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n"
    expect(Either.getOrThrow(parseProvidersYaml(one)).defaultProvider).toBe("a")
  })

  it.each([
    ["not YAML", "apis: [", /not valid YAML/],
    ["no apis", "default_api: x\n", /apis/],
    ["empty apis", "apis: {}\n", /at least one provider/],
    ["missing base_url", "apis:\n  a:\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n", /apis\.a\.base_url/],
    ["empty endpoints", "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: []\n    allowed_methods: [GET]\n", /allowed_endpoints/],
    ["bad URL", "apis:\n  a:\n    base_url: nope\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n", /base_url is not a URL/],
    ["ftp URL", "apis:\n  a:\n    base_url: ftp://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n", /http/],
    [
      "bad duration",
      "apis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n    timeouts:\n      response_header: soon\n",
      /response_header/
    ],
    ["unknown default", "default_api: b\napis:\n  a:\n    base_url: http://a\n    allowed_endpoints: [/v1]\n    allowed_methods: [GET]\n", /default_api/],
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

  it("load reads the file, and names the variable when it cannot", async () => {
    const dir = mkdtempSync(join(tmpdir(), "providers-"))
    const path = join(dir, "p.yaml")
    writeFileSync(path, SHIPPED)
    const get = (l: Layer.Layer<Providers, unknown>) => Effect.runPromise(Effect.either(Effect.provide(Providers, l)))
    const ok = await get(Providers.load(path, "http://x"))
    expect(Either.isRight(ok) && [...ok.right.names]).toEqual(["openai", "anthropic"])
    const builtIn = await get(Providers.load(undefined, "http://x:1"))
    expect(Either.isRight(builtIn) && builtIn.right.get("openai")?.origin).toBe("http://x:1")
    const missing = await get(Providers.load(join(dir, "missing.yaml"), "http://x"))
    expect(Either.isLeft(missing) && (missing.left as { message: string }).message).toMatch(/^API_CONFIG_PATH: cannot read .*ENOENT/)
    writeFileSync(path, "apis: {}")
    const bad = await get(Providers.load(path, "http://x"))
    expect(Either.isLeft(bad) && (bad.left as { message: string }).message).toMatch(/^API_CONFIG_PATH \(.*\): apis: at least one provider/)
  })

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
