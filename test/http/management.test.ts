/**
 * The management API as a user sees it over HTTP, on SQLite and on PostgreSQL (when DATABASE_URL is set).
 *
 * Covers docs/behaviour.md scenarios 1–35 on the management side (their audit events are in test/http/audit.test.ts,
 * their proxy halves in test/proxy/store.test.ts), the error shape and fields of docs/management-api.md, hostile
 * input, a property test that throws random payloads at every endpoint, health/OpenAPI, and how secrets are stored
 * at rest.
 */
import { FastCheck as fc } from "effect"
import { createHash, randomBytes } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { postgresUrl } from "../support/databases.js"
import { startServer, testConfig, type TestServer, withEncryptionKey } from "../support/server.js"
import {
  type Backend,
  type BackendInstance,
  backends,
  Client,
  hintOf,
  ISO_RE,
  providerKey,
  type Reply,
  TOKEN_HINT_RE,
  TOKEN_RE,
  uniqueName,
  UUID7_RE,
  uuid7Ms,
  UUID_RE
} from "./harness.js"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex")
const MISSING_AUTH = "missing or invalid Authorization header"
const WRONG_AUTH = "invalid management token"
const OBFUSCATED_KEY = "cannot save obfuscated API key - please provide the full API key"
const UNKNOWN_UUID = "3f1c2a4e-9b7d-4c2e-8f00-123456789abc"

/** An error as docs/management-api.md shapes it: JSON content type, `{"error": string, "code"?: string}`. */
const expectError = (r: Reply, status: number, error?: string) => {
  expect({ status: r.status, body: r.text }).toMatchObject({ status })
  expect(r.headers.get("content-type") ?? "").toMatch(/^application\/json/)
  expect(r.json).toBeTypeOf("object")
  expect(r.json.error).toBeTypeOf("string")
  if (r.json.code !== undefined) expect(r.json.code).toBeTypeOf("string")
  if (error !== undefined) expect(r.json.error).toBe(error)
}

const expectNear = (iso: string, expectedMs: number, toleranceMs = 10_000) => {
  expect(iso).toMatch(ISO_RE)
  expect(Math.abs(Date.parse(iso) - expectedMs)).toBeLessThan(toleranceMs)
}

const PROJECT_FIELDS = ["id", "name", "api_key", "provider", "is_active", "created_at", "updated_at"]
const TOKEN_FIELDS = [
  "id",
  "token",
  "project_id",
  "expires_at",
  "is_active",
  "request_count",
  "max_requests",
  "created_at",
  "last_used_at",
  "cache_hit_count"
]

