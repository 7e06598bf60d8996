/**
 * `llm-proxy migrate import` and `migrate encrypt` against databases built the way the Go llm-proxy builds them:
 * its own schema files (test/fixtures/go-llm-proxy, copied from its repository), rows written as it writes them
 * (its token format, its `enc:v1:` key encryption, its timestamps). Imported into SQLite and, when DATABASE_URL is
 * set, PostgreSQL; then a real `serve` on the imported database proxies with the tokens the Go proxy issued.
 */
import { Redacted } from "effect"
import { Effect, Option } from "effect"
import { createCipheriv, createHash, randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { KeyCipher } from "../../src/crypto/KeyCipher.js"
import { generateProxyToken, hashProxyToken } from "../../src/crypto/ProxyToken.js"
import { parseGoTime } from "../../src/store/goImport.js"
import { type BackendInstance, backends, type Row } from "../http/harness.js"
import { cli } from "../support/cli.js"
import { createTestDatabase, postgresUrl, type TestDatabase, withPgClient } from "../support/databases.js"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { startServer, testConfig, type TestServer, withEncryptionKey } from "../support/server.js"

const FIXTURES = join(import.meta.dirname, "../fixtures/go-llm-proxy")

interface SqliteDb {
  exec(sql: string): void
  prepare(
    sql: string
  ): { run(...params: ReadonlyArray<unknown>): unknown; all(...params: ReadonlyArray<unknown>): Array<Row> }
  close(): void
}
const Sqlite = createRequire(import.meta.url)("better-sqlite3") as new(path: string) => SqliteDb

// ---- what the Go proxy writes ---------------------------------------------------------------------------------

const GO_KEY = randomBytes(32)
const OUR_KEY = randomBytes(32)

/** internal/encryption: `enc:v1:` + base64(nonce ‖ AES-256-GCM ciphertext ‖ tag). */
const goEncrypt = (key: Buffer, plain: string): string => {
  const nonce = randomBytes(12)
  const c = createCipheriv("aes-256-gcm", key, nonce)
  const body = Buffer.concat([c.update(plain, "utf8"), c.final()])
  return "enc:v1:" + Buffer.concat([nonce, body, c.getAuthTag()]).toString("base64")
}

/** internal/token: `sk-` + base64url, unpadded, of a UUIDv7's 16 bytes. */
const goToken = (): string => {
  const b = randomBytes(16)
  b.writeUIntBE(Date.now(), 0, 6)
  b[6] = (b[6]! & 0x0f) | 0x70
  b[8] = (b[8]! & 0x3f) | 0x80
  return "sk-" + b.toString("base64url")
}

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex")

/** A Go database: its schema applied, rows inserted with `?` placeholders. */
interface GoSource {
  readonly kind: "sqlite" | "postgres"
  readonly from: string
  readonly exec: (sql: string, params?: ReadonlyArray<unknown>) => Promise<void>
  /** A time as the Go proxy's driver stores it. */
  readonly time: (d: Date) => string
  readonly close: () => Promise<void>
}

const sqliteSource = (schema: string): GoSource => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-go-"))
  const from = join(dir, "llm-proxy.db")
  const db = new Sqlite(from)
  db.exec(readFileSync(join(FIXTURES, "sqlite", schema), "utf8"))
  return {
    kind: "sqlite",
    from,
    exec: async (sql, params = []) =>
      void db.prepare(sql).run(...params.map((p) => (typeof p === "boolean" ? (p ? 1 : 0) : p))),
    // go-sqlite3 writes time.Time as "2006-01-02 15:04:05.999999999-07:00" (UTC with _loc=UTC).
    time: (d) => d.toISOString().replace("T", " ").replace(/\.(\d{3})Z$/, ".$1000000+00:00"),
    close: async () => {
      db.close()
      rmSync(dir, { recursive: true, force: true })
    }
  }
}

/** The `-- +goose Up` part of a goose migration. */
const gooseUp = (text: string) => (text.split(/^-- \+goose Down/m)[0] ?? "").replace(/^-- \+goose .*$/gm, "")

