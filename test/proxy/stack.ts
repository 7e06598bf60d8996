/**
 * A real `serve` stack pointed at the in-process mock upstream, plus helpers to make projects and tokens through
 * the management API and to call /v1 as a client would (raw node:http, so nothing is normalised or hidden).
 */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope, Tracer } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { type IncomingHttpHeaders, request as httpRequest } from "node:http"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { AppConfigShape } from "../../src/config/AppConfig.js"
import { ServerAddress } from "../../src/http/Server.js"
import { loggerLayer, serveLayer, type ServeOptions } from "../../src/Layers.js"
import { type BackendInstance, Client, providerKey, uniqueName } from "../http/harness.js"
import { withPgClient } from "../support/databases.js"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { testConfig, type TestServer } from "../support/server.js"

/** Counts the SQL statements the server runs (every @effect/sql query is one `sql.execute` span). */
export class QueryCounter {
  count = 0
}

const countingTracer = (counter: QueryCounter) =>
  Layer.unwrapEffect(
    Effect.map(Effect.tracer, (native) =>
      Layer.setTracer(Tracer.make({
        span: (name, parent, context, links, startTime, kind, options) => {
          if (name === "sql.execute") counter.count++
          return native.span(name, parent, context, links, startTime, kind, options)
        },
        context: (f, fiber) => native.context(f, fiber)
      })))
  )

/** `startServer` of test/support/server.ts, with every SQL statement counted. */
export const startServerCounting = async (
  config: AppConfigShape,
  counter: QueryCounter,
  options: ServeOptions = {}
): Promise<TestServer> => {
  const scope = Effect.runSync(Scope.make())
  const layer = serveLayer(config, options).pipe(
    Layer.provide(loggerLayer(config)),
    Layer.provide(countingTracer(counter))
  )
  const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  const address = Context.get(ctx, ServerAddress)
  return {
    url: `http://127.0.0.1:${address.port}`,
    token: Option.match(config.managementToken, { onNone: () => "", onSome: Redacted.value }),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

export interface Stack {
  readonly server: TestServer
  readonly queries: QueryCounter
  readonly mock: MockUpstream
  readonly manage: Client
  readonly backend: BackendInstance
  readonly close: () => Promise<void>
}

/** Writes a providers YAML whose base URLs are `{{MOCK}}`-substituted, and returns its path. */
export const writeProvidersYaml = (yaml: string, mockUrl: string): string => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-providers-"))
  const path = join(dir, "api_providers.yaml")
  writeFileSync(path, yaml.replaceAll("{{MOCK}}", mockUrl))
  return path
}

export const startStack = async (
  backend: BackendInstance,
  overrides: Partial<AppConfigShape> = {},
  providersYaml?: string,
  mock?: MockUpstream,
  options: ServeOptions = {}
): Promise<Stack> => {
  const m = mock ?? (await startMockUpstream())
  const queries = new QueryCounter()
  const server = await startServerCounting(
    testConfig(backend.database, {
      openaiApiUrl: m.url,
      ...(providersYaml !== undefined ? { apiConfigPath: Option.some(writeProvidersYaml(providersYaml, m.url)) } : {}),
      ...overrides
    }),
    queries,
    options
  )
  return {
    server,
    queries,
    mock: m,
    manage: new Client(server.url, server.token),
    backend,
    close: async () => {
      await server.close()
      if (mock === undefined) await m.close()
    }
  }
}

export interface ProjectAndToken {
  readonly projectId: string
  readonly apiKey: string
  readonly tokenId: string
  readonly token: string
}

export const createProject = async (manage: Client, options: { provider?: string } = {}) => {
  const apiKey = providerKey()
  const r = await manage.post("/manage/projects", { name: uniqueName("proxy"), api_key: apiKey, ...options })
  if (r.status !== 201) throw new Error(`create project: ${r.status} ${r.text}`)
  return { projectId: r.json.id as string, apiKey }
}

export const createToken = async (
  manage: Client,
  projectId: string,
  options: { max_requests?: number; duration_minutes?: number } = {}
) => {
  const r = await manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...options })
  if (r.status !== 201) throw new Error(`create token: ${r.status} ${r.text}`)
  return { tokenId: r.json.id as string, token: r.json.token as string }
}

