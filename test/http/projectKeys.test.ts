/**
 * Project keys (delegated minting) over HTTP, on SQLite and PostgreSQL (when DATABASE_URL is set): created, listed
 * obfuscated and revoked by the management token; stored only as their SHA-256; a key mints, lists, reads, changes and
 * revokes its own project's tokens and reads its project and usage, and is 403 `forbidden` on every other endpoint of
 * the management API (enumerated from the HttpApi definition, so a new endpoint cannot be forgotten) and for every
 * other project; the project's `max_token_minutes` / `max_token_requests` bound what it mints; every audit row names
 * the actor; a revocation is refused at the next request on a second instance of the same database.
 */
import { HttpApi, type HttpApiGroup } from "@effect/platform"
import { Context } from "effect"
import { createHash } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ManagementApi, ProjectKeyAccess } from "../../src/api/ManagementApi.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import {
  type Backend,
  type BackendInstance,
  backends,
  Client,
  ISO_RE,
  providerKey,
  uniqueName,
  UUID_RE
} from "./harness.js"

const KEY_RE = /^lpk-[A-Za-z0-9_-]{43}$/
const KEY_HINT_RE = /^lpk-[A-Za-z0-9_-]{4}\*{4}[A-Za-z0-9_-]{4}$/

interface Endpoint {
  readonly method: string
  readonly path: string
  readonly projectKey: boolean
}

/** Every endpoint of the management API, read from its definition. */
const endpoints = (): ReadonlyArray<Endpoint> => {
  const out: Array<Endpoint> = []
  HttpApi.reflect(
    ManagementApi as unknown as HttpApi.HttpApi<string, HttpApiGroup.HttpApiGroup.AnyWithProps, unknown, unknown>,
    {
      onGroup: () => {},
      onEndpoint: ({ endpoint }) =>
        void out.push({
          method: endpoint.method,
          path: endpoint.path,
          projectKey: Context.getOption(endpoint.annotations, ProjectKeyAccess)._tag === "Some"
        })
    }
  )
  return out
}

