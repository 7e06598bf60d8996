/**
 * Two `serve` processes (the built binary) on one PostgreSQL and nothing else — no Redis, no INVALIDATION_BACKEND:
 * the environment of docs/deployment.md for instances without Redis. Revocation, deactivation and key rotation
 * through A apply to B's very next request (PostgreSQL LISTEN/NOTIFY); B's listening connection terminated by the
 * server never leaves a stale grant, and B trusts its cache again once it listens again; a setting that cannot reach
 * other instances warns at start-up, one that cannot work refuses to start. `npm run test:scale`.
 *
 *   A, B  TOKEN_CACHE_TTL=10m: a cached token would be served for minutes without the invalidation channel
 */
import { rmSync } from "node:fs"
import { createRequire } from "node:module"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import {
  built,
  chat,
  haveServers,
  type Instance,
  management,
  type Postgres,
  startInstance,
  startPostgres,
  tempRoot,
  waitFor
} from "./harness.js"

interface PgClient {
  connect(): Promise<void>
  query(sql: string, params?: ReadonlyArray<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
  end(): Promise<void>
}
const { Client } = createRequire(import.meta.url)("pg") as { Client: new(o: { connectionString: string }) => PgClient }

const MT = "scale-postgres-only-management-token"

describe.skipIf(!built || !haveServers())("two instances on PostgreSQL only (no Redis)", () => {
  let root: string
  let pg: Postgres
  let mock: MockUpstream
  let A: Instance, B: Instance
  let env: Record<string, string>
  const sql = async (statement: string, params: ReadonlyArray<unknown> = []) => {
    const c = new Client({ connectionString: pg.url })
    await c.connect()
    try {
      return (await c.query(statement, params)).rows
    } finally {
      await c.end()
    }
  }

  beforeAll(async () => {
    root = tempRoot()
    pg = await startPostgres(root)
    mock = await startMockUpstream()
    env = {
      DATABASE_URL: pg.url,
      MANAGEMENT_TOKEN: MT,
      ENCRYPTION_KEY: Buffer.alloc(32, 9).toString("base64"),
      OPENAI_API_URL: mock.url,
      TOKEN_CACHE_TTL: "10m",
      LOG_LEVEL: "info"
    }
    A = await startInstance(env)
    B = await startInstance(env)
  }, 120_000)

  afterAll(async () => {
    await Promise.all([A, B].map((i) => i?.stop()))
    await mock?.close()
    pg?.destroy()
    if (root) rmSync(root, { recursive: true, force: true })
  }, 60_000)

  const on = (i: Instance) => management(i.url, MT)
  const health = async (i: Instance) =>
    (await (await fetch(`${i.url}/health`)).json()) as { checks: Record<string, Record<string, unknown>> }

  it("start-up names the channel, warns about nothing, and /health shows token_invalidation up (no Redis check)", async () => {
    for (const i of [A, B]) {
      expect(i.output()).toContain("token invalidations: PostgreSQL LISTEN/NOTIFY")
      expect(i.output()).not.toContain("INVALIDATION_BACKEND")
      expect(i.output()).not.toContain("token invalidation channel")
      const h = await health(i)
      expect(h.checks["token_invalidation"]).toMatchObject({ status: "up", channel: "postgres-listen" })
      expect(h.checks["redis"]).toBeUndefined()
    }
  })

  it("revoke on A → B's very next request is 401 token_inactive", async () => {
    const p = await on(A).project("revoke")
    const t = await on(A).token(p.id)
    expect((await chat(B.url, t.token)).status).toBe(200)
    expect((await chat(B.url, t.token)).status).toBe(200)
    expect((await on(A).call("DELETE", `/manage/tokens/${t.id}`)).status).toBe(204)
    const r = await chat(B.url, t.token)
    expect([r.status, r.code]).toEqual([401, "token_inactive"])
  })

  it("project deactivation on A → B's very next request is 403 project_inactive; reactivation → 200", async () => {
    const p = await on(A).project("deactivate")
    const t = await on(A).token(p.id)
    expect((await chat(B.url, t.token)).status).toBe(200)
    expect((await on(A).call("PATCH", `/manage/projects/${p.id}`, { is_active: false })).status).toBe(200)
    const r = await chat(B.url, t.token)
    expect([r.status, r.code]).toEqual([403, "project_inactive"])
    expect((await on(A).call("PATCH", `/manage/projects/${p.id}`, { is_active: true })).status).toBe(200)
    expect((await chat(B.url, t.token)).status).toBe(200)
  })

  it("key rotation on A → B's very next request reaches the upstream with the new key", async () => {
    const p = await on(A).project("rotate")
    const t = await on(A).token(p.id)
    mock.reset()
    expect((await chat(B.url, t.token)).status).toBe(200)
    expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-upstream-rotate")
    expect((await on(A).call("PATCH", `/manage/projects/${p.id}`, { api_key: "sk-upstream-rotated" })).status).toBe(200)
    expect((await chat(B.url, t.token)).status).toBe(200)
    expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-upstream-rotated")
  })

  it("B's LISTEN connection terminated: no stale grant is served, B listens again, trusts its cache, receives A's changes", async () => {
    const p = await on(A).project("listen-killed")
    const t = await on(A).token(p.id)
    expect((await chat(B.url, t.token)).status).toBe(200)
    // A change written behind B's back (no notification) is not seen while B trusts its cache …
    await sql("UPDATE tokens SET is_active = false WHERE id = $1", [t.id])
    expect((await chat(B.url, t.token)).status).toBe(200)
    // … and B's listening connection is terminated by the server: whether B is still reconnecting (cache not
    // trusted) or already listening again (cache cleared), its next request reads the database.
    const killed = await sql(
      "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE application_name LIKE $1",
      [`llm-proxy invalidations pid ${B.child.pid} %`]
    )
    expect(killed).toEqual([{ ok: true }])
    const r = await chat(B.url, t.token)
    expect([r.status, r.code]).toEqual([401, "token_inactive"])
    await waitFor(
      "B to listen again",
      async () => (await health(B)).checks["token_invalidation"]?.["status"] === "up",
      10_000
    )
    expect(B.output()).toContain("token invalidation channel (PostgreSQL LISTEN): ")
    expect(B.output()).toContain("token invalidation channel (PostgreSQL LISTEN) is back; token cache cleared")
    // Listening again: B trusts its cache (a change behind its back is not seen) and A's revocations reach it.
    const u = await on(A).token(p.id)
    expect((await chat(B.url, u.token)).status).toBe(200)
    await sql("UPDATE tokens SET is_active = false WHERE id = $1", [u.id])
    expect((await chat(B.url, u.token)).status).toBe(200)
    expect((await on(A).call("DELETE", `/manage/tokens/${u.id}`)).status).toBe(204)
    expect((await chat(B.url, u.token)).code).toBe("token_inactive")
    // A's own listening connection was untouched.
    expect(A.output()).not.toContain("token invalidation channel (PostgreSQL LISTEN): ")
  })

  it("INVALIDATION_BACKEND=in-memory on PostgreSQL starts with a WARN naming the consequence and the fix", async () => {
    const X = await startInstance({ ...env, INVALIDATION_BACKEND: "in-memory" })
    try {
      const warn = X.output().split("\n").find((l) => l.includes("INVALIDATION_BACKEND=in-memory on PostgreSQL"))
      expect(warn).toBeDefined()
      expect(JSON.parse(warn!)).toMatchObject({ logLevel: "WARN" })
      expect(warn).toContain("keeps working on the other instances of this database")
      expect(warn).toContain("Unset INVALIDATION_BACKEND (auto: postgres)")
      expect((await health(X)).checks["token_invalidation"]).toBeUndefined()
    } finally {
      await X.stop()
    }
  })

  it("INVALIDATION_BACKEND=postgres without PostgreSQL refuses to start with one line", async () => {
    const { DATABASE_URL: _, ...sqliteEnv } = env
    const error = await startInstance({ ...sqliteEnv, INVALIDATION_BACKEND: "postgres" }).then(
      (i) => i.stop().then(() => "started"),
      (e: Error) => e.message
    )
    expect(error).toContain("INVALIDATION_BACKEND: postgres needs a PostgreSQL database (DATABASE_URL)")
    expect(error).toMatch(/serve exited with [1-9]/)
  })
})