export const projectAndToken = async (
  manage: Client,
  options: { max_requests?: number; provider?: string } = {}
): Promise<ProjectAndToken> => {
  const p = await createProject(manage, options.provider !== undefined ? { provider: options.provider } : {})
  const t = await createToken(
    manage,
    p.projectId,
    options.max_requests !== undefined ? { max_requests: options.max_requests } : {}
  )
  return { ...p, ...t }
}

export interface ProxyReply {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly text: string
  readonly json: any
}

export interface ProxyCall {
  readonly method?: string
  readonly token?: string | null
  readonly headers?: Record<string, string>
  /** JSON-encoded unless a string/Buffer. */
  readonly body?: unknown
}

const parse = (t: string) => {
  try {
    return JSON.parse(t)
  } catch {
    return undefined
  }
}

/** One request through the proxy with node:http. */
export const call = (baseUrl: string, path: string, options: ProxyCall = {}): Promise<ProxyReply> => {
  const url = new URL(baseUrl)
  const headers: Record<string, string> = { ...options.headers }
  if (options.token !== undefined && options.token !== null) headers["authorization"] ??= `Bearer ${options.token}`
  let body: string | Buffer | undefined
  if (options.body !== undefined) {
    body = typeof options.body === "string" || Buffer.isBuffer(options.body)
      ? options.body
      : JSON.stringify(options.body)
    headers["content-type"] ??= "application/json"
    headers["content-length"] ??= String(Buffer.byteLength(body))
  }
  // An empty value means "do not send this header" (e.g. content-length for a chunked body).
  for (const [k, v] of Object.entries(headers)) if (v === "") delete headers[k]
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        method: options.method ?? (body !== undefined ? "POST" : "GET"),
        path,
        headers,
        agent: false
      },
      (res) => {
        const parts: Array<Buffer> = []
        res.on("data", (d: Buffer) => parts.push(d))
        res.on("error", reject)
        res.on("end", () => {
          const text = Buffer.concat(parts).toString("utf8")
          resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json: parse(text) })
        })
      }
    )
    req.on("error", reject)
    req.end(body)
  })
}

export const chatBody = (extra: Record<string, unknown> = {}) => ({
  model: "gpt-4o-mini",
  messages: [{ role: "user", content: "Hi" }],
  ...extra
})

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `f` until it returns true (or throws after `timeoutMs`). */
export const eventually = async (f: () => Promise<boolean> | boolean, timeoutMs = 6_000, stepMs = 50) => {
  const until = Date.now() + timeoutMs
  for (;;) {
    if (await f()) return
    if (Date.now() > until) throw new Error("condition not met in time")
    await sleep(stepMs)
  }
}

// better-sqlite3 / pg for writes the API does not offer (rate-limit columns, breaking the schema on purpose).
interface SqliteDb {
  prepare(sql: string): { run(...params: ReadonlyArray<unknown>): unknown }
  close(): void
}
const SqliteDatabase = createRequire(import.meta.url)("better-sqlite3") as new(path: string) => SqliteDb

/** Runs one statement directly against the backend's database (`?` placeholders on both dialects). */
export const exec = async (backend: BackendInstance, statement: string, params: ReadonlyArray<unknown> = []) => {
  const db = backend.database
  if (db._tag === "sqlite") {
    const conn = new SqliteDatabase(db.path)
    try {
      conn.prepare(statement).run(...params)
    } finally {
      conn.close()
    }
    return
  }
  let i = 0
  const text = statement.replace(/\?/g, () => `$${++i}`)
  await withPgClient(Redacted.value(db.url), (c) => c.query(text, params))
}

export const tokenRow = async (backend: BackendInstance, id: string) =>
  (await backend.rows("tokens")).find((r) => r.id === id)!