function projectKeySuite(backend: Backend) {
  let instance: BackendInstance
  let server: TestServer
  let second: TestServer
  let api: Client
  let projectId = ""
  let otherProjectId = ""
  let key = ""
  let keyId = ""
  let app: Client

  beforeAll(async () => {
    instance = await backend.create()
    const config = testConfig(instance.database)
    server = await startServer(config)
    // A second instance of the same database (the same SQLite file, or PostgreSQL), default invalidation settings.
    second = await startServer({ ...config, listen: { host: "127.0.0.1", port: 0 } })
    api = new Client(server.url, server.token)
    const p = await api.post("/manage/projects", { name: uniqueName("keys"), api_key: providerKey() })
    expect(p.status, p.text).toBe(201)
    projectId = p.json.id
    otherProjectId = (await api.post("/manage/projects", { name: uniqueName("other"), api_key: providerKey() })).json.id
    const k = await api.post(`/manage/projects/${projectId}/keys`, { name: "checkout backend" })
    expect(k.status, k.text).toBe(201)
    key = k.json.key
    keyId = k.json.id
    app = new Client(server.url, key)
  })
  afterAll(async () => {
    await second?.close()
    await server?.close()
    await instance?.cleanup()
  })

  it("POST /manage/projects/{id}/keys → 201 with the key shown once; stored only as its SHA-256", async () => {
    const r = await api.post(`/manage/projects/${projectId}/keys`, { name: "mobile backend" })
    expect(r.status).toBe(201)
    expect(r.json).toEqual({
      id: expect.stringMatching(UUID_RE),
      name: "mobile backend",
      key: expect.stringMatching(KEY_RE),
      project_id: projectId,
      created_at: expect.stringMatching(ISO_RE)
    })
    const rows = await instance.rows("project_keys" as "projects")
    const row = rows.find((x) => x["id"] === r.json.id)!
    expect(row["key_hash"]).toBe(createHash("sha256").update(r.json.key).digest("hex"))
    expect(JSON.stringify(rows)).not.toContain(r.json.key)
    expect(JSON.stringify(await api.get(`/manage/projects/${projectId}/keys`))).not.toContain(r.json.key)
    const audit = await api.get(`/manage/audit?action=project_key.create&project_id=${projectId}`)
    expect(JSON.stringify(audit.json)).not.toContain(r.json.key)

    for (
      const [body, error] of [[{}, "name is required"], [{ name: "" }, "name is required"], [
        { name: "x".repeat(101) },
        "name must be at most 100 characters"
      ]] as const
    ) {
      const bad = await api.post(`/manage/projects/${projectId}/keys`, body)
      expect({ status: bad.status, error: bad.json.error }).toEqual({ status: 400, error })
    }
    const unknown = await api.post(`/manage/projects/${crypto.randomUUID()}/keys`, { name: "x" })
    expect(unknown.status).toBe(404)
  })

  it("GET /manage/projects/{id}/keys lists them obfuscated, with last_used_at once used", async () => {
    expect((await app.get(`/manage/projects/${projectId}`)).status).toBe(200)
    const r = await api.get(`/manage/projects/${projectId}/keys`)
    expect(r.status).toBe(200)
    const mine = r.json.find((k: { id: string }) => k.id === keyId)
    expect(mine).toMatchObject({
      id: keyId,
      name: "checkout backend",
      key: expect.stringMatching(KEY_HINT_RE),
      project_id: projectId,
      is_active: true,
      created_at: expect.stringMatching(ISO_RE),
      last_used_at: expect.stringMatching(ISO_RE)
    })
    expect(mine.key.slice(0, 8)).toBe(key.slice(0, 8))
    expect(mine.key.slice(-4)).toBe(key.slice(-4))
    expect((await api.get(`/manage/projects/${otherProjectId}/keys`)).json).toEqual([])
  })

  it("a project key mints, lists, reads, changes and revokes its own project's tokens; audit rows name it", async () => {
    const created = await app.post("/manage/tokens", { duration_minutes: 30, user: "user-1", name: "session" })
    expect(created.status, created.text).toBe(201)
    expect(created.json).toMatchObject({ project_id: projectId, user: "user-1", name: "session" })
    const id = created.json.id as string
    const explicit = await app.post("/manage/tokens", { project_id: projectId.toUpperCase(), duration_minutes: 5 })
    expect(explicit.status, explicit.text).toBe(201)
    const byAdmin = await api.post("/manage/tokens", { project_id: otherProjectId, duration_minutes: 5 })

    const listed = await app.get("/manage/tokens")
    expect(listed.status).toBe(200)
    const ids = listed.json.map((t: { id: string; project_id: string }) => t.id)
    expect(ids).toEqual(expect.arrayContaining([id, explicit.json.id]))
    expect(ids).not.toContain(byAdmin.json.id)
    expect(listed.json.every((t: { project_id: string }) => t.project_id === projectId)).toBe(true)
    expect((await app.get(`/manage/tokens?project_id=${projectId}&page_size=5`)).status).toBe(200)
    expect((await app.get("/manage/tokens/counts")).json.active.count).toBeGreaterThanOrEqual(2)
    expect((await app.get(`/manage/tokens/${id}`)).json).toMatchObject({ id, created_by: `project_key:${keyId}` })
    const patched = await app.patch(`/manage/tokens/${id}`, { user: "user-2" })
    expect(patched.status, patched.text).toBe(200)
    expect(patched.json.user).toBe("user-2")
    expect((await app.get(`/manage/projects/${projectId}`)).json.id).toBe(projectId)
    expect((await app.get(`/manage/usage?project_id=${projectId}`)).status).toBe(200)
    expect((await app.get("/manage/usage")).status).toBe(200)
    expect((await app.delete(`/manage/tokens/${id}`)).status).toBe(204)
    expect((await api.get(`/manage/tokens/${id}`)).json.is_active).toBe(false)

    for (const action of ["token.create", "token.update", "token.revoke"]) {
      const rows = (await api.get(`/manage/audit?action=${action}&token_id=${id}`)).json.events
      expect(rows.map((e: { actor: string }) => e.actor), action).toEqual([`project_key:${keyId}`])
    }
    const adminRow = (await api.get(`/manage/audit?action=token.create&token_id=${byAdmin.json.id}`)).json.events[0]
    expect(adminRow.actor).toBe("management_api")
  })

  it("a project key is 403 forbidden for another project's tokens, project and usage, and changes nothing", async () => {
    const foreign = await api.post("/manage/tokens", { project_id: otherProjectId, duration_minutes: 5 })
    const fid = foreign.json.id as string
    const before = await api.get(`/manage/tokens/${fid}`)
    const foreignTokens = (await api.get(`/manage/tokens?project_id=${otherProjectId}`)).json
    const refusals = [
      await app.post("/manage/tokens", { project_id: otherProjectId, duration_minutes: 5 }),
      await app.get(`/manage/tokens/${fid}`),
      await app.patch(`/manage/tokens/${fid}`, { max_requests: 3 }),
      await app.delete(`/manage/tokens/${fid}`),
      await app.get(`/manage/tokens?project_id=${otherProjectId}`),
      await app.get(`/manage/tokens/counts?project_id=${otherProjectId}`),
      await app.get(`/manage/projects/${otherProjectId}`),
      await app.get(`/manage/usage?project_id=${otherProjectId}`)
    ]
    for (const r of refusals) {
      expect({ status: r.status, code: r.json.code }).toEqual({ status: 403, code: "forbidden" })
    }
    expect((await api.get(`/manage/tokens/${fid}`)).json).toEqual(before.json)
    expect((await api.get(`/manage/tokens?project_id=${otherProjectId}`)).json).toEqual(foreignTokens)
  })

  it("every other endpoint of the management API is 403 forbidden for a project key, and changes nothing", async () => {
    const all = endpoints()
    const allowed = all.filter((e) => e.projectKey).map((e) => `${e.method} ${e.path}`).sort()
    // The endpoints a project key may call: adding one here is a decision, never an accident.
    expect(allowed).toEqual([
      "DELETE /manage/tokens/:id",
      "GET /manage/projects/:id",
      "GET /manage/tokens",
      "GET /manage/tokens/:id",
      "GET /manage/tokens/counts",
      "GET /manage/usage",
      "PATCH /manage/tokens/:id",
      "POST /manage/tokens"
    ])
    const token = (await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 5 })).json.id
    const before = await api.snapshot()
    const keysBefore = await api.get(`/manage/projects/${projectId}/keys`)
    const refused = all.filter((e) => !e.projectKey)
    expect(refused.length).toBeGreaterThanOrEqual(12)
    for (const e of refused) {
      const path = e.path.replace(":key_id", keyId).replace(
        ":id",
        e.path.startsWith("/manage/tokens") ? token : projectId
      )
      const body = e.method === "GET" || e.method === "DELETE"
        ? undefined
        : { name: "x", is_active: false, all: true, token: key }
      const r = await app.call(e.method, path, body === undefined ? {} : { body })
      expect({ endpoint: `${e.method} ${e.path}`, status: r.status, code: r.json?.code }).toEqual({
        endpoint: `${e.method} ${e.path}`,
        status: 403,
        code: "forbidden"
      })
    }
    expect(await api.snapshot()).toEqual(before)
    expect((await api.get(`/manage/projects/${projectId}/keys`)).json.map((k: { is_active: boolean }) => k.is_active))
      .toEqual(keysBefore.json.map((k: { is_active: boolean }) => k.is_active))
    // The admin UI sign-in with a project key as the token, without any Authorization header.
    const login = await new Client(server.url, "").post("/manage/session", { token: key }, { auth: null })
    expect({ status: login.status, code: login.json.code }).toEqual({ status: 403, code: "forbidden" })
    expect(login.headers.get("set-cookie")).toBeNull()
  })

  it("/manage/openapi.json states each operation's scopes", async () => {
    const doc = (await new Client(server.url, "").get("/manage/openapi.json", { auth: null })).json
    const documented = new Map<string, ReadonlyArray<string>>()
    for (const [path, operations] of Object.entries(doc.paths as Record<string, Record<string, any>>)) {
      for (const [method, op] of Object.entries(operations)) {
        documented.set(`${method.toUpperCase()} ${path.replace(/\{(\w+)\}/g, ":$1")}`, op["x-llm-proxy-scopes"])
      }
    }
    for (const e of endpoints().filter((x) => !x.path.startsWith("/manage/session"))) {
      const expected = e.projectKey ? ["management_token", "project_key"] : ["management_token"]
      expect(documented.get(`${e.method} ${e.path}`), `${e.method} ${e.path}`).toEqual(expected)
    }
    expect(doc.paths["/manage/tokens"].post.description).toContain("Scopes: the management token, or a project key for")
    expect(doc.paths["/manage/audit"].get.description).toContain("Scopes: the management token only")
  })

  it("max_token_minutes and max_token_requests bound what a project key mints (400), not the management token", async () => {
    const p = await api.post("/manage/projects", {
      name: uniqueName("bounded"),
      api_key: providerKey(),
      max_token_minutes: 30,
      max_token_requests: 100
    })
    expect(p.status, p.text).toBe(201)
    expect(p.json).toMatchObject({ max_token_minutes: 30, max_token_requests: 100 })
    const k = await api.post(`/manage/projects/${p.json.id}/keys`, { name: "bounded backend" })
    const bounded = new Client(server.url, k.json.key)
    const tooLong = await bounded.post("/manage/tokens", { duration_minutes: 31 })
    expect({ status: tooLong.status, error: tooLong.json.error }).toEqual({
      status: 400,
      error:
        "a project key may give a token at most 30 minutes (the project's max_token_minutes): duration_minutes, or expires_at from now"
    })
    const tooMany = await bounded.post("/manage/tokens", { duration_minutes: 30, max_requests: 101 })
    const unlimited = await bounded.post("/manage/tokens", { duration_minutes: 30, max_requests: 0 })
    for (const r of [tooMany, unlimited]) {
      expect({ status: r.status, error: r.json.error }).toEqual({
        status: 400,
        error:
          "max_requests must be between 1 and 100 for a token a project key mints (the project's max_token_requests)"
      })
    }
    expect((await api.get(`/manage/tokens?project_id=${p.json.id}`)).json).toEqual([])

    const ok = await bounded.post("/manage/tokens", { duration_minutes: 30 })
    expect(ok.status, ok.text).toBe(201)
    expect(ok.json.max_requests).toBe(100)
    const later = new Date(Date.now() + 45 * 60_000).toISOString()
    const extended = await bounded.patch(`/manage/tokens/${ok.json.id}`, { expires_at: later })
    expect(extended.status).toBe(400)
    expect((await bounded.patch(`/manage/tokens/${ok.json.id}`, { max_requests: 0 })).status).toBe(400)
    expect((await bounded.patch(`/manage/tokens/${ok.json.id}`, { max_requests: 50 })).json.max_requests).toBe(50)

    // The management token is not bound by them.
    const admin = await api.post("/manage/tokens", { project_id: p.json.id, duration_minutes: 600 })
    expect(admin.status).toBe(201)
    expect(admin.json.max_requests).toBeUndefined()
    const bad = await api.patch(`/manage/projects/${p.json.id}`, { max_token_minutes: 0 })
    expect({ status: bad.status, error: bad.json.error }).toEqual({
      status: 400,
      error: "max_token_minutes must be null or an integer between 1 and 525600"
    })
  })

  it("a token a project key mints or changes cannot have a larger budget than its project's (400); a smaller one or none is fine", async () => {
    const p = await api.post("/manage/projects", {
      name: uniqueName("budgeted"),
      api_key: providerKey(),
      max_cost_usd: 10,
      max_tokens: 100_000,
      budget_period: "month"
    })
    expect(p.status, p.text).toBe(201)
    const k = await api.post(`/manage/projects/${p.json.id}/keys`, { name: "budgeted backend" })
    const bounded = new Client(server.url, k.json.key)
    const tooRich = await bounded.post("/manage/tokens", { duration_minutes: 30, max_cost_usd: 10.01 })
    expect({ status: tooRich.status, error: tooRich.json.error }).toEqual({
      status: 400,
      error: "max_cost_usd must be at most 10 for a token a project key mints (the project's max_cost_usd)"
    })
    const tooManyTokens = await bounded.post("/manage/tokens", { duration_minutes: 30, max_tokens: 100_001 })
    expect({ status: tooManyTokens.status, error: tooManyTokens.json.error }).toEqual({
      status: 400,
      error: "max_tokens must be at most 100000 for a token a project key mints (the project's max_tokens)"
    })
    expect((await api.get(`/manage/tokens?project_id=${p.json.id}`)).json).toEqual([])

    const ok = await bounded.post("/manage/tokens", {
      duration_minutes: 30,
      max_cost_usd: 2,
      max_tokens: 5_000,
      budget_period: "day"
    })
    expect(ok.status, ok.text).toBe(201)
    const none = await bounded.post("/manage/tokens", { duration_minutes: 30 })
    expect(none.status, none.text).toBe(201)
    const raised = await bounded.patch(`/manage/tokens/${ok.json.id}`, { max_cost_usd: 20 })
    expect({ status: raised.status, error: raised.json.error }).toEqual({
      status: 400,
      error: "max_cost_usd must be at most 10 for a token a project key mints (the project's max_cost_usd)"
    })
    expect((await api.get(`/manage/tokens/${ok.json.id}`)).json).toMatchObject({ max_cost_usd: 2, max_tokens: 5_000 })
    expect((await bounded.patch(`/manage/tokens/${ok.json.id}`, { max_cost_usd: 10 })).json.max_cost_usd).toBe(10)
    // The management token is not bound by them.
    const admin = await api.post("/manage/tokens", { project_id: p.json.id, duration_minutes: 30, max_cost_usd: 50 })
    expect(admin.status, admin.text).toBe(201)
  })

  it("a revoked key is refused at its next request, on this instance and on a second one of the same database", async () => {
    const k = await api.post(`/manage/projects/${projectId}/keys`, { name: "short-lived" })
    const here = new Client(server.url, k.json.key)
    const there = new Client(second.url, k.json.key)
    expect((await here.get("/manage/tokens")).status).toBe(200)
    expect((await there.get("/manage/tokens")).status).toBe(200)
    const revoked = await api.delete(`/manage/projects/${projectId}/keys/${k.json.id}`)
    expect(revoked.status).toBe(204)
    for (const c of [there, here]) {
      const r = await c.get("/manage/tokens")
      expect({ status: r.status, code: r.json.code }).toEqual({ status: 401, code: "invalid_project_key" })
    }
    const listed = (await api.get(`/manage/projects/${projectId}/keys`)).json.find((x: { id: string }) =>
      x.id === k.json.id
    )
    expect(listed).toMatchObject({ is_active: false, revoked_at: expect.stringMatching(ISO_RE) })
    expect((await api.delete(`/manage/projects/${projectId}/keys/${k.json.id}`)).status).toBe(204)
    expect((await api.delete(`/manage/projects/${otherProjectId}/keys/${k.json.id}`)).status).toBe(404)
    const audit = (await api.get(`/manage/audit?action=project_key.revoke&project_id=${projectId}`)).json.events
    expect(audit[0].actor).toBe("management_api")
  })
}