const postgresSource = async (): Promise<GoSource> => {
  const db: TestDatabase = await createTestDatabase()
  const dir = join(FIXTURES, "postgres")
  await withPgClient(db.url, async (c) => {
    for (const f of readdirSync(dir).filter((f) => f.endsWith(".sql")).sort()) {
      await c.query(gooseUp(readFileSync(join(dir, f), "utf8")))
    }
  })
  return {
    kind: "postgres",
    from: db.url,
    exec: (sql, params = []) => {
      let n = 0
      return withPgClient(db.url, async (c) => void await c.query(sql.replace(/\?/g, () => `$${++n}`), params))
    },
    // pgx writes a UTC time.Time into `timestamp` without zone.
    time: (d) => d.toISOString().replace("T", " ").replace("Z", ""),
    close: () => db.drop()
  }
}

interface Seeded {
  readonly alpha: string
  readonly beta: string
  readonly gamma: string
  readonly alphaKey: string
  readonly betaKey: string
  /** plaintext in the Go database, unlimited, used */
  readonly used: { readonly id: string; readonly token: string }
  /** stored as its SHA-256 by the Go proxy (`migrate encrypt`), max_requests 10 */
  readonly hashed: { readonly id: string; readonly token: string }
  readonly revoked: { readonly id: string; readonly token: string }
  readonly expired: { readonly id: string; readonly token: string }
  readonly inactiveProject: { readonly id: string; readonly token: string }
  readonly auditIds: ReadonlyArray<string>
}

const HOUR = 3_600_000
const at = (offsetMs: number) => new Date(Math.floor(Date.now() / 1000) * 1000 + offsetMs)

/** Three projects (plaintext key, encrypted key, deactivated), five tokens, three audit events. */
const seed = async (s: GoSource): Promise<Seeded> => {
  const alpha = randomUUID()
  const beta = randomUUID()
  const gamma = randomUUID()
  const alphaKey = "sk-upstream-alpha-" + randomBytes(8).toString("hex")
  const betaKey = "sk-upstream-beta-" + randomBytes(8).toString("hex")
  const project = (id: string, name: string, key: string, active: boolean) =>
    s.exec(
      "INSERT INTO projects (id, name, api_key, is_active, deactivated_at, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
      [id, name, key, active, active ? null : s.time(at(-HOUR)), s.time(at(-48 * HOUR)), s.time(at(-2 * HOUR))]
    )
  await project(alpha, "alpha", alphaKey, true)
  await project(beta, "beta", goEncrypt(GO_KEY, betaKey), true)
  await project(gamma, "gamma", goEncrypt(GO_KEY, "sk-upstream-gamma"), false)
  const token = async (
    projectId: string,
    o: {
      stored?: (t: string) => string
      active?: boolean
      expiresAt?: Date | null
      count?: number
      max?: number | null
      hits?: number
      used?: Date | null
    } = {}
  ) => {
    const id = randomUUID()
    const t = goToken()
    await s.exec(
      `INSERT INTO tokens (id, token, project_id, expires_at, is_active, deactivated_at, request_count, max_requests, created_at,
        last_used_at, cache_hit_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        id,
        (o.stored ?? ((x) => x))(t),
        projectId,
        o.expiresAt === null ? null : s.time(o.expiresAt ?? at(24 * HOUR)),
        o.active ?? true,
        o.active === false ? s.time(at(-HOUR)) : null,
        o.count ?? 0,
        o.max ?? null,
        s.time(at(-24 * HOUR)),
        o.used ? s.time(o.used) : null,
        o.hits ?? 0
      ]
    )
    return { id, token: t }
  }
  const used = await token(alpha, { count: 7, hits: 2, used: at(-HOUR), expiresAt: null })
  const hashed = await token(beta, { stored: sha256, count: 3, max: 10 })
  const revoked = await token(alpha, { active: false })
  const expired = await token(alpha, { expiresAt: at(-HOUR) })
  const inactiveProject = await token(gamma)
  const auditIds: Array<string> = []
  for (
    const [action, outcome, tokenId] of [["project.create", "success", null], ["token.create", "success", used.id], [
      "proxy_request",
      "denied",
      null
    ]] as const
  ) {
    const id = randomUUID()
    auditIds.push(id)
    await s.exec(
      `INSERT INTO audit_events (id, timestamp, action, actor, project_id, request_id, client_ip, method, path, user_agent, outcome,
        reason, token_id, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [
        id,
        s.time(at(-3 * HOUR)),
        action,
        "management_api",
        alpha,
        randomUUID(),
        "10.0.0.7",
        "POST",
        "/manage/tokens",
        "curl/8",
        outcome,
        outcome === "denied" ? "project_inactive" : null,
        tokenId,
        JSON.stringify({ http_method: "POST", duration_minutes: 60 })
      ]
    )
  }
  return { alpha, beta, gamma, alphaKey, betaKey, used, hashed, revoked, expired, inactiveProject, auditIds }
}

// ---- running the import ---------------------------------------------------------------------------------------

const envFile = (vars: Record<string, string>) => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-import-env-"))
  const file = join(dir, "import.env")
  writeFileSync(file, Object.entries(vars).map(([k, v]) => `${k}=${v}`).join("\n") + "\n")
  return file
}

