/**
 * The audit log as a user sees it over HTTP, on SQLite and on PostgreSQL (when DATABASE_URL is set): every
 * management action yields exactly one event with the documented fields (docs/audit.md, docs/behaviour.md
 * scenarios 6, 18, 109–121), failed authentication is audited without the secret, `GET /manage/audit` filters,
 * searches, pages and validates, and the configuration switches (TRUSTED_PROXIES, AUDIT_ENABLED,
 * AUDIT_STORE_IN_DB, AUDIT_LOG_FILE) behave, including a clean shutdown right after a burst of requests.
 */
import { Option } from "effect"
import { randomUUID } from "node:crypto"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import {
  type Backend,
  type BackendInstance,
  backends,
  Client,
  ISO_RE,
  providerKey,
  type Reply,
  uniqueName
} from "./harness.js"

const UUIDV7_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/

interface Event {
  readonly id: string
  readonly timestamp: string
  readonly action: string
  readonly actor: string
  readonly outcome: string
  readonly project_id?: string
  readonly token_id?: string
  readonly request_id?: string
  readonly correlation_id?: string
  readonly client_ip?: string
  readonly method?: string
  readonly path?: string
  readonly user_agent?: string
  readonly reason?: string
  readonly metadata?: string
  readonly count?: number
}

const meta = (e: Event): Record<string, unknown> => (e.metadata === undefined ? {} : JSON.parse(e.metadata))

/** Calls with a fresh X-Request-ID, so the request's events can be found. */
const send = async (
  api: Client,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
  auth?: string | null
) => {
  const requestId = `t-${randomUUID()}`
  const reply = await api.call(method, path, {
    ...(body !== undefined ? { body } : {}),
    headers: { "x-request-id": requestId, ...headers },
    ...(auth !== undefined ? { auth } : {})
  })
  return { reply, requestId }
}

const eventsOf = async (api: Client, query: string): Promise<{ events: Array<Event>; pagination: any }> => {
  const r = await api.get(`/manage/audit?${query}`)
  if (r.status !== 200) throw new Error(`GET /manage/audit?${query}: ${r.status} ${r.text}`)
  return r.json
}

/** The one event a request produced (fails when there is none or more than one). */
const onlyEvent = async (api: Client, requestId: string): Promise<Event> => {
  const { events } = await eventsOf(api, `request_id=${encodeURIComponent(requestId)}`)
  expect(events.map((e) => e.action)).toHaveLength(1)
  return events[0]!
}

const expectError = (r: Reply, status: number, error: string) => {
  expect({ status: r.status, body: r.json }).toEqual({ status, body: expect.objectContaining({ error }) })
}

