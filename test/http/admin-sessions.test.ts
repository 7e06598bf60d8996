/**
 * Admin sessions live in the database: a session made on one instance works on another instance of the same
 * database (two app layers on one SQLite file; two on one PostgreSQL database when DATABASE_URL is set), survives a
 * restart, and logout on one instance ends it everywhere.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type Backend, type BackendInstance, backends, Client } from "./harness.js"

const cookieOf = (r: { headers: Headers }) => r.headers.getSetCookie().find((c) => c.startsWith("llm_proxy_session="))

function sharedSuite(backend: Backend) {
  let instance: BackendInstance
  let a: TestServer
  let b: TestServer
  // Both instances share the management token, like instances of one deployment.
  let config: ReturnType<typeof testConfig>

  beforeAll(async () => {
    instance = await backend.create()
    config = testConfig(instance.database)
    a = await startServer(config)
    b = await startServer(config)
  })
  afterAll(async () => {
    await a?.close()
    await b?.close()
    await instance?.cleanup()
  })

  const login = async (server: TestServer) => {
    const r = await new Client(server.url, server.token).post("/manage/session", { token: server.token }, {
      auth: null
    })
    expect(r.status, r.text).toBe(200)
    return { pair: cookieOf(r)!.split(";")[0]!, csrf: r.json.csrf_token as string }
  }
  const asUi = (pair: string, csrf?: string) => ({
    auth: null,
    headers: { cookie: pair, ...(csrf !== undefined ? { "x-csrf-token": csrf } : {}) }
  })

  it("a session made on one instance reads and writes on the other", async () => {
    const { csrf, pair } = await login(a)
    const onB = new Client(b.url, b.token)
    expect((await onB.get("/manage/session", asUi(pair))).json).toMatchObject({ authenticated: true, csrf_token: csrf })
    expect((await onB.get("/manage/projects", asUi(pair))).status).toBe(200)
    const created = await onB.post(
      "/manage/projects",
      { name: `shared-${crypto.randomUUID()}`, api_key: "sk-shared" },
      asUi(pair, csrf)
    )
    expect(created.status, created.text).toBe(201)
    expect((await onB.post("/manage/projects", { name: `x-${crypto.randomUUID()}`, api_key: "sk" }, asUi(pair))).status)
      .toBe(403)
  })

  it("survives a restart of every instance", async () => {
    const { csrf, pair } = await login(a)
    await a.close()
    await b.close()
    a = await startServer(config)
    b = await startServer(config)
    for (const server of [a, b]) {
      const client = new Client(server.url, server.token)
      expect((await client.get("/manage/session", asUi(pair))).json).toMatchObject({
        authenticated: true,
        csrf_token: csrf
      })
      expect((await client.get("/manage/tokens", asUi(pair))).status).toBe(200)
    }
  })

  it("logout on one instance signs the cookie out on the other; without the CSRF token it does nothing", async () => {
    const { csrf, pair } = await login(b)
    const onA = new Client(a.url, a.token)
    const onB = new Client(b.url, b.token)
    expect((await onA.delete("/manage/session", asUi(pair))).status).toBe(403)
    expect((await onB.get("/manage/projects", asUi(pair))).status).toBe(200)
    expect((await onA.delete("/manage/session", asUi(pair, csrf))).status).toBe(204)
    const after = await onB.get("/manage/projects", asUi(pair))
    expect(after.status).toBe(401)
    expect(after.json).toEqual({ error: "session expired or invalid", code: "session_expired" })
    // Logging out an ended session is harmless: 204, the cookie is cleared.
    const again = await onB.delete("/manage/session", asUi(pair))
    expect(again.status).toBe(204)
    expect(cookieOf(again)).toMatch(/Max-Age=0|Expires=Thu, 01 Jan 1970/)
  })

  it("stores no session id and no CSRF token", async () => {
    const { csrf, pair } = await login(a)
    const id = pair.split("=")[1]!
    const rows = await instance.rows("admin_sessions")
    expect(rows.length).toBeGreaterThan(0)
    const dump = JSON.stringify(rows)
    expect(dump).not.toContain(id)
    expect(dump).not.toContain(csrf)
  })
}

for (const backend of backends) {
  describe(`admin sessions shared through ${backend.name}`, () => sharedSuite(backend))
}
if (!backends.some((b) => b.name === "postgres")) {
  describe.skip("admin sessions shared through postgres (skipped: DATABASE_URL not set)", () => {
    it("needs DATABASE_URL", () => {})
  })
}