const KEYS = envFile({ ENCRYPTION_KEY: OUR_KEY.toString("base64"), IMPORT_ENCRYPTION_KEY: GO_KEY.toString("base64") })

const targetArgs = (t: BackendInstance) =>
  t.database._tag === "sqlite" ? ["--db", t.database.path] : ["--database-url", Redacted.value(t.database.url)]

const importJson = async (from: string, target: BackendInstance, ...extra: Array<string>) => {
  const r = await cli("migrate", "import", "--from", from, ...targetArgs(target), "--env", KEYS, "--json", ...extra)
  if (!r.ok) throw new Error(`import failed: ${r.err}`)
  return JSON.parse(r.out) as {
    dryRun: boolean
    projects: Record<string, number>
    tokens: Record<string, number>
    audit: Record<string, number>
    skipped: Array<{ kind: string; id: string; reason: string }>
  }
}

const byId = (rows: ReadonlyArray<Row>) => new Map(rows.map((r) => [String(r.id), r]))
const snapshot = async (t: BackendInstance) => ({
  projects: [...(await t.rows("projects"))].sort((a, b) => String(a.id).localeCompare(String(b.id))),
  tokens: [...(await t.rows("tokens"))].sort((a, b) => String(a.id).localeCompare(String(b.id))),
  audit: [...(await t.rows("audit_events"))].sort((a, b) => String(a.id).localeCompare(String(b.id)))
})

const ourCipher = Effect.runSync(
  Effect.provide(KeyCipher, KeyCipher.layer(Option.some(Redacted.make(new Uint8Array(OUR_KEY)))))
)
const decryptHere = (stored: unknown) => Effect.runSync(ourCipher.decrypt(String(stored)))
const iso = (v: unknown) => (v === null ? null : new Date(v instanceof Date ? v : String(v)).toISOString())

