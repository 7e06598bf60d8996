/**
 * A real `serve` stack pointed at the in-process mock upstream, plus helpers to make projects and tokens through
 * the management API and to call /v1 as a client would (raw node:http, so nothing is normalised or hidden).
 */
import { Option } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { request as httpRequest, type IncomingHttpHeaders } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { AppConfigShape } from "../../src/config/AppConfig.js"
import { type BackendInstance, Client, providerKey, uniqueName } from "../http/harness.js"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

export interface Stack {
  readonly server: TestServer
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
  mock?: MockUpstream
): Promise<Stack> => {
  const m = mock ?? (await startMockUpstream())
  const server = await startServer(testConfig(backend.database, {
    openaiApiUrl: m.url,
    ...(providersYaml !== undefined ? { apiConfigPath: Option.some(writeProvidersYaml(providersYaml, m.url)) } : {}),
    ...overrides
  }))
  return {
    server,
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

export const createToken = async (manage: Client, projectId: string, options: { max_requests?: number; duration_minutes?: number } = {}) => {
  const r = await manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...options })
  if (r.status !== 201) throw new Error(`create token: ${r.status} ${r.text}`)
  return { tokenId: r.json.id as string, token: r.json.token as string }
}

export const projectAndToken = async (
  manage: Client,
  options: { max_requests?: number; provider?: string } = {}
): Promise<ProjectAndToken> => {
  const p = await createProject(manage, options.provider !== undefined ? { provider: options.provider } : {})
  const t = await createToken(manage, p.projectId, options.max_requests !== undefined ? { max_requests: options.max_requests } : {})
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
    body = typeof options.body === "string" || Buffer.isBuffer(options.body) ? options.body : JSON.stringify(options.body)
    headers["content-type"] ??= "application/json"
    headers["content-length"] ??= String(Buffer.byteLength(body))
  }
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      { host: url.hostname, port: url.port, method: options.method ?? (body !== undefined ? "POST" : "GET"), path, headers, agent: false },
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