function auditSuite(backend: Backend) {
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

  const createProject = async (name = uniqueName("audit")) => {
    const r = await api.post("/manage/projects", { name, api_key: providerKey() })
    expect(r.status).toBe(201)
    return r.json as { id: string; name: string }
  }
  const createToken = async (projectId: string) => {
    const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })
    expect(r.status).toBe(201)
    return r.json as { id: string; token: string }
  }

  describe("one event per management action, with the documented fields", () => {
    it("project.list: actor, outcome, request and correlation ids, client IP, method, path, user agent, project_count", async () => {
      const { reply, requestId } = await send(api, "GET", "/manage/projects", undefined, {
        "user-agent": "audit-test/1.0"
      })
      expect(reply.status).toBe(200)
      const e = await onlyEvent(api, requestId)
      expect(e).toMatchObject({
        action: "project.list",
        actor: "management_api",
        outcome: "success",
        request_id: requestId,
        correlation_id: requestId,
        client_ip: "127.0.0.1",
        method: "GET",
        path: "/manage/projects",
        user_agent: "audit-test/1.0"
      })
      expect(e.id).toMatch(UUIDV7_RE)
      expect(e.timestamp).toMatch(ISO_RE)
      expect(Math.abs(Date.parse(e.timestamp) - Date.now())).toBeLessThan(60_000)
      expect(meta(e)).toEqual({ project_count: (reply.json as Array<unknown>).length })
      expect(e.reason).toBeUndefined()
      expect(e.project_id).toBeUndefined()
    })

    it("a client X-Correlation-ID is kept, echoed and stored", async () => {
      const correlation = `corr-${randomUUID()}`
      const { reply, requestId } = await send(api, "GET", "/manage/projects", undefined, {
        "x-correlation-id": correlation
      })
      expect(reply.headers.get("x-correlation-id")).toBe(correlation)
      expect(reply.headers.get("x-request-id")).toBe(requestId)
      expect((await onlyEvent(api, requestId)).correlation_id).toBe(correlation)
    })

    it("project.create: success with project_id and project_name (never the key); failures with their reason", async () => {
      const name = uniqueName("created")
      const key = providerKey()
      const ok = await send(api, "POST", "/manage/projects", { name, api_key: key })
      expect(ok.reply.status).toBe(201)
      const e = await onlyEvent(api, ok.requestId)
      expect(e).toMatchObject({
        action: "project.create",
        outcome: "success",
        project_id: ok.reply.json.id,
        method: "POST"
      })
      expect(meta(e)).toMatchObject({ project_name: name, provider: "openai" })
      expect(JSON.stringify(e)).not.toContain(key)

      const missing = await send(api, "POST", "/manage/projects", { name: "x" })
      expect(missing.reply.status).toBe(400)
      const f = await onlyEvent(api, missing.requestId)
      expect(f).toMatchObject({ action: "project.create", outcome: "failure", reason: "name and api_key are required" })
      expect(meta(f)).toEqual({ validation_error: "name and api_key are required" })

      const duplicate = await send(api, "POST", "/manage/projects", { name, api_key: providerKey() })
      expect(duplicate.reply.status).toBe(409)
      expect(await onlyEvent(api, duplicate.requestId)).toMatchObject({
        outcome: "failure",
        reason: `a project named "${name}" already exists`
      })
    })

    it("project.read: success and not found, both with the project id", async () => {
      const p = await createProject()
      const ok = await send(api, "GET", `/manage/projects/${p.id}`)
      expect(await onlyEvent(api, ok.requestId)).toMatchObject({
        action: "project.read",
        outcome: "success",
        project_id: p.id
      })
      const unknown = randomUUID()
      const missing = await send(api, "GET", `/manage/projects/${unknown}`)
      expect(missing.reply.status).toBe(404)
      expect(await onlyEvent(api, missing.requestId)).toMatchObject({
        action: "project.read",
        outcome: "failure",
        project_id: unknown,
        reason: "project not found"
      })
    })

    it("project.update: updated_fields and project_name; deactivating with revoke_tokens counts the tokens (scenario 18)", async () => {
      const p = await createProject()
      await createToken(p.id)
      await createToken(p.id)
      const rename = await send(api, "PATCH", `/manage/projects/${p.id}`, {
        name: `${p.name}-renamed`,
        api_key: providerKey()
      })
      expect(rename.reply.status).toBe(200)
      const e = await onlyEvent(api, rename.requestId)
      expect(e).toMatchObject({ action: "project.update", outcome: "success", project_id: p.id, method: "PATCH" })
      expect(meta(e)).toEqual({
        updated_fields: ["name", "api_key"],
        project_name: `${p.name}-renamed`,
        is_active: true,
        key_count: 1
      })

      const off = await send(api, "PATCH", `/manage/projects/${p.id}`, { is_active: false, revoke_tokens: true })
      expect(off.reply.status).toBe(200)
      expect(meta(await onlyEvent(api, off.requestId))).toMatchObject({
        updated_fields: ["is_active", "revoke_tokens"],
        is_active: false,
        tokens_revoked: 2
      })

      const bad = await send(api, "PATCH", `/manage/projects/${p.id}`, { revoke_tokens: true })
      expect(await onlyEvent(api, bad.requestId)).toMatchObject({
        outcome: "failure",
        project_id: p.id,
        reason: "revoke_tokens requires is_active=false"
      })
    })

    it("project.delete is always a failure (scenario 112)", async () => {
      const p = await createProject()
      const del = await send(api, "DELETE", `/manage/projects/${p.id}`)
      expect(del.reply.status).toBe(405)
      const e = await onlyEvent(api, del.requestId)
      expect(e).toMatchObject({
        action: "project.delete",
        outcome: "failure",
        project_id: p.id,
        reason: "project deletion is not permitted",
        method: "DELETE"
      })
      expect(meta(e)).toEqual({ error_type: "method not allowed" })
    })

    it("token.revoke_batch: total, revoked and already-revoked counts (scenario 114)", async () => {
      const p = await createProject()
      const [a] = [await createToken(p.id), await createToken(p.id), await createToken(p.id)]
      await api.delete(`/manage/tokens/${a!.id}`)
      const batch = await send(api, "POST", `/manage/projects/${p.id}/tokens/revoke`)
      expect(batch.reply.status).toBe(200)
      const e = await onlyEvent(api, batch.requestId)
      expect(e).toMatchObject({ action: "token.revoke_batch", outcome: "success", project_id: p.id })
      expect(meta(e)).toEqual({ total_tokens: 3, revoked_count: 2, already_revoked_count: 1 })
    })

    it("token.create: token_id is the token's id (joinable), no secret anywhere; inactive project is denied (scenario 110)", async () => {
      const p = await createProject()
      const created = await send(api, "POST", "/manage/tokens", {
        project_id: p.id,
        duration_minutes: 90,
        max_requests: 5
      })
      expect(created.reply.status).toBe(201)
      const { id, token, expires_at } = created.reply.json
      const e = await onlyEvent(api, created.requestId)
      expect(e).toMatchObject({ action: "token.create", outcome: "success", project_id: p.id, token_id: id })
      expect(meta(e)).toEqual({ duration_minutes: 90, expires_at, max_requests: 5 })
      expect(JSON.stringify(e)).not.toContain(token)
      // Joinable: the stored token_id is the tokens row's id.
      const rows = await instance.rows("audit_events")
      const stored = rows.find((r) => r.id === e.id)
      const tokenRow = (await instance.rows("tokens")).find((r) => r.id === stored?.token_id)
      expect(tokenRow?.project_id).toBe(p.id)
      expect(JSON.stringify(rows)).not.toMatch(/sk-[A-Za-z0-9_-]{43}/)

      await api.patch(`/manage/projects/${p.id}`, { is_active: false })
      const denied = await send(api, "POST", "/manage/tokens", { project_id: p.id, duration_minutes: 10 })
      expect(denied.reply.status).toBe(403)
      expect(await onlyEvent(api, denied.requestId)).toMatchObject({
        action: "token.create",
        outcome: "denied",
        project_id: p.id,
        reason: "cannot create tokens for inactive projects"
      })
    })

    it("token.list, token.read, token.update", async () => {
      const p = await createProject()
      const t = await createToken(p.id)
      const list = await send(api, "GET", `/manage/tokens?project_id=${p.id}`)
      const l = await onlyEvent(api, list.requestId)
      expect(l).toMatchObject({ action: "token.list", outcome: "success", project_id: p.id })
      expect(meta(l)).toEqual({ token_count: 1, filtered_by_project: true, active_only: false })

      const read = await send(api, "GET", `/manage/tokens/${t.id}`)
      expect(await onlyEvent(api, read.requestId)).toMatchObject({
        action: "token.read",
        token_id: t.id,
        project_id: p.id
      })

      const update = await send(api, "PATCH", `/manage/tokens/${t.id}`, { max_requests: 0, is_active: true })
      expect(update.reply.status).toBe(200)
      const u = await onlyEvent(api, update.requestId)
      expect(u).toMatchObject({ action: "token.update", outcome: "success", token_id: t.id, project_id: p.id })
      expect(meta(u)).toEqual({ updated_is_active: true, updated_max_requests: "unlimited" })

      const empty = await send(api, "PATCH", `/manage/tokens/${t.id}`, {})
      expect(await onlyEvent(api, empty.requestId)).toMatchObject({ outcome: "failure", reason: "no fields to update" })
    })

    it("token.revoke twice: two successes, the second already_revoked (scenario 113); unknown token is a failure", async () => {
      const p = await createProject()
      const t = await createToken(p.id)
      const first = await send(api, "DELETE", `/manage/tokens/${t.id}`)
      const second = await send(api, "DELETE", `/manage/tokens/${t.id}`)
      expect([first.reply.status, second.reply.status]).toEqual([204, 204])
      const a = await onlyEvent(api, first.requestId)
      const b = await onlyEvent(api, second.requestId)
      expect([a.action, a.outcome, a.token_id, b.outcome]).toEqual(["token.revoke", "success", t.id, "success"])
      expect([meta(a), meta(b)]).toEqual([{ already_revoked: false }, { already_revoked: true }])
      const unknown = randomUUID()
      const missing = await send(api, "DELETE", `/manage/tokens/${unknown}`)
      expect(await onlyEvent(api, missing.requestId)).toMatchObject({
        outcome: "failure",
        token_id: unknown,
        reason: "token not found"
      })
    })

    it("audit.list and audit.show are audited themselves", async () => {
      const p = await createProject()
      const listing = await send(api, "GET", `/manage/audit?project_id=${p.id}&page_size=5`)
      expect(listing.reply.status).toBe(200)
      const l = await onlyEvent(api, listing.requestId)
      expect(l).toMatchObject({ action: "audit.list", outcome: "success" })
      expect(meta(l)).toEqual({ events_count: 1, page: 1, page_size: 5, total_count: 1 })

      const target = listing.reply.json.events[0].id
      const showing = await send(api, "GET", `/manage/audit/${target}`)
      expect(showing.reply.status).toBe(200)
      const s = await onlyEvent(api, showing.requestId)
      expect(s).toMatchObject({ action: "audit.show", outcome: "success" })
      expect(meta(s)).toEqual({ audit_event_id: target })

      const bad = await send(api, "GET", "/manage/audit?page_size=0")
      expect(await onlyEvent(api, bad.requestId)).toMatchObject({
        action: "audit.list",
        outcome: "failure",
        reason: "page_size must be an integer between 1 and 100"
      })
    })

    it("X-Admin-Origin: 1 marks the event as coming from the admin UI", async () => {
      const { requestId } = await send(api, "GET", "/manage/projects", undefined, { "x-admin-origin": "1" })
      expect(meta(await onlyEvent(api, requestId))).toMatchObject({ origin: "admin-ui" })
    })
  })

  describe("failed management authentication", () => {
    it("a wrong token is audited as management.auth / denied with the client IP, never with the token (scenario 121)", async () => {
      const secret = `wrong-secret-${randomUUID()}`
      const { reply, requestId } = await send(api, "GET", "/manage/tokens", undefined, {}, `Bearer ${secret}`)
      expect(reply.status).toBe(401)
      const e = await onlyEvent(api, requestId)
      expect(e).toMatchObject({
        action: "management.auth",
        actor: "anonymous",
        outcome: "denied",
        reason: "invalid management token",
        client_ip: "127.0.0.1",
        method: "GET",
        path: "/manage/tokens"
      })
      const rows = await instance.rows("audit_events")
      expect(rows.length).toBeGreaterThan(0)
      expect(JSON.stringify(rows)).not.toContain(secret)
      expect(JSON.stringify(rows)).not.toContain(server.token)
    })

    it("a missing header, and refusals on paths the router does not know, are audited once each", async () => {
      const none = await send(api, "POST", "/manage/projects", { name: "x", api_key: "y" }, {}, null)
      expect(none.reply.status).toBe(401)
      expect(await onlyEvent(api, none.requestId)).toMatchObject({
        action: "management.auth",
        outcome: "denied",
        reason: "missing or invalid Authorization header"
      })
      const fallback = await send(api, "DELETE", `/manage/projects/${randomUUID()}`, undefined, {}, "Bearer nope")
      expect(fallback.reply.status).toBe(401)
      expect((await onlyEvent(api, fallback.requestId)).action).toBe("management.auth")
    })

    it("100 wrong attempts from one address: 10 refused 401, then 429 before any comparison; two events, not 100 (scenario 6)", async () => {
      // A server of its own that believes X-Forwarded-For from the test client: the attacker is 203.0.113.x, the
      // operator checking the log is 127.0.0.1 and stays unaffected.
      const attacker = `203.0.113.${1 + Math.floor(Math.random() * 250)}`
      const behindProxy = await startServer(testConfig(instance.database, { trustedProxies: ["127.0.0.1"] }))
      try {
        const c = new Client(behindProxy.url, behindProxy.token)
        const statuses: Array<number> = []
        let retryAfter: string | null = null
        let body: unknown
        for (let i = 0; i < 100; i++) {
          const path = i % 2 === 0 ? "/manage/projects" : `/manage/tokens/${randomUUID()}`
          const r = await c.get(path, { auth: `Bearer guess-${i}`, headers: { "x-forwarded-for": attacker } })
          statuses.push(r.status)
          if (r.status === 429) [retryAfter, body] = [r.headers.get("retry-after"), r.json]
        }
        expect(statuses).toEqual([...Array(10).fill(401), ...Array(90).fill(429)])
        expect(Number(retryAfter)).toBeGreaterThan(0)
        expect(Number(retryAfter)).toBeLessThanOrEqual(60)
        expect(body).toEqual({ error: "too many failed authentication attempts", code: "too_many_attempts" })
        // The right token from that address waits too; a login attempt as well.
        expect((await c.get("/manage/projects", { headers: { "x-forwarded-for": attacker } })).status).toBe(429)
        const login = await c.post("/manage/session", { token: behindProxy.token }, {
          auth: null,
          headers: { "x-forwarded-for": attacker }
        })
        expect(login.status).toBe(429)
        // Another address is not affected.
        expect((await c.get("/manage/projects")).status).toBe(200)
        const { events } = await eventsOf(c, `client_ip=${attacker}`)
        const summary = events.map((e) => [e.action, e.reason, e.count]).sort()
        expect(summary).toEqual([
          ["admin.login", "too many failed authentication attempts", 1],
          ["management.auth", "invalid management token", 10],
          ["management.auth", "too many failed authentication attempts", 91]
        ])
        const rows = JSON.stringify(await instance.rows("audit_events"))
        expect(rows).not.toContain("guess-")
        expect(rows).not.toContain(behindProxy.token)
      } finally {
        await behindProxy.close()
      }
    })
  })

  describe("GET /manage/audit", () => {
    /** Events sharing one correlation id, made one after another. */
    const makeEvents = async (correlation: string) => {
      const p = await createProject()
      const headers = { "x-correlation-id": correlation }
      await api.get(`/manage/projects/${p.id}`, { headers })
      const t = await api.post("/manage/tokens", { project_id: p.id, duration_minutes: 5 }, { headers })
      await api.delete(`/manage/tokens/${t.json.id}`, { headers })
      await api.get(`/manage/projects/${randomUUID()}`, { headers })
      await api.get("/manage/projects", { headers })
      return { project: p, tokenId: t.json.id as string }
    }

    it("filters combine, search is a case-insensitive substring (scenario 116), newest first", async () => {
      const correlation = `c-${randomUUID()}`
      const { project, tokenId } = await makeEvents(correlation)
      const all = await eventsOf(api, `correlation_id=${correlation}`)
      expect(all.events.map((e) => e.action)).toEqual([
        "project.list",
        "project.read",
        "token.revoke",
        "token.create",
        "project.read"
      ])
      const stamps = all.events.map((e) => e.timestamp)
      expect([...stamps].sort().reverse()).toEqual(stamps)

      const q = (extra: string) =>
        eventsOf(api, `correlation_id=${correlation}&${extra}`).then((r) => r.events.map((e) => e.action))
      expect(await q("action=project.read")).toEqual(["project.read", "project.read"])
      expect(await q("action=project.read&outcome=failure")).toEqual(["project.read"])
      expect(await q(`project_id=${project.id}`)).toEqual(["token.revoke", "token.create", "project.read"])
      expect(await q(`token_id=${tokenId}`)).toEqual(["token.revoke", "token.create"])
      expect(await q("method=DELETE")).toEqual(["token.revoke"])
      expect(await q("path=/manage/projects")).toEqual(["project.list"])
      expect(await q("client_ip=127.0.0.1&actor=management_api")).toHaveLength(5)
      expect(await q("client_ip=10.9.9.9")).toEqual([])
      expect(await q("search=REVOKE")).toEqual(["token.revoke"])
      expect(await q("search=not%20found")).toEqual(["project.read"])
      expect(await q(`search=${tokenId.slice(4, 20)}`)).toEqual(["token.revoke"])
    })

    it("time range with RFC 3339 bounds, inclusive", async () => {
      const correlation = `c-${randomUUID()}`
      await makeEvents(correlation)
      const all = (await eventsOf(api, `correlation_id=${correlation}`)).events
      const oldestFirst = [...all].reverse()
      const from = oldestFirst[1]!.timestamp
      const to = oldestFirst[3]!.timestamp
      const inRange = await eventsOf(
        api,
        `correlation_id=${correlation}&start_time=${encodeURIComponent(from)}&end_time=${encodeURIComponent(to)}`
      )
      expect(inRange.events.map((e) => e.id)).toEqual(
        all.filter((e) => e.timestamp >= from && e.timestamp <= to).map((e) => e.id)
      )
      expect(inRange.events.length).toBeGreaterThanOrEqual(3)
      const later = new Date(Date.parse(all[0]!.timestamp) + 1).toISOString()
      expect((await eventsOf(api, `correlation_id=${correlation}&start_time=${later}`)).events).toEqual([])
      const offset = new Date(Date.parse(from) + 2 * 3600_000).toISOString().replace("Z", "+02:00")
      expect(
        (await eventsOf(api, `correlation_id=${correlation}&start_time=${encodeURIComponent(offset)}`)).events.length
      ).toBe(
        all.filter((e) => e.timestamp >= from).length
      )
    })

    it("pagination: consistent fields (scenario 115), pages do not overlap", async () => {
      const correlation = `c-${randomUUID()}`
      await makeEvents(correlation)
      const p1 = await eventsOf(api, `correlation_id=${correlation}&page_size=2`)
      expect(p1.pagination).toEqual({
        page: 1,
        page_size: 2,
        total_count: 5,
        total_pages: 3,
        has_next: true,
        has_prev: false,
        total_exact: true
      })
      const p3 = await eventsOf(api, `correlation_id=${correlation}&page_size=2&page=3`)
      expect(p3.pagination).toEqual({
        page: 3,
        page_size: 2,
        total_count: 5,
        total_pages: 3,
        has_next: false,
        has_prev: true,
        total_exact: true
      })
      const p2 = await eventsOf(api, `correlation_id=${correlation}&page_size=2&page=2`)
      const ids = [...p1.events, ...p2.events, ...p3.events].map((e) => e.id)
      expect(new Set(ids).size).toBe(5)
      const beyond = await eventsOf(api, `correlation_id=${correlation}&page_size=2&page=9`)
      expect(beyond.events).toEqual([])
      expect(beyond.pagination).toMatchObject({ total_count: 5, has_next: false, has_prev: true })
      const none = await eventsOf(api, `correlation_id=nothing-${randomUUID()}`)
      expect(none).toEqual({
        events: [],
        pagination: {
          page: 1,
          page_size: 20,
          total_count: 0,
          total_pages: 0,
          has_next: false,
          has_prev: false,
          total_exact: true
        }
      })
    })

    it.each([
      ["page_size=0", "page_size must be an integer between 1 and 100"],
      ["page_size=101", "page_size must be an integer between 1 and 100"],
      ["page_size=500", "page_size must be an integer between 1 and 100"],
      ["page_size=-1", "page_size must be an integer between 1 and 100"],
      ["page_size=2.5", "page_size must be an integer between 1 and 100"],
      ["page_size=abc", "page_size must be an integer between 1 and 100"],
      ["page=0", "page must be an integer between 1 and 1000000"],
      ["start_time=yesterday", "start_time must be an RFC 3339 timestamp"],
      ["end_time=2024-13-01T00:00:00Z", "end_time must be an RFC 3339 timestamp"],
      ["start_time=2024-02-01T00:00:00Z&end_time=2024-01-01T00:00:00Z", "start_time must not be after end_time"],
      ["outcome=maybe", "outcome must be one of success, failure, denied, error"],
      [`search=${"x".repeat(1025)}`, "search must be at most 1024 characters"],
      ["action=a&action=b", "invalid parameter \"action\""]
    ])("%s → 400", async (query, error) => {
      expectError(await api.get(`/manage/audit?${query}`), 400, error)
    })

    it("page_size=1 and 100 are accepted", async () => {
      expect((await api.get("/manage/audit?page_size=1")).json.pagination.page_size).toBe(1)
      expect((await api.get("/manage/audit?page_size=100")).json.pagination.page_size).toBe(100)
    })
  })

  describe("GET /manage/audit/{id} and the edges", () => {
    it("returns the event; unknown → 404; empty id → 400; other methods → 405; no token → 401", async () => {
      const { requestId } = await send(api, "GET", "/manage/projects")
      const e = await onlyEvent(api, requestId)
      const r = await api.get(`/manage/audit/${e.id}`)
      expect(r.status).toBe(200)
      expect(r.json).toEqual(e)
      expectError(await api.get(`/manage/audit/${randomUUID()}`), 404, "audit event not found")
      expectError(await api.get("/manage/audit/not-a-uuid"), 404, "audit event not found")
      expectError(await api.get("/manage/audit/"), 400, "audit event ID is required")
      const post = await api.post("/manage/audit", {})
      expectError(post, 405, "method not allowed")
      expect(post.headers.get("allow")).toBe("GET")
      expectError(await api.delete(`/manage/audit/${e.id}`), 405, "method not allowed")
      expectError(await api.get("/manage/audit", { auth: null }), 401, "missing or invalid Authorization header")
      expectError(await api.get(`/manage/audit/${e.id}`, { auth: "Bearer wrong" }), 401, "invalid management token")
    })

    it("is in the OpenAPI document", async () => {
      const doc = (await api.get("/manage/openapi.json")).json
      expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(["/manage/audit", "/manage/audit/{id}"]))
      const params = doc.paths["/manage/audit"].get.parameters.map((p: { name: string }) => p.name)
      expect(params).toEqual(
        expect.arrayContaining(["action", "search", "start_time", "end_time", "page", "page_size", "token_id"])
      )
    })
  })
}

