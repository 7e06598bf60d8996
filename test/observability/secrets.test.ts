/**
 * Secrets never leave where they belong — proven on everything the product writes in one run of the built binary.
 *
 * `bin/llm-proxy.js serve` runs as a child process with everything on at once (LOG_LEVEL=debug, JSON logs, access
 * log, audit file, `--file-event-log`, the response cache, OTLP tracing to a receiver in this test, metrics,
 * ENCRYPTION_KEY; with REDIS_URL also the Redis Streams bus, the Redis response cache and three `llm-proxy
 * dispatcher` processes delivering to a JSONL file and to local receivers acting as Lunary and Helicone). Traffic
 * uses every kind of secret: the management token (right and near-miss wrong), provider keys (created, rotated,
 * sent in `Authorization`, `x-api-key` and `api-key` styles), proxy tokens (valid, revoked, expired, over quota,
 * rate-limited, unknown, malformed, and valid ones put where users put them by mistake: `x-api-key`, `api-key`,
 * `?key=`, `Basic`, a cookie), the admin UI session (login, cookie, CSRF token), the dispatcher's backend API key,
 * an OTLP export header and the Redis password; the upstream answers 200, SSE, a 401 quoting the (masked) key,
 * and resets. Then every byte is collected — the processes' stdout and stderr, every file they wrote (the SQLite
 * database included: with ENCRYPTION_KEY set it holds provider keys only as `enc:v1:` ciphertext and tokens only
 * as SHA-256), the OTLP and Lunary/Helicone bodies, the Redis stream and cache entries, /metrics, /metrics/json,
 * /health, /ready, every management and proxy response, every upstream request — and each secret is looked for by
 * name: itself, base64, base64url, URL-encoded, and slices of the part the contract never shows (provider keys may
 * show their first 8 and last 4 characters, proxy tokens `sk-` + 4 and the last 4, everything else nothing).
 *
 * Exclusions, exactly: a token creation response (and `manage token generate`) shows the new token once (CONTRACT
 * §5); the session login and `GET /manage/session` answers carry the session's CSRF token and (login) its cookie;
 * the upstream sees its project's provider key in the provider's auth header; the OTLP receiver sees the export
 * header and the Lunary/Helicone receivers the dispatcher's API key as `Authorization` — those headers only.
 * Each of these is still checked for every *other* secret.
 *
 * Like the other tests of the built binary it needs `npm run build` first (dist/ is not rebuilt by `npm test`).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { createServer, type IncomingHttpHeaders } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Redis } from "ioredis"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { chatChunks, json, type MockUpstream, reset, sse, startMockUpstream } from "../support/mockUpstream.js"

const root = join(import.meta.dirname, "../..")
const bin = join(root, "bin/llm-proxy.js")
const built = existsSync(join(root, "dist/cli/main.js"))

// ---------------------------------------------------------------------------------------------------------------
// Child processes of the built binary

interface Program {
  readonly name: string
  readonly child: ChildProcess
  readonly output: () => string
  /** SIGTERM, then the exit code. */
  readonly stop: () => Promise<number | null>
}

const run = (name: string, args: ReadonlyArray<string>, cwd: string, env: Record<string, string>): Program => {
  const child = spawn(process.execPath, [bin, ...args], { cwd, env: { PATH: process.env["PATH"] ?? "", ...env } })
  let output = ""
  child.stdout!.on("data", (d: Buffer) => (output += d.toString()))
  child.stderr!.on("data", (d: Buffer) => (output += d.toString()))
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)))
  return {
    name,
    child,
    output: () => output,
    stop: () => {
      if (child.exitCode === null) child.kill("SIGTERM")
      return exited
    }
  }
}

/** A short-lived command (`manage …`): its exit code and everything it printed. */
const runToEnd = async (args: ReadonlyArray<string>, cwd: string, env: Record<string, string>) => {
  const p = run(args.join(" "), args, cwd, env)
  const code = await new Promise<number | null>((resolve) => p.child.on("exit", resolve))
  return { code, output: p.output() }
}