const proxy = (server: TestServer, token: string) =>
  fetch(`${server.url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }] })
  })

const sources: ReadonlyArray<{ readonly name: string; readonly make: () => Promise<GoSource> }> = [
  { name: "sqlite", make: async () => sqliteSource("schema.sql") },
  ...(postgresUrl ? [{ name: "postgres", make: postgresSource }] : [])
]

describe.each(sources)("migrate import from a Go $name database", (src) => {
  const targetBackend = backends.find((b) => b.name === src.name)!
  let source: GoSource
  let seeded: Seeded
  let target: BackendInstance
  let mock: MockUpstream
  let server: TestServer | undefined
  beforeAll(async () => {
    source = await src.make()
    seeded = await seed(source)
    target = await targetBackend.create()
    mock = await startMockUpstream()
  })
  afterAll(async () => {
    await server?.close()
    await mock.close()
    await target.cleanup()
    await source.close()
  })

  it("--dry-run reports what it would import and leaves the target as it was (not even migrated)", async () => {
    const r = await importJson(source.from, target, "--dry-run")
    expect(r).toMatchObject({
      dryRun: true,
      projects: { imported: 3, updated: 0, unchanged: 0, skipped: 0 },
      tokens: { imported: 5, updated: 0, unchanged: 0, skipped: 0 },
      audit: { imported: 3, updated: 0, unchanged: 0, skipped: 0 }
    })
    await expect(target.rows("projects")).rejects.toThrow(/no such table|does not exist/)
  })

  it("imports projects (keys re-encrypted with ENCRYPTION_KEY), tokens as SHA-256 with their limits and counters, audit rows", async () => {
    const r = await importJson(source.from, target)
    expect(r).toMatchObject({
      dryRun: false,
      projects: { imported: 3 },
      tokens: { imported: 5 },
      audit: { imported: 3 },
      skipped: []
    })

    const projects = byId(await target.rows("projects"))
    const beta = projects.get(seeded.beta)!
    expect(String(beta.api_key)).toMatch(/^enc:v1:/)
    expect(decryptHere(beta.api_key)).toBe(seeded.betaKey)
    expect(beta.api_key_hint).toBe(`${seeded.betaKey.slice(0, 8)}...${seeded.betaKey.slice(-4)}`)
    expect(decryptHere(projects.get(seeded.alpha)!.api_key)).toBe(seeded.alphaKey)
    expect(Boolean(Number(projects.get(seeded.gamma)!.is_active))).toBe(false)
    expect(projects.get(seeded.gamma)!.deactivated_at).not.toBeNull()

    const tokens = byId(await target.rows("tokens"))
    const used = tokens.get(seeded.used.id)!
    expect(used).toMatchObject({ token_hash: "go:" + sha256(seeded.used.token), project_id: seeded.alpha })
    expect(used.token_hint).toBe(`sk-${seeded.used.token.slice(3, 7)}****${seeded.used.token.slice(-4)}`)
    expect([Number(used.request_count), Number(used.cache_hit_count), used.expires_at]).toEqual([7, 2, null])
    expect(iso(used.last_used_at)).not.toBeNull()
    const hashed = tokens.get(seeded.hashed.id)!
    expect(hashed).toMatchObject({ token_hash: "go:" + sha256(seeded.hashed.token), token_hint: "sk-****" })
    expect([Number(hashed.request_count), Number(hashed.max_requests)]).toEqual([3, 10])
    expect(Boolean(Number(tokens.get(seeded.revoked.id)!.is_active))).toBe(false)
    // No secret of the Go database is stored in the clear.
    const all = JSON.stringify([...tokens.values(), ...projects.values()])
    for (const secret of [seeded.used.token, seeded.hashed.token, seeded.alphaKey, seeded.betaKey]) {
      expect(all).not.toContain(secret)
    }

    const audit = byId(await target.rows("audit_events"))
    expect([...audit.keys()].sort()).toEqual([...seeded.auditIds].sort())
    const denied = [...audit.values()].find((e) => e.action === "proxy_request")!
    expect(denied).toMatchObject({
      outcome: "denied",
      actor: "management_api",
      project_id: seeded.alpha,
      client_ip: "10.0.0.7",
      reason: "project_inactive"
    })
    expect(JSON.parse(String(denied.metadata))).toEqual({ http_method: "POST", duration_minutes: 60 })
  })

  it("tokens the Go proxy issued before the import work on /v1 (against the mock upstream), with their project's key", async () => {
    server = await startServer(
      testConfig(target.database, { openaiApiUrl: mock.url, ...withEncryptionKey(OUR_KEY.toString("base64")) })
    )
    const ok = await proxy(server, seeded.used.token)
    expect(ok.status).toBe(200)
    expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${seeded.alphaKey}`)
    // Stored hashed by the Go proxy, its key encrypted under the Go proxy's key: both survive the move.
    const limited = await proxy(server, seeded.hashed.token)
    expect(limited.status).toBe(200)
    expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${seeded.betaKey}`)
    expect(proxyError(await (await proxy(server, seeded.revoked.token)).json()).code).toBe("token_inactive")
    expect(proxyError(await (await proxy(server, seeded.expired.token)).json()).code).toBe("token_expired")
    expect((await proxy(server, seeded.inactiveProject.token)).status).toBe(403)
    expect(proxyError(await (await proxy(server, goToken())).json()).code).toBe("token_not_found")
    // The quota counts on from where the Go proxy left it (3 + 1).
    expect(Number(byId(await target.rows("tokens")).get(seeded.hashed.id)!.request_count)).toBe(4)
  })

  it("a Go-format token matches only an imported row, never one whose hash is in the native namespace", async () => {
    const t = goToken()
    const now = new Date().toISOString()
    const insert = `INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, is_active, created_at)
      VALUES ('${randomUUID()}', '${sha256(t)}', 'sk-x', '${seeded.alpha}', NULL, ${
      target.database._tag === "sqlite" ? 1 : "TRUE"
    }, '${now}')`
    if (target.database._tag === "sqlite") {
      const db = new Sqlite(target.database.path)
      db.exec(insert)
      db.close()
    } else {
      await withPgClient(Redacted.value(target.database.url), (c) => c.query(insert))
    }
    expect(hashProxyToken(t)).toBe("go:" + sha256(t))
    expect(hashProxyToken(generateProxyToken())).toMatch(/^[0-9a-f]{64}$/)
    expect(proxyError(await (await proxy(server!, t)).json()).code).toBe("token_not_found")
  })

  it("running it again changes nothing (counters used here since stay as they are)", async () => {
    // Stopped first: its last usage batch and audit events are written when it stops, not during the comparison.
    await server!.close()
    const before = await snapshot(target)
    const r = await importJson(source.from, target)
    expect(r).toMatchObject({
      projects: { imported: 0, updated: 0, unchanged: 3, skipped: 0 },
      tokens: { imported: 0, updated: 0, unchanged: 5, skipped: 0 },
      audit: { imported: 0, updated: 0, unchanged: 3, skipped: 0 }
    })
    expect(await snapshot(target)).toEqual(before)
    server = await startServer(
      testConfig(target.database, { openaiApiUrl: mock.url, ...withEncryptionKey(OUR_KEY.toString("base64")) })
    )
  })

  it("a later run copies what changed in the Go database; it never re-activates what is revoked here", async () => {
    // Since the first import, the Go proxy kept serving: a token was used and then revoked, one was issued, an
    // event was recorded; here an imported token was revoked that the Go proxy still has active.
    await source.exec("UPDATE tokens SET request_count = 50, is_active = ?, deactivated_at = ? WHERE id = ?", [
      false,
      source.time(at(0)),
      seeded.used.id
    ])
    const fresh = { id: randomUUID(), token: goToken() }
    await source.exec(
      "INSERT INTO tokens (id, token, project_id, expires_at, is_active, request_count, created_at, cache_hit_count) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
      [fresh.id, fresh.token, seeded.alpha, source.time(at(HOUR)), true, 0, source.time(at(0)), 0]
    )
    await source.exec(
      "INSERT INTO audit_events (id, timestamp, action, actor, outcome) VALUES (?, ?, ?, ?, ?)",
      [randomUUID(), source.time(at(0)), "token.revoke", "management_api", "success"]
    )
    // A project renamed, another's key rotated, and a row that is no Go token at all.
    await source.exec("UPDATE projects SET name = ? WHERE id = ?", ["beta-renamed", seeded.beta])
    await source.exec("UPDATE projects SET api_key = ? WHERE id = ?", [`${seeded.alphaKey}-rotated`, seeded.alpha])
    const junk = randomUUID()
    await source.exec(
      "INSERT INTO tokens (id, token, project_id, is_active, request_count, created_at, cache_hit_count) VALUES (?, ?, ?, ?, ?, ?, ?)",
      [junk, "not-a-go-token", seeded.alpha, true, 0, source.time(at(0)), 0]
    )
    const manage = { authorization: `Bearer ${server!.token}`, "content-type": "application/json" }
    expect(
      (await fetch(`${server!.url}/manage/tokens/${seeded.expired.id}`, { method: "DELETE", headers: manage })).status
    ).toBeLessThan(300)

    const r = await importJson(source.from, target)
    expect(r).toMatchObject({
      tokens: { imported: 1, updated: 1, skipped: 1 },
      audit: { imported: 1, unchanged: 3 },
      projects: { imported: 0, updated: 2, unchanged: 1 }
    })
    expect(r.skipped).toEqual([{ kind: "token", id: junk, reason: "not a Go llm-proxy token (nor its SHA-256)" }])
    const projects = byId(await target.rows("projects"))
    expect(projects.get(seeded.beta)!.name).toBe("beta-renamed")
    expect(decryptHere(projects.get(seeded.alpha)!.api_key)).toBe(`${seeded.alphaKey}-rotated`)
    const tokens = byId(await target.rows("tokens"))
    expect(Boolean(Number(tokens.get(seeded.used.id)!.is_active))).toBe(false)
    expect(Number(tokens.get(seeded.used.id)!.request_count)).toBe(50)
    expect(Boolean(Number(tokens.get(seeded.expired.id)!.is_active))).toBe(false)
    // The revocation reaches the running proxy with its cache TTL; the new token works at once, with the new key.
    expect((await proxy(server!, fresh.token)).status).toBe(200)
    expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${seeded.alphaKey}-rotated`)
  })
})

