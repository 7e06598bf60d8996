/**
 * Shared plumbing for the management API integration tests: one backend description per database, a small
 * fetch-based client that records what the user sees (status, headers, body), a raw node:http client for
 * requests fetch would normalise (`..` in paths, chunked bodies), and direct access to the stored rows.
 */
import { Redacted } from "effect"
import { rmSync } from "node:fs"
import { request as httpRequest } from "node:http"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Database as DatabaseConfig } from "../../src/config/AppConfig.js"
import { createTestDatabase, postgresUrl, withPgClient } from "../support/databases.js"

export type Row = Record<string, unknown>

// better-sqlite3 ships no type declarations (and @types/better-sqlite3 is not installed), so it is loaded through
// `require` with the small surface used here, as test/support/databases.ts does for pg.
interface SqliteDatabase {
  prepare(sql: string): { all(): Array<Row> }
  close(): void
}
const Database = createRequire(import.meta.url)("better-sqlite3") as new(
  path: string,
  options: { readonly readonly: boolean; readonly fileMustExist: boolean }
) => SqliteDatabase

export interface BackendInstance {
  readonly database: DatabaseConfig
  /** Every row of `table`, read directly from the database (not through the API). */
  readonly rows: (table: "projects" | "tokens" | "audit_events" | "admin_sessions") => Promise<ReadonlyArray<Row>>
  readonly cleanup: () => Promise<void>
}

export interface Backend {
  readonly name: "sqlite" | "postgres"
  readonly create: () => Promise<BackendInstance>
}

const sqlite: Backend = {
  name: "sqlite",
  create: async () => {
    const path = join(tmpdir(), `llm-proxy-mgmt-test-${crypto.randomUUID()}.db`)
    return {
      database: { _tag: "sqlite", path },
      rows: async (table) => {
        const db = new Database(path, { readonly: true, fileMustExist: true })
        try {
          return db.prepare(`SELECT * FROM ${table}`).all()
        } finally {
          db.close()
        }
      },
      cleanup: async () => {
        for (const suffix of ["", "-wal", "-shm", "-journal"]) rmSync(path + suffix, { force: true })
      }
    }
  }
}

const postgres: Backend = {
  name: "postgres",
  create: async () => {
    const db = await createTestDatabase()
    return {
      database: { _tag: "postgres", url: Redacted.make(db.url), poolSize: 5 },
      rows: (table) => withPgClient(db.url, async (client) => (await client.query(`SELECT * FROM ${table}`)).rows),
      cleanup: () => db.drop()
    }
  }
}

/** SQLite always; PostgreSQL when DATABASE_URL points at a server. */
export const backends: ReadonlyArray<Backend> = postgresUrl ? [sqlite, postgres] : [sqlite]

export interface Reply {
  readonly status: number
  readonly headers: Headers
  readonly text: string
  /** The parsed body, or undefined when it is not JSON. */
  readonly json: any
}

const parse = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

export interface CallOptions {
  /** JSON-encoded unless it is a string (sent verbatim) or undefined (no body). */
  readonly body?: unknown
  /** Replaces the management token; `null` sends no Authorization header at all. */
  readonly auth?: string | null
  readonly headers?: Record<string, string>
}

export class Client {
  constructor(readonly baseUrl: string, readonly token: string) {}

  async call(method: string, path: string, options: CallOptions = {}): Promise<Reply> {
    const headers: Record<string, string> = { ...options.headers }
    if (options.auth !== null) headers["authorization"] = options.auth ?? `Bearer ${this.token}`
    let body: string | undefined
    if (options.body !== undefined) {
      body = typeof options.body === "string" ? options.body : JSON.stringify(options.body)
      headers["content-type"] ??= "application/json"
    }
    const response = await fetch(this.baseUrl + path, { method, headers, ...(body !== undefined ? { body } : {}) })
    const text = await response.text()
    return { status: response.status, headers: response.headers, text, json: parse(text) }
  }

  get = (path: string, options?: CallOptions) => this.call("GET", path, options)
  post = (path: string, body?: unknown, options?: CallOptions) => this.call("POST", path, { ...options, body })
  patch = (path: string, body?: unknown, options?: CallOptions) => this.call("PATCH", path, { ...options, body })
  delete = (path: string, options?: CallOptions) => this.call("DELETE", path, options)

  /**
   * A request sent with node:http exactly as given: the path is not normalised (fetch would resolve `..` and
   * `%2E%2E`), and a body given as chunks goes out with `Transfer-Encoding: chunked`.
   */
  raw(
    method: string,
    path: string,
    options: { readonly chunks?: ReadonlyArray<string | Uint8Array>; readonly auth?: string | null } = {}
  ): Promise<Reply> {
    const url = new URL(this.baseUrl)
    const headers: Record<string, string> = {}
    if (options.auth !== null) headers["authorization"] = options.auth ?? `Bearer ${this.token}`
    if (options.chunks) {
      headers["content-type"] = "application/json"
      headers["transfer-encoding"] = "chunked"
    }
    return new Promise((resolve, reject) => {
      const req = httpRequest({ host: url.hostname, port: url.port, method, path, headers }, (res) => {
        const parts: Array<Buffer> = []
        res.on("data", (d: Buffer) => parts.push(d))
        res.on("error", reject)
        res.on("end", () => {
          const text = Buffer.concat(parts).toString("utf8")
          const h = new Headers()
          for (const [k, v] of Object.entries(res.headers)) {
            if (v !== undefined) h.set(k, Array.isArray(v) ? v.join(", ") : v)
          }
          resolve({ status: res.statusCode ?? 0, headers: h, text, json: parse(text) })
        })
      })
      req.on("error", reject)
      const chunks = [...(options.chunks ?? [])]
      const pump = (): void => {
        for (;;) {
          const next = chunks.shift()
          if (next === undefined) {
            req.end()
            return
          }
          if (!req.write(next)) {
            req.once("drain", pump)
            return
          }
        }
      }
      pump()
    })
  }

  /** Everything the API shows about the data set (projects and tokens), for before/after comparisons. */
  async snapshot(): Promise<{ projects: unknown; tokens: unknown }> {
    const [projects, tokens] = await Promise.all([this.get("/manage/projects"), this.get("/manage/tokens")])
    if (projects.status !== 200 || tokens.status !== 200) {
      throw new Error(`snapshot failed: ${projects.status} ${projects.text} / ${tokens.status} ${tokens.text}`)
    }
    return { projects: projects.json, tokens: tokens.json }
  }
}

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
/** UUIDv7: token ids and generated request ids, ordered by the time they were made. */
export const UUID7_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/
/** The Unix milliseconds a UUIDv7 carries. */
export const uuid7Ms = (id: string): number => parseInt(id.replaceAll("-", "").slice(0, 12), 16)
export const TOKEN_RE = /^sk-[A-Za-z0-9_-]{43}$/
export const TOKEN_HINT_RE = /^sk-[A-Za-z0-9_-]{4}\*{4}[A-Za-z0-9_-]{4}$/
export const ISO_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$/

let counter = 0
/** A name no other test uses (tests share one database per backend). */
export const uniqueName = (label: string) => `${label}-${process.pid}-${++counter}-${crypto.randomUUID().slice(0, 8)}`

/** A provider key long enough to be obfuscated as first 8 + "..." + last 4. */
export const providerKey = () => `sk-proj-${crypto.randomUUID().replaceAll("-", "")}${crypto.randomUUID().slice(0, 8)}`

export const hintOf = (key: string) => `${key.slice(0, 8)}...${key.slice(-4)}`
