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
 * `?key=`, `Basic`, a cookie), the admin UI session (login, cookie, CSRF token — the session table holds only a hash),
 * METRICS_TOKEN (right and wrong, on the main listener and on METRICS_ADDR), the dispatcher's backend API key,
 * an OTLP export header and the Redis password; the upstream answers 200, SSE, a 401 quoting the (masked) key,
 * and resets. Then every byte is collected — the processes' stdout and stderr, every file they wrote (the SQLite
 * database included: with ENCRYPTION_KEY set it holds provider keys only as `enc:v1:` ciphertext and tokens only
 * as SHA-256), the OTLP and Lunary/Helicone bodies, the Redis stream and cache entries, /metrics, /metrics/json,
 * /health, /ready, every management and proxy response, every upstream request — and each secret is looked for by
 * name: itself, base64, base64url, URL-encoded, and slices of the part the contract never shows (provider keys may
 * show their first 8 and last 4 characters, proxy tokens `sk-` + 4 and the last 4, everything else nothing).
 *
 * Exclusions, exactly: a token creation response (and `manage token generate`) shows the new token once
 * (docs/management-api.md "Tokens"); the session login and `GET /manage/session` answers carry the session's CSRF token and (login) its cookie;
 * the upstream sees its project's provider key in the provider's auth header; the OTLP receiver sees the export
 * header and the Lunary/Helicone receivers the dispatcher's API key as `Authorization` — those headers only.
 * Each of these is still checked for every *other* secret.
 *
 * A second, shorter run does the same with `LOG_FORMAT=pretty` and, when DATABASE_URL is set, on PostgreSQL as a role
 * of its own whose password (in DATABASE_URL) is one more secret; every row of every table is grepped there.
 *
 * Like the other tests of the built binary it needs `npm run build` first (dist/ is not rebuilt by `npm test`);
 * it warns when dist/ is older than src/. SECRETS_TEST_DUMP=file appends the findings there (names, never values).
 */
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import { createHash, randomBytes } from "node:crypto"
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { createServer, type IncomingHttpHeaders } from "node:http"
import { createServer as createNetServer } from "node:net"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { flushRedisPrefix, postgresUrl, redisUrl, withPgClient } from "../support/databases.js"
import { chatChunks, json, type MockUpstream, reset, sse, startMockUpstream } from "../support/mockUpstream.js"
import { stopProcess } from "../support/processes.js"
import { decodeTraces } from "./otlpDecode.js"

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
  return {
    name,
    child,
    output: () => output,
    /** SIGTERM; killed after 15 s (then -1), so that nothing outlives the test. */
    stop: () => stopProcess(child).then((e) => (e.killed ? -1 : e.code))
  }
}

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createNetServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as AddressInfo).port
      s.close(() => resolve(port))
    })
  })

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
      const raw = Buffer.concat(chunks)
      // OTLP protobuf (the default): grep the raw bytes and their decoded OTLP/JSON form.
      const body = req.headers["content-type"] === "application/x-protobuf"
        ? `${raw.toString("latin1")}\n${JSON.stringify(decodeTraces(raw))}`
        : raw.toString("utf8")
      requests.push({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body })
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
  for (let i = 0; i + 10 <= hidden.length; i += 4) {
    out.push({ form: `hidden chars ${s.head + i}..${s.head + i + 10}`, text: hidden.slice(i, i + 10) })
  }
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
// The ledger: the secrets a run used, everything it collected, and the grep

interface Output {
  readonly where: string
  readonly text: string
  /** Secrets this output legitimately shows (a token creation shows its token once). */
  readonly allowed?: ReadonlyArray<string | undefined>
}

const makeLedger = () => {
  const secrets: Array<Secret> = []
  const outputs: Array<Output> = []
  return {
    secrets,
    outputs,
    secret: (name: string, value: string, head = 0, tail = 0) => {
      secrets.push({ name, value, head, tail })
      return value
    },
    collect: (where: string, text: string) => void outputs.push({ where, text }),
    shownOnce: (where: string, text: string, allowed: ReadonlyArray<string | undefined>) =>
      void outputs.push({ where, text, allowed }),
    text: (where: RegExp) => outputs.filter((o) => where.test(o.where)).map((o) => o.text).join("\n"),
    /** `where: secret name (form)` for every form of every secret found in an output that may not show it. */
    findings: () => {
      const found: Array<string> = []
      for (const s of secrets) {
        const looks = forms(s)
        for (const o of outputs) {
          if (o.allowed?.includes(s.value)) continue
          for (const f of looks) if (o.text.includes(f.text)) found.push(`${o.where}: ${s.name} (${f.form})`)
        }
      }
      if (process.env["SECRETS_TEST_DUMP"]) {
        writeFileSync(process.env["SECRETS_TEST_DUMP"], found.join("\n"), { flag: "a" })
      }
      return found
    }
  }
}
type Ledger = ReturnType<typeof makeLedger>