describe("migrate import: the source's keys, names and shapes", () => {
  let target: BackendInstance
  beforeAll(async () => {
    target = await backends[0]!.create()
  })
  afterAll(() => target.cleanup())

  it("a provider key it cannot decrypt stops the import with one line naming the project, and nothing is written", async () => {
    const source = sqliteSource("schema.sql")
    try {
      await seed(source)
      const wrongKey = envFile({ ENCRYPTION_KEY: OUR_KEY.toString("base64") })
      const r = await cli("migrate", "import", "--from", source.from, ...targetArgs(target), "--env", wrongKey)
      expect(r.ok).toBe(false)
      expect(r.err).toMatch(
        /^llm-proxy: cannot decrypt the provider key of project "(beta|gamma)" \([0-9a-f-]+\): set IMPORT_ENCRYPTION_KEY/
      )
      expect(r.err).not.toContain(OUR_KEY.toString("base64"))
      await expect(target.rows("projects")).rejects.toThrow(/no such table/)
    } finally {
      await source.close()
    }
  })

  it("a project whose name is taken here is skipped with its tokens, and the report says why", async () => {
    const source = sqliteSource("schema.sql")
    try {
      const s = await seed(source)
      const here = await cli("migrate", "up", ...targetArgs(target))
      expect(here.ok).toBe(true)
      const db = new Sqlite((target.database as { path: string }).path)
      const now = new Date().toISOString()
      db.prepare(
        `INSERT INTO projects (id, name, api_key, api_key_hint, created_at, updated_at) VALUES (?, 'alpha', 'k', 'k', ?, ?)`
      )
        .run(randomUUID(), now, now)
      db.close()
      const r = await cli("migrate", "import", "--from", source.from, ...targetArgs(target), "--env", KEYS)
      expect(r.ok).toBe(true)
      expect(r.out).toMatch(/^KIND\s+IMPORTED\s+UPDATED\s+UNCHANGED\s+SKIPPED$/m)
      expect(r.out).toMatch(/^projects\s+2\s+0\s+0\s+1$/m)
      expect(r.out).toMatch(/^tokens\s+2\s+0\s+0\s+3$/m)
      expect(r.out).toContain(`skipped project ${s.alpha}: a project named "alpha" already exists here`)
      expect(r.out).toContain(`skipped token ${s.used.id}: its project ${s.alpha} was skipped`)
    } finally {
      await source.close()
    }
  })

  it("a SQLite file from before tokens had ids (and keys were `openai_api_key`) imports, idempotently", async () => {
    const source = sqliteSource("schema-2025-12-11.sql")
    const other = await backends[0]!.create()
    const mock = await startMockUpstream()
    try {
      const project = randomUUID()
      const token = goToken()
      await source.exec(
        "INSERT INTO projects (id, name, openai_api_key, created_at, updated_at) VALUES (?, 'old', 'sk-old-upstream', ?, ?)",
        [
          project,
          "2025-11-02 10:00:00",
          "2025-11-02 10:00:00"
        ]
      )
      await source.exec(
        "INSERT INTO tokens (token, project_id, expires_at, is_active, request_count, created_at) VALUES (?, ?, NULL, 1, 4, ?)",
        [
          token,
          project,
          "2025-11-02 10:00:01"
        ]
      )
      const first = await importJson(source.from, other)
      expect(first).toMatchObject({ projects: { imported: 1 }, tokens: { imported: 1 }, audit: { imported: 0 } })
      const [row] = await other.rows("tokens")
      expect(row).toMatchObject({ project_id: project, token_hash: "go:" + sha256(token) })
      expect(iso(row!.created_at)).toBe("2025-11-02T10:00:01.000Z")
      expect(await importJson(source.from, other)).toMatchObject({
        projects: { unchanged: 1 },
        tokens: { imported: 0, unchanged: 1 }
      })
      const server = await startServer(
        testConfig(other.database, { openaiApiUrl: mock.url, ...withEncryptionKey(OUR_KEY.toString("base64")) })
      )
      try {
        expect((await proxy(server, token)).status).toBe(200)
        expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-old-upstream")
      } finally {
        await server.close()
      }
    } finally {
      await mock.close()
      await other.cleanup()
      await source.close()
    }
  })

  it("refuses what is not a Go llm-proxy database, a missing file, and its own database, with one line", async () => {
    const missing = await cli("migrate", "import", "--from", "/nonexistent/go.db", ...targetArgs(target), "--env", KEYS)
    expect([missing.ok, missing.err]).toEqual([false, "llm-proxy: no such file: /nonexistent/go.db"])
    // A PostgreSQL source that does not answer: the message never shows its URL (it may hold a password).
    const down = await cli(
      "migrate",
      "import",
      "--from",
      "postgres://go:s3cret-go-pw@127.0.0.1:1/go",
      ...targetArgs(target),
      "--env",
      KEYS
    )
    expect([down.ok, down.err]).toEqual([false, "llm-proxy: cannot connect to the Go llm-proxy's PostgreSQL (--from)"])
    const other = await backends[0]!.create()
    try {
      expect((await cli("migrate", "up", ...targetArgs(other))).ok).toBe(true)
      const ours = await cli(
        "migrate",
        "import",
        "--from",
        (other.database as { path: string }).path,
        ...targetArgs(target),
        "--env",
        KEYS
      )
      expect(ours.err).toBe("llm-proxy: the source is an llm-proxy database of this project, not the Go llm-proxy's")
      const self = await cli(
        "migrate",
        "import",
        "--from",
        (target.database as { path: string }).path,
        ...targetArgs(target),
        "--env",
        KEYS
      )
      expect(self.err).toBe("llm-proxy: --from names this gateway's own database")
    } finally {
      await other.cleanup()
    }
    const empty = join(mkdtempSync(join(tmpdir(), "llm-proxy-go-")), "empty.db")
    const emptyDb = new Sqlite(empty)
    emptyDb.exec("CREATE TABLE notes (id TEXT)")
    emptyDb.close()
    const notGo = await cli("migrate", "import", "--from", empty, ...targetArgs(target), "--env", KEYS)
    expect(notGo.err).toBe("llm-proxy: the source is not a Go llm-proxy database (no projects and tokens tables)")
    const garbage = join(mkdtempSync(join(tmpdir(), "llm-proxy-go-")), "x.db")
    writeFileSync(garbage, "not a database at all".repeat(100))
    const bad = await cli("migrate", "import", "--from", garbage, ...targetArgs(target), "--env", KEYS)
    expect(bad.ok).toBe(false)
    expect(bad.err).toMatch(/^llm-proxy: (cannot open .* as a SQLite database|cannot read the Go llm-proxy database)$/)
  })

  it("reads the time formats the Go drivers write", () => {
    expect(parseGoTime("2026-01-02 15:04:05.123456789+00:00")).toBe("2026-01-02T15:04:05.123Z")
    expect(parseGoTime("2026-01-02 15:04:05")).toBe("2026-01-02T15:04:05.000Z")
    expect(parseGoTime("2026-01-02 17:04:05.5+02:00")).toBe("2026-01-02T15:04:05.500Z")
    expect(parseGoTime("2026-01-02T15:04:05Z")).toBe("2026-01-02T15:04:05.000Z")
    expect(parseGoTime("2026-01-02 15:04:05.123 +0000 UTC")).toBe("2026-01-02T15:04:05.123Z")
    expect(parseGoTime(1767366245)).toBe("2026-01-02T15:04:05.000Z")
    expect(parseGoTime(null)).toBeNull()
    expect(parseGoTime("yesterday")).toBeUndefined()
  })
})