for (const backend of backends) {
  describe(`audit log over HTTP on ${backend.name}`, () => auditSuite(backend))
}

describe("audit configuration (SQLite)", () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-audit-config-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))
  const sqlite = (name: string) => ({ _tag: "sqlite" as const, path: join(dir, `${name}.db`) })

  const rowsOf = async (path: string) => {
    const { createRequire } = await import("node:module")
    const Database = createRequire(import.meta.url)("better-sqlite3") as new(p: string, o: object) => {
      prepare(s: string): { all(): Array<Record<string, unknown>> }
      close(): void
    }
    const db = new Database(path, { readonly: true })
    try {
      return db.prepare("SELECT * FROM audit_events ORDER BY timestamp, id").all()
    } finally {
      db.close()
    }
  }

  it("TRUSTED_PROXIES: X-Forwarded-For is read from a trusted peer only, right to left past trusted hops (scenario 118)", async () => {
    const trusting = await startServer(testConfig(sqlite("trusted"), { trustedProxies: ["127.0.0.0/8", "10.0.0.0/8"] }))
    const plain = await startServer(testConfig(sqlite("untrusted")))
    try {
      const ipOf = async (server: TestServer, headers: Record<string, string>) => {
        const c = new Client(server.url, server.token)
        const { requestId } = await send(c, "GET", "/manage/projects", undefined, headers)
        return onlyEvent(c, requestId)
      }
      // The trusted proxy appended the address it saw (5.6.7.8); 1.2.3.4 is only what that client claimed.
      expect((await ipOf(trusting, { "x-forwarded-for": "1.2.3.4, 5.6.7.8" })).client_ip).toBe("5.6.7.8")
      expect((await ipOf(trusting, { "x-forwarded-for": "1.2.3.4, 10.1.2.3" })).client_ip).toBe("1.2.3.4")
      expect((await ipOf(trusting, { "x-forwarded-for": "garbage, 10.1.2.3" })).client_ip).toBe("10.1.2.3")
      expect((await ipOf(trusting, {})).client_ip).toBe("127.0.0.1")
      const agent = await ipOf(trusting, {
        "x-forwarded-for": "1.2.3.4",
        "x-forwarded-user-agent": "Browser/9",
        "user-agent": "admin-proxy"
      })
      expect([agent.client_ip, agent.user_agent]).toEqual(["1.2.3.4", "Browser/9"])
      // Without TRUSTED_PROXIES the headers are ignored: the socket peer is the client.
      const spoofed = await ipOf(plain, {
        "x-forwarded-for": "1.2.3.4",
        "x-forwarded-user-agent": "Browser/9",
        "user-agent": "curl/8"
      })
      expect([spoofed.client_ip, spoofed.user_agent]).toEqual(["127.0.0.1", "curl/8"])
    } finally {
      await trusting.close()
      await plain.close()
    }
  })

  it("AUDIT_ENABLED=false: no rows, no file (scenario 120)", async () => {
    const db = sqlite("disabled")
    const file = join(dir, "disabled.log")
    const server = await startServer(
      testConfig(db, { audit: { enabled: false, file: Option.some(file), storeInDb: true, retentionDays: 0 } })
    )
    const c = new Client(server.url, server.token)
    await c.post("/manage/projects", { name: "p", api_key: providerKey() })
    await c.get("/manage/projects", { auth: "Bearer wrong" })
    const listed = await c.get("/manage/audit")
    await server.close()
    expect(listed.json.events).toEqual([])
    expect(await rowsOf(db.path)).toEqual([])
    expect(existsSync(file)).toBe(false)
  })

  it("file and database: both get every event; a restart appends; a clean shutdown right after a burst loses nothing", async () => {
    const db = sqlite("both")
    const file = join(dir, "logs", "audit.log")
    const config = testConfig(db, {
      audit: { enabled: true, file: Option.some(file), storeInDb: true, retentionDays: 0 }
    })
    const first = await startServer(config)
    const c1 = new Client(first.url, first.token)
    const created = await c1.post("/manage/projects", { name: "both", api_key: providerKey() })
    await first.close()
    const afterFirst = readFileSync(file, "utf8")
    expect(afterFirst.trimEnd().split("\n")).toHaveLength(1)

    const second = await startServer(config)
    const c2 = new Client(second.url, second.token)
    const burst = await Promise.all(Array.from({ length: 200 }, () => c2.get(`/manage/projects/${created.json.id}`)))
    expect(burst.every((r) => r.status === 200)).toBe(true)
    await second.close()

    const text = readFileSync(file, "utf8")
    expect(text.startsWith(afterFirst)).toBe(true)
    const lines = text.trimEnd().split("\n").map((l) => JSON.parse(l))
    expect(lines).toHaveLength(201)
    expect(lines[0]).toMatchObject({
      action: "project.create",
      actor: "management_api",
      result: "success",
      project_id: created.json.id
    })
    expect(lines[0].details).toMatchObject({ project_name: "both" })
    expect(lines.slice(1).every((l) => l.action === "project.read")).toBe(true)
    const rows = await rowsOf(db.path)
    expect(rows.map((r) => r.id)).toEqual(lines.map((l) => l.id))
  })

  it("AUDIT_STORE_IN_DB=false: the file gets the events, the table none, and listing answers 503", async () => {
    const db = sqlite("file-only")
    const file = join(dir, "file-only.log")
    const server = await startServer(
      testConfig(db, { audit: { enabled: true, file: Option.some(file), storeInDb: false, retentionDays: 0 } })
    )
    const c = new Client(server.url, server.token)
    await c.get("/manage/projects")
    expectError(await c.get("/manage/audit"), 503, "audit events not available")
    expectError(await c.get(`/manage/audit/${randomUUID()}`), 503, "audit event not available")
    await server.close()
    const actions = readFileSync(file, "utf8").trimEnd().split("\n").map((l) => JSON.parse(l).action)
    expect(actions).toEqual(["project.list", "audit.list", "audit.show"])
    expect(await rowsOf(db.path)).toEqual([])
  })

  it("an unusable AUDIT_LOG_FILE stops start-up with a clear error", async () => {
    const blocked = join(dir, "blocked")
    const { writeFileSync } = await import("node:fs")
    writeFileSync(blocked, "")
    await expect(
      startServer(
        testConfig(sqlite("blocked"), {
          audit: { enabled: true, file: Option.some(join(blocked, "a.log")), storeInDb: true, retentionDays: 0 }
        })
      )
    ).rejects.toThrow(/cannot open the audit log file/)
  })
})