interface Sent {
  readonly status: number
  readonly text: string
  readonly headers: Headers
  readonly json: any
}

/** A client of one server whose every response (status, headers, body) goes into the ledger. */
const clientOf = (url: string, managementToken: string, ledger: Ledger) => {
  const send = async (
    method: string,
    path: string,
    o: {
      readonly auth?: string | null
      readonly body?: unknown
      readonly headers?: Record<string, string>
      /** The secrets this response may show (token creation, session login). */
      readonly shows?: (r: Sent) => ReadonlyArray<string | undefined>
    } = {}
  ): Promise<Sent> => {
    const headers: Record<string, string> = { ...o.headers }
    if (o.auth !== null) headers["authorization"] = o.auth ?? `Bearer ${managementToken}`
    const body = o.body === undefined ? undefined : typeof o.body === "string" ? o.body : JSON.stringify(o.body)
    if (body !== undefined) headers["content-type"] ??= "application/json"
    let sent: Sent
    try {
      const r = await fetch(url + path, { method, headers, ...(body !== undefined ? { body } : {}) })
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
    // What the client received (its own request is not output of the product); the label has no query string,
    // so it cannot carry the secret it reports.
    const label = `response to ${method} ${path.replace(/\?.*/, "?…")}`
    const record = `${sent.status} ${JSON.stringify([...sent.headers.entries()])}\n${sent.text}`
    if (o.shows) ledger.shownOnce(label, record, o.shows(sent))
    else ledger.collect(label, record)
    return sent
  }
  const chat = (extra: Record<string, unknown> = {}) => ({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Hi" }],
    ...extra
  })
  const v1 = (token: string, o: { body?: unknown; headers?: Record<string, string>; path?: string } = {}) =>
    send("POST", o.path ?? "/v1/chat/completions", {
      auth: `Bearer ${token}`,
      body: o.body ?? chat(),
      ...(o.headers ? { headers: o.headers } : {})
    })
  const project = async (name: string, provider: string, apiKey: string, extra: Record<string, unknown> = {}) => {
    const r = await send("POST", "/manage/projects", { body: { name, api_key: apiKey, provider, ...extra } })
    expect(r.status).toBe(201)
    return r.json.id as string
  }
  const token = async (label: string, projectId: string, extra: Record<string, unknown> = {}) => {
    const r = await send("POST", "/manage/tokens", {
      body: { project_id: projectId, duration_minutes: 10, ...extra },
      shows: (r) => [r.json?.token]
    })
    expect(r.status).toBe(201)
    return { id: r.json.id as string, token: ledger.secret(`proxy token (${label})`, r.json.token as string, 7, 4) }
  }
  /** Admin UI login with the management token: the session id and CSRF token become secrets of the run. */
  const login = async () => {
    const cookieOf = (r: Sent) => /llm_proxy_session=([^;]+)/.exec(r.headers.get("set-cookie") ?? "")?.[1]
    const r = await send("POST", "/manage/session", {
      auth: null,
      body: { token: managementToken },
      shows: (r) => [r.json?.csrf_token, cookieOf(r)]
    })
    expect(r.status).toBe(200)
    const id = ledger.secret("admin session id (cookie)", cookieOf(r)!)
    return {
      id,
      cookie: { cookie: `llm_proxy_session=${id}` },
      csrf: ledger.secret("admin session CSRF token", r.json.csrf_token as string)
    }
  }
  return { send, chat, v1, project, token, login }
}

// ---------------------------------------------------------------------------------------------------------------

/** The upstream's 401, as OpenAI words it: the key shown as its first 8 and last 4 characters. */
const invalidKey = (key: string) =>
  json({
    error: {
      message: `Incorrect API key provided: ${
        maskedLikeOpenAI(key)
      }. You can find your API key at https://platform.openai.com/account/api-keys.`,
      type: "invalid_request_error",
      param: null,
      code: "invalid_api_key"
    }
  }, { status: 401 })

const providersYaml = (upstream: string) =>
  [
    "default_api: openai",
    "apis:",
    "  openai:",
    `    base_url: ${upstream}`,
    "    allowed_endpoints: [/v1/chat/completions, /v1/models]",
    "    allowed_methods: [GET, POST]",
    "  anthropic:",
    `    base_url: ${upstream}`,
    "    allowed_endpoints: [/v1/messages]",
    "    allowed_methods: [POST]",
    "    auth_header: x-api-key",
    "    auth_scheme: \"\"",
    "  azure:",
    `    base_url: ${upstream}`,
    "    allowed_endpoints: [/v1/chat/completions]",
    "    allowed_methods: [POST]",
    "    auth_header: api-key",
    "    auth_scheme: \"\"",
    ""
  ].join("\n")

/** Every request the upstream received, minus the one header that legitimately carries its project's key. */
const collectUpstream = (ledger: Ledger, mock: MockUpstream, keys: Record<string, ReadonlyArray<string>>) => {
  for (const r of mock.requests) {
    const pairs: Array<string> = []
    for (let i = 0; i < r.rawHeaders.length; i += 2) {
      const [k, v] = [r.rawHeaders[i]!, r.rawHeaders[i + 1]!]
      if (!keys[k.toLowerCase()]?.includes(v)) pairs.push(`${k}: ${v}`)
    }
    ledger.collect(`upstream request ${r.method} ${r.path}`, `${r.url}\n${pairs.join("\n")}\n${r.body}`)
  }
}

describe.skipIf(!built)("secrets in everything the built binary writes", () => {
  const dirs: Array<string> = []
  const tempDir = (name: string) => {
    const d = mkdtempSync(join(tmpdir(), `llm-proxy-secrets-${name}-`))
    dirs.push(d)
    return d
  }
  let mock: MockUpstream
  let otlp: Awaited<ReturnType<typeof startReceiver>>
  let backends: Awaited<ReturnType<typeof startReceiver>>
  const prefix = `llm-proxy-test:secrets:${process.pid}:${Date.now()}:`
  beforeAll(async () => {
    // dist/ is what runs: say so when it is older than the sources (`npm test` does not rebuild it).
    const builtAt = statSync(join(root, "dist/cli/main.js")).mtimeMs
    const newer = filesUnder(join(root, "src")).filter((f) => statSync(f).mtimeMs > builtAt)
    if (newer.length > 0) {
      console.warn(
        `[secrets] dist/ is older than ${newer.length} file(s) in src/ (e.g. ${newer[0]}): run npm run build`
      )
    }
    mock = await startMockUpstream()
    otlp = await startReceiver()
    backends = await startReceiver()
  })
  afterAll(async () => {
    await mock?.close()
    await otlp?.close()
    await backends?.close()
    if (redisUrl) await flushRedisPrefix(redisUrl, prefix)
    for (const d of dirs) rmSync(d, { recursive: true, force: true })
  })

  it("one run with everything on: no secret in any output, file, export, scrape or response", async () => {
    mock.reset()
    const cwd = tempDir("json")
    const marker = `secrets-marker-${b64url(6)}`
    const ledger = makeLedger()
    const { secret, collect, shownOnce } = ledger
    const managementToken = secret("MANAGEMENT_TOKEN", b64url(32))
    const wrongManagementToken = secret(
      "a wrong management token (near miss)",
      `${managementToken.slice(0, -4)}${b64url(3)}`
    )
    const metricsToken = secret("METRICS_TOKEN", b64url(24))
    const wrongMetricsToken = secret("a wrong metrics token (near miss)", `${metricsToken.slice(0, -4)}${b64url(3)}`)
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

    writeFileSync(join(cwd, "providers.yaml"), providersYaml(mock.url))
    const streamKey = `${prefix}events`
    const serve = await startServe(cwd, {
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
      METRICS_TOKEN: metricsToken,
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
    })
    const programs: Array<Program> = [serve]
    const dispatcherDirs: Array<string> = []
    if (redis) {
      for (const service of ["file", "lunary", "helicone"] as const) {
        const dir = tempDir(service)
        dispatcherDirs.push(dir)
        programs.push(run(
          `dispatcher --service ${service}`,
          [
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
          ],
          dir,
          {
            LLM_PROXY_EVENT_BUS: "redis-streams",
            REDIS_URL: redis,
            LLM_PROXY_API_KEY: dispatcherKey,
            LOG_LEVEL: "debug",
            LOG_FORMAT: "json"
          }
        ))
      }
    }
    const { send, chat, v1, project, token, login } = clientOf(serve.url, managementToken, ledger)
    let sessionId = ""

    try {
      // ---- management: projects, with the errors that quote input
      const openai = await project("secrets-openai", "openai", openaiKey)
      const anthropic = await project("secrets-anthropic", "anthropic", anthropicKey)
      const azure = await project("secrets-azure", "azure", azureKey, {
        rate_limit: { requests: 2, window_seconds: 600 }
      })
      expect(
        (await send("POST", "/manage/projects", { body: { name: "secrets-openai", api_key: anthropicKey } })).status
      ).toBe(409)
      expect(
        (await send("POST", "/manage/projects", {
          body: { name: "x", api_key: anthropicKey, [anthropicKey]: anthropicKey }
        })).status
      ).toBe(400)
      expect((await send("POST", "/manage/projects", { body: `{"name":"y","api_key":"${openaiKey}"` })).status).toBe(
        400
      )
      expect((await send("PATCH", `/manage/projects/${anthropic}`, { body: { api_key: 42 } })).status).toBe(400)
      expect(
        (await send("PATCH", `/manage/projects/${anthropic}`, {
          body: { api_key: maskedLikeOpenAI(anthropicKey).replace(/\*+/, "...") }
        })).status
      ).toBe(400)

      // ---- tokens of every state
      const valid = await token("valid", openai)
      const anthropicToken = await token("anthropic project", anthropic)
      const azureToken = await token("azure project, rate-limited", azure)
      const quota = await token("max_requests 1", openai, { max_requests: 1 })
      const revoked = await token("revoked", openai)
      const expired = await token("expired", openai, { max_requests: 100 })
      expect((await send("DELETE", `/manage/tokens/${revoked.id}`)).status).toBeLessThan(300)
      expect(
        (await send("PATCH", `/manage/tokens/${expired.id}`, { body: { expires_at: "2020-01-01T00:00:00Z" } })).status
      ).toBe(200)

      // ---- management: wrong token, the token in odd places, the admin UI session
      expect((await send("GET", "/manage/projects", { auth: `Bearer ${wrongManagementToken}` })).status).toBe(401)
      expect((await send("GET", "/manage/projects", { auth: null, headers: { "x-api-key": managementToken } })).status)
        .toBe(401)
      expect((await send("GET", `/manage/projects?token=${managementToken}`, { auth: null })).status).toBe(401)
      expect(
        (await send("GET", "/manage/projects", {
          auth: `Basic ${Buffer.from(`admin:${managementToken}`).toString("base64")}`
        })).status
      ).toBe(401)
      expect((await send("POST", "/manage/session", { auth: null, body: { token: wrongManagementToken } })).status)
        .toBe(401)
      const { cookie, csrf, id } = await login()
      sessionId = id
      expect((await send("GET", "/manage/projects", { auth: null, headers: cookie })).status).toBe(200)
      expect((await send("GET", "/manage/session", { auth: null, headers: cookie, shows: () => [csrf] })).status).toBe(
        200
      )
      expect(
        (await send("POST", "/manage/tokens", {
          auth: null,
          headers: cookie,
          body: { project_id: openai, duration_minutes: 5 }
        })).status
      ).toBe(403)
      const viaSession = await send("POST", "/manage/tokens", {
        auth: null,
        headers: { ...cookie, "x-csrf-token": csrf },
        body: { project_id: openai, duration_minutes: 5 },
        shows: (r) => [r.json?.token]
      })
      expect(viaSession.status).toBe(201)
      secret("proxy token (created through the admin session)", viaSession.json.token as string, 7, 4)
      expect((await send("DELETE", "/manage/session", { auth: null, headers: cookie })).status).toBe(403)
      expect(
        (await send("DELETE", "/manage/session", {
          auth: null,
          headers: { ...cookie, "x-csrf-token": csrf.slice(0, -1) }
        })).status
      ).toBe(403)
      // The session table is read at the end (file grep) while this one is still alive; a second session is ended.
      const second = await login()
      expect(
        (await send("DELETE", "/manage/session", {
          auth: null,
          headers: { ...second.cookie, "x-csrf-token": second.csrf }
        })).status
      ).toBe(204)
      expect((await send("GET", "/manage/projects", { auth: null, headers: second.cookie })).status).toBe(401)

      // ---- the CLI, as users run it
      const cliEnv = { MANAGE_API_BASE_URL: serve.url, MANAGEMENT_TOKEN: managementToken }
      const created = await runToEnd(
        ["manage", "project", "create", "--name", "secrets-cli", "--api-key", cliKey, "--json"],
        cwd,
        cliEnv
      )
      expect(created.code, created.output).toBe(0)
      collect("manage project create output", created.output)
      const listed = await runToEnd(["manage", "project", "list"], cwd, cliEnv)
      expect(listed.code, listed.output).toBe(0)
      collect("manage project list output", listed.output)
      const generated = await runToEnd(
        ["manage", "token", "generate", "--project-id", openai, "--duration", "5", "--json"],
        cwd,
        cliEnv
      )
      expect(generated.code).toBe(0)
      const cliToken = secret("proxy token (manage token generate)", JSON.parse(generated.output).token as string, 7, 4)
      shownOnce("manage token generate output", generated.output, [cliToken])
      const wrongCli = await runToEnd(["manage", "token", "list"], cwd, {
        ...cliEnv,
        MANAGEMENT_TOKEN: wrongManagementToken
      })
      expect(wrongCli.code).not.toBe(0)
      collect("manage token list output (wrong token)", wrongCli.output)

      // ---- the proxy: success, streaming, the cache, upstream errors
      expect((await v1(valid.token)).status).toBe(200)
      expect((await v1(cliToken)).status).toBe(200)
      mock.enqueue(sse(chatChunks(["Hel", "lo"])))
      expect((await v1(valid.token, { body: chat({ stream: true }) })).text).toContain("[DONE]")
      mock.route(
        "/v1/models",
        json({ object: "list", data: [{ id: "gpt-4o-mini" }] }, { headers: { "cache-control": "public, max-age=60" } })
      )
      const models = () => send("GET", "/v1/models", { auth: `Bearer ${valid.token}` })
      expect((await models()).status).toBe(200)
      await waitFor("a cache hit", async () => (await models()).headers.get("x-proxy-cache") === "hit", 5_000)
      mock.enqueue(invalidKey(openaiKey))
      expect((await v1(valid.token)).status).toBe(401)
      mock.enqueue(reset())
      expect((await v1(valid.token)).status).toBe(502)
      mock.enqueue(reset(chatChunks(["cut"]).slice(0, 1)))
      await v1(valid.token, { body: chat({ stream: true }) })
      expect((await v1(valid.token, { body: "{not json" })).status).toBeLessThan(500)

      // ---- other providers' auth styles, rate limit, quota
      expect(
        (await v1(anthropicToken.token, {
          path: "/v1/messages",
          body: { model: "claude-3-5-haiku", max_tokens: 8, messages: [] }
        })).status
      ).toBe(200)
      for (const status of [200, 200, 429]) expect((await v1(azureToken.token)).status).toBe(status)
      expect((await v1(quota.token)).status).toBe(200)
      expect((await v1(quota.token)).status).toBe(429)

      // ---- refused credentials, and valid tokens where users put them by mistake
      for (const t of [revoked.token, expired.token, unknownToken, malformedToken, managementToken, openaiKey]) {
        expect((await v1(t)).status).toBe(401)
      }
      const misplaced = [
        { auth: null, headers: { "x-api-key": valid.token } },
        { auth: null, headers: { "api-key": valid.token } },
        { auth: `Basic ${Buffer.from(`user:${valid.token}`).toString("base64")}` },
        { auth: valid.token },
        { auth: null, headers: { cookie: `token=${valid.token}` } }
      ] as const
      for (const o of misplaced) {
        expect((await send("POST", "/v1/chat/completions", { ...o, body: chat() })).status).toBe(401)
      }
      // A credential in the query is refused (400 credential_in_query) without repeating it.
      expect((await send("POST", `/v1/chat/completions?key=${valid.token}`, { auth: null, body: chat() })).status).toBe(
        400
      )
      expect(
        (await send("POST", `/v1/chat/completions?api-key=${encodeURIComponent(valid.token)}`, {
          auth: null,
          body: chat()
        })).status
      ).toBe(400)

      // ---- key rotation, project deactivation, then a marker that every sink must have delivered
      expect((await send("PATCH", `/manage/projects/${openai}`, { body: { api_key: openaiRotated } })).status).toBe(200)
      expect((await v1(valid.token)).status).toBe(200)
      expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${openaiRotated}`)
      expect(
        (await send("PATCH", `/manage/projects/${anthropic}`, { body: { is_active: false, revoke_tokens: true } }))
          .status
      ).toBe(200)
      expect(
        (await v1(anthropicToken.token, { path: "/v1/messages", body: { model: "claude-3-5-haiku", messages: [] } }))
          .status
      ).toBeGreaterThanOrEqual(401)
      expect((await v1(valid.token, { headers: { "x-request-id": marker } })).status).toBe(200)

      // ---- reads of everything the management API and the probes show; the metrics need METRICS_TOKEN
      for (
        const path of [
          "/manage/projects",
          `/manage/projects/${openai}`,
          `/manage/projects/${azure}`,
          "/manage/tokens",
          `/manage/tokens/${valid.id}`,
          "/manage/audit?page_size=100",
          "/health",
          "/ready",
          "/live"
        ]
      ) {
        expect((await send("GET", path)).status).toBe(200)
      }
      for (const path of ["/metrics", "/metrics/json"]) {
        expect((await send("GET", path)).status).toBe(401)
        expect((await send("GET", path, { auth: `Bearer ${wrongMetricsToken}` })).status).toBe(401)
        expect((await send("GET", path, { auth: `Bearer ${metricsToken}` })).status).toBe(200)
      }

      // ---- wait until every sink delivered the marker (and spans arrived), then stop everything cleanly
      const eventsFile = join(cwd, "data/events.jsonl")
      await waitFor(
        "the event log to have the marker",
        () => existsSync(eventsFile) && readFileSync(eventsFile, "utf8").includes(marker)
      )
      if (redis) {
        await waitFor(
          "the file dispatcher to deliver the marker",
          () => filesUnder(dispatcherDirs[0]!).some((f) => readFileSync(f, "utf8").includes(marker))
        )
        await waitFor(
          "Lunary and Helicone to receive the marker",
          () =>
            ["/lunary", "/helicone/"].every((p) =>
              backends.requests.some((r) => r.url.startsWith(p) && r.body.includes(marker))
            )
        )
      }
      await waitFor(
        "proxy spans at the OTLP receiver",
        () => otlp.requests.some((r) => r.body.includes("POST /v1/chat/completions"))
      )
    } finally {
      // Every program is stopped (killed after a grace period) before any exit code is asserted.
      const codes = await Promise.all(programs.slice(1).map((p) => p.stop()))
      const serveCode = await serve.stop()
      programs.slice(1).forEach((p, i) => expect(codes[i], `${p.name} exit code`).toBe(0))
      expect(serveCode, "serve exit code").toBe(0)
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
    collectUpstream(ledger, mock, {
      authorization: [`Bearer ${openaiKey}`, `Bearer ${openaiRotated}`],
      "x-api-key": [anthropicKey],
      "api-key": [azureKey]
    })
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
          collect(
            `Redis cache ${k}`,
            `${k}\n${Buffer.isBuffer(value) ? value.toString("latin1") : JSON.stringify(value)}`
          )
        }
      } finally {
        client.disconnect()
      }
    }

    // ---- the collection is not trivial: a grep of nothing proves nothing
    const has = (where: RegExp, needle: string) =>
      expect(ledger.text(where).includes(needle), `${where} contains ${needle}`).toBe(true)
    const lines = (where: RegExp) => ledger.text(where).split("\n").filter((l) => l.includes("request_id")).length
    const serveLines = serve.output().split("\n").filter((l) => l.startsWith("{")).map((l) =>
      JSON.parse(l) as { message?: unknown; logLevel?: string }
    )
    expect(serveLines.filter((l) => l.message === "access").length).toBeGreaterThanOrEqual(25)
    expect(serveLines.some((l) => l.logLevel === "WARN")).toBe(true)
    has(/audit\.log$/, "admin.login")
    has(/audit\.log$/, "management.auth")
    // (requests without a valid token publish no event: only the token holders' ones are here)
    expect(lines(/events\.jsonl$/)).toBeGreaterThanOrEqual(15)
    // The credentials that reached traced requests were there and redacted (not merely untraced).
    has(/^OTLP/, `"key":"url.query","value":{"stringValue":"token=REDACTED"}`)
    has(/^OTLP/, `"key":"http.request.header.x-csrf-token","value":{"stringValue":"<redacted>"}`)
    for (
      const span of [
        "POST /v1/chat/completions",
        "chat gpt-4o-mini",
        "chat claude-3-5-haiku",
        "POST /manage/projects",
        "POST /manage/session",
        "sql.execute"
      ]
    ) {
      has(/^OTLP/, `"name":"${span}"`)
    }
    has(/GET \/metrics\?…$|GET \/metrics$/, "# TYPE")
    has(/GET \/metrics\/json$/, "{")
    has(/GET \/health$/, "database")
    has(/llm-proxy\.db$/, "enc:v1:")
    // The session table was written (and so grepped): its row holds the SHA-256 of the session id.
    has(/llm-proxy\.db(-wal)?$/, createHash("sha256").update(sessionId).digest("hex"))
    if (redis) {
      expect(lines(/delivered\.jsonl$/)).toBeGreaterThanOrEqual(15)
      has(/^\/lunary/, marker)
      has(/^\/helicone/, marker)
      has(/^Redis stream/, marker)
    }
    const bytes = ledger.outputs.reduce((n, o) => n + o.text.length, 0)
    console.log(
      `[secrets] json run: ${ledger.secrets.length} secrets × ${ledger.outputs.length} outputs (${
        (bytes / 1024).toFixed(0)
      } KiB): ${files.length} files, ${otlp.requests.length} OTLP exports, ${backends.requests.length} backend deliveries, ${mock.requests.length} upstream requests${
        redis ? "" : " (no REDIS_URL: no dispatchers, no Redis stream or cache)"
      }`
    )

    // ---- the grep
    expect(ledger.findings()).toEqual([])
  }, 90_000)

  it(
    "a pretty-format run (on PostgreSQL with a password of its own when DATABASE_URL is set): the same grep",
    async () => {
      mock.reset()
      const cwd = tempDir("pretty")
      const ledger = makeLedger()
      const { secret } = ledger
      const managementToken = secret("MANAGEMENT_TOKEN", b64url(32))
      const encryptionKey = secret("ENCRYPTION_KEY", randomBytes(32).toString("base64"))
      const openaiKey = secret("provider key (openai)", `sk-proj-${b64url(36)}`, 8, 4)
      const otlpHeader = secret("OTEL_EXPORTER_OTLP_HEADERS value", b64url(24))
      const metricsToken = secret("METRICS_TOKEN", b64url(24))
      const metricsPort = await freePort()

      // A role and database of this test's own, so the password in DATABASE_URL is a secret nothing else uses.
      let database: { url: string; drop: () => Promise<void>; dump: () => Promise<string> } | undefined
      if (postgresUrl) {
        const name = `llmproxy_secrets_${randomBytes(6).toString("hex")}`
        const password = secret("PostgreSQL password in DATABASE_URL", b64url(18))
        await withPgClient(postgresUrl, async (c) => {
          await c.query(`CREATE ROLE ${name} LOGIN PASSWORD '${password}'`)
          await c.query(`CREATE DATABASE ${name} OWNER ${name}`)
        })
        const u = new URL(postgresUrl)
        u.username = name
        u.password = password
        u.pathname = `/${name}`
        database = {
          url: u.toString(),
          drop: () =>
            withPgClient(postgresUrl!, async (c) => {
              await c.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
              await c.query(`DROP ROLE IF EXISTS ${name}`)
            }),
          // Every row of every table, as JSON: PostgreSQL's counterpart of grepping the SQLite file.
          dump: () =>
            withPgClient(u.toString(), async (c) => {
              const tables = await c.query<{ table_name: string }>(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
              )
              const out: Array<string> = []
              for (const t of tables.rows) {
                out.push(t.table_name, JSON.stringify((await c.query(`SELECT * FROM "${t.table_name}"`)).rows))
              }
              return out.join("\n")
            })
        }
      }
      try {
        const serve = await startServe(cwd, {
          LISTEN_ADDR: "127.0.0.1:0",
          MANAGEMENT_TOKEN: managementToken,
          ENCRYPTION_KEY: encryptionKey,
          OPENAI_API_URL: mock.url,
          LOG_LEVEL: "debug",
          LOG_FORMAT: "pretty",
          AUDIT_LOG_FILE: "./data/audit.log",
          FILE_EVENT_LOG: "./data/events.jsonl",
          OTEL_EXPORTER_OTLP_ENDPOINT: otlp.url,
          // The first run exports protobuf (the default); this one OTLP/JSON.
          OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
          OTEL_EXPORTER_OTLP_HEADERS: `x-otlp-key=${otlpHeader}`,
          OTEL_EXPORT_INTERVAL: "200ms",
          METRICS_ADDR: `127.0.0.1:${metricsPort}`,
          METRICS_TOKEN: metricsToken,
          ...(database ? { DATABASE_URL: database.url } : {})
        })
        const { send, chat, v1, project, token, login } = clientOf(serve.url, managementToken, ledger)
        const seenBefore = otlp.requests.length
        try {
          const id = await project("secrets-pretty", "openai", openaiKey)
          const valid = await token("valid", id)
          const revoked = await token("revoked", id)
          expect((await send("DELETE", `/manage/tokens/${revoked.id}`)).status).toBeLessThan(300)
          expect((await send("GET", "/manage/projects", { auth: `Bearer ${managementToken.slice(0, -1)}x` })).status)
            .toBe(401)
          expect((await send("GET", `/manage/tokens?project_id=${id}&api_key=${openaiKey}`)).status).toBe(200)
          const { cookie, csrf } = await login()
          expect(
            (await send("PATCH", `/manage/projects/${id}`, {
              auth: null,
              headers: { ...cookie, "x-csrf-token": csrf },
              body: { name: "secrets-pretty-2" }
            })).status
          ).toBe(200)
          // Left signed in: the session row is in the table dump (or the file) that is grepped below.
          await login()
          expect((await v1(valid.token)).status).toBe(200)
          mock.enqueue(sse(chatChunks(["a", "b"])))
          expect((await v1(valid.token, { body: chat({ stream: true }) })).text).toContain("[DONE]")
          mock.enqueue(invalidKey(openaiKey))
          expect((await v1(valid.token)).status).toBe(401)
          mock.enqueue(reset())
          expect((await v1(valid.token)).status).toBe(502)
          expect((await v1(revoked.token)).status).toBe(401)
          expect((await send("POST", `/v1/chat/completions?key=${valid.token}`, { auth: null, body: chat() })).status)
            .toBe(400)
          for (const path of ["/manage/tokens", "/manage/audit?page_size=100", "/health", "/ready"]) {
            expect((await send("GET", path)).status).toBe(200)
          }
          // METRICS_ADDR: the metrics are on their own listener (with METRICS_TOKEN), not on the main one.
          expect((await send("GET", "/metrics", { auth: `Bearer ${metricsToken}` })).status).toBe(404)
          const metrics = clientOf(`http://127.0.0.1:${metricsPort}`, managementToken, ledger)
          for (const path of ["/metrics", "/metrics/json"]) {
            expect((await metrics.send("GET", path)).status).toBe(401)
            expect((await metrics.send("GET", path, { auth: `Bearer ${metricsToken}` })).status).toBe(200)
          }
          const eventsFile = join(cwd, "data/events.jsonl")
          // the token holder's four requests (the revoked token and the token in the query publish none)
          await waitFor(
            "four events",
            () => existsSync(eventsFile) && readFileSync(eventsFile, "utf8").split("\n").length > 4
          )
          await waitFor(
            "proxy spans at the OTLP receiver",
            () => otlp.requests.slice(seenBefore).some((r) => r.body.includes("POST /v1/chat/completions"))
          )
        } finally {
          expect(await serve.stop(), "serve exit code").toBe(0)
        }
        ledger.collect("serve stdout+stderr", serve.output())
        for (const f of filesUnder(cwd)) {
          ledger.collect(`file ${f}`, readFileSync(f).toString("latin1"))
        }
        for (const r of otlp.requests.slice(seenBefore)) {
          const { "x-otlp-key": _, ...rest } = r.headers
          ledger.collect(`OTLP export ${r.url}`, `${r.url} ${JSON.stringify(rest)}\n${r.body}`)
        }
        collectUpstream(ledger, mock, { authorization: [`Bearer ${openaiKey}`] })
        if (database) ledger.collect("PostgreSQL rows", await database.dump())

        // Not trivial: pretty lines (not JSON), one access line per request, the key stored encrypted.
        const out = serve.output()
        expect(out.split("\n").some((l) => l.startsWith("{"))).toBe(false)
        expect(out.match(/access/g)?.length ?? 0).toBeGreaterThanOrEqual(6)
        expect(ledger.text(/audit\.log$/).includes("admin.login")).toBe(true)
        expect(ledger.text(/^OTLP/).includes("\"name\":\"POST /v1/chat/completions\"")).toBe(true)
        expect(ledger.text(database ? /^PostgreSQL rows$/ : /llm-proxy\.db$/).includes("enc:v1:")).toBe(true)
        if (database) {
          expect(/admin_sessions\n\[\{"id_hash":"[0-9a-f]{64}"/.test(ledger.text(/^PostgreSQL rows$/))).toBe(true)
        }
        console.log(
          `[secrets] pretty run${
            database ? " on PostgreSQL" : ""
          }: ${ledger.secrets.length} secrets × ${ledger.outputs.length} outputs`
        )
        expect(ledger.findings()).toEqual([])
      } finally {
        await database?.drop()
      }
    },
    60_000
  )
})
