/**
 * What the admin UI needs from the server, on SQLite and PostgreSQL: the session login (cookie + CSRF), project
 * search and pagination, the per-hour usage series, and the static files under /admin.
 */
import { Effect } from "effect"
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { loadAdminAssets } from "../../src/http/AdminUi.js"
import { databaseLayer } from "../../src/Layers.js"
import { type HourlyUsage, Store } from "../../src/store/Store.js"
import { chatCompletion, json, type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type Backend, type BackendInstance, backends, Client } from "./harness.js"

const HOUR = 3_600_000

const cookieOf = (r: { headers: Headers }) => r.headers.getSetCookie().find((c) => c.startsWith("llm_proxy_session="))

function adminSuite(backend: Backend) {
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

  const login = async (headers: Record<string, string> = {}) => {
    const r = await api.post("/manage/session", { token: server.token }, { auth: null, headers })
    expect(r.status, r.text).toBe(200)
    const cookie = cookieOf(r)!
    return { reply: r, cookie, pair: cookie.split(";")[0]!, csrf: r.json.csrf_token as string }
  }

  describe("session login", () => {
    it("rejects a wrong or empty token with 401 and sets no cookie", async () => {
      for (const token of ["wrong", "", server.token + "x"]) {
        const r = await api.post("/manage/session", { token }, { auth: null })
        expect(r.status).toBe(401)
        expect(r.json).toEqual({ error: "invalid management token" })
        expect(cookieOf(r)).toBeUndefined()
      }
      expect((await api.post("/manage/session", "not json", { auth: null })).status).toBe(400)
    })

    it("sets an HttpOnly SameSite=Strict cookie scoped to /manage that does not contain the token", async () => {
      const { reply, cookie, csrf } = await login()
      expect(cookie).toMatch(/; HttpOnly/)
      expect(cookie).toMatch(/; SameSite=Strict/)
      expect(cookie).toMatch(/; Path=\/manage/)
      expect(cookie).not.toMatch(/; Secure/)
      expect(cookie).not.toMatch(/Max-Age|Expires/) // a session cookie
      expect(cookie).not.toContain(server.token)
      expect(csrf).toMatch(/^[A-Za-z0-9_-]{43}$/)
      expect(Date.parse(reply.json.expires_at)).toBeGreaterThan(Date.now())
      expect(reply.headers.get("cache-control")).toBe("no-store")
    })

    it("marks the cookie Secure behind an HTTPS proxy", async () => {
      const { cookie } = await login({ "x-forwarded-proto": "https" })
      expect(cookie).toMatch(/; Secure/)
    })

    it("authenticates reads with the cookie and writes only with the session's CSRF token", async () => {
      const { pair, csrf } = await login()
      const other = await login()
      const asUi = (extra: Record<string, string> = {}) => ({ auth: null, headers: { cookie: pair, ...extra } })
      expect((await api.get("/manage/session", asUi())).json).toMatchObject({ authenticated: true, csrf_token: csrf })
      expect((await api.get("/manage/projects", asUi())).status).toBe(200)
      const body = { name: `ui-${crypto.randomUUID()}`, api_key: "sk-ui-key" }
      const noCsrf = await api.post("/manage/projects", body, asUi())
      expect(noCsrf.status).toBe(403)
      expect(noCsrf.json).toEqual({ error: "missing or invalid CSRF token", code: "csrf_failed" })
      // Another session's CSRF token does not do.
      expect((await api.post("/manage/projects", body, asUi({ "x-csrf-token": other.csrf }))).status).toBe(403)
      expect((await api.delete("/manage/projects/whatever", asUi())).status).toBe(403) // the 405 path checks too
      const ok = await api.post("/manage/projects", body, asUi({ "x-csrf-token": csrf }))
      expect(ok.status, ok.text).toBe(201)
      // Bearer clients are unaffected by cookies, and a bad bearer is not rescued by a good cookie.
      expect(
        (await api.post("/manage/projects", { ...body, name: `${body.name}-2` }, { headers: { cookie: pair } })).status
      ).toBe(201)
      expect((await api.get("/manage/projects", { auth: "Bearer wrong", headers: { cookie: pair } })).status).toBe(401)
    })

    it("logout needs the session's CSRF token: without it (another site's request) the session lives on", async () => {
      const { pair, csrf } = await login()
      const other = await login()
      for (
        const headers of [{ cookie: pair }, { cookie: pair, "x-csrf-token": other.csrf }, {
          cookie: pair,
          "x-csrf-token": ""
        }]
      ) {
        const refused = await api.delete("/manage/session", { auth: null, headers })
        expect(refused.status).toBe(403)
        expect(refused.json).toEqual({ error: "missing or invalid CSRF token", code: "csrf_failed" })
        expect(cookieOf(refused)).toBeUndefined()
      }
      expect((await api.get("/manage/session", { auth: null, headers: { cookie: pair } })).json).toMatchObject({
        authenticated: true,
        csrf_token: csrf
      })
    })

    it("logout ends the session on the server: the old cookie is refused afterwards", async () => {
      const { pair, csrf } = await login()
      const out = await api.delete("/manage/session", { auth: null, headers: { cookie: pair, "x-csrf-token": csrf } })
      expect(out.status).toBe(204)
      expect(cookieOf(out)).toMatch(/Max-Age=0|Expires=Thu, 01 Jan 1970/)
      const after = await api.get("/manage/projects", { auth: null, headers: { cookie: pair, "x-csrf-token": csrf } })
      expect(after.status).toBe(401)
      expect(after.json).toEqual({ error: "session expired or invalid", code: "session_expired" })
      expect((await api.get("/manage/session", { auth: null, headers: { cookie: pair } })).json).toEqual({
        authenticated: false
      })
      // Without any cookie: still the message of a missing Authorization header (docs/behaviour.md #1).
      expect((await api.get("/manage/projects", { auth: null })).json).toEqual({
        error: "missing or invalid Authorization header"
      })
      expect((await api.delete("/manage/session", { auth: null })).status).toBe(204)
    })
  })

  describe("projects: search and pagination", () => {
    const prefix = `pg-${crypto.randomUUID().slice(0, 8)}`
    beforeAll(async () => {
      for (let i = 1; i <= 7; i++) {
        const r = await api.post("/manage/projects", {
          name: `${prefix}-${i}${i === 3 ? "_x%" : ""}`,
          api_key: `sk-${i}`
        })
        expect(r.status, r.text).toBe(201)
      }
    })

    it("keeps the plain array without page parameters; search filters it case-insensitively", async () => {
      const all = await api.get("/manage/projects")
      expect(Array.isArray(all.json)).toBe(true)
      const found = await api.get(`/manage/projects?search=${prefix.toUpperCase()}`)
      expect(found.json.map((p: { name: string }) => p.name)).toEqual(
        [1, 2, 3, 4, 5, 6, 7].map((i) => `${prefix}-${i}${i === 3 ? "_x%" : ""}`)
      )
      // LIKE wildcards in the search are literal.
      const literal = await api.get(`/manage/projects?search=${encodeURIComponent(`${prefix}-3_x%`)}`)
      expect(literal.json).toHaveLength(1)
      expect((await api.get(`/manage/projects?search=${encodeURIComponent("%")}`)).json).toHaveLength(1)
      const byId = await api.get(`/manage/projects?search=${found.json[4].id.toUpperCase()}`)
      expect(byId.json.map((p: { id: string }) => p.id)).toEqual([found.json[4].id])
    })

    it("pages with page and page_size", async () => {
      const first = await api.get(`/manage/projects?search=${prefix}&page_size=3`)
      expect(first.status).toBe(200)
      expect(first.json.projects).toHaveLength(3)
      expect(first.json.pagination).toEqual({
        page: 1,
        page_size: 3,
        total_count: 7,
        total_pages: 3,
        has_next: true,
        has_prev: false,
        total_exact: true
      })
      const last = await api.get(`/manage/projects?search=${prefix}&page=3&page_size=3`)
      expect(last.json.projects.map((p: { name: string }) => p.name)).toEqual([`${prefix}-7`])
      expect(last.json.pagination).toMatchObject({ page: 3, has_next: false, has_prev: true })
      const beyond = await api.get(`/manage/projects?search=${prefix}&page=9&page_size=3`)
      expect(beyond.json.projects).toEqual([])
      expect((await api.get(`/manage/projects?page=1`)).json.pagination.page_size).toBe(20)
    })

    it("rejects bad page parameters with 400", async () => {
      for (const q of ["page_size=0", "page_size=101", "page=0", "page=abc", "page=-1", "page_size=1.5"]) {
        const r = await api.get(`/manage/projects?${q}`)
        expect(r.status, q).toBe(400)
        expect(r.json.error).toMatch(/^page(_size)? must be an integer between/)
      }
    })
  })

  describe("usage series", () => {
    let projectId = ""
    let tokenA = ""
    let tokenB = ""
    const now = Date.now()
    const hour0 = new Date(Math.floor(now / HOUR) * HOUR - 2 * HOUR).toISOString()

    beforeAll(async () => {
      projectId =
        (await api.post("/manage/projects", { name: `usage-${crypto.randomUUID()}`, api_key: "sk-u" })).json.id
      tokenA = (await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })).json.id
      tokenB = (await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })).json.id
      const d = (tokenId: string, hour: string, requests: number): HourlyUsage => ({
        hour,
        projectId,
        tokenId,
        requests,
        cacheHits: 1,
        errors: 1,
        promptTokens: 10 * requests,
        completionTokens: requests
      })
      const older = new Date(Date.parse(hour0) - 40 * 24 * HOUR).toISOString()
      await Effect.runPromise(
        Effect.gen(function*() {
          const store = yield* Store
          // Two deltas for the same row in one batch are summed, and later batches add to it.
          yield* store.addHourlyUsage([d(tokenA, hour0, 2), d(tokenA, hour0, 3), d(tokenB, hour0, 4)])
          yield* store.addHourlyUsage([d(tokenA, hour0, 1), d(tokenA, older, 100)])
          yield* store.addHourlyUsage([])
        }).pipe(Effect.provide(databaseLayer(instance.database)))
      )
    })

    it("sums the rollups per hour over the last 24 hours by default, filtered by project or token", async () => {
      const all = await api.get(`/manage/usage?project_id=${projectId}`)
      expect(all.status, all.text).toBe(200)
      expect(all.json.hours).toEqual([
        { hour: hour0, requests: 10, cache_hits: 4, errors: 4, prompt_tokens: 100, completion_tokens: 10, cost_usd: 0 }
      ])
      expect(all.json.totals).toEqual({
        requests: 10,
        cache_hits: 4,
        errors: 4,
        prompt_tokens: 100,
        completion_tokens: 10,
        cost_usd: 0
      })
      const a = await api.get(`/manage/usage?token_id=${tokenA}`)
      expect(a.json.totals.requests).toBe(6)
      const month = await api.get(
        `/manage/usage?token_id=${tokenA}&since=${new Date(now - 60 * 24 * HOUR).toISOString()}`
      )
      expect(month.json.totals.requests).toBe(106)
      expect(month.json.hours).toHaveLength(2)
      const before = await api.get(`/manage/usage?project_id=${projectId}&until=${hour0}`)
      expect(before.json.hours).toEqual([])
    })

    it("rejects bad ranges and ids with 400", async () => {
      const cases: Array<[string, RegExp]> = [
        ["since=yesterday", /since must be an RFC 3339 timestamp/],
        ["until=2020-13-45", /until must be an RFC 3339 timestamp/],
        // what Date.parse takes but RFC 3339 is not: a date alone, an HTTP date, a time without offset, epoch ms
        ["since=2026-12-01", /since must be an RFC 3339 timestamp/],
        [`since=${encodeURIComponent("Tue, 01 Dec 2026 12:00:00 GMT")}`, /since must be an RFC 3339 timestamp/],
        ["until=2026-12-01T12:00:00", /until must be an RFC 3339 timestamp/],
        ["until=1796126400000", /until must be an RFC 3339 timestamp/],
        [
          `since=${new Date(now).toISOString()}&until=${new Date(now - HOUR).toISOString()}`,
          /since must be before until/
        ],
        [`since=${new Date(now - 400 * 24 * HOUR).toISOString()}`, /limited to 366 days/],
        ["project_id=nope", /invalid project_id/],
        ["token_id=1", /invalid token_id/]
      ]
      for (const [q, message] of cases) {
        const r = await api.get(`/manage/usage?${q}`)
        expect(r.status, q).toBe(400)
        expect(r.json.error).toMatch(message)
      }
      // RFC 3339 with an offset (an encoded "+") and lower-case separators are fine
      const offset = new Date(now - 2 * HOUR).toISOString().replace("Z", "+00:00")
      expect((await api.get(`/manage/usage?since=${encodeURIComponent(offset)}`)).status).toBe(200)
      expect((await api.get(`/manage/usage?until=${new Date(now).toISOString().toLowerCase()}`)).status).toBe(200)
      expect((await api.get("/manage/usage", { auth: null })).status).toBe(401)
    })
  })

  describe("rollups written by the proxy's usage flush", () => {
    let mock: MockUpstream
    let proxied: TestServer
    beforeAll(async () => {
      mock = await startMockUpstream()
      proxied = await startServer(testConfig(instance.database, { openaiApiUrl: mock.url, usageFlushIntervalMs: 50 }))
    })
    afterAll(async () => {
      await proxied?.close()
      await mock?.close()
    })

    it("counts every answered request per hour and token: limited and unlimited tokens, errors, tokens used", async () => {
      const manage = new Client(proxied.url, proxied.token)
      const projectId =
        (await manage.post("/manage/projects", { name: `flush-${crypto.randomUUID()}`, api_key: "sk-f" })).json.id
      const limited =
        (await manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, max_requests: 10 })).json
      const unlimited = (await manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })).json
      const call = (token: string) =>
        fetch(`${proxied.url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "gpt-4o-mini", messages: [] })
        }).then(async (r) => (await r.arrayBuffer(), r.status))
      mock.setDefault(json(chatCompletion("ok", { prompt_tokens: 7, completion_tokens: 2 })))
      expect(await call(limited.token)).toBe(200)
      expect(await call(limited.token)).toBe(200)
      expect(await call(unlimited.token)).toBe(200)
      mock.setDefault(json({ error: { message: "overloaded" } }, { status: 503 }))
      expect(await call(unlimited.token)).toBe(503)
      let series: any
      for (let i = 0; i < 100; i++) {
        series = (await manage.get(`/manage/usage?project_id=${projectId}`)).json
        if (series.totals.requests === 4) break
        await new Promise((r) => setTimeout(r, 50))
      }
      // gpt-4o-mini at the built-in $0.15 / $0.60 per million: 3 answers × (7 × 0.15 + 2 × 0.6) = 6.75 millionths.
      expect(series.totals).toEqual({
        requests: 4,
        cache_hits: 0,
        errors: 1,
        prompt_tokens: 21,
        completion_tokens: 6,
        cost_usd: expect.closeTo(6.75e-6, 12)
      })
      expect(series.hours).toHaveLength(1)
      expect((await manage.get(`/manage/usage?token_id=${limited.id}`)).json.totals.requests).toBe(2)
    })

    it("enforces a token's rate limit set through the API (429 with Retry-After)", async () => {
      const manage = new Client(proxied.url, proxied.token)
      mock.setDefault(json(chatCompletion("ok")))
      const projectId =
        (await manage.post("/manage/projects", { name: `rl-${crypto.randomUUID()}`, api_key: "sk-f" })).json.id
      const token = (await manage.post("/manage/tokens", {
        project_id: projectId,
        duration_minutes: 60,
        rate_limit: { requests: 1, window_seconds: 3600 }
      })).json
      const call = () =>
        fetch(`${proxied.url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${token.token}`, "content-type": "application/json" },
          body: "{}"
        })
      expect((await call()).status).toBe(200)
      const limited = await call()
      expect(limited.status).toBe(429)
      expect(Number(limited.headers.get("retry-after"))).toBeGreaterThan(0)
      expect(proxyError(await limited.json()).code).toBe("rate_limit_exceeded")
    })
  })

  describe("rate limits of tokens and projects", () => {
    it("are stored on create, returned, replaced and removed by PATCH", async () => {
      const project = await api.post("/manage/projects", {
        name: `rl-${crypto.randomUUID()}`,
        api_key: "sk-rl",
        rate_limit: { requests: 100, window_seconds: 60 }
      })
      expect(project.status, project.text).toBe(201)
      expect(project.json.rate_limit).toEqual({ requests: 100, window_seconds: 60 })
      const plain = await api.post("/manage/projects", { name: `rl-${crypto.randomUUID()}`, api_key: "sk-rl" })
      expect(plain.json.rate_limit).toBeNull()
      const patched = await api.patch(`/manage/projects/${project.json.id}`, { rate_limit: null })
      expect(patched.json.rate_limit).toBeNull()
      expect(
        (await api.patch(`/manage/projects/${project.json.id}`, { name: `${project.json.name}-x` })).json.rate_limit
      ).toBeNull()

      const created = await api.post("/manage/tokens", {
        project_id: project.json.id,
        duration_minutes: 60,
        max_requests: 7,
        rate_limit: { requests: 5, window_seconds: 1 }
      })
      expect(created.status, created.text).toBe(201)
      const id = created.json.id
      expect((await api.get(`/manage/tokens/${id}`)).json).toMatchObject({
        max_requests: 7,
        rate_limit: { requests: 5, window_seconds: 1 }
      })
      // Other fields leave it alone; reactivation keeps it (and max_requests).
      await api.delete(`/manage/tokens/${id}`)
      expect((await api.patch(`/manage/tokens/${id}`, { is_active: true })).json).toMatchObject({
        is_active: true,
        max_requests: 7,
        rate_limit: { requests: 5, window_seconds: 1 }
      })
      expect(
        (await api.patch(`/manage/tokens/${id}`, { rate_limit: { requests: 9, window_seconds: 3600 } })).json.rate_limit
      )
        .toEqual({ requests: 9, window_seconds: 3600 })
      expect((await api.patch(`/manage/tokens/${id}`, { rate_limit: null })).json.rate_limit).toBeNull()
    })

    it("rejects malformed limits with 400", async () => {
      const project = (await api.post("/manage/projects", { name: `rl-${crypto.randomUUID()}`, api_key: "sk-rl" })).json
      const bad = [
        { requests: 0, window_seconds: 60 },
        { requests: 1, window_seconds: 0 },
        { requests: 1.5, window_seconds: 60 },
        { requests: "1", window_seconds: 60 },
        { requests: 1 },
        { requests: 1, window_seconds: 60, burst: 3 },
        [1, 60],
        "10/min",
        { requests: 2_000_000_000, window_seconds: 60 },
        { requests: 1, window_seconds: 40_000_000 }
      ]
      for (const rate_limit of bad) {
        const t = await api.post("/manage/tokens", { project_id: project.id, duration_minutes: 5, rate_limit })
        expect(t.status, JSON.stringify(rate_limit)).toBe(400)
        expect(t.json.error).toMatch(/^rate_limit/)
        const p = await api.patch(`/manage/projects/${project.id}`, { rate_limit })
        expect(p.status, JSON.stringify(rate_limit)).toBe(400)
      }
    })
  })

  describe("static files under /admin", () => {
    it("redirects /admin to /admin/, refuses other methods, and puts the CSP on every answer", async () => {
      const r = await fetch(`${server.url}/admin`, { redirect: "manual" })
      expect(r.status).toBe(301)
      expect(r.headers.get("location")).toBe("/admin/")
      const post = await fetch(`${server.url}/admin/`, { method: "POST" })
      expect(post.status).toBe(405)
      expect(post.headers.get("content-security-policy")).toContain("default-src 'none'")
    })
  })
}

for (const backend of backends) {
  describe(`admin API on ${backend.name}`, () => adminSuite(backend))
}
if (!backends.some((b) => b.name === "postgres")) {
  describe.skip("admin API on postgres (skipped: DATABASE_URL not set)", () => {
    it("needs DATABASE_URL", () => {})
  })
}

describe("admin assets", () => {
  it("reports an unbuilt UI instead of failing", () => {
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-web-"))
    try {
      expect(loadAdminAssets(dir).built).toBe(false)
      mkdirSync(join(dir, "assets"))
      writeFileSync(join(dir, "index.html"), "<!doctype html>")
      writeFileSync(join(dir, "assets", "app-X.js"), "x".repeat(5000))
      const assets = loadAdminAssets(dir)
      expect(assets.built).toBe(true)
      expect(assets.files.get("assets/app-X.js")).toMatchObject({
        immutable: true,
        type: "text/javascript; charset=utf-8"
      })
      expect(assets.files.get("assets/app-X.js")!.gzip!.byteLength).toBeLessThan(100)
      expect(assets.files.get("index.html")).toMatchObject({ immutable: false, gzip: undefined })
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