const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000) => {
  const until = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

const startServe = async (cwd: string, env: Record<string, string>) => {
  const serve = run("serve", ["serve"], cwd, env)
  let url: string | undefined
  await waitFor("serve to listen", () => {
    if (serve.child.exitCode !== null) throw new Error(`serve exited with ${serve.child.exitCode}: ${serve.output()}`)
    const m = /listening on http:\/\/[^:"\s]+:(\d+)/.exec(serve.output())
    if (m?.[1]) url = `http://127.0.0.1:${m[1]}`
    return url !== undefined
  })
  return { ...serve, url: url! }
}

// ---------------------------------------------------------------------------------------------------------------
// A receiver standing in for the OTLP collector and for Lunary / Helicone

interface Received {
  readonly method: string
  readonly url: string
  readonly headers: IncomingHttpHeaders
  readonly body: string
}

const startReceiver = async () => {
  const requests: Array<Received> = []
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks).toString("utf8") })
      res.writeHead(200, { "content-type": "application/json" }).end("{}")
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Secrets and what may be shown of them

interface Secret {
  readonly name: string
  readonly value: string
  /** Characters at the start / end that the contract shows (obfuscated displays). */
  readonly head: number
  readonly tail: number
}

/** The forms a leak of `s` would take: itself, common encodings, and slices of what is never shown. */
const forms = (s: Secret): Array<{ readonly form: string; readonly text: string }> => {
  const v = s.value
  const out = [
    { form: "itself", text: v },
    { form: "base64", text: Buffer.from(v).toString("base64").replace(/=+$/, "") },
    { form: "base64url", text: Buffer.from(v).toString("base64url") },
    { form: "url-encoded", text: encodeURIComponent(v) },
    { form: "form-encoded", text: new URLSearchParams({ x: v }).toString().slice(2) },
    { form: "JSON-escaped", text: JSON.stringify(v).slice(1, -1) },
    // More of either end than the obfuscated display shows.
    { form: `first ${s.head + 6} chars`, text: v.slice(0, s.head + 6) },
    { form: `last ${s.tail + 6} chars`, text: v.slice(-(s.tail + 6)) }
  ]
  const hidden = v.slice(s.head, v.length - s.tail)
  for (let i = 0; i + 10 <= hidden.length; i += 4) out.push({ form: `hidden chars ${s.head + i}..${s.head + i + 10}`, text: hidden.slice(i, i + 10) })
  return out.filter((f, i, all) => f.text.length >= 6 && all.findIndex((g) => g.text === f.text) === i)
}

const b64url = (bytes: number) => randomBytes(bytes).toString("base64url")

/** A display that shows exactly first 8 + last 4, as OpenAI's 401 does. */
const maskedLikeOpenAI = (key: string) => `${key.slice(0, 8)}${"*".repeat(key.length - 12)}${key.slice(-4)}`

const filesUnder = (dir: string): Array<string> =>
  existsSync(dir)
    ? readdirSync(dir).flatMap((name) => {
      const p = join(dir, name)
      return statSync(p).isDirectory() ? filesUnder(p) : [p]
    })
    : []

// ---------------------------------------------------------------------------------------------------------------