for (const backend of backends) describe(`project keys on ${backend.name}`, () => projectKeySuite(backend))

describe("wrong project keys", () => {
  it("count towards the client's brute-force limit like wrong management tokens, and are audited without the key", async () => {
    const instance = await backends[0]!.create()
    const server = await startServer(testConfig(instance.database, { managementAuthMaxFailures: 3 }))
    const wrong = `lpk-${"A".repeat(42)}A`
    let live = ""
    try {
      const admin = new Client(server.url, server.token)
      const p = await admin.post("/manage/projects", { name: uniqueName("throttled"), api_key: providerKey() })
      live = (await admin.post(`/manage/projects/${p.json.id}/keys`, { name: "backend" })).json.key
      expect((await new Client(server.url, live).get("/manage/tokens")).status).toBe(200)
      for (let i = 0; i < 3; i++) {
        const r = await new Client(server.url, wrong).get("/manage/tokens")
        expect({ status: r.status, code: r.json.code }).toEqual({ status: 401, code: "invalid_project_key" })
      }
      const locked = await new Client(server.url, live).get("/manage/tokens")
      expect({ status: locked.status, code: locked.json.code }).toEqual({ status: 429, code: "too_many_attempts" })
    } finally {
      // Aggregated denials are written when their minute ends or at shutdown.
      await server.close()
    }
    try {
      const rows = await instance.rows("audit_events")
      const denial = rows.find((r) =>
        r["action"] === "management.auth" && r["reason"] === "invalid or revoked project key"
      )
      expect(denial).toMatchObject({ outcome: "denied", count: 3 })
      expect(JSON.stringify(rows)).not.toContain(wrong)
      expect(JSON.stringify(rows)).not.toContain(live)
    } finally {
      await instance.cleanup()
    }
  })
})
