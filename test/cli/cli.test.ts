/**
 * The CLI as users run it: in-process through `runCli` (fast, counted in coverage) and as the built binary
 * `bin/llm-proxy.js` in a fresh directory.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { cli } from "../support/cli.js"
import { createTestDatabase, postgresUrl, withPgClient } from "../support/databases.js"
import { newManagementToken } from "../support/managementToken.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

describe("llm-proxy manage (in-process)", () => {
  let server: TestServer
  let auth: Array<string>
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cli-"))

  beforeAll(async () => {
    server = await startServer(testConfig({ _tag: "sqlite", path: join(dir, "cli.db") }))
    auth = ["--manage-api-base-url", server.url, "--management-token", server.token]
  })
  afterAll(() => server.close())

  it("creates, lists, shows, updates a project and never prints the key", async () => {
    const created = await cli(
      "manage",
      "project",
      "create",
      "--name",
      "cli-a",
      "--api-key",
      "sk-cli-secret-key-1234567890",
      "--json",
      ...auth
    )
    expect(created.ok).toBe(true)
    const project = JSON.parse(created.out)
    expect(project).toMatchObject({ name: "cli-a", is_active: true, provider: "openai", api_key: "sk-cli-s...7890" })
    expect(created.out).not.toContain("sk-cli-secret-key-1234567890")

    const table = await cli("manage", "project", "list", ...auth)
    expect(table.ok).toBe(true)
    expect(table.out).toMatch(/^ID\s+NAME\s+PROVIDER\s+API KEY\s+ACTIVE\s+CREATED/)
    expect(table.out).toContain("cli-a")

    const shown = await cli("manage", "project", "get", project.id, ...auth)
    expect(shown.out).toMatch(/name:\s+cli-a/)

    const renamed = await cli(
      "manage",
      "project",
      "update",
      project.id,
      "--name",
      "cli-b",
      "--inactive",
      "--json",
      ...auth
    )
    expect(JSON.parse(renamed.out)).toMatchObject({ name: "cli-b", is_active: false })
    const again = await cli("manage", "project", "update", project.id, "--active", ...auth)
    expect(again.out).toMatch(/active:\s+yes/)
  })

  it("generates, lists, updates and revokes tokens", async () => {
    const p = JSON.parse(
      (await cli(
        "manage",
        "project",
        "create",
        "--name",
        "cli-tokens",
        "--api-key",
        "sk-abcdefghijklmnop",
        "--json",
        ...auth
      )).out
    )
    const generated = await cli(
      "manage",
      "token",
      "generate",
      "--project-id",
      p.id,
      "--duration",
      "60",
      "--max-requests",
      "5",
      ...auth
    )
    expect(generated.ok).toBe(true)
    const secret = /token:\s+(sk-\S+)/.exec(generated.out)?.[1]
    expect(secret).toMatch(/^sk-[A-Za-z0-9_-]{43}$/)
    expect(generated.out).toContain("not shown again")
    const id = /id:\s+(\S+)/.exec(generated.out)?.[1] ?? ""

    const listed = await cli("manage", "token", "list", "--project-id", p.id, "--json", ...auth)
    const tokens = JSON.parse(listed.out)
    expect(tokens).toHaveLength(1)
    expect(tokens[0]).toMatchObject({ id, max_requests: 5, is_active: true })
    expect(listed.out).not.toContain(secret)

    const updated = await cli("manage", "token", "update", id, "--max-requests", "0", "--json", ...auth)
    expect(JSON.parse(updated.out).max_requests).toBeNull()

    expect((await cli("manage", "token", "revoke", id, ...auth)).out).toBe(`revoked ${id}`)
    const active = await cli("manage", "token", "list", "--project-id", p.id, "--active-only", ...auth)
    expect(active.out).toBe("(none)")
    const shown = await cli("manage", "token", "get", id, ...auth)
    expect(shown.out).toMatch(/status:\s+revoked/)

    const revokeAll = await cli("manage", "project", "revoke-tokens", p.id, ...auth)
    expect(revokeAll.out).toBe("revoked 0 of 1 tokens (1 were already revoked)")
  })

  it("project key create|list|revoke, and every token command with a project key as --management-token", async () => {
    const p = JSON.parse(
      (await cli(
        "manage",
        "project",
        "create",
        "--name",
        "cli-keys",
        "--api-key",
        "sk-abcdefghijklmnop",
        "--allowed-model",
        "gpt-4o-mini",
        "--allowed-model",
        "claude-3-5-*",
        "--max-token-minutes",
        "30",
        "--json",
        ...auth
      )).out
    )
    expect(p).toMatchObject({ allowed_models: ["gpt-4o-mini", "claude-3-5-*"], max_token_minutes: 30 })
    const created = await cli("manage", "project", "key", "create", p.id, "--name", "app backend", ...auth)
    expect(created.ok, created.err).toBe(true)
    const key = /key:\s+(lpk-\S+)/.exec(created.out)?.[1] ?? ""
    expect(key).toMatch(/^lpk-[A-Za-z0-9_-]{43}$/)
    expect(created.out).toContain("not shown again")
    const keyId = /id:\s+(\S+)/.exec(created.out)?.[1] ?? ""

    const listedKeys = await cli("manage", "project", "key", "list", p.id, ...auth)
    expect(listedKeys.out).toMatch(/^ID\s+NAME\s+KEY\s+ACTIVE\s+CREATED\s+LAST USED/)
    expect(listedKeys.out).toContain(`lpk-${key.slice(4, 8)}****${key.slice(-4)}`)
    expect(listedKeys.out).not.toContain(key)

    const asKey = ["--manage-api-base-url", server.url, "--management-token", key]
    const generated = await cli(
      "manage",
      "token",
      "generate",
      "--project-id",
      p.id,
      "--duration",
      "20",
      "--user",
      "user-8812",
      "--name",
      "web",
      "--metadata",
      "plan=pro",
      "--allowed-model",
      "gpt-4o-mini",
      "--json",
      ...asKey
    )
    expect(generated.ok, generated.err).toBe(true)
    const token = JSON.parse(generated.out)
    expect(token).toMatchObject({
      user: "user-8812",
      name: "web",
      metadata: { plan: "pro" },
      allowed_models: ["gpt-4o-mini"]
    })
    const tooLong = await cli("manage", "token", "generate", "--project-id", p.id, "--duration", "31", ...asKey)
    expect(tooLong.ok).toBe(false)
    expect(tooLong.err).toContain("at most 30 minutes")
    const byUser = await cli("manage", "token", "list", "--user", "user-8812", "--json", ...asKey)
    expect(JSON.parse(byUser.out).map((t: { id: string }) => t.id)).toEqual([token.id])
    const shown = await cli("manage", "token", "get", token.id, ...asKey)
    expect(shown.out).toMatch(/user:\s+user-8812/)
    expect(shown.out).toMatch(new RegExp(`created_by:\\s+project_key:${keyId}`))
    const updated = await cli("manage", "token", "update", token.id, "--user", "user-9", "--json", ...asKey)
    expect(JSON.parse(updated.out).user).toBe("user-9")
    expect((await cli("manage", "token", "revoke", token.id, ...asKey)).out).toBe(`revoked ${token.id}`)
    const refused = await cli("manage", "project", "list", ...asKey)
    expect(refused.ok).toBe(false)
    expect(refused.err.trim().split("\n")).toHaveLength(1)
    expect(refused.err).toContain("a project key may only manage the tokens of its own project")

    expect((await cli("manage", "project", "key", "revoke", p.id, keyId, ...auth)).out).toBe(`revoked ${keyId}`)
    const afterRevoke = await cli("manage", "token", "list", ...asKey)
    expect(afterRevoke.ok).toBe(false)
    expect(afterRevoke.err).toContain("invalid or revoked project key")
    const badMetadata = await cli("manage", "token", "generate", "--project-id", p.id, "--metadata", "novalue", ...auth)
    expect(badMetadata.err).toContain("--metadata takes key=value")
  })

  it("token list pages through the API: --status, --search, --limit (with a note when more match)", async () => {
    const p = JSON.parse(
      (await cli(
        "manage",
        "project",
        "create",
        "--name",
        "cli-many",
        "--api-key",
        "sk-abcdefghijklmnop",
        "--json",
        ...auth
      )).out
    )
    const ids: Array<string> = []
    for (let i = 0; i < 105; i++) {
      const r = await fetch(`${server.url}/manage/tokens`, {
        method: "POST",
        headers: { authorization: `Bearer ${server.token}`, "content-type": "application/json" },
        body: JSON.stringify({ project_id: p.id, duration_minutes: 60 })
      })
      ids.unshift(((await r.json()) as { id: string }).id)
    }
    // More than one page of 100: all of them, newest first.
    const all = await cli("manage", "token", "list", "--project-id", p.id, "--json", ...auth)
    expect(JSON.parse(all.out).map((t: { id: string }) => t.id)).toEqual(ids)
    const limited = await cli("manage", "token", "list", "--project-id", p.id, "--limit", "3", ...auth)
    expect(limited.out.split("\n")).toHaveLength(5) // header, rule, 3 tokens
    expect(limited.err).toBe("more tokens match; raise --limit (listed 3)")
    const found = await cli(
      "manage",
      "token",
      "list",
      "--search",
      ids[7]!.slice(0, 13).toUpperCase(),
      "--json",
      ...auth
    )
    expect(JSON.parse(found.out).map((t: { id: string }) => t.id)).toEqual([ids[7]])
    const revoked = await cli("manage", "token", "list", "--project-id", p.id, "--status", "revoked", ...auth)
    expect(revoked.out).toBe("(none)")
    expect(await cli("manage", "token", "list", "--limit", "0", ...auth)).toMatchObject({
      ok: false,
      err: "llm-proxy: --limit must be at least 1"
    })
  })

  it("audit list (table and --json, with filters) and audit show", async () => {
    const created = await cli(
      "manage",
      "project",
      "create",
      "--name",
      "cli-audit",
      "--api-key",
      "sk-cli-audit-key-1234567890",
      "--json",
      ...auth
    )
    const projectId = JSON.parse(created.out).id
    const listed = await cli(
      "manage",
      "audit",
      "list",
      "--action",
      "project.create",
      "--project-id",
      projectId,
      "--json",
      ...auth
    )
    expect(listed.ok).toBe(true)
    const page = JSON.parse(listed.out)
    expect(page.pagination).toMatchObject({ page: 1, page_size: 20, total_count: 1 })
    expect(page.events[0]).toMatchObject({
      action: "project.create",
      outcome: "success",
      project_id: projectId,
      actor: "management_api"
    })
    expect(listed.out).not.toContain("sk-cli-audit-key-1234567890")

    const table = await cli(
      "manage",
      "audit",
      "list",
      "--project-id",
      projectId,
      "--search",
      "CREATE",
      "--page-size",
      "5",
      "--start-time",
      "2000-01-01T00:00:00Z",
      ...auth
    )
    expect(table.ok).toBe(true)
    const lines = table.out.split("\n")
    expect(lines[0]).toMatch(/^TIME\s+ACTION\s+ACTOR\s+OUTCOME\s+COUNT\s+CLIENT IP\s+PROJECT\s+REASON\s+ID$/)
    expect(lines[2]).toContain("project.create")
    expect(lines.at(-1)).toBe("page 1 of 1 (1 events)")

    const shown = await cli("manage", "audit", "show", page.events[0].id, ...auth)
    expect(shown.ok).toBe(true)
    expect(shown.out).toMatch(/^id:\s+[0-9a-f-]{36}$/m)
    expect(shown.out).toMatch(/^action:\s+project\.create$/m)
    expect(shown.out).toMatch(/^count:\s+1$/m)
    expect(shown.out).toContain(`"project_name":"cli-audit"`)
    const shownJson = JSON.parse((await cli("manage", "audit", "show", page.events[0].id, "--json", ...auth)).out)
    expect(shownJson).toEqual(page.events[0])

    const byCursor = await cli(
      "manage",
      "audit",
      "list",
      "--project-id",
      projectId,
      "--cursor",
      "",
      "--page-size",
      "1",
      ...auth
    )
    expect(byCursor.out.split("\n").at(-1)).toBe("1 events")
    const lastJson = JSON.parse(
      (await cli("manage", "audit", "list", "--project-id", projectId, "--cursor", "last", "--json", ...auth)).out
    )
    expect(lastJson.pagination).toEqual({
      page_size: 20,
      has_next: false,
      has_prev: false,
      next_cursor: null,
      prev_cursor: null
    })
    expect(await cli("manage", "audit", "list", "--cursor", "nope", ...auth)).toMatchObject({
      ok: false,
      err: "llm-proxy: invalid cursor"
    })
    // Refused management tokens are aggregated: the COUNT column (and `count`) says how many requests a row stands for.
    const refusals = async () => {
      const r = await cli(
        "manage",
        "audit",
        "list",
        "--action",
        "management.auth",
        "--outcome",
        "denied",
        "--page-size",
        "100",
        "--json",
        ...auth
      )
      return (JSON.parse(r.out).events as Array<{ count: number }>).reduce((n, e) => n + e.count, 0)
    }
    const before = await refusals()
    for (let i = 0; i < 3; i++) {
      expect((await fetch(`${server.url}/manage/projects`, { headers: { authorization: `Bearer wrong-${i}` } })).status)
        .toBe(401)
    }
    expect(await refusals()).toBe(before + 3)
    const denied = await cli("manage", "audit", "list", "--action", "management.auth", ...auth)
    expect(denied.out.split("\n")[2]).toMatch(/management\.auth\s+anonymous\s+denied\s+\d+\s+127\.0\.0\.1/)

    const bad = await cli("manage", "audit", "list", "--page-size", "0", ...auth)
    expect(bad).toMatchObject({ ok: false, err: "llm-proxy: page_size must be an integer between 1 and 100" })
    const missing = await cli("manage", "audit", "show", "00000000-0000-4000-8000-000000000000", ...auth)
    expect(missing).toMatchObject({ ok: false, err: "llm-proxy: audit event not found" })
  })

  it("checks a payload with the server's own Schema before sending it: same rules, same message, nothing sent", async () => {
    const p = JSON.parse(
      (await cli(
        "manage",
        "project",
        "create",
        "--name",
        "cli-schemas",
        "--api-key",
        "sk-cli-schemas-1234567890",
        "--json",
        ...auth
      )).out
    )
    const t = JSON.parse((await cli("manage", "token", "generate", "--project-id", p.id, "--json", ...auth)).out)
    expect(await cli("manage", "token", "generate", "--project-id", "not-a-uuid", ...auth)).toMatchObject({
      ok: false,
      err: "llm-proxy: invalid input: project_id: invalid project_id"
    })
    expect((await cli("manage", "project", "create", "--name", "   ", "--api-key", "sk-x", ...auth)).err).toBe(
      "llm-proxy: invalid input: name: name must not be empty"
    )
    expect((await cli("manage", "token", "update", t.id, "--expires-at", "tomorrow", ...auth)).err).toBe(
      "llm-proxy: invalid input: expires_at: expires_at must be an RFC 3339 timestamp"
    )
    // The server never saw them: no refusal was audited.
    const failures = await cli(
      "manage",
      "audit",
      "list",
      "--outcome",
      "failure",
      "--page-size",
      "100",
      "--json",
      ...auth
    )
    const reasons = (JSON.parse(failures.out).events as Array<{ reason?: string }>).map((e) => e.reason)
    expect(reasons).not.toContain("invalid project_id")
    expect(reasons).not.toContain("name must not be empty")
    // What the Schema accepts, the server accepts.
    const moved = await cli(
      "manage",
      "token",
      "update",
      t.id,
      "--expires-at",
      "2030-01-01T00:00:00+01:00",
      "--json",
      ...auth
    )
    expect(JSON.parse(moved.out).expires_at).toBe("2029-12-31T23:00:00.000Z")
  })

  it("fails with one line and a non-zero exit on a wrong management token", async () => {
    const r = await cli("manage", "project", "list", "--manage-api-base-url", server.url, "--management-token", "wrong")
    expect(r.ok).toBe(false)
    expect(r.err).toBe("llm-proxy: invalid management token")
    expect(r.out).toBe("")
  })

  it("reports the server's validation errors and its own", async () => {
    const missing = await cli("manage", "project", "get", "00000000-0000-4000-8000-000000000000", ...auth)
    expect(missing).toMatchObject({ ok: false, err: "llm-proxy: project not found" })
    const badDuration = await cli(
      "manage",
      "token",
      "generate",
      "--project-id",
      "00000000-0000-4000-8000-000000000000",
      "--duration",
      "0",
      ...auth
    )
    expect(badDuration.ok).toBe(false)
    expect(badDuration.err).toMatch(/^llm-proxy: invalid input: duration_minutes/)
    const nothing = await cli("manage", "token", "update", "00000000-0000-4000-8000-000000000000", ...auth)
    expect(nothing.err).toMatch(/^llm-proxy: nothing to update/)
    const both = await cli(
      "manage",
      "project",
      "update",
      "00000000-0000-4000-8000-000000000000",
      "--active",
      "--inactive",
      ...auth
    )
    expect(both.err).toBe("llm-proxy: --active and --inactive cannot be combined")
    const unreachable = await cli(
      "manage",
      "project",
      "list",
      "--manage-api-base-url",
      "http://127.0.0.1:9",
      "--management-token",
      "x"
    )
    expect(unreachable.err).toMatch(/^llm-proxy: cannot reach the management API at http:\/\/127\.0\.0\.1:9/)
  })
})

describe("llm-proxy setup and migrate (in-process)", () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-setup-"))

  it("writes MANAGEMENT_TOKEN and ENCRYPTION_KEY with mode 0600 and never replaces them", async () => {
    const file = join(dir, ".env")
    writeFileSync(file, "LOG_LEVEL=debug")
    const first = await cli("setup", "--file", file)
    expect(first.out).toContain("wrote MANAGEMENT_TOKEN and ENCRYPTION_KEY")
    const text = readFileSync(file, "utf8")
    expect(text).toMatch(/^LOG_LEVEL=debug\nMANAGEMENT_TOKEN=[A-Za-z0-9_-]{43}\nENCRYPTION_KEY=[A-Za-z0-9+/]{43}=\n$/)
    expect(statSync(file).mode & 0o777).toBe(0o600)
    const second = await cli("setup", "--file", file)
    expect(second.out).toContain("nothing changed")
    expect(readFileSync(file, "utf8")).toBe(text)
  })

  it("migrate up applies once, status lists the migrations", async () => {
    const db = join(dir, "m.db")
    const applied = (await cli("migrate", "up", "--db", db)).out
    expect(applied).toMatch(/^applied: 0001_projects_tokens(, \d{4}_[a-z0-9_]+)*$/)
    expect(applied).toContain("0003_audit")
    expect(applied).toContain("0004_usage_hourly")
    expect((await cli("migrate", "up", "--db", db)).out).toBe("database is up to date")
    const status = await cli("migrate", "status", "--db", db)
    expect(status.out).toMatch(/0001\s+projects_tokens\s+\d{4}-\d\d-\d\dT/)
    expect(status.out).toMatch(/0004\s+usage_hourly\s+\d{4}-\d\d-\d\dT/)
  })

  it("stops with one line naming a bad variable", async () => {
    const r = await cli("migrate", "up", "--database-url", "mysql://nope")
    expect(r.ok).toBe(false)
    expect(r.err).toBe("llm-proxy: invalid configuration: DATABASE_URL: expected a postgres:// or postgresql:// URL")
  })
})

// ---- the built binary -----------------------------------------------------------------------------------------

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

const run = (cwd: string, args: Array<string>, env: Record<string, string> = {}) =>
  new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(
      process.execPath,
      [bin, ...args],
      { cwd, env: { PATH: process.env.PATH ?? "", ...env }, timeout: 20_000 },
      (error, stdout, stderr) => {
        resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stdout, stderr })
      }
    )
  })

export const startBinary = (cwd: string, env: Record<string, string>) =>
  new Promise<{ child: ChildProcess; url: string; output: () => string }>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "serve"], {
      cwd,
      env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", ...env }
    })
    let output = ""
    const onData = (d: Buffer) => {
      output += d.toString()
      const m = /listening on (http:\/\/[^"\s]+)/.exec(output)
      if (m?.[1]) resolve({ child, url: m[1], output: () => output })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`serve exited with ${code}: ${output}`)))
  })

const stop = (child: ChildProcess) =>
  new Promise<number | null>((resolve) => {
    child.removeAllListeners("exit")
    child.on("exit", (code) => resolve(code))
    child.kill("SIGTERM")
  })

describe.skipIf(!built)("the built binary in an empty directory", () => {
  it("serve comes up on SQLite with a generated management token, and the CLI uses it", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-empty-"))
    const { child, url } = await startBinary(cwd, { LISTEN_ADDR: "127.0.0.1:0" })
    try {
      const tokenFile = join(cwd, "data/management-token")
      expect(statSync(tokenFile).mode & 0o777).toBe(0o600)
      expect(readFileSync(tokenFile, "utf8").trim()).toMatch(/^[A-Za-z0-9_-]{43}$/)
      expect(existsSync(join(cwd, "data/llm-proxy.db"))).toBe(true)
      const health = await (await fetch(`${url}/health`)).json()
      expect(health).toMatchObject({ status: "ok", checks: { database: { status: "up", driver: "sqlite" } } })

      const created = await run(cwd, [
        "manage",
        "project",
        "create",
        "--name",
        "X",
        "--api-key",
        "sk-binary-key-123456789",
        "--json",
        "--manage-api-base-url",
        url
      ])
      expect(created.code).toBe(0)
      expect(JSON.parse(created.stdout)).toMatchObject({ name: "X", api_key: "sk-binar...6789" })

      const wrong = await run(cwd, [
        "manage",
        "project",
        "list",
        "--manage-api-base-url",
        url,
        "--management-token",
        "nope"
      ])
      expect(wrong.code).not.toBe(0)
      expect(wrong.stderr.trim()).toBe("llm-proxy: invalid management token")
      expect(wrong.stderr.trim().split("\n")).toHaveLength(1)
    } finally {
      expect(await stop(child)).toBe(0)
    }
    // A second start reuses the stored token.
    const before = readFileSync(join(cwd, "data/management-token"), "utf8")
    const second = await startBinary(cwd, { LISTEN_ADDR: "127.0.0.1:0" })
    expect(second.output()).toContain("using the management token stored in")
    await stop(second.child)
    expect(readFileSync(join(cwd, "data/management-token"), "utf8")).toBe(before)
  })

  it("--help lists the commands and exits 0", async () => {
    const r = await run(tmpdir(), ["--help"])
    expect(r.code).toBe(0)
    for (
      const c of ["serve", "manage project create", "manage token generate", "manage audit list", "migrate up", "setup"]
    ) {
      expect(r.stdout).toContain(c)
    }
    const sub = await run(tmpdir(), ["manage", "token", "generate", "--help"])
    expect(sub.code).toBe(0)
    expect(sub.stdout).toContain("--max-requests")
  })

  it("a bad variable stops serve with one line naming it", async () => {
    const r = await run(mkdtempSync(join(tmpdir(), "llm-proxy-bad-")), ["serve"], { LISTEN_ADDR: "nonsense" })
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim()).toBe(
      "llm-proxy: invalid configuration: LISTEN_ADDR: expected host:port or :port, got \"nonsense\""
    )
  })
})

describe.skipIf(!built || !postgresUrl)(
  `serve against PostgreSQL${postgresUrl ? "" : " (skipped: DATABASE_URL not set)"}`,
  () => {
    it("two instances starting at once apply the migrations exactly once and both serve", async () => {
      const db = await createTestDatabase()
      try {
        const mt = newManagementToken("pg-startup")
        const env = { LISTEN_ADDR: "127.0.0.1:0", DATABASE_URL: db.url, MANAGEMENT_TOKEN: mt }
        const [a, b] = await Promise.all([
          startBinary(mkdtempSync(join(tmpdir(), "llm-proxy-pg-a-")), env),
          startBinary(mkdtempSync(join(tmpdir(), "llm-proxy-pg-b-")), env)
        ])
        try {
          for (const s of [a, b]) {
            const health = await (await fetch(`${s.url}/health`)).json()
            expect(health).toMatchObject({ status: "ok", checks: { database: { status: "up", driver: "postgres" } } })
          }
          const created = await fetch(`${a.url}/manage/projects`, {
            method: "POST",
            headers: { authorization: `Bearer ${mt}`, "content-type": "application/json" },
            body: JSON.stringify({ name: "pg", api_key: "sk-pg-key-1234567890" })
          })
          expect(created.status).toBe(201)
          const viaB = await (await fetch(`${b.url}/manage/projects`, { headers: { authorization: `Bearer ${mt}` } }))
            .json()
          expect(viaB).toHaveLength(1)
          const rows = await withPgClient(
            db.url,
            (c) => c.query<{ n: string }>("SELECT COUNT(*) AS n FROM schema_migrations")
          )
          expect(Number(rows.rows[0]?.n)).toBe(
            readdirSync(join(import.meta.dirname, "../../migrations/postgres")).length
          )
          expect([a.output(), b.output()].filter((o) => o.includes("applied migrations"))).toHaveLength(1)
        } finally {
          await Promise.all([stop(a.child), stop(b.child)])
        }
      } finally {
        await db.drop()
      }
    })
  }
)