describe.skipIf(!built)("secrets in everything the built binary writes", () => {
  let mock: MockUpstream
  let otlp: Awaited<ReturnType<typeof startReceiver>>
  let backends: Awaited<ReturnType<typeof startReceiver>>
  const prefix = `llm-proxy-test:secrets:${process.pid}:${Date.now()}:`
  beforeAll(async () => {
    mock = await startMockUpstream()
    otlp = await startReceiver()
    backends = await startReceiver()
  })
  afterAll(async () => {
    await mock?.close()
    await otlp?.close()
    await backends?.close()
    if (redisUrl) await flushRedisPrefix(redisUrl, prefix)
  })

  it("one run with everything on: no secret in any output, file, export, scrape or response", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-secrets-"))
    const marker = `secrets-marker-${b64url(6)}`
    const secrets: Array<Secret> = []
    const secret = (name: string, value: string, head = 0, tail = 0) => {
      secrets.push({ name, value, head, tail })
      return value
    }
    const managementToken = secret("MANAGEMENT_TOKEN", b64url(32))
    const wrongManagementToken = secret("a wrong management token (near miss)", `${managementToken.slice(0, -4)}${b64url(3)}`)
    const encryptionKey = secret("ENCRYPTION_KEY", randomBytes(32).toString("base64"))
    const openaiKey = secret("provider key (openai, created)", `sk-proj-${b64url(36)}`, 8, 4)
    const openaiRotated = secret("provider key (openai, rotated)", `sk-proj-${b64url(36)}`, 8, 4)
    const anthropicKey = secret("provider key (anthropic, x-api-key)", `sk-ant-api03-${b64url(36)}`, 8, 4)
    const azureKey = secret("provider key (azure, api-key)", randomBytes(16).toString("hex"), 8, 4)
    const cliKey = secret("provider key (created with manage project create)", `sk-proj-${b64url(36)}`, 8, 4)
    const otlpHeader = secret("OTEL_EXPORTER_OTLP_HEADERS value", b64url(24))
    const dispatcherKey = secret("LLM_PROXY_API_KEY (dispatcher backends)", b64url(24))
    const redisPassword = secret("Redis password in REDIS_URL", b64url(18))
    const unknownToken = secret("proxy token (unknown)", `sk-${b64url(32)}`, 7, 4)
    const malformedToken = secret("proxy token (malformed)", `sk-${b64url(15)}`, 7, 4)

    // Redis with a password in its URL (the shared test server's default user takes any password).
    let redis: string | undefined
    if (redisUrl) {
      const u = new URL(redisUrl)
      if (u.password === "") {
        u.username = "default"
        u.password = redisPassword
      } else {
        secret("Redis password in REDIS_URL (given)", decodeURIComponent(u.password))
      }
      const probe = new Redis(u.toString(), { lazyConnect: true, maxRetriesPerRequest: 1 })
      probe.on("error", () => {})
      redis = await probe.connect().then(() => u.toString(), () => redisUrl)
      probe.disconnect()
    }

    writeFileSync(
      join(cwd, "providers.yaml"),
      [
        "default_api: openai",
        "apis:",
        "  openai:",
        `    base_url: ${mock.url}`,
        "    allowed_endpoints: [/v1/chat/completions, /v1/models]",
        "    allowed_methods: [GET, POST]",
        "  anthropic:",
        `    base_url: ${mock.url}`,
        "    allowed_endpoints: [/v1/messages]",
        "    allowed_methods: [POST]",
        "    auth_header: x-api-key",
        "    auth_scheme: \"\"",
        "  azure:",
        `    base_url: ${mock.url}`,
        "    allowed_endpoints: [/v1/chat/completions]",
        "    allowed_methods: [POST]",
        "    auth_header: api-key",
        "    auth_scheme: \"\"",
        ""
      ].join("\n")
    )
    const streamKey = `${prefix}events`
    const env: Record<string, string> = {
      LISTEN_ADDR: "127.0.0.1:0",
      MANAGEMENT_TOKEN: managementToken,
      ENCRYPTION_KEY: encryptionKey,
      REQUIRE_ENCRYPTION_KEY: "true",
      API_CONFIG_PATH: "providers.yaml",
      LOG_LEVEL: "debug",
      LOG_FORMAT: "json",
      ACCESS_LOG: "true",
      AUDIT_ENABLED: "true",
      AUDIT_LOG_FILE: "./data/audit.log",
      FILE_EVENT_LOG: "./data/events.jsonl",
      HTTP_CACHE_ENABLED: "true",
      ENABLE_METRICS: "true",
      OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
      OTEL_EXPORTER_OTLP_HEADERS: `x-otlp-key=${otlpHeader}`,
      OTEL_EXPORT_INTERVAL: "200ms",
      USAGE_FLUSH_INTERVAL: "100ms",
      ...(redis
        ? {
          REDIS_URL: redis,
          LLM_PROXY_EVENT_BUS: "redis-streams",
          REDIS_STREAM_KEY: streamKey,
          HTTP_CACHE_BACKEND: "redis",
          REDIS_CACHE_KEY_PREFIX: `${prefix}cache:`
        }
        : {})
    }
    const serve = await startServe(cwd, env)
    const programs: Array<Program> = [serve]
    const dispatcherDirs: Array<string> = []
    if (redis) {
      for (const service of ["file", "lunary", "helicone"] as const) {
        const dir = mkdtempSync(join(tmpdir(), `llm-proxy-secrets-${service}-`))
        dispatcherDirs.push(dir)
        programs.push(run(`dispatcher --service ${service}`, [
          "dispatcher",
          "--service",
          service,
          "--endpoint",
          service === "file" ? join(dir, "delivered.jsonl") : `${backends.url}/${service}`,
          "--flush-interval",
          "100ms",
          "--stream-key",
          streamKey,
          "--consumer-group",
          `${prefix}${service}`
        ], dir, {
          LLM_PROXY_EVENT_BUS: "redis-streams",
          REDIS_URL: redis,
          LLM_PROXY_API_KEY: dispatcherKey,
          LOG_LEVEL: "debug",
          LOG_FORMAT: "json"
        }))
      }
    }

    // What may legitimately carry a secret, and which.
    const haystacks: Array<{ readonly where: string; readonly text: string; readonly allowed?: ReadonlyArray<string> }> = []
    const shownOnce = (where: string, text: string, ...allowed: ReadonlyArray<string>) => haystacks.push({ where, text, allowed })
    const collect = (where: string, text: string) => haystacks.push({ where, text })

    interface Sent {
      readonly status: number
      readonly text: string
      readonly headers: Headers
      readonly json: any
    }
    const send = async (
      method: string,
      path: string,
      o: {
        readonly auth?: string | null
        readonly body?: unknown
        readonly headers?: Record<string, string>
        readonly shows?: (r: Sent) => ReadonlyArray<string>
      } = {}
    ): Promise<Sent> => {
      const headers: Record<string, string> = { ...o.headers }
      if (o.auth !== null) headers["authorization"] = o.auth ?? `Bearer ${managementToken}`
      const body = o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body)
      if (body !== undefined) headers["content-type"] ??= "application/json"
      let sent: Sent
      try {
        const r = await fetch(serve.url + path, { method, headers, ...(body !== undefined ? { body } : {}) })
        const text = await r.text().catch((e: Error) => `(body cut: ${e.message})`)
        let parsed: unknown
        try {
          parsed = JSON.parse(text)
        } catch {
          parsed = undefined
        }
        sent = { status: r.status, text, headers: r.headers, json: parsed }
      } catch (e) {
        sent = { status: 0, text: `(failed: ${(e as Error).message})`, headers: new Headers(), json: undefined }
      }
      // Labels name the request without its query: a label must not carry the secret it reports.
      const label = `response to ${method} ${path.replace(/\?.*/, "?…")}`
      // What the client received (its own request is not output of the product).
      const record = `${sent.status} ${JSON.stringify([...sent.headers.entries()])}\n${sent.text}`
      if (o.shows) shownOnce(label, record, ...o.shows(sent))
      else collect(label, record)
      return sent
    }
    const chat = (extra: Record<string, unknown> = {}) => ({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }], ...extra })
    const v1 = (token: string, o: { body?: unknown; headers?: Record<string, string>; path?: string } = {}) =>
      send("POST", o.path ?? "/v1/chat/completions", { auth: `Bearer ${token}`, body: o.body ?? chat(), ...(o.headers ? { headers: o.headers } : {}) })
    const newToken = async (label: string, projectId: string, extra: Record<string, unknown> = {}) => {
      const r = await send("POST", "/manage/tokens", {
        body: { project_id: projectId, duration_minutes: 10, ...extra },
        shows: (r) => [r.json?.token]
      })
      expect(r.status).toBe(201)
      return { id: r.json.id as string, token: secret(`proxy token (${label})`, r.json.token as string, 7, 4) }
    }

    try {
      // ---- management: projects, with the errors that quote input
      const project = async (name: string, provider: string, apiKey: string, extra: Record<string, unknown> = {}) => {
        const r = await send("POST", "/manage/projects", { body: { name, api_key: apiKey, provider, ...extra } })
        expect(r.status).toBe(201)
        return r.json.id as string
      }
      const openai = await project("secrets-openai", "openai", openaiKey)
      const anthropic = await project("secrets-anthropic", "anthropic", anthropicKey)
      const azure = await project("secrets-azure", "azure", azureKey, { rate_limit: { requests: 2, window_seconds: 600 } })
      expect((await send("POST", "/manage/projects", { body: { name: "secrets-openai", api_key: anthropicKey } })).status).toBe(409)
      expect((await send("POST", "/manage/projects", { body: { name: "x", api_key: anthropicKey, [anthropicKey]: anthropicKey } })).status).toBe(400)
      expect((await send("POST", "/manage/projects", { body: `{"name":"y","api_key":"${openaiKey}"` })).status).toBe(400)
      expect((await send("PATCH", `/manage/projects/${anthropic}`, { body: { api_key: 42 } })).status).toBe(400)
      expect((await send("PATCH", `/manage/projects/${anthropic}`, { body: { api_key: maskedLikeOpenAI(anthropicKey).replace(/\*+/, "...") } })).status).toBe(400)

      // ---- tokens of every state
      const valid = await newToken("valid", openai)
      const anthropicToken = await newToken("anthropic project", anthropic)
      const azureToken = await newToken("azure project, rate-limited", azure)
      const quota = await newToken("max_requests 1", openai, { max_requests: 1 })
      const revoked = await newToken("revoked", openai)
      const expired = await newToken("expired", openai, { max_requests: 100 })
      expect((await send("DELETE", `/manage/tokens/${revoked.id}`)).status).toBeLessThan(300)
      expect((await send("PATCH", `/manage/tokens/${expired.id}`, { body: { expires_at: "2020-01-01T00:00:00Z" } })).status).toBe(200)

      // ---- management: wrong token, the token in odd places, the admin UI session
      expect((await send("GET", "/manage/projects", { auth: `Bearer ${wrongManagementToken}` })).status).toBe(401)
      expect((await send("GET", "/manage/projects", { auth: null, headers: { "x-api-key": managementToken } })).status).toBe(401)
      expect((await send("GET", `/manage/projects?token=${managementToken}`, { auth: null })).status).toBe(401)
      expect((await send("GET", "/manage/projects", { auth: `Basic ${Buffer.from(`admin:${managementToken}`).toString("base64")}` })).status).toBe(401)
      expect((await send("POST", "/manage/session", { auth: null, body: { token: wrongManagementToken } })).status).toBe(401)
      const login = await send("POST", "/manage/session", {
        auth: null,
        body: { token: managementToken },
        shows: (r) => [r.json?.csrf_token, /llm_proxy_session=([^;]+)/.exec(r.headers.get("set-cookie") ?? "")?.[1]]
      })
      expect(login.status).toBe(200)
      const sessionId = secret("admin session id (cookie)", /llm_proxy_session=([^;]+)/.exec(login.headers.get("set-cookie") ?? "")![1]!)
      const csrf = secret("admin session CSRF token", login.json.csrf_token as string)
      const cookie = { cookie: `llm_proxy_session=${sessionId}` }
      expect((await send("GET", "/manage/projects", { auth: null, headers: cookie })).status).toBe(200)
      expect((await send("GET", "/manage/session", { auth: null, headers: cookie, shows: () => [csrf] })).status).toBe(200)
      expect((await send("POST", "/manage/tokens", { auth: null, headers: cookie, body: { project_id: openai, duration_minutes: 5 } })).status).toBe(403)
      const viaSession = await send("POST", "/manage/tokens", {
        auth: null,
        headers: { ...cookie, "x-csrf-token": csrf },
        body: { project_id: openai, duration_minutes: 5 },
        shows: (r) => [r.json?.token]
      })
      expect(viaSession.status).toBe(201)
      secret("proxy token (created through the admin session)", viaSession.json.token as string, 7, 4)
      expect((await send("DELETE", "/manage/session", { auth: null, headers: cookie })).status).toBe(204)
      expect((await send("GET", "/manage/projects", { auth: null, headers: cookie })).status).toBe(401)

      // ---- the CLI, as users run it
      const cliEnv = { MANAGE_API_BASE_URL: serve.url, MANAGEMENT_TOKEN: managementToken }
      const created = await runToEnd(["manage", "project", "create", "--name", "secrets-cli", "--api-key", cliKey, "--json"], cwd, cliEnv)
      expect(created.code).toBe(0)
      collect("manage project create output", created.output)
      const listed = await runToEnd(["manage", "project", "list"], cwd, cliEnv)
      expect(listed.code).toBe(0)
      collect("manage project list output", listed.output)
      const generated = await runToEnd(["manage", "token", "generate", "--project-id", openai, "--duration", "5", "--json"], cwd, cliEnv)
      expect(generated.code).toBe(0)
      const cliToken = secret("proxy token (manage token generate)", JSON.parse(generated.output).token as string, 7, 4)
      shownOnce("manage token generate output", generated.output, cliToken)
      const wrongCli = await runToEnd(["manage", "token", "list"], cwd, { ...cliEnv, MANAGEMENT_TOKEN: wrongManagementToken })
      expect(wrongCli.code).not.toBe(0)
      collect("manage token list output (wrong token)", wrongCli.output)

      // ---- the proxy: success, streaming, the cache, upstream errors
      expect((await v1(valid.token)).status).toBe(200)
      expect((await v1(cliToken)).status).toBe(200)
      mock.enqueue(sse(chatChunks(["Hel", "lo"])))
      const streamed = await v1(valid.token, { body: chat({ stream: true }) })
      expect(streamed.text).toContain("[DONE]")
      mock.route("/v1/models", json({ object: "list", data: [{ id: "gpt-4o-mini" }] }, { headers: { "cache-control": "public, max-age=60" } }))
      const models = () => send("GET", "/v1/models", { auth: `Bearer ${valid.token}` })
      expect((await models()).status).toBe(200)
      expect((await models()).headers.get("x-proxy-cache")).toBe("hit")
      mock.enqueue(json({
        error: {
          message: `Incorrect API key provided: ${maskedLikeOpenAI(openaiKey)}. You can find your API key at https://platform.openai.com/account/api-keys.`,
          type: "invalid_request_error",
          param: null,
          code: "invalid_api_key"
        }
      }, { status: 401 }))
      expect((await v1(valid.token)).status).toBe(401)
      mock.enqueue(reset())
      expect((await v1(valid.token)).status).toBe(502)
      mock.enqueue(reset(chatChunks(["cut"]).slice(0, 1)))
      await v1(valid.token, { body: chat({ stream: true }) })
      expect((await v1(valid.token, { body: "{not json" })).status).toBeLessThan(500)

      // ---- other providers' auth styles, rate limit, quota
      expect((await v1(anthropicToken.token, { path: "/v1/messages", body: { model: "claude-3-5-haiku", max_tokens: 8, messages: [] } })).status).toBe(200)
      for (const status of [200, 200, 429]) expect((await v1(azureToken.token)).status).toBe(status)
      expect((await v1(quota.token)).status).toBe(200)
      expect((await v1(quota.token)).status).toBe(429)

      // ---- refused credentials, and valid tokens where users put them by mistake
      for (const t of [revoked.token, expired.token, unknownToken, malformedToken, managementToken, openaiKey]) {
        expect((await v1(t)).status).toBe(401)
      }
      const refused = [
        { auth: null, headers: { "x-api-key": valid.token } },
        { auth: null, headers: { "api-key": valid.token } },
        { auth: `Basic ${Buffer.from(`user:${valid.token}`).toString("base64")}` },
        { auth: valid.token },
        { auth: null, headers: { cookie: `token=${valid.token}` } }
      ] as const
      for (const o of refused) expect((await send("POST", "/v1/chat/completions", { ...o, body: chat() })).status).toBe(401)
      expect((await send("POST", `/v1/chat/completions?key=${valid.token}`, { auth: null, body: chat() })).status).toBe(401)
      expect((await send("POST", `/v1/chat/completions?api-key=${encodeURIComponent(valid.token)}`, { auth: null, body: chat() })).status).toBe(401)

      // ---- key rotation, project deactivation, then a marker that every sink must have delivered
      expect((await send("PATCH", `/manage/projects/${openai}`, { body: { api_key: openaiRotated } })).status).toBe(200)
      expect((await v1(valid.token)).status).toBe(200)
      expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${openaiRotated}`)
      expect((await send("PATCH", `/manage/projects/${anthropic}`, { body: { is_active: false, revoke_tokens: true } })).status).toBe(200)
      expect((await v1(anthropicToken.token, { path: "/v1/messages", body: { model: "claude-3-5-haiku", messages: [] } })).status).toBeGreaterThanOrEqual(401)
      expect((await v1(valid.token, { headers: { "x-request-id": marker } })).status).toBe(200)

      // ---- reads of everything the management API and the probes show
      for (const path of ["/manage/projects", `/manage/projects/${openai}`, `/manage/projects/${azure}`, "/manage/tokens", `/manage/tokens/${valid.id}`, "/manage/audit?page_size=100", "/health", "/ready", "/live", "/metrics", "/metrics/json"]) {
        expect((await send("GET", path)).status).toBe(200)
      }

      // ---- wait until every sink delivered the marker (and spans arrived), then stop everything cleanly
      const eventsFile = join(cwd, "data/events.jsonl")
      await waitFor("the event log to have the marker", () => existsSync(eventsFile) && readFileSync(eventsFile, "utf8").includes(marker))
      if (redis) {
        await waitFor("the file dispatcher to deliver the marker", () => filesUnder(dispatcherDirs[0]!).some((f) => readFileSync(f, "utf8").includes(marker)))
        await waitFor("Lunary and Helicone to receive the marker", () =>
          ["/lunary", "/helicone"].every((p) => backends.requests.some((r) => r.url === p && r.body.includes(marker))))
      }
      await waitFor("proxy spans at the OTLP receiver", () => otlp.requests.some((r) => r.body.includes("proxy.request")))
    } finally {
      for (const p of programs.slice(1)) expect(await p.stop(), `${p.name} exit code`).toBe(0)
      expect(await serve.stop(), "serve exit code").toBe(0)
    }

    // ---- collect everything
    for (const p of programs) collect(`${p.name} stdout+stderr`, p.output())
    const files = [...filesUnder(cwd), ...dispatcherDirs.flatMap(filesUnder)]
    for (const f of files) collect(`file ${f}`, readFileSync(f).toString("latin1"))
    for (const r of otlp.requests) {
      const { "x-otlp-key": exportHeader, ...rest } = r.headers
      expect(exportHeader).toBe(otlpHeader)
      collect(`OTLP export ${r.url}`, `${r.url} ${JSON.stringify(rest)}\n${r.body}`)
    }
    for (const r of backends.requests) {
      const { authorization, ...rest } = r.headers
      expect(authorization).toBe(`Bearer ${dispatcherKey}`)
      collect(`${r.url} delivery`, `${r.url} ${JSON.stringify(rest)}\n${r.body}`)
    }
    const keyOf: Record<string, ReadonlyArray<string>> = {
      authorization: [`Bearer ${openaiKey}`, `Bearer ${openaiRotated}`],
      "x-api-key": [anthropicKey],
      "api-key": [azureKey]
    }
    for (const r of mock.requests) {
      const pairs: Array<string> = []
      for (let i = 0; i < r.rawHeaders.length; i += 2) {
        const [k, v] = [r.rawHeaders[i]!, r.rawHeaders[i + 1]!]
        if (!keyOf[k.toLowerCase()]?.includes(v)) pairs.push(`${k}: ${v}`)
      }
      collect(`upstream request ${r.method} ${r.path}`, `${r.url}\n${pairs.join("\n")}\n${r.body}`)
    }
    if (redis) {
      const client = new Redis(redis)
      try {
        const entries = await client.xrange(streamKey, "-", "+")
        expect(entries.length).toBeGreaterThan(10)
        collect("Redis stream entries", JSON.stringify(entries))
        const cacheKeys = await client.keys(`${prefix}cache:*`)
        expect(cacheKeys.length).toBeGreaterThan(0)
        for (const k of cacheKeys) {
          const type = await client.type(k)
          const value = type === "string" ? await client.getBuffer(k) : type === "hash" ? await client.hgetall(k) : type
          collect(`Redis cache ${k}`, `${k}\n${Buffer.isBuffer(value) ? value.toString("latin1") : JSON.stringify(value)}`)
        }
      } finally {
        client.disconnect()
      }
    }

    // ---- the collection is not trivial: a grep of nothing proves nothing
    const text = (where: RegExp) => haystacks.filter((h) => where.test(h.where)).map((h) => h.text).join("\n")
    const has = (where: RegExp, needle: string) => expect(text(where).includes(needle), `${where} contains ${needle}`).toBe(true)
    const lines = (where: RegExp) => text(where).split("\n").filter((l) => l.includes("request_id")).length
    const serveLines = serve.output().split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as { message?: unknown; logLevel?: string })
    expect(serveLines.filter((l) => l.message === "access").length).toBeGreaterThanOrEqual(25)
    expect(serveLines.some((l) => l.logLevel === "WARN")).toBe(true)
    has(/audit\.log$/, "admin.login")
    has(/audit\.log$/, "management.auth")
    expect(lines(/events\.jsonl$/)).toBeGreaterThanOrEqual(25)
    // The credentials that reached traced requests were there and redacted (not merely untraced).
    has(/^OTLP/, `"key":"url.query","value":{"stringValue":"token=REDACTED"}`)
    has(/^OTLP/, `"key":"http.request.header.x-csrf-token","value":{"stringValue":"<redacted>"}`)
    for (const span of ["proxy.request", "proxy.upstream", "POST /manage/projects", "POST /manage/session", "sql.execute"]) has(/^OTLP/, `"name":"${span}"`)
    has(/GET \/metrics$/, "# TYPE")
    has(/GET \/metrics\/json$/, "{")
    has(/GET \/health$/, "database")
    has(/llm-proxy\.db$/, "enc:v1:")
    if (redis) {
      expect(lines(/delivered\.jsonl$/)).toBeGreaterThanOrEqual(25)
      has(/^\/lunary/, marker)
      has(/^\/helicone/, marker)
      has(/^Redis stream/, marker)
    }
    const bytes = haystacks.reduce((n, h) => n + h.text.length, 0)
    console.log(`[secrets] ${secrets.length} secrets × ${haystacks.length} outputs (${(bytes / 1024).toFixed(0)} KiB): ${files.length} files, ${otlp.requests.length} OTLP exports, ${backends.requests.length} backend deliveries, ${mock.requests.length} upstream requests${redis ? "" : " (no REDIS_URL: no dispatchers, no Redis stream or cache)"}`)

    // ---- the grep
    const findings: Array<string> = []
    for (const s of secrets) {
      const looks = forms(s)
      for (const h of haystacks) {
        if (h.allowed?.includes(s.value)) continue
        for (const f of looks) if (h.text.includes(f.text)) findings.push(`${h.where}: ${s.name} (${f.form})`)
      }
    }
    if (process.env["SECRETS_TEST_DUMP"]) writeFileSync(process.env["SECRETS_TEST_DUMP"], findings.join("\n"))
    expect(findings).toEqual([])
  }, 90_000)
})