function managementSuite(backend: Backend) {
  let instance: BackendInstance
  let server: TestServer
  let api: Client

  beforeAll(async () => {
    instance = await backend.create()
    // These tests try every refusal from one address; the brute-force limit (10 failed attempts a minute per client
    // IP, tested in audit.test.ts and auth-throttle.test.ts) is raised so that they do not trip it.
    server = await startServer(testConfig(instance.database, { managementAuthMaxFailures: 1000 }))
    api = new Client(server.url, server.token)
  })

  afterAll(async () => {
    await server?.close()
    await instance?.cleanup()
  })

  /** Every provider key created through `createProject`, to check none ever comes back whole. */
  const secrets: Array<string> = []
  const expectNoSecret = (r: Reply) => {
    for (const s of secrets) {
      expect(r.text.includes(s), `response leaks a full key: ${r.text.slice(0, 200)}`).toBe(false)
    }
  }

  const createProject = async (overrides: Record<string, unknown> = {}) => {
    const key = providerKey()
    secrets.push(key)
    const r = await api.post("/manage/projects", { name: uniqueName("project"), api_key: key, ...overrides })
    expect(r.status, r.text).toBe(201)
    expectNoSecret(r)
    return { ...(r.json as { id: string; name: string; api_key: string; is_active: boolean; created_at: string }), key }
  }

  const createToken = async (projectId: string, extra: Record<string, unknown> = {}) => {
    const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...extra })
    expect(r.status, r.text).toBe(201)
    return r.json as { id: string; token: string; project_id: string; expires_at: string; max_requests?: number }
  }

  const getToken = async (id: string) => {
    const r = await api.get(`/manage/tokens/${id}`)
    expect(r.status, r.text).toBe(200)
    return r.json
  }

  it("starts with an empty data set: GET /manage/projects and /manage/tokens are []", async () => {
    const projects = await api.get("/manage/projects")
    expect(projects.status).toBe(200)
    expect(projects.headers.get("content-type")).toMatch(/^application\/json/)
    expect(projects.json).toEqual([])
    const tokens = await api.get("/manage/tokens")
    expect(tokens.status).toBe(200)
    expect(tokens.json).toEqual([])
  })

  describe("management auth (#1–6)", () => {
    // Every management endpoint, plus paths the router does not match (405s, trailing slashes).
    const endpoints: ReadonlyArray<readonly [string, string]> = [
      ["GET", "/manage/projects"],
      ["POST", "/manage/projects"],
      ["GET", `/manage/projects/${UNKNOWN_UUID}`],
      ["PATCH", `/manage/projects/${UNKNOWN_UUID}`],
      ["POST", `/manage/projects/${UNKNOWN_UUID}/tokens/revoke`],
      ["GET", "/manage/tokens"],
      ["POST", "/manage/tokens"],
      ["GET", `/manage/tokens/${UNKNOWN_UUID}`],
      ["PATCH", `/manage/tokens/${UNKNOWN_UUID}`],
      ["DELETE", `/manage/tokens/${UNKNOWN_UUID}`],
      ["DELETE", "/manage/projects/x"],
      ["PUT", `/manage/projects/${UNKNOWN_UUID}`],
      ["POST", `/manage/tokens/${UNKNOWN_UUID}`],
      ["PUT", "/manage/tokens"],
      ["GET", "/manage/projects/"],
      ["GET", "/manage/tokens/"],
      ["GET", "/manage/projects/not-a-uuid"],
      ["GET", "/manage/tokens/not-a-uuid"]
    ]

    it("#1 no Authorization header → 401 missing or invalid Authorization header, on every endpoint", async () => {
      for (const [method, path] of endpoints) {
        const r = await api.call(method, path, { auth: null, body: method === "GET" ? undefined : {} })
        expectError(r, 401, MISSING_AUTH)
        expect(r.headers.get("x-request-id")).toBeTruthy()
      }
    })

    it("#2 Bearer wrong → 401 invalid management token, on every endpoint", async () => {
      for (const [method, path] of endpoints) {
        const r = await api.call(method, path, { auth: "Bearer wrong", body: method === "GET" ? undefined : {} })
        expectError(r, 401, WRONG_AUTH)
      }
    })

    it("#3 empty or malformed credentials → 401 missing or invalid Authorization header", async () => {
      for (
        const auth of [
          "Bearer ",
          "Bearer    ",
          "Bearer",
          "",
          "Basic dXNlcjpwYXNz",
          `bearer ${server.token}`,
          server.token
        ]
      ) {
        expectError(await api.get("/manage/projects", { auth }), 401, MISSING_AUTH)
      }
    })

    it("#4 unauthenticated DELETE /manage/projects/x → 401 (auth is evaluated before method handling)", async () => {
      expectError(await api.delete("/manage/projects/x", { auth: null }), 401, MISSING_AUTH)
      expectError(await api.call("PUT", "/manage/tokens/x", { auth: null }), 401, MISSING_AUTH)
      expectError(await api.delete(`/manage/projects/${UNKNOWN_UUID}`, { auth: "Bearer nope" }), 401, WRONG_AUTH)
    })

    it("#5 GET /manage/does-not-exist → 404 JSON without auth; other unknown paths too", async () => {
      for (const path of ["/manage/does-not-exist", "/manage", "/manage/", "/manage/projectsX", "/nope", "/v2/x"]) {
        const r = await api.get(path, { auth: null })
        expectError(r, 404)
        expect(r.headers.get("x-request-id")).toBeTruthy()
      }
      expectError(await api.get("/manage/does-not-exist"), 404)
    })

    it("#6 a wrong token and tokens sharing a long prefix with the real one → 401 invalid management token (audited: test/http/audit.test.ts)", async () => {
      const real = server.token
      const candidates = [
        "x".repeat(real.length),
        real.slice(0, -1),
        real.slice(0, -1) + (real.endsWith("a") ? "b" : "a"),
        real + "a",
        real + " extra",
        real.slice(0, real.length - 8) + "00000000",
        real.toUpperCase()
      ]
      for (const candidate of candidates) {
        expect(candidate).not.toBe(real)
        expectError(await api.get("/manage/projects", { auth: `Bearer ${candidate}` }), 401, WRONG_AUTH)
      }
      // The real token still works afterwards (below the brute-force limit there is no lockout).
      expect((await api.get("/manage/projects")).status).toBe(200)
    })
  })

  describe("projects (#7–22)", () => {
    it("#7 POST /manage/projects → 201 with a UUID, is_active, timestamps and the key obfuscated (never whole)", async () => {
      const name = uniqueName("seven")
      const key = "sk-proj-1234567890abcdefghijklmnopqrstuvwxyz"
      secrets.push(key)
      const before = Date.now()
      const r = await api.post("/manage/projects", { name, api_key: key })
      expect(r.status, r.text).toBe(201)
      expect(r.headers.get("content-type")).toMatch(/^application\/json/)
      expect(r.headers.get("x-request-id")).toBeTruthy()
      expect(r.json).toEqual({
        id: expect.stringMatching(UUID_RE),
        name,
        api_key: "sk-proj-...wxyz",
        api_keys: [{ index: 0, key: "sk-proj-...wxyz", weight: 1, provider: "openai", state: "ok" }],
        provider: "openai",
        is_active: true,
        rate_limit: null,
        allowed_models: null,
        max_token_minutes: null,
        max_token_requests: null,
        max_cost_usd: null,
        max_tokens: null,
        budget_period: "total",
        spent_usd: 0,
        tokens_used: 0,
        period_spent_usd: 0,
        period_tokens_used: 0,
        period_ends_at: null,
        created_at: expect.stringMatching(ISO_RE),
        updated_at: expect.stringMatching(ISO_RE)
      })
      expect(r.json.deactivated_at).toBeUndefined()
      expectNear(r.json.created_at, before)
      expect(r.json.updated_at).toBe(r.json.created_at)
      expect(r.text).not.toContain(key)
    })

    it("#7 a short key is obfuscated too (first 2 + stars) and an explicit provider is kept", async () => {
      const r = await api.post("/manage/projects", {
        name: uniqueName("short"),
        api_key: "abcdefghij",
        provider: "openai"
      })
      expect(r.status).toBe(201)
      expect(r.json.api_key).toBe("ab********")
      expect(r.json.provider).toBe("openai")
    })

    it("#8 POST without name or without api_key → 400 name and api_key are required", async () => {
      const bodies = [
        { api_key: providerKey() },
        { name: uniqueName("n") },
        {},
        { name: "", api_key: providerKey() },
        { name: uniqueName("n"), api_key: "" }
      ]
      for (const body of bodies) {
        expectError(await api.post("/manage/projects", body), 400, "name and api_key are required")
      }
    })

    it("#9 POST with an obfuscated api_key (... or ****) → 400", async () => {
      for (const api_key of ["sk-proj-...wxyz", "sk-a****bcde", "abc...", "****"]) {
        expectError(await api.post("/manage/projects", { name: uniqueName("obf"), api_key }), 400, OBFUSCATED_KEY)
      }
    })

    it("#10 POST with malformed JSON → 400 invalid request body", async () => {
      for (const body of ["{", "{\"name\":", "{'name':'a'}", "name=a&api_key=b", "{} x", "\u0000"]) {
        expectError(await api.post("/manage/projects", body), 400, "invalid request body")
      }
    })

    it("#11 a second project with the same name → 409 and only one is stored", async () => {
      const p = await createProject()
      const r = await api.post("/manage/projects", { name: p.name, api_key: providerKey() })
      expectError(r, 409)
      const list = (await api.get("/manage/projects")).json as Array<{ name: string }>
      expect(list.filter((x) => x.name === p.name)).toHaveLength(1)
    })

    it("#11 concurrent creates of one name: exactly one 201, the rest 409, never 500", async () => {
      const name = uniqueName("race")
      const replies = await Promise.all(
        Array.from({ length: 12 }, () => api.post("/manage/projects", { name, api_key: providerKey() }))
      )
      const statuses = replies.map((r) => r.status).sort()
      expect(statuses.filter((s) => s === 201)).toHaveLength(1)
      expect(statuses.filter((s) => s === 409)).toHaveLength(11)
    })

    it("#11 renaming a project to an existing name → 409 and nothing changes", async () => {
      const a = await createProject()
      const b = await createProject()
      expectError(await api.patch(`/manage/projects/${b.id}`, { name: a.name }), 409)
      expect((await api.get(`/manage/projects/${b.id}`)).json.name).toBe(b.name)
    })

    it("#12 GET /manage/projects → array sorted by name, every api_key obfuscated", async () => {
      const prefix = uniqueName("sorted")
      const keys = new Map<string, string>()
      for (const suffix of ["b", "c", "a"]) {
        const p = await createProject({ name: `${prefix}-${suffix}` })
        keys.set(p.name, p.key)
      }
      const r = await api.get("/manage/projects")
      expect(r.status).toBe(200)
      expectNoSecret(r)
      const list = r.json as Array<Record<string, unknown>>
      const mine = list.filter((p) => String(p.name).startsWith(prefix)).map((p) => p.name)
      expect(mine).toEqual([`${prefix}-a`, `${prefix}-b`, `${prefix}-c`])
      for (const p of list) {
        for (const field of PROJECT_FIELDS) expect(p).toHaveProperty(field)
        const key = keys.get(String(p.name))
        if (key) expect(p.api_key).toBe(hintOf(key))
        expect(String(p.api_key)).toMatch(/\.\.\.|\*/)
      }
    })

    it("#13 GET /manage/projects/{id} → 200 obfuscated; unknown → 404; trailing slash and non-UUIDs → 400", async () => {
      const p = await createProject()
      const r = await api.get(`/manage/projects/${p.id}`)
      expect(r.status).toBe(200)
      expect(r.json).toEqual({ ...p, key: undefined, api_key: hintOf(p.key) })
      expectNoSecret(r)
      // Ids are case-insensitive UUIDs.
      expect((await api.get(`/manage/projects/${p.id.toUpperCase()}`)).json.id).toBe(p.id)
      expectError(await api.get(`/manage/projects/${UNKNOWN_UUID}`), 404, "project not found")
      expectError(await api.get("/manage/projects/"), 400, "invalid project id")
      expectError(await api.get("/manage/projects/not-a-uuid"), 400, "invalid project id")
    })

    it("#14 PATCH {name} → 200 with the new name, api_key unchanged and obfuscated, updated_at bumped", async () => {
      const p = await createProject()
      await sleep(5)
      const name = uniqueName("renamed")
      const r = await api.patch(`/manage/projects/${p.id}`, { name })
      expect(r.status, r.text).toBe(200)
      expectNoSecret(r)
      expect(r.json).toMatchObject({
        id: p.id,
        name,
        api_key: hintOf(p.key),
        is_active: true,
        created_at: p.created_at
      })
      expect(Date.parse(r.json.updated_at)).toBeGreaterThan(Date.parse(p.created_at))
      expect((await api.get(`/manage/projects/${p.id}`)).json).toEqual(r.json)
    })

    it("#14 PATCH {api_key} rotates the key; the response shows only the new key's obfuscated form", async () => {
      const p = await createProject()
      const next = providerKey()
      secrets.push(next)
      const r = await api.patch(`/manage/projects/${p.id}`, { api_key: next })
      expect(r.status).toBe(200)
      expect(r.json.api_key).toBe(hintOf(next))
      expectNoSecret(r)
    })

    it("#15 PATCH {api_key: \"\"} keeps the current key", async () => {
      const p = await createProject()
      const r = await api.patch(`/manage/projects/${p.id}`, { api_key: "" })
      expect(r.status).toBe(200)
      expect(r.json.api_key).toBe(hintOf(p.key))
    })

    it("#16 PATCH is_active false sets deactivated_at ≈ now; is_active true clears it", async () => {
      const p = await createProject()
      const off = await api.patch(`/manage/projects/${p.id}`, { is_active: false })
      expect(off.status).toBe(200)
      expect(off.json.is_active).toBe(false)
      expectNear(off.json.deactivated_at, Date.now())
      // Deactivating again keeps the original deactivation time.
      await sleep(5)
      const again = await api.patch(`/manage/projects/${p.id}`, { is_active: false })
      expect(again.json.deactivated_at).toBe(off.json.deactivated_at)
      const on = await api.patch(`/manage/projects/${p.id}`, { is_active: true })
      expect(on.status).toBe(200)
      expect(on.json.is_active).toBe(true)
      expect(on.json).not.toHaveProperty("deactivated_at")
      expect((await api.get(`/manage/projects/${p.id}`)).json).not.toHaveProperty("deactivated_at")
    })

    it("#17 revoke_tokens without is_active=false → 400 revoke_tokens requires is_active=false", async () => {
      const p = await createProject()
      const t = await createToken(p.id)
      for (const body of [{ revoke_tokens: true }, { revoke_tokens: true, is_active: true }]) {
        expectError(await api.patch(`/manage/projects/${p.id}`, body), 400, "revoke_tokens requires is_active=false")
      }
      expect((await getToken(t.id)).is_active).toBe(true)
      expect((await api.get(`/manage/projects/${p.id}`)).json.is_active).toBe(true)
    })

    it("#18 PATCH {is_active:false, revoke_tokens:true} revokes both active tokens (audited: test/http/audit.test.ts)", async () => {
      const p = await createProject()
      const [a, b] = [await createToken(p.id), await createToken(p.id)]
      const r = await api.patch(`/manage/projects/${p.id}`, { is_active: false, revoke_tokens: true })
      expect(r.status).toBe(200)
      expect(r.json.is_active).toBe(false)
      for (const t of [a, b]) {
        const got = await getToken(t.id)
        expect(got.is_active).toBe(false)
        expectNear(got.deactivated_at, Date.now())
      }
    })

    it("#19 the same request on an already inactive project still revokes its tokens", async () => {
      const p = await createProject()
      const t = await createToken(p.id)
      expect((await api.patch(`/manage/projects/${p.id}`, { is_active: false })).status).toBe(200)
      expect((await getToken(t.id)).is_active).toBe(true)
      const r = await api.patch(`/manage/projects/${p.id}`, { is_active: false, revoke_tokens: true })
      expect(r.status).toBe(200)
      expect((await getToken(t.id)).is_active).toBe(false)
    })

    it("#20 DELETE /manage/projects/{id} → 405, Allow: GET, PATCH, error and message in the body; the project stays", async () => {
      const p = await createProject()
      const r = await api.delete(`/manage/projects/${p.id}`)
      expectError(r, 405, "method not allowed")
      expect(r.json).toEqual({ error: "method not allowed", message: "project deletion is not permitted" })
      expect(r.headers.get("allow")).toBe("GET, PATCH")
      expect((await api.get(`/manage/projects/${p.id}`)).status).toBe(200)
    })

    it("#21 PUT /manage/projects/{id} → 405; other unsupported methods on collections → 405 with Allow", async () => {
      const p = await createProject()
      const put = await api.call("PUT", `/manage/projects/${p.id}`, { body: { name: "x" } })
      expectError(put, 405, "method not allowed")
      expect(put.headers.get("allow")).toBe("GET, PATCH")
      for (
        const [method, path, allow] of [
          ["PUT", "/manage/projects", "GET, POST"],
          ["DELETE", "/manage/projects", "GET, POST"],
          ["PATCH", "/manage/tokens", "GET, POST"],
          ["GET", `/manage/projects/${p.id}/tokens/revoke`, "POST"]
        ] as const
      ) {
        const r = await api.call(method, path)
        expectError(r, 405, "method not allowed")
        expect(r.headers.get("allow")).toBe(allow)
      }
    })

    it("#22 POST /manage/projects/{id}/tokens/revoke with 3 tokens (1 revoked) → counts; unknown → 404", async () => {
      const p = await createProject()
      const tokens = [await createToken(p.id), await createToken(p.id), await createToken(p.id)]
      expect((await api.delete(`/manage/tokens/${tokens[0]!.id}`)).status).toBe(204)
      const r = await api.post(`/manage/projects/${p.id}/tokens/revoke`)
      expect(r.status, r.text).toBe(200)
      expect(r.json).toEqual({ revoked_count: 2, already_revoked_count: 1, total_tokens: 3 })
      for (const t of tokens) expect((await getToken(t.id)).is_active).toBe(false)
      const again = await api.post(`/manage/projects/${p.id}/tokens/revoke`)
      expect(again.json).toEqual({ revoked_count: 0, already_revoked_count: 3, total_tokens: 3 })
      expectError(await api.post(`/manage/projects/${UNKNOWN_UUID}/tokens/revoke`), 404, "project not found")
      expectError(await api.post("/manage/projects/nope/tokens/revoke"), 400, "invalid project id")
    })
  })

  describe("tokens (#23–35)", () => {
    let project: Awaited<ReturnType<typeof createProject>>
    beforeAll(async () => {
      project = await createProject()
    })

    it("#23 POST /manage/tokens → 201 {id, token (sk- + 43 base64url), project_id, expires_at ≈ now+60m}, no max_requests", async () => {
      const before = Date.now()
      const r = await api.post("/manage/tokens", { project_id: project.id, duration_minutes: 60 })
      expect(r.status, r.text).toBe(201)
      expect(r.headers.get("content-type")).toMatch(/^application\/json/)
      expect(r.json).toEqual({
        id: expect.stringMatching(UUID7_RE),
        token: expect.stringMatching(TOKEN_RE),
        project_id: project.id,
        expires_at: expect.stringMatching(ISO_RE)
      })
      expect(r.json).not.toHaveProperty("max_requests")
      expectNear(r.json.expires_at, before + 60 * 60_000)
      // A token id is a UUIDv7 of its creation time, so new tokens go to the end of the id index.
      expect(uuid7Ms(r.json.id)).toBeGreaterThanOrEqual(before)
      expect(uuid7Ms(r.json.id)).toBeLessThanOrEqual(Date.now())
      // Accepts an upper-case project id and answers with the canonical one.
      const upper = await createToken(project.id.toUpperCase())
      expect(upper.project_id).toBe(project.id)
    })

    it("#24 max_requests 5 → echoed; 0 → unlimited (absent on create, null when listed); 2^31-1 accepted", async () => {
      const five = await createToken(project.id, { max_requests: 5 })
      expect(five.max_requests).toBe(5)
      expect((await getToken(five.id)).max_requests).toBe(5)
      const zero = await createToken(project.id, { max_requests: 0 })
      expect(zero).not.toHaveProperty("max_requests")
      expect((await getToken(zero.id)).max_requests).toBeNull()
      const nul = await createToken(project.id, { max_requests: null })
      expect((await getToken(nul.id)).max_requests).toBeNull()
      const max = await createToken(project.id, { max_requests: 2 ** 31 - 1 })
      expect((await getToken(max.id)).max_requests).toBe(2 ** 31 - 1)
    })

    it("#25 max_requests -1 → 400 max_requests must be >= 0", async () => {
      expectError(
        await api.post("/manage/tokens", { project_id: project.id, duration_minutes: 60, max_requests: -1 }),
        400,
        "max_requests must be >= 0"
      )
    })

    it("#26 duration_minutes missing/0 → 400 required; 525601 → 400 exceeds; 525600 → 201", async () => {
      for (const body of [{ project_id: project.id }, { project_id: project.id, duration_minutes: 0 }]) {
        expectError(await api.post("/manage/tokens", body), 400, "project_id and duration_minutes are required")
      }
      // Duration is checked before project_id: an empty body gets #26's message, not #27's "project_id is required".
      expectError(await api.post("/manage/tokens", {}), 400, "project_id and duration_minutes are required")
      expectError(
        await api.post("/manage/tokens", { project_id: project.id, duration_minutes: 525601 }),
        400,
        "duration_minutes exceeds maximum allowed"
      )
      const year = await createToken(project.id, { duration_minutes: 525600 })
      expectNear(year.expires_at, Date.now() + 525600 * 60_000)
    })

    it("#27 missing project_id → 400 project_id is required; unknown project → 404 project not found", async () => {
      expectError(await api.post("/manage/tokens", { duration_minutes: 60 }), 400, "project_id is required")
      expectError(
        await api.post("/manage/tokens", { project_id: "", duration_minutes: 60 }),
        400,
        "project_id is required"
      )
      expectError(
        await api.post("/manage/tokens", { project_id: UNKNOWN_UUID, duration_minutes: 60 }),
        404,
        "project not found"
      )
    })

    it("#28 inactive project → 403 {error, code: project_inactive}", async () => {
      const p = await createProject()
      await api.patch(`/manage/projects/${p.id}`, { is_active: false })
      const r = await api.post("/manage/tokens", { project_id: p.id, duration_minutes: 60 })
      expectError(r, 403, "cannot create tokens for inactive projects")
      expect(r.json).toEqual({ error: "cannot create tokens for inactive projects", code: "project_inactive" })
      expect((await api.get(`/manage/tokens?project_id=${p.id}`)).json).toEqual([])
    })

    it("#29 GET /manage/tokens: never a raw token, sk-XXXX****XXXX, newest first, every listed field of #29", async () => {
      const p = await createProject()
      const created: Array<{ id: string; token: string }> = []
      for (let i = 0; i < 3; i++) {
        created.push(await createToken(p.id))
        await sleep(3) // created_at has millisecond resolution
      }
      const r = await api.get("/manage/tokens")
      expect(r.status).toBe(200)
      const list = r.json as Array<Record<string, unknown>>
      for (const t of created) {
        expect(r.text).not.toContain(t.token)
        expect(r.text).not.toContain(t.token.slice(3))
      }
      for (const t of list) {
        for (const field of TOKEN_FIELDS) expect(t).toHaveProperty(field)
        expect(t.token).toMatch(TOKEN_HINT_RE)
      }
      const mine = list.filter((t) => t.project_id === p.id)
      expect(mine.map((t) => t.id)).toEqual(created.map((t) => t.id).reverse())
      for (const t of created) {
        const listed = mine.find((x) => x.id === t.id)!
        expect(listed.token).toBe(`sk-${t.token.slice(3, 7)}****${t.token.slice(-4)}`)
        expect(listed).toMatchObject({ is_active: true, request_count: 0, last_used_at: null, cache_hit_count: 0 })
      }
      const dates = list.map((t) => Date.parse(String(t.created_at)))
      expect([...dates].sort((a, b) => b - a)).toEqual(dates)
    })

    it("#30 ?projectId=P, ?project_id=P → only P's tokens; active_only=true drops revoked and expired ones", async () => {
      const p = await createProject()
      const other = await createProject()
      const [live, revoked, expired] = [await createToken(p.id), await createToken(p.id), await createToken(p.id)]
      await createToken(other.id)
      await api.delete(`/manage/tokens/${revoked.id}`)
      const past = new Date(Date.now() - 60_000).toISOString()
      expect((await api.patch(`/manage/tokens/${expired.id}`, { expires_at: past })).status).toBe(200)

      const ids = async (
        query: string
      ) => ((await api.get(`/manage/tokens?${query}`)).json as Array<{ id: string; project_id: string }>)
      for (const query of [`projectId=${p.id}`, `project_id=${p.id}`, `project_id=${p.id.toUpperCase()}`]) {
        const list = await ids(query)
        expect(list.every((t) => t.project_id === p.id)).toBe(true)
        expect(list.map((t) => t.id).sort()).toEqual([live.id, revoked.id, expired.id].sort())
      }
      for (const flag of ["true", "1", "TRUE", "yes"]) {
        expect((await ids(`project_id=${p.id}&active_only=${flag}`)).map((t) => t.id)).toEqual([live.id])
      }
      expect(await ids(`project_id=${p.id}&active_only=false`)).toHaveLength(3)
      expect(await ids(`project_id=${UNKNOWN_UUID}`)).toEqual([])
      const all = await ids("active_only=true")
      expect(all.some((t) => t.id === live.id)).toBe(true)
      expect(all.some((t) => t.id === revoked.id || t.id === expired.id)).toBe(false)
      expectError(await api.get("/manage/tokens?project_id=nope"), 400, "invalid project_id")
      expectError(await api.get("/manage/tokens?projectId=nope"), 400, "invalid project_id")
      expectError(await api.get("/manage/tokens?active_only=maybe"), 400, "active_only must be true or false")
    })

    it("#31 GET /manage/tokens/{id} → the listed shape; unknown → 404; /manage/tokens/ → 400 token ID is required", async () => {
      const t = await createToken(project.id, { max_requests: 3 })
      const got = await api.get(`/manage/tokens/${t.id}`)
      expect(got.status).toBe(200)
      expect(got.text).not.toContain(t.token)
      const listed = ((await api.get(`/manage/tokens?project_id=${project.id}`)).json as Array<{ id: string }>)
        .find((x) => x.id === t.id)
      expect(got.json).toEqual(listed)
      expect(got.json).toMatchObject({ id: t.id, project_id: project.id, max_requests: 3, cache_hit_count: 0 })
      expect((await api.get(`/manage/tokens/${t.id.toUpperCase()}`)).json.id).toBe(t.id)
      expectError(await api.get(`/manage/tokens/${UNKNOWN_UUID}`), 404, "token not found")
      expectError(await api.get("/manage/tokens/"), 400, "token ID is required")
      expectError(await api.get("/manage/tokens/not-a-uuid"), 400, "invalid token id")
      // A raw token is not an id.
      expectError(await api.get(`/manage/tokens/${t.token}`), 400, "invalid token id")
    })

    it("#32 PATCH {} → 400 no fields to update; max_requests 10 → 10; 0 → null; expires_at (RFC 3339) is set", async () => {
      const t = await createToken(project.id)
      expectError(await api.patch(`/manage/tokens/${t.id}`, {}), 400, "no fields to update")
      expect((await api.patch(`/manage/tokens/${t.id}`, { max_requests: 10 })).json.max_requests).toBe(10)
      expect((await api.patch(`/manage/tokens/${t.id}`, { max_requests: 0 })).json.max_requests).toBeNull()
      expect((await api.patch(`/manage/tokens/${t.id}`, { max_requests: 7 })).json.max_requests).toBe(7)
      expect((await api.patch(`/manage/tokens/${t.id}`, { max_requests: null })).json.max_requests).toBeNull()
      const r = await api.patch(`/manage/tokens/${t.id}`, { expires_at: "2031-05-06T07:08:09+02:00" })
      expect(r.status, r.text).toBe(200)
      expect(r.json.expires_at).toBe("2031-05-06T05:08:09.000Z")
      expect(r.text).not.toContain(t.token)
      expect(r.json.token).toMatch(TOKEN_HINT_RE)
      expect(await getToken(t.id)).toEqual(r.json)
      expectError(
        await api.patch(`/manage/tokens/${t.id}`, { expires_at: "tomorrow" }),
        400,
        "expires_at must be an RFC 3339 timestamp"
      )
      // Existence is checked before the fields (#32).
      expectError(await api.patch(`/manage/tokens/${UNKNOWN_UUID}`, {}), 404, "token not found")
      expectError(await api.patch(`/manage/tokens/${UNKNOWN_UUID}`, { max_requests: 1 }), 404, "token not found")
    })

    it("#33 PATCH is_active false then true round-trips on the management side (the proxy half: test/proxy/store.test.ts)", async () => {
      const t = await createToken(project.id)
      const off = await api.patch(`/manage/tokens/${t.id}`, { is_active: false })
      expect(off.status).toBe(200)
      expect(off.json.is_active).toBe(false)
      expectNear(off.json.deactivated_at, Date.now())
      const on = await api.patch(`/manage/tokens/${t.id}`, { is_active: true })
      expect(on.status).toBe(200)
      expect(on.json.is_active).toBe(true)
      expect(on.json).not.toHaveProperty("deactivated_at")
      expect(await getToken(t.id)).toEqual(on.json)
    })

    it("#34 DELETE /manage/tokens/{id} → 204 (idempotent); GET shows is_active false and deactivated_at set", async () => {
      const t = await createToken(project.id)
      const first = await api.delete(`/manage/tokens/${t.id}`)
      expect(first.status).toBe(204)
      expect(first.text).toBe("")
      const revoked = await getToken(t.id)
      expect(revoked.is_active).toBe(false)
      expectNear(revoked.deactivated_at, Date.now())
      await sleep(5)
      expect((await api.delete(`/manage/tokens/${t.id}`)).status).toBe(204)
      // The second revoke keeps the first deactivation time.
      expect(await getToken(t.id)).toEqual(revoked)
      expectError(await api.delete(`/manage/tokens/${UNKNOWN_UUID}`), 404, "token not found")
      expectError(await api.delete("/manage/tokens/not-a-uuid"), 400, "invalid token id")
    })

    it("#35 POST /manage/tokens/{id} → 405 with Allow", async () => {
      const t = await createToken(project.id)
      const r = await api.post(`/manage/tokens/${t.id}`, {})
      expectError(r, 405, "method not allowed")
      expect(r.headers.get("allow")).toBe("GET, PATCH, DELETE")
      expectError(await api.call("PUT", `/manage/tokens/${t.id}`), 405, "method not allowed")
    })
  })

  describe("bad input: always a 400-class JSON error, never a 500, and the data set unchanged", () => {
    let project: Awaited<ReturnType<typeof createProject>>
    let token: { id: string; token: string }
    beforeAll(async () => {
      project = await createProject()
      token = await createToken(project.id)
    })

    interface Case {
      readonly method: string
      readonly path: string
      readonly body?: unknown
      readonly status?: number
      readonly error?: string
    }

    const run = async (cases: ReadonlyArray<Case>) => {
      const before = await api.snapshot()
      // Collected, so one run reports every case that misbehaves.
      const wrong: Array<string> = []
      for (const c of cases) {
        const r = await api.call(c.method, c.path, c.body === undefined ? {} : { body: c.body })
        const request = `${c.method} ${c.path.slice(0, 100)} ${
          String(typeof c.body === "string" ? c.body : JSON.stringify(c.body)).slice(0, 80)
        }`
        const jsonError = (r.headers.get("content-type") ?? "").startsWith("application/json") &&
          typeof r.json?.error === "string"
        if (r.status !== (c.status ?? 400) || !jsonError || (c.error !== undefined && r.json.error !== c.error)) {
          wrong.push(
            `${request} → ${r.status} ${r.text.slice(0, 160)} (expected ${c.status ?? 400} ${c.error ?? "{error}"})`
          )
        }
        expectNoSecret(r)
      }
      expect(wrong).toEqual([])
      expect(await api.snapshot()).toEqual(before)
    }

    it("project create: malformed JSON, non-object bodies, wrong types, unknown fields, over-long values", async () => {
      const ok = { name: uniqueName("bad"), api_key: providerKey() }
      const P = "/manage/projects"
      await run([
        ...[
          "",
          "{",
          "nul",
          "null",
          "[]",
          "[{}]",
          "\"a string\"",
          "42",
          "true",
          "{}x",
          "NaN",
          "{\"name\": NaN}",
          "\uFEFF{}"
        ]
          .map((body): Case => ({ method: "POST", path: P, body })),
        { method: "POST", path: P, body: "null", error: "invalid request body" },
        { method: "POST", path: P, body: "[]", error: "invalid request body" },
        { method: "POST", path: P, body: JSON.stringify([ok]), error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, name: 1 }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, name: true }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, name: ["a"] }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, name: { a: 1 } }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, api_key: 12345678901234 }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, provider: 5 }, error: "invalid request body" },
        { method: "POST", path: P, body: { ...ok, name: null } },
        { method: "POST", path: P, body: { ...ok, extra: 1 }, error: "unknown field \"extra\"" },
        { method: "POST", path: P, body: { ...ok, is_active: false }, error: "unknown field \"is_active\"" },
        {
          method: "POST",
          path: P,
          body: `{"name":"${ok.name}","api_key":"${ok.api_key}","__proto__":{"x":1}}`,
          error: "unknown field \"__proto__\""
        },
        { method: "POST", path: P, body: { ...ok, constructor: "x" }, error: "unknown field \"constructor\"" },
        // A key pasted as a field name is not quoted back (errors are audited).
        { method: "POST", path: P, body: { ...ok, "sk-proj-AbC123xyz789QwErTy456UiOp0": "" }, error: "unknown field" },
        { method: "POST", path: P, body: { ...ok, ["k".repeat(10_000)]: 1 } },
        {
          method: "POST",
          path: P,
          body: { ...ok, name: "n".repeat(1024 * 1024) },
          error: "name must be at most 255 characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, name: "n".repeat(256) },
          error: "name must be at most 255 characters"
        },
        { method: "POST", path: P, body: { ...ok, name: "   " }, error: "name must not be empty" },
        {
          method: "POST",
          path: P,
          body: { ...ok, name: "a\u0000b" },
          error: "name must not contain control characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, name: "line\nbreak" },
          error: "name must not contain control characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, api_key: "k".repeat(4097) },
          error: "api_key must be at most 4096 characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, api_key: "k".repeat(1024 * 1024) },
          error: "api_key must be at most 4096 characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, api_key: "sk has spaces" },
          error: "api_key must not contain whitespace or control characters"
        },
        {
          method: "POST",
          path: P,
          body: { ...ok, api_key: "sk-\u0000-abcdefghijkl" },
          error: "api_key must not contain whitespace or control characters"
        },
        { method: "POST", path: P, body: { ...ok, provider: "nope" }, error: "unknown provider \"nope\"" },
        { method: "POST", path: P, body: { ...ok, provider: "" } },
        // A lone surrogate is valid JSON text but not valid UTF-8.
        { method: "POST", path: P, body: `{"name":"x\\ud800","api_key":"${ok.api_key}","extra":"\\udfff"}` }
      ])
    })

    it("project update and lookup: bad ids (/, %2F, .., unicode, huge), bad bodies", async () => {
      const p = `/manage/projects/${project.id}`
      const ids = [
        "x",
        "a%2Fb",
        "%2F",
        "%00",
        "%E2%82%AC",
        "%F0%9F%98%80",
        encodeURIComponent("ü"),
        "1",
        "-1",
        "1e20",
        "null",
        `${project.id}x`,
        `{${project.id}}`,
        project.id.replaceAll("-", ""),
        "x".repeat(8_000)
      ]
      await run([
        ...ids.flatMap((id): Array<Case> => [
          { method: "GET", path: `/manage/projects/${id}`, error: "invalid project id" },
          { method: "PATCH", path: `/manage/projects/${id}`, body: { name: "x" }, error: "invalid project id" },
          { method: "POST", path: `/manage/projects/${id}/tokens/revoke`, error: "invalid project id" }
        ]),
        { method: "PATCH", path: "/manage/projects/", body: { name: "x" }, error: "invalid project id" },
        { method: "PATCH", path: p, body: "{", error: "invalid request body" },
        { method: "PATCH", path: p, body: "null", error: "invalid request body" },
        { method: "PATCH", path: p, body: "[]", error: "invalid request body" },
        { method: "PATCH", path: p, body: "", error: "invalid request body" },
        { method: "PATCH", path: p, body: { is_active: "false" }, error: "invalid request body" },
        { method: "PATCH", path: p, body: { is_active: 0 }, error: "invalid request body" },
        { method: "PATCH", path: p, body: { is_active: null }, error: "invalid request body" },
        { method: "PATCH", path: p, body: { revoke_tokens: 1, is_active: false }, error: "invalid request body" },
        { method: "PATCH", path: p, body: { name: 5 }, error: "invalid request body" },
        { method: "PATCH", path: p, body: { name: "" }, error: "name must not be empty" },
        {
          method: "PATCH",
          path: p,
          body: { name: "n".repeat(1024 * 1024) },
          error: "name must be at most 255 characters"
        },
        { method: "PATCH", path: p, body: { api_key: "sk-...abcd" }, error: OBFUSCATED_KEY },
        { method: "PATCH", path: p, body: { provider: "nope" }, error: "unknown provider \"nope\"" },
        { method: "PATCH", path: p, body: { id: UNKNOWN_UUID }, error: "unknown field \"id\"" },
        {
          method: "PATCH",
          path: p,
          body: { is_active: false, deactivated_at: null },
          error: "unknown field \"deactivated_at\""
        },
        {
          method: "PATCH",
          path: `/manage/projects/${UNKNOWN_UUID}`,
          body: { name: uniqueName("ghost") },
          status: 404,
          error: "project not found"
        }
      ])
    })

    it("token create: wrong types, negative / huge / fractional numbers, NaN-like strings, unknown fields", async () => {
      const T = "/manage/tokens"
      const base = { project_id: project.id, duration_minutes: 60 }
      await run([
        { method: "POST", path: T, body: "null", error: "invalid request body" },
        { method: "POST", path: T, body: "[]", error: "invalid request body" },
        { method: "POST", path: T, body: "{", error: "invalid request body" },
        { method: "POST", path: T, body: JSON.stringify([base]), error: "invalid request body" },
        {
          method: "POST",
          path: T,
          body: `{"project_id":"${project.id}","duration_minutes":NaN}`,
          error: "invalid request body"
        },
        {
          method: "POST",
          path: T,
          body: `{"project_id":"${project.id}","duration_minutes":Infinity}`,
          error: "invalid request body"
        },
        { method: "POST", path: T, body: { ...base, duration_minutes: "60" }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, duration_minutes: "NaN" }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, duration_minutes: "Infinity" }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, duration_minutes: true }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, duration_minutes: [60] }, error: "invalid request body" },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: 1e20 },
          error: "duration_minutes exceeds maximum allowed"
        },
        { method: "POST", path: T, body: `{"project_id":"${project.id}","duration_minutes":1e400}` },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: 2 ** 53 + 2 },
          error: "duration_minutes exceeds maximum allowed"
        },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: -1 },
          error: "project_id and duration_minutes are required"
        },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: -1e20 },
          error: "project_id and duration_minutes are required"
        },
        {
          method: "POST",
          path: T,
          body: `{"project_id":"${project.id}","duration_minutes":-0}`,
          error: "project_id and duration_minutes are required"
        },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: 1.5 },
          error: "duration_minutes must be an integer"
        },
        {
          method: "POST",
          path: T,
          body: { ...base, duration_minutes: null },
          error: "project_id and duration_minutes are required"
        },
        { method: "POST", path: T, body: { ...base, max_requests: -1 }, error: "max_requests must be >= 0" },
        { method: "POST", path: T, body: { ...base, max_requests: -1e20 }, error: "max_requests must be >= 0" },
        {
          method: "POST",
          path: T,
          body: { ...base, max_requests: 2 ** 31 },
          error: "max_requests must be <= 2147483647"
        },
        { method: "POST", path: T, body: { ...base, max_requests: 1e20 }, error: "max_requests must be <= 2147483647" },
        { method: "POST", path: T, body: { ...base, max_requests: 1.5 }, error: "max_requests must be an integer" },
        { method: "POST", path: T, body: { ...base, max_requests: "5" }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, max_requests: "NaN" }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, max_requests: false }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, project_id: 1 }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, project_id: [project.id] }, error: "invalid request body" },
        { method: "POST", path: T, body: { ...base, project_id: "not-a-uuid" }, error: "invalid project_id" },
        { method: "POST", path: T, body: { ...base, project_id: `${project.id}\u0000` }, error: "invalid project_id" },
        { method: "POST", path: T, body: { ...base, project_id: "ü".repeat(100_000) }, error: "invalid project_id" },
        { method: "POST", path: T, body: { ...base, projectId: project.id }, error: "unknown field \"projectId\"" },
        {
          method: "POST",
          path: T,
          body: { ...base, expires_at: "2030-01-01T00:00:00Z" },
          error: "unknown field \"expires_at\""
        },
        {
          method: "POST",
          path: T,
          body: { ...base, project_id: UNKNOWN_UUID },
          status: 404,
          error: "project not found"
        }
      ])
    })

    it("token update, lookup and revoke: bad ids and bad bodies", async () => {
      const t = `/manage/tokens/${token.id}`
      const ids = [
        "x",
        "a%2Fb",
        "%2F",
        "%00",
        "%E2%82%AC",
        encodeURIComponent("ü"),
        "-1",
        "1e20",
        `${token.id}x`,
        token.id.replaceAll("-", ""),
        token.token,
        "x".repeat(8_000)
      ]
      await run([
        ...ids.flatMap((id): Array<Case> => [
          { method: "GET", path: `/manage/tokens/${id}`, error: "invalid token id" },
          { method: "PATCH", path: `/manage/tokens/${id}`, body: { is_active: false }, error: "invalid token id" },
          { method: "DELETE", path: `/manage/tokens/${id}`, error: "invalid token id" }
        ]),
        { method: "PATCH", path: "/manage/tokens/", body: { is_active: false }, error: "token ID is required" },
        { method: "DELETE", path: "/manage/tokens/", error: "token ID is required" },
        { method: "PATCH", path: t, body: "{", error: "invalid request body" },
        { method: "PATCH", path: t, body: "null", error: "invalid request body" },
        { method: "PATCH", path: t, body: "[]", error: "invalid request body" },
        { method: "PATCH", path: t, body: "", error: "invalid request body" },
        { method: "PATCH", path: t, body: { is_active: "false" }, error: "invalid request body" },
        { method: "PATCH", path: t, body: { is_active: null }, error: "invalid request body" },
        { method: "PATCH", path: t, body: { max_requests: "10" }, error: "invalid request body" },
        { method: "PATCH", path: t, body: { max_requests: -1 }, error: "max_requests must be >= 0" },
        { method: "PATCH", path: t, body: { max_requests: 2 ** 31 }, error: "max_requests must be <= 2147483647" },
        { method: "PATCH", path: t, body: { max_requests: 1e20 }, error: "max_requests must be <= 2147483647" },
        { method: "PATCH", path: t, body: { max_requests: 1.5 }, error: "max_requests must be an integer" },
        { method: "PATCH", path: t, body: `{"max_requests":NaN}`, error: "invalid request body" },
        { method: "PATCH", path: t, body: { expires_at: 123 }, error: "invalid request body" },
        ...[
          "",
          "tomorrow",
          "2030-01-01",
          "2030-01-01 00:00:00Z",
          "2030-13-01T00:00:00Z",
          "2030-01-01T25:00:00Z",
          "2030-01-01T00:00:00+99:99",
          "10000-01-01T00:00:00Z",
          "9999-12-31T23:59:59-23:59",
          "0000-01-01T00:00:00Z",
          "0000-01-01T00:00:00+01:00",
          "NaN",
          "2030-01-01T00:00:00Z\u0000"
        ].map((expires_at): Case => ({
          method: "PATCH",
          path: t,
          body: { expires_at },
          error: "expires_at must be an RFC 3339 timestamp"
        })),
        { method: "PATCH", path: t, body: { token: "sk-x" }, error: "unknown field \"token\"" },
        {
          method: "PATCH",
          path: t,
          body: { is_active: true, request_count: 0 },
          error: "unknown field \"request_count\""
        },
        { method: "PATCH", path: t, body: {}, error: "no fields to update" }
      ])
    })

    it("token list: bad query parameters", async () => {
      await run([
        { method: "GET", path: "/manage/tokens?project_id=x", error: "invalid project_id" },
        { method: "GET", path: `/manage/tokens?project_id=${project.id}%00`, error: "invalid project_id" },
        { method: "GET", path: "/manage/tokens?projectId=%E2%82%AC", error: "invalid project_id" },
        { method: "GET", path: "/manage/tokens?active_only=2", error: "active_only must be true or false" },
        {
          method: "GET",
          path: `/manage/tokens?project_id=${project.id}&project_id=${UNKNOWN_UUID}`,
          error: "invalid parameter \"project_id\""
        },
        {
          method: "GET",
          path: `/manage/tokens?projectId=${project.id}&projectId=${project.id}`,
          error: "invalid parameter \"projectId\""
        },
        {
          method: "GET",
          path: "/manage/tokens?active_only=true&active_only=false",
          error: "invalid parameter \"active_only\""
        }
      ])
    })

    it("paths fetch would normalise: raw `..`, `.`, `//` and malformed percent-escapes", async () => {
      const before = await api.snapshot()
      const cases: ReadonlyArray<readonly [string, string, number, string | undefined]> = [
        ["GET", "/manage/projects/..", 400, "invalid project id"],
        ["GET", "/manage/projects/.", 400, "invalid project id"],
        ["PATCH", "/manage/projects/..", 400, "invalid project id"],
        ["GET", "/manage/tokens/..", 400, "invalid token id"],
        ["DELETE", "/manage/tokens/..", 400, "invalid token id"],
        ["DELETE", "/manage/tokens/../tokens", 400, "invalid token id"],
        ["GET", "/manage/projects/../tokens", 400, "invalid path"],
        ["GET", `/manage/projects/${project.id}/..`, 400, "invalid path"],
        ["GET", "/manage/projects//tokens/revoke", 400, "invalid project id"],
        ["GET", "/manage/projects/%", 400, "invalid project id"],
        ["GET", "/manage/projects/%E0%A4%A", 400, "invalid project id"],
        ["PATCH", "/manage/projects/%ZZ", 400, "invalid project id"],
        ["POST", "/manage/projects/%/tokens/revoke", 400, "invalid project id"],
        ["GET", "/manage/tokens/%", 400, "invalid token id"],
        ["PATCH", "/manage/tokens/%C0%AF", 400, "invalid token id"],
        ["DELETE", "/manage/tokens/%ZZ", 400, "invalid token id"],
        ["GET", "/manage/../manage/projects", 404, undefined],
        ["GET", "/manage/tokens?project_id=%ZZ", 400, "invalid project_id"]
      ]
      const wrong: Array<string> = []
      for (const [method, path, status, error] of cases) {
        const r = await api.raw(method, path)
        const jsonError = (r.headers.get("content-type") ?? "").startsWith("application/json") &&
          typeof r.json?.error === "string"
        if (r.status !== status || !jsonError || (error !== undefined && r.json.error !== error)) {
          wrong.push(
            `${method} ${path} → ${r.status} ${r.text.slice(0, 160)} (expected ${status} ${error ?? "{error}"})`
          )
        }
      }
      expect(wrong).toEqual([])
      expect(await api.snapshot()).toEqual(before)
    })

    it("body size: 1 MB values → 400 from validation; a 3 MB body → 413 JSON, with or without Content-Length", async () => {
      const before = await api.snapshot()
      const mb = { name: "n".repeat(1024 * 1024), api_key: providerKey() }
      expectError(await api.post("/manage/projects", mb), 400, "name must be at most 255 characters")
      const huge = JSON.stringify({ name: "n".repeat(3 * 1024 * 1024), api_key: providerKey() })
      expectError(await api.post("/manage/projects", huge), 413)
      expectError(await api.patch(`/manage/projects/${project.id}`, huge), 413)
      expectError(await api.post("/manage/tokens", huge), 413)
      expectError(await api.patch(`/manage/tokens/${token.id}`, huge), 413)
      // Chunked: no Content-Length, so the limit is found while reading.
      const chunk = "x".repeat(64 * 1024)
      const chunked = await api.raw("POST", "/manage/projects", { chunks: Array.from({ length: 48 }, () => chunk) })
      expectError(chunked, 413)
      // Just under the limit is read and validated normally.
      const under = JSON.stringify({ name: "n".repeat(2 * 1024 * 1024 - 100), api_key: providerKey() })
      expectError(await api.post("/manage/projects", under), 400, "name must be at most 255 characters")
      // The connection pool is still usable afterwards.
      expect((await api.get("/manage/projects")).status).toBe(200)
      expect(await api.snapshot()).toEqual(before)
    })
  })

  describe("property: random payloads at every endpoint", () => {
    const tried: Record<string, number> = {}
    const outcomes: Record<string, Record<string, number>> = {}
    let fixtures: {
      projects: Array<{ id: string; key: string }>
      /** Left active (no PATCH targets it), so token creation can succeed. */
      active: { id: string; key: string }
      tokens: Array<{ id: string; token: string }>
    }

    beforeAll(async () => {
      const projects = [await createProject(), await createProject()]
      const active = await createProject()
      const tokens = [await createToken(projects[0]!.id), await createToken(projects[1]!.id, { max_requests: 5 })]
      fixtures = { projects, active, tokens }
    })

    afterAll(() => {
      const line = Object.entries(tried)
        .map(([k, n]) => `${k}=${n} (${Object.entries(outcomes[k] ?? {}).map(([s, c]) => `${s}:${c}`).join(" ")})`)
        .join(", ")
      console.log(`[management API on ${backend.name}] property inputs tried: ${line}`)
    })

    const RUNS = 150

    // Values that tend to break parsers and validators, mixed with anything at all.
    const nasty = fc.constantFrom<unknown>(
      1e20,
      -1,
      2 ** 31,
      2 ** 31 - 1,
      2 ** 53,
      0,
      -0,
      1.5,
      525600,
      525601,
      60,
      "NaN",
      "Infinity",
      "-1",
      "60",
      "",
      " ",
      "true",
      "null",
      null,
      true,
      false,
      [],
      {},
      "\u0000",
      "\ud800",
      "sk-...abcd",
      "****",
      "openai",
      "x".repeat(300),
      "2030-01-01T00:00:00Z",
      "0000-01-01T00:00:00Z",
      "9999-12-31T23:59:59Z",
      "1970-01-01T00:00:00+14:00"
    )
    const value = fc.oneof(
      { arbitrary: nasty, weight: 3 },
      { arbitrary: fc.anything(), weight: 2 },
      { arbitrary: fc.string(), weight: 2 },
      { arbitrary: fc.string({ unit: "binary", maxLength: 40 }), weight: 1 },
      { arbitrary: fc.integer(), weight: 1 },
      { arbitrary: fc.double(), weight: 1 },
      { arbitrary: fc.boolean(), weight: 1 },
      { arbitrary: fc.uuid(), weight: 1 },
      { arbitrary: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()), weight: 1 }
    )
    // Right keys with values that are often plausible, so a share of requests is accepted too.
    const keyed = (keys: ReadonlyArray<string>, extra: Record<string, fc.Arbitrary<unknown>> = {}) =>
      fc.tuple(
        fc.record(
          Object.fromEntries(
            keys.map((
              k
            ) => [k, extra[k] ? fc.oneof({ arbitrary: extra[k]!, weight: 3 }, { arbitrary: value, weight: 1 }) : value])
          ),
          { requiredKeys: [] }
        ),
        fc.option(fc.dictionary(fc.string({ maxLength: 12 }), value, { maxKeys: 2 }), { freq: 6 })
      ).map(([known, more]) => JSON.stringify({ ...(more ?? {}), ...known }))
    const plausibleName = fc.string({ unit: "binary", minLength: 1, maxLength: 260 })
    const plausibleKey = fc.oneof(
      fc.string({
        unit: fc.constantFrom(..."abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.*"),
        minLength: 0,
        maxLength: 60
      }),
      fc.string({ minLength: 1, maxLength: 30 })
    )
    // Every key present, each from its plausible generator when there is one.
    const complete = (keys: ReadonlyArray<string>, extra: Record<string, fc.Arbitrary<unknown>>) =>
      fc.record(Object.fromEntries(keys.map((k) => [k, extra[k] ?? value]))).map((b) => JSON.stringify(b))
    const body = (keys: ReadonlyArray<string>, extra?: Record<string, fc.Arbitrary<unknown>>) =>
      fc.oneof(
        { arbitrary: keyed(keys, extra), weight: 4 },
        { arbitrary: extra ? complete(keys, extra) : keyed(keys), weight: extra ? 3 : 1 },
        { arbitrary: fc.anything().map((v) => JSON.stringify(v) as string | undefined), weight: 2 },
        { arbitrary: fc.json(), weight: 2 },
        { arbitrary: fc.string(), weight: 1 },
        {
          arbitrary: fc.constantFrom<string | undefined>(
            undefined,
            "",
            "null",
            "[]",
            "{",
            "{}",
            "\"x\"",
            "1e999",
            "NaN",
            "{\"a\":}"
          ),
          weight: 1
        }
      )
    const idText = fc.oneof(
      { arbitrary: fc.uuid(), weight: 2 },
      { arbitrary: fc.string(), weight: 2 },
      { arbitrary: fc.string({ unit: "grapheme", maxLength: 20 }), weight: 1 },
      {
        arbitrary: fc.constantFrom(
          "..",
          ".",
          "%2F",
          "%2e%2e",
          "a/b",
          "%",
          "%00",
          "%ZZ",
          "",
          "ü",
          "0",
          "-1",
          "1e20",
          "null",
          "undefined",
          "?x=1",
          "#frag",
          "x".repeat(5000)
        ),
        weight: 2
      }
    )

    type Request = { readonly method: string; readonly path: string; readonly body?: string | undefined }

    /** Sends one request and checks the invariants; keeps the last snapshot between runs. */
    const checker = (name: string) => {
      tried[name] = 0
      outcomes[name] = {}
      let last: Awaited<ReturnType<Client["snapshot"]>> | undefined
      return async (req: Request) => {
        tried[name]!++
        last ??= await api.snapshot()
        const r = await api.call(req.method, req.path, req.body === undefined ? {} : { body: req.body })
        const bucket = `${Math.floor(r.status / 100)}xx`
        outcomes[name]![bucket] = (outcomes[name]![bucket] ?? 0) + 1
        const where = `${req.method} ${req.path.slice(0, 120)} ${String(req.body).slice(0, 200)} → ${r.status} ${
          r.text.slice(0, 200)
        }`
        expect(r.status, where).toBeLessThan(500)
        expect(r.headers.get("x-request-id"), where).toBeTruthy()
        for (const p of [...fixtures.projects, fixtures.active]) expect(r.text.includes(p.key), where).toBe(false)
        for (const t of fixtures.tokens) expect(r.text.includes(t.token), where).toBe(false)
        if (r.status >= 400) {
          expect(r.headers.get("content-type") ?? "", where).toMatch(/^application\/json/)
          expect(typeof r.json?.error, where).toBe("string")
          const now = await api.snapshot()
          expect(now, `data set changed by a rejected request: ${where}`).toEqual(last)
        } else {
          if (r.status !== 204) expect(r.json, where).not.toBeUndefined()
          last = await api.snapshot()
        }
      }
    }

    const property = (name: string, arb: fc.Arbitrary<Request>) =>
      it(`${name}: status < 500, JSON {error} on 4xx, rejected requests change nothing`, async () => {
        const check = checker(name)
        await fc.assert(fc.asyncProperty(arb, check), { numRuns: RUNS, endOnFailure: true })
      }, 60_000)

    const pathId = (extraIds: () => ReadonlyArray<string>) =>
      fc.tuple(
        fc.oneof({ arbitrary: idText, weight: 3 }, { arbitrary: fc.constant(null), weight: 2 }),
        fc.nat(),
        fc.boolean(),
        fc.boolean()
      ).map(([text, pick, encode, upper]) => {
        if (text === null) {
          const ids = extraIds()
          const id = ids[pick % ids.length]!
          return upper ? id.toUpperCase() : id
        }
        return encode ? encodeURIComponent(text) : text
      })

    const projectIds = () => fixtures.projects.map((p) => p.id)
    const tokenIds = () => fixtures.tokens.map((t) => t.id)
    const fixtureProjectId = fc.nat().map((i) => [...projectIds(), fixtures.active.id, fixtures.active.id][i % 4]!)

    property(
      "POST /manage/projects",
      body(["name", "api_key", "provider"], {
        name: plausibleName,
        api_key: plausibleKey,
        provider: fc.constantFrom("openai", "openai", "openai", "OpenAI", "anthropic", "")
      }).map((b) => ({ method: "POST", path: "/manage/projects", body: b }))
    )
    property(
      "PATCH /manage/projects/{id}",
      fc.tuple(
        pathId(projectIds),
        body(["name", "api_key", "provider", "is_active", "revoke_tokens"], {
          name: plausibleName,
          api_key: plausibleKey,
          provider: fc.constantFrom("openai", "openai", "nope"),
          is_active: fc.boolean(),
          revoke_tokens: fc.boolean()
        })
      ).map(([id, b]) => ({ method: "PATCH", path: `/manage/projects/${id}`, body: b }))
    )
    property(
      "GET /manage/projects/{id}",
      pathId(projectIds).map((id) => ({ method: "GET", path: `/manage/projects/${id}` }))
    )
    property(
      "POST /manage/projects/{id}/tokens/revoke",
      fc.tuple(pathId(projectIds), body([])).map(([id, b]) => ({
        method: "POST",
        path: `/manage/projects/${id}/tokens/revoke`,
        body: b
      }))
    )
    property(
      "POST /manage/tokens",
      body(["project_id", "duration_minutes", "max_requests"], {
        project_id: fixtureProjectId,
        duration_minutes: fc.oneof(fc.integer({ min: -10, max: 600_000 }), fc.integer({ min: 1, max: 100 })),
        max_requests: fc.oneof(fc.integer({ min: -5, max: 100 }), fc.constantFrom(null, 2 ** 31 - 1, 2 ** 31))
      }).map((b) => ({ method: "POST", path: "/manage/tokens", body: b }))
    )
    property(
      "GET /manage/tokens?query",
      fc.tuple(
        fc.option(fc.oneof(idText, fixtureProjectId)),
        fc.option(fc.oneof(idText, fixtureProjectId)),
        fc.option(fc.oneof(fc.string(), fc.constantFrom("true", "false", "1", "0", "yes", "no", "TRUE"))),
        fc.boolean()
      ).map(([a, b, c, encode]) => {
        const e = (s: string) => (encode ? encodeURIComponent(s) : s)
        const q = [
          ...(a !== null ? [`project_id=${e(a)}`] : []),
          ...(b !== null ? [`projectId=${e(b)}`] : []),
          ...(c !== null ? [`active_only=${e(c)}`] : [])
        ]
        return { method: "GET", path: `/manage/tokens?${q.join("&")}` }
      })
    )
    property(
      "GET /manage/tokens/{id}",
      pathId(tokenIds).map((id) => ({ method: "GET", path: `/manage/tokens/${id}` }))
    )
    property(
      "PATCH /manage/tokens/{id}",
      fc.tuple(
        pathId(tokenIds),
        body(["is_active", "max_requests", "expires_at"], {
          is_active: fc.boolean(),
          max_requests: fc.integer({ min: -5, max: 2 ** 31 + 5 }),
          expires_at: fc.date({
            min: new Date(-70_000_000_000_000),
            max: new Date(300_000_000_000_000),
            noInvalidDate: true
          })
            .chain((d) =>
              fc.constantFrom(
                d.toISOString(),
                d.toISOString().replace("Z", "+01:00"),
                d.toISOString().slice(0, 19) + "-12:00"
              )
            )
        })
      ).map(([id, b]) => ({ method: "PATCH", path: `/manage/tokens/${id}`, body: b }))
    )
    property(
      "DELETE /manage/tokens/{id}",
      pathId(tokenIds).map((id) => ({ method: "DELETE", path: `/manage/tokens/${id}` }))
    )
    property(
      "any method on any /manage path",
      fc.tuple(
        fc.constantFrom("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"),
        fc.constantFrom(
          "projects",
          "tokens",
          "projects/{p}",
          "tokens/{t}",
          "projects/{p}/tokens/revoke",
          "{x}",
          "projects/{x}",
          "tokens/{x}",
          "projects/{p}/{x}",
          "tokens/{t}/{x}"
        ),
        pathId(projectIds),
        pathId(tokenIds),
        idText.map(encodeURIComponent),
        body(["name", "api_key", "project_id", "duration_minutes", "is_active"])
      ).map(([method, shape, p, t, x, b]) => ({
        method,
        path: `/manage/${shape.replace("{p}", p).replace("{t}", t).replace("{x}", x)}`,
        body: method === "GET" ? undefined : b
      }))
    )
  })

  describe("health, probes, request ids, OpenAPI", () => {
    it("GET /health → 200 JSON: status ok, database up, driver name", async () => {
      const r = await api.get("/health", { auth: null })
      expect(r.status).toBe(200)
      expect(r.headers.get("content-type")).toMatch(/^application\/json/)
      expect(r.json).toMatchObject({
        status: "ok",
        version: expect.any(String),
        checks: { database: { status: "up", driver: backend.name } }
      })
      expectNear(r.json.timestamp, Date.now())
    })

    it("GET /ready → 200 ready; GET /live → 200 alive", async () => {
      const ready = await api.get("/ready", { auth: null })
      expect([ready.status, ready.text]).toEqual([200, "ready"])
      const live = await api.get("/live", { auth: null })
      expect([live.status, live.text]).toEqual([200, "alive"])
    })

    it("every response carries x-request-id; a safe client value is kept, anything else replaced", async () => {
      for (
        const r of [
          await api.get("/manage/projects"),
          await api.get("/nope"),
          await api.delete("/manage/projects/x"),
          await api.get("/live")
        ]
      ) {
        expect(r.headers.get("x-request-id")).toBeTruthy()
      }
      expect((await api.get("/live", { headers: { "x-request-id": "abc-123.X_y:z" } })).headers.get("x-request-id"))
        .toBe("abc-123.X_y:z")
      for (const bad of ["a b", "x".repeat(129), "<script>", "é"]) {
        const r = await api.get("/live", { headers: { "x-request-id": bad } })
        expect(r.headers.get("x-request-id")).toMatch(UUID7_RE)
      }
      const a = (await api.get("/live")).headers.get("x-request-id")
      const b = (await api.get("/live")).headers.get("x-request-id")
      expect(a).not.toBe(b)
    })

    it("GET /manage/openapi.json is an OpenAPI 3.1 document with our paths and bearer security", async () => {
      const r = await api.get("/manage/openapi.json", { auth: null })
      expect(r.status).toBe(200)
      expect(r.headers.get("content-type")).toMatch(/^application\/json/)
      const doc = r.json
      expect(doc.openapi).toMatch(/^3\.1\./)
      expect(doc.info).toMatchObject({ title: expect.any(String), version: expect.any(String) })
      // Other groups (audit, cache, …) add their own paths; these are the projects, tokens, usage and session ones.
      expect(Object.keys(doc.paths)).toEqual(expect.arrayContaining(
        [
          "/manage/projects",
          "/manage/projects/{id}",
          "/manage/projects/{id}/tokens/revoke",
          "/manage/tokens",
          "/manage/tokens/{id}",
          "/manage/session",
          "/manage/usage"
        ]
      ))
      expect(Object.keys(doc.paths["/manage/projects"]).sort()).toEqual(["get", "post"])
      expect(Object.keys(doc.paths["/manage/projects/{id}"]).sort()).toEqual(["get", "patch"])
      expect(Object.keys(doc.paths["/manage/projects/{id}/tokens/revoke"])).toEqual(["post"])
      expect(Object.keys(doc.paths["/manage/tokens"]).sort()).toEqual(["get", "post"])
      expect(Object.keys(doc.paths["/manage/tokens/{id}"]).sort()).toEqual(["delete", "get", "patch"])
      expect(doc.paths["/manage/projects"].post.responses).toHaveProperty("201")
      expect(doc.paths["/manage/projects"].post.responses).toHaveProperty("409")
      expect(doc.paths["/manage/tokens"].post.responses).toHaveProperty("201")
      expect(doc.paths["/manage/tokens/{id}"].delete.responses).toHaveProperty("204")
      const listParams = (doc.paths["/manage/tokens"].get.parameters as Array<{ name: string }>).map((p) => p.name)
        .sort()
      expect(listParams).toEqual([
        "active_only",
        "cursor",
        "name",
        "page_size",
        "projectId",
        "project_id",
        "search",
        "status",
        "user"
      ])
      expect(Object.keys(doc.paths["/manage/tokens/counts"])).toEqual(["get"])
      expect(doc.components.securitySchemes).toMatchObject({ bearer: { type: "http", scheme: "bearer" } })
      for (
        const schema of [
          "Project",
          "Token",
          "CreateProject",
          "UpdateProject",
          "CreateToken",
          "UpdateToken",
          "BulkRevokeResult"
        ]
      ) {
        expect(doc.components.schemas).toHaveProperty(schema)
      }
      const created = doc.paths["/manage/tokens"].post.responses["201"].content["application/json"].schema
      expect(created.required).toEqual(["id", "token", "project_id", "expires_at"])
      // Errors are documented with the contract's shape.
      expect(doc.components.schemas.BadRequest.required).toEqual(["error"])
    })

    it("GET /manage/docs serves the Swagger UI as HTML", async () => {
      const r = await api.get("/manage/docs", { auth: null })
      expect(r.status).toBe(200)
      expect(r.headers.get("content-type")).toMatch(/^text\/html/)
      expect(r.text).toMatch(/<html/i)
      expect(r.text.toLowerCase()).toContain("swagger")
    })
  })

  describe("secrets at rest", () => {
    it("tokens are stored only as their SHA-256; without ENCRYPTION_KEY the provider key is stored as given", async () => {
      const p = await createProject()
      const t = await createToken(p.id)
      const row = (await instance.rows("tokens")).find((r) => r.id === t.id)!
      expect(row.token_hash).toBe(sha256(t.token))
      expect(String(row.token_hash)).toMatch(/^[0-9a-f]{64}$/)
      for (const v of Object.values(row)) expect(String(v)).not.toContain(t.token.slice(3))
      const project = (await instance.rows("projects")).find((r) => r.id === p.id)!
      expect(project.api_key).toBe(p.key)
    })

    it("with ENCRYPTION_KEY the api_key column is enc:v1:… without the plaintext; no column holds a raw token", async () => {
      const encrypted = await backend.create()
      const s = await startServer(testConfig(encrypted.database, withEncryptionKey(randomBytes(32).toString("base64"))))
      try {
        const client = new Client(s.url, s.token)
        const key = providerKey()
        const created = await client.post("/manage/projects", { name: uniqueName("enc"), api_key: key })
        expect(created.status).toBe(201)
        expect(created.json.api_key).toBe(hintOf(key))
        const tokens: Array<string> = []
        for (let i = 0; i < 3; i++) {
          const t = await client.post("/manage/tokens", { project_id: created.json.id, duration_minutes: 5 })
          expect(t.status).toBe(201)
          tokens.push(t.json.token)
        }

        const projects = await encrypted.rows("projects")
        expect(projects).toHaveLength(1)
        const stored = String(projects[0]!.api_key)
        expect(stored.startsWith("enc:v1:")).toBe(true)
        expect(stored).not.toContain(key)
        expect(stored).not.toContain(key.slice(8, -4))
        expect(projects[0]!.api_key_hint).toBe(hintOf(key))

        const rows = await encrypted.rows("tokens")
        expect(rows.map((r) => r.token_hash).sort()).toEqual(tokens.map(sha256).sort())
        for (const row of [...rows, ...projects]) {
          for (const v of Object.values(row)) {
            for (const t of tokens) {
              expect(String(v)).not.toContain(t)
              expect(String(v)).not.toContain(t.slice(3))
            }
          }
        }
        for (const row of rows) expect(String(row.token_hash)).toMatch(/^[0-9a-f]{64}$/)

        // Rotating the key re-encrypts (fresh nonce), and GET still only shows the hint.
        const next = providerKey()
        const patched = await client.patch(`/manage/projects/${created.json.id}`, { api_key: next })
        expect(patched.status).toBe(200)
        expect(patched.text).not.toContain(next)
        const after = String((await encrypted.rows("projects"))[0]!.api_key)
        expect(after.startsWith("enc:v1:")).toBe(true)
        expect(after).not.toBe(stored)
        expect(after).not.toContain(next)
        expect((await client.get(`/manage/projects/${created.json.id}`)).json.api_key).toBe(hintOf(next))
        // A rename leaves the stored ciphertext alone.
        expect((await client.patch(`/manage/projects/${created.json.id}`, { name: uniqueName("enc2") })).status).toBe(
          200
        )
        expect(String((await encrypted.rows("projects"))[0]!.api_key)).toBe(after)
      } finally {
        await s.close()
        await encrypted.cleanup()
      }
    })
  })
}

for (const backend of backends) {
  describe(`management API on ${backend.name}`, () => managementSuite(backend))
}

if (!postgresUrl) {
  describe.skip("management API on postgres (skipped: DATABASE_URL not set)", () => {
    it("runs the same management API suite against PostgreSQL", () => {})
  })
}