describe("migrate encrypt", () => {
  it("encrypts the plaintext provider keys once ENCRYPTION_KEY is set; again: nothing to do; /v1 still works", async () => {
    const source = sqliteSource("schema.sql")
    const target = await backends[0]!.create()
    const mock = await startMockUpstream()
    try {
      const s = await seed(source)
      // Imported without an ENCRYPTION_KEY: keys are stored in plaintext, and the import says so.
      const plain = await cli(
        "migrate",
        "import",
        "--from",
        source.from,
        ...targetArgs(target),
        "--env",
        envFile({ IMPORT_ENCRYPTION_KEY: GO_KEY.toString("base64") })
      )
      expect(plain.ok).toBe(true)
      expect(plain.err).toContain("ENCRYPTION_KEY is not set: imported provider keys are stored in plaintext")
      expect((await target.rows("projects")).map((p) => p.api_key).sort()).toEqual(
        [s.alphaKey, s.betaKey, "sk-upstream-gamma"].sort()
      )

      const noKey = await cli("migrate", "encrypt", ...targetArgs(target), "--env", envFile({}))
      expect([noKey.ok, noKey.err]).toEqual([
        false,
        "llm-proxy: ENCRYPTION_KEY is required (generate one with `llm-proxy setup`)"
      ])
      const dry = await cli("migrate", "encrypt", ...targetArgs(target), "--env", KEYS, "--dry-run")
      expect(dry.out).toBe("3 provider key(s) would be encrypted; 0 already encrypted. Dry run: nothing was written")
      expect((await target.rows("projects")).every((p) => !String(p.api_key).startsWith("enc:"))).toBe(true)

      const first = await cli("migrate", "encrypt", ...targetArgs(target), "--env", KEYS, "--json")
      expect(JSON.parse(first.out)).toEqual({ dryRun: false, encrypted: 3, alreadyEncrypted: 0 })
      const rows = await target.rows("projects")
      expect(rows.every((p) => String(p.api_key).startsWith("enc:v1:"))).toBe(true)
      expect(rows.map((p) => decryptHere(p.api_key)).sort()).toEqual(
        [s.alphaKey, s.betaKey, "sk-upstream-gamma"].sort()
      )
      const again = await cli("migrate", "encrypt", ...targetArgs(target), "--env", KEYS)
      expect(again.out).toBe("encrypted 0 provider key(s); 3 already encrypted")
      expect(await target.rows("projects")).toEqual(rows)

      const server = await startServer(
        testConfig(target.database, { openaiApiUrl: mock.url, ...withEncryptionKey(OUR_KEY.toString("base64")) })
      )
      try {
        expect((await proxy(server, s.used.token)).status).toBe(200)
        expect(mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${s.alphaKey}`)
      } finally {
        await server.close()
      }
    } finally {
      await mock.close()
      await target.cleanup()
      await source.close()
    }
  })
})
