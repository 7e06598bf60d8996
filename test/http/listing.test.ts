/**
 * `GET /manage/tokens` paged (page_size, cursor, status, search), its capped array form, and
 * `GET /manage/tokens/counts`, over HTTP on SQLite and PostgreSQL (when DATABASE_URL is set).
 */
import { Redacted } from "effect"
import { createRequire } from "node:module"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { withPgClient } from "../support/databases.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type Backend, type BackendInstance, backends, Client, providerKey, type Reply, uniqueName } from "./harness.js"

interface SqliteDatabase {
  exec(sql: string): void
  close(): void
}
const Sqlite = createRequire(import.meta.url)("better-sqlite3") as new(path: string) => SqliteDatabase

const expectError = (r: Reply, status: number, error: string) => {
  expect({ status: r.status, body: r.json }).toEqual({ status, body: { error } })
}

interface Listed {
  readonly id: string
  readonly project_id: string
  readonly is_active: boolean
  readonly expires_at: string | null
}
interface Page {
  readonly tokens: ReadonlyArray<Listed>
  readonly pagination: {
    readonly page_size: number
    readonly has_next: boolean
    readonly has_prev: boolean
    readonly next_cursor: string | null
    readonly prev_cursor: string | null
  }
}

function listingSuite(backend: Backend) {
  let instance: BackendInstance
  let server: TestServer
  let api: Client

  beforeAll(async () => {
    instance = await backend.create()
    server = await startServer(testConfig(instance.database))
    api = new Client(server.url, server.token)
  })

  afterAll(async () => {
    await server?.close()
    await instance?.cleanup()
  })

  const createProject = async () => {
    const r = await api.post("/manage/projects", { name: uniqueName("listing"), api_key: providerKey() })
    expect(r.status, r.text).toBe(201)
    return r.json as { id: string }
  }

  const createToken = async (projectId: string) => {
    const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })
    expect(r.status, r.text).toBe(201)
    return r.json as { id: string }
  }

  const page = async (query: string): Promise<Page> => {
    const r = await api.get(`/manage/tokens?${query}`)
    expect(r.status, r.text).toBe(200)
    return r.json as Page
  }

  /** `n` tokens of a project written straight into the database (creating them through the API takes minutes). */
  const bulkTokens = async (projectId: string, n: number) => {
    const database = instance.database
    if (database._tag === "sqlite") {
      const db = new Sqlite(database.path)
      try {
        db.exec(`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ${n})
          INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, created_at)
          SELECT lower(hex(randomblob(16))), '${projectId}-' || i, 'sk-bulk****bulk', '${projectId}',
            '2099-01-01T00:00:00.000Z', '2020-01-01T00:00:00.000Z' FROM n`)
      } finally {
        db.close()
      }
    } else {
      await withPgClient(
        Redacted.value(database.url),
        (client) =>
          client.query(`INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, created_at)
          SELECT gen_random_uuid()::text, '${projectId}-' || i, 'sk-bulk****bulk', '${projectId}',
            '2099-01-01T00:00:00.000Z', '2020-01-01T00:00:00.000Z' FROM generate_series(1, ${n}) i`)
      )
    }
  }

  it("with page_size, pages newest first through next_cursor and back through prev_cursor; cursor=last", async () => {
    const p = await createProject()
    const ids: Array<string> = []
    for (let i = 0; i < 7; i++) ids.unshift((await createToken(p.id)).id)

    const first = await page(`project_id=${p.id}&page_size=3`)
    expect(first.tokens.map((t) => t.id)).toEqual(ids.slice(0, 3))
    expect(first.pagination).toMatchObject({ page_size: 3, has_next: true, has_prev: false, prev_cursor: null })
    const second = await page(`project_id=${p.id}&page_size=3&cursor=${first.pagination.next_cursor}`)
    expect(second.tokens.map((t) => t.id)).toEqual(ids.slice(3, 6))
    expect(second.pagination).toMatchObject({ has_next: true, has_prev: true })
    const third = await page(`project_id=${p.id}&page_size=3&cursor=${second.pagination.next_cursor}`)
    expect(third.tokens.map((t) => t.id)).toEqual(ids.slice(6))
    expect(third.pagination).toMatchObject({ has_next: false, has_prev: true, next_cursor: null })
    const back = await page(`project_id=${p.id}&page_size=3&cursor=${third.pagination.prev_cursor}`)
    expect(back.tokens.map((t) => t.id)).toEqual(ids.slice(3, 6))

    const last = await page(`project_id=${p.id}&page_size=3&cursor=last`)
    expect(last.tokens.map((t) => t.id)).toEqual(ids.slice(4))
    expect(last.pagination).toMatchObject({ has_next: false, has_prev: true, next_cursor: null })
    // page_size alone, cursor alone: both mean the paged form (default page size 20)
    expect((await page(`project_id=${p.id}&cursor=`)).pagination.page_size).toBe(20)
    expect((await page(`project_id=${p.id}&page_size=100`)).tokens.map((t) => t.id)).toEqual(ids)
  })

  it("status and search filter both forms; the array form keeps active_only", async () => {
    const p = await createProject()
    const [live, revoked, expired] = [await createToken(p.id), await createToken(p.id), await createToken(p.id)]
    expect((await api.delete(`/manage/tokens/${revoked.id}`)).status).toBe(204)
    const past = new Date(Date.now() - 60_000).toISOString()
    expect((await api.patch(`/manage/tokens/${expired.id}`, { expires_at: past })).status).toBe(200)

    const ids = async (query: string) =>
      (await page(`project_id=${p.id}&page_size=10&${query}`)).tokens.map((t) => t.id)
    expect(await ids("status=active")).toEqual([live.id])
    expect(await ids("status=EXPIRED")).toEqual([expired.id])
    expect(await ids("status=revoked")).toEqual([revoked.id])
    expect(await ids("active_only=true&status=active")).toEqual([live.id])
    // Token ids are UUIDv7s: the first 18 characters (time, then a per-millisecond counter) set one apart; a shorter
    // prefix matches every token of that moment.
    expect(await ids(`search=${live.id.slice(0, 18).toUpperCase()}`)).toEqual([live.id])
    expect(await ids(`search=${live.id.slice(0, 6)}`)).toEqual(expect.arrayContaining([live.id]))
    expect(await ids(`search=${live.id}`)).toEqual([live.id])
    expect(await ids(`search=${live.id}&status=revoked`)).toEqual([])
    expect(await ids("search=not-hex")).toEqual([])
    const array = async (query: string) =>
      ((await api.get(`/manage/tokens?project_id=${p.id}&${query}`)).json as Array<Listed>).map((t) => t.id)
    expect(await array("active_only=true")).toEqual([live.id])
    expect(await array("status=revoked")).toEqual([revoked.id])
    expect(await array(`search=${expired.id.slice(0, 13)}`)).toEqual([expired.id])
  })

  it("bad paging and filter parameters are 400 with a clear message", async () => {
    expectError(await api.get("/manage/tokens?page_size=0"), 400, "page_size must be an integer between 1 and 100")
    expectError(await api.get("/manage/tokens?page_size=101"), 400, "page_size must be an integer between 1 and 100")
    expectError(await api.get("/manage/tokens?status=gone"), 400, "status must be active, expired or revoked")
    expectError(
      await api.get("/manage/tokens?active_only=true&status=revoked"),
      400,
      "active_only=true conflicts with status"
    )
    expectError(await api.get(`/manage/tokens?search=${"a".repeat(257)}`), 400, "search must be at most 256 characters")
    const forged = (parts: unknown) => Buffer.from(JSON.stringify(parts)).toString("base64url")
    for (
      const cursor of [
        "%%%",
        "bm90IGpzb24",
        forged(["x", "2024-01-01T00:00:00.000Z", "id"]),
        forged(["a", "2024-13-45T00:00:00.000Z", "id"]),
        forged(["a", "2024-01-01 00:00:00+99", "id"]),
        forged(["a", "yesterday", "id"]),
        forged(["a", "2024-01-01T00:00:00.000Z", "x'; DROP TABLE tokens; --"]),
        forged(["a", 1, 2]),
        "a".repeat(600)
      ]
    ) {
      expectError(await api.get(`/manage/tokens?cursor=${encodeURIComponent(cursor)}`), 400, "invalid cursor")
    }
  })

  it("GET /manage/tokens/counts counts active, expired and revoked tokens", async () => {
    const before = (await api.get("/manage/tokens/counts")).json
    const p = await createProject()
    const [, revoked, expired] = [await createToken(p.id), await createToken(p.id), await createToken(p.id)]
    await createToken(p.id)
    await api.delete(`/manage/tokens/${revoked.id}`)
    await api.patch(`/manage/tokens/${expired.id}`, { expires_at: new Date(Date.now() - 1000).toISOString() })
    const after = await api.get("/manage/tokens/counts")
    expect(after.status).toBe(200)
    expect(after.json).toEqual({
      active: { count: before.active.count + 2, exact: true },
      expired: { count: before.expired.count + 1, exact: true },
      revoked: { count: before.revoked.count + 1, exact: true }
    })
    expect((await api.get(`/manage/tokens/counts?project_id=${p.id.toUpperCase()}`)).json).toEqual({
      active: { count: 2, exact: true },
      expired: { count: 1, exact: true },
      revoked: { count: 1, exact: true }
    })
    expectError(await api.get("/manage/tokens/counts?project_id=nope"), 400, "invalid project_id")
  })

  it("GET /manage/audit with cursor: pages of events newest first through next_cursor, back through prev_cursor", async () => {
    const correlation = `listing-${crypto.randomUUID()}`
    const p = await createProject()
    for (let i = 0; i < 7; i++) {
      expect((await api.get(`/manage/projects/${p.id}`, { headers: { "x-correlation-id": correlation } })).status).toBe(
        200
      )
    }
    const all = (await api.get(`/manage/audit?correlation_id=${correlation}&page_size=100`)).json
    expect(all.events).toHaveLength(7)
    const ids = all.events.map((e: { id: string }) => e.id)
    const audit = async (query: string) => {
      const r = await api.get(`/manage/audit?correlation_id=${correlation}&page_size=3&${query}`)
      expect(r.status, r.text).toBe(200)
      return r.json as { events: Array<{ id: string }>; pagination: Page["pagination"] }
    }
    const first = await audit("cursor=")
    expect(first.events.map((e) => e.id)).toEqual(ids.slice(0, 3))
    expect(first.pagination).toEqual({
      page_size: 3,
      has_next: true,
      has_prev: false,
      next_cursor: expect.any(String),
      prev_cursor: null
    })
    const second = await audit(`cursor=${first.pagination.next_cursor}`)
    expect(second.events.map((e) => e.id)).toEqual(ids.slice(3, 6))
    const back = await audit(`cursor=${second.pagination.prev_cursor}`)
    expect(back.events.map((e) => e.id)).toEqual(ids.slice(0, 3))
    const last = await audit("cursor=last")
    expect(last.events.map((e) => e.id)).toEqual(ids.slice(4))
    expect(last.pagination).toMatchObject({ has_next: false, has_prev: true, next_cursor: null })
    expectError(await api.get("/manage/audit?page=2&cursor="), 400, "page and cursor cannot be combined")
    expectError(await api.get("/manage/audit?cursor=bogus"), 400, "invalid cursor")
  })

  it("serve prunes tokens expired longer than TOKEN_RETENTION_DAYS at start; 0 keeps them", async () => {
    const p = await createProject()
    const old = await createToken(p.id)
    const fresh = await createToken(p.id)
    expect((await api.patch(`/manage/tokens/${old.id}`, { expires_at: "2001-01-01T00:00:00Z" })).status).toBe(200)
    const restart = async (tokenRetentionDays: number) => {
      await server.close()
      server = await startServer(testConfig(instance.database, { tokenRetentionDays }))
      api = new Client(server.url, server.token)
    }
    const listed = async () =>
      ((await api.get(`/manage/tokens?project_id=${p.id}`)).json as Array<Listed>).map((t) => t.id).sort()
    await restart(0)
    await new Promise((resolve) => setTimeout(resolve, 300))
    expect(await listed()).toEqual([old.id, fresh.id].sort())
    await restart(30)
    const until = Date.now() + 10_000
    while ((await listed()).length !== 1 && Date.now() < until) await new Promise((resolve) => setTimeout(resolve, 50))
    expect(await listed()).toEqual([fresh.id])
  })

  // Its own database: ten thousand tokens would cap the counts of the other tests.
  describe("at ten thousand tokens", () => {
    beforeAll(async () => {
      await server?.close()
      await instance?.cleanup()
      instance = await backend.create()
      server = await startServer(testConfig(instance.database))
      api = new Client(server.url, server.token)
    })

    it("without page_size or cursor: an array of at most 10000 tokens, X-Truncated: true when more match", async () => {
      const p = await createProject()
      await bulkTokens(p.id, 10_000)
      const full = await api.get(`/manage/tokens?project_id=${p.id}`)
      expect(full.status).toBe(200)
      expect(full.json).toHaveLength(10_000)
      expect(full.headers.get("x-truncated")).toBeNull()
      const newest = await createToken(p.id)
      const capped = await api.get(`/manage/tokens?project_id=${p.id}`)
      expect(capped.json).toHaveLength(10_000)
      expect(capped.headers.get("x-truncated")).toBe("true")
      expect((capped.json as Array<Listed>)[0]!.id).toBe(newest.id)
      // the paged form reaches every one of them
      let cursor = ""
      let seen = 0
      for (;;) {
        const next = await page(`project_id=${p.id}&page_size=100${cursor === "" ? "" : `&cursor=${cursor}`}`)
        seen += next.tokens.length
        if (next.pagination.next_cursor === null) break
        cursor = next.pagination.next_cursor
      }
      expect(seen).toBe(10_001)
    }, 120_000)
  })
}

for (const backend of backends) {
  describe(`token listings on ${backend.name}`, () => listingSuite(backend))
}
