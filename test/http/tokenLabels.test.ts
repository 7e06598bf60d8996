/**
 * A token's `name`, `user` (the end user it was minted for) and `metadata` through the management API, on SQLite and
 * PostgreSQL (when DATABASE_URL is set): the limits (400 with the exact message, nothing created), shown on create, GET
 * and list, changed and removed by PATCH, `?user=` / `?name=` / search filters, the audit rows that say who minted
 * what for whom, and `GET /manage/usage?user=` summing every token of that end user.
 */
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { databaseLayer } from "../../src/Layers.js"
import { type HourlyUsage, Store } from "../../src/store/Store.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type Backend, type BackendInstance, backends, Client, providerKey, uniqueName } from "./harness.js"

const HOUR = 3_600_000

function labelsSuite(backend: Backend) {
  let instance: BackendInstance
  let server: TestServer
  let api: Client
  let projectId = ""

  beforeAll(async () => {
    instance = await backend.create()
    server = await startServer(testConfig(instance.database))
    api = new Client(server.url, server.token)
    const p = await api.post("/manage/projects", { name: uniqueName("labels"), api_key: providerKey() })
    expect(p.status, p.text).toBe(201)
    projectId = p.json.id
  })
  afterAll(async () => {
    await server?.close()
    await instance?.cleanup()
  })

  const mint = async (extra: Record<string, unknown>) => {
    const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...extra })
    expect(r.status, r.text).toBe(201)
    return r.json as { id: string; token: string }
  }

  it("name, user and metadata are shown on create, GET and list, changed and removed by PATCH", async () => {
    const labels = { name: "checkout session", user: "user-8812", metadata: { plan: "pro", "région": "eu" } }
    const created = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...labels })
    expect(created.status, created.text).toBe(201)
    expect(created.json).toMatchObject(labels)
    const id = created.json.id as string
    const got = await api.get(`/manage/tokens/${id}`)
    expect(got.json).toMatchObject({ ...labels, allowed_models: null, created_by: "management_api" })
    const listed = await api.get(`/manage/tokens?project_id=${projectId}`)
    expect(listed.json.find((t: { id: string }) => t.id === id)).toMatchObject(labels)

    const patched = await api.patch(`/manage/tokens/${id}`, { name: "renamed", metadata: { plan: "free" } })
    expect(patched.status, patched.text).toBe(200)
    expect(patched.json).toMatchObject({ name: "renamed", user: "user-8812", metadata: { plan: "free" } })
    const cleared = await api.patch(`/manage/tokens/${id}`, { name: null, user: null, metadata: null })
    expect(cleared.json).toMatchObject({ name: null, user: null, metadata: null })
    expect((await api.get(`/manage/tokens/${id}`)).json).toMatchObject({ name: null, user: null, metadata: null })

    const bare = await mint({})
    expect((await api.get(`/manage/tokens/${bare.id}`)).json).toMatchObject({ name: null, user: null, metadata: null })
  })

  it("limits: 400 with a clear message, and nothing is created or changed", async () => {
    const before = await api.get(`/manage/tokens?project_id=${projectId}`)
    const seventeen = Object.fromEntries(Array.from({ length: 17 }, (_, i) => [`k${i}`, "v"]))
    const sixteen = Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, "v".repeat(256)]))
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ metadata: seventeen }, "metadata must have at most 16 keys"],
      [{ metadata: { note: "x".repeat(257) } }, "metadata values must be at most 256 characters"],
      [{ metadata: { ["k".repeat(257)]: "v" } }, "metadata keys must be at most 256 characters"],
      [{ metadata: { count: 3 } }, "metadata values must be strings"],
      [{ metadata: { nested: { a: "b" } } }, "metadata values must be strings"],
      [{ metadata: { flag: null } }, "metadata values must be strings"],
      [{ metadata: ["a"] }, "metadata must be null or an object of at most 16 string keys with string values"],
      [{ metadata: "plan=pro" }, "metadata must be null or an object of at most 16 string keys with string values"],
      [{ name: "n".repeat(101) }, "name must be at most 100 characters"],
      [{ name: "" }, "name must not be empty (null removes it)"],
      [{ user: "u".repeat(257) }, "user must be at most 256 characters"],
      [{ user: "a\nb" }, "user must not contain control characters"],
      [{ user: 42 }, "invalid request body"]
    ]
    for (const [extra, message] of cases) {
      const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 5, ...extra })
      expect({ status: r.status, error: r.json?.error }, JSON.stringify(extra).slice(0, 80)).toEqual({
        status: 400,
        error: message
      })
    }
    expect((await api.get(`/manage/tokens?project_id=${projectId}`)).json).toEqual(before.json)

    const t = await mint({ name: "kept", metadata: sixteen, user: "u".repeat(256) })
    const r = await api.patch(`/manage/tokens/${t.id}`, { metadata: seventeen })
    expect({ status: r.status, error: r.json.error }).toEqual({
      status: 400,
      error: "metadata must have at most 16 keys"
    })
    expect((await api.get(`/manage/tokens/${t.id}`)).json).toMatchObject({ name: "kept", metadata: sixteen })
  })

  it("GET /manage/tokens?user= and ?name= list exactly those tokens, paged too; search finds a user or a name", async () => {
    const user = uniqueName("end-user")
    const name = uniqueName("token-name")
    const a = await mint({ user })
    const b = await mint({ user, name })
    const c = await mint({ name })
    await mint({ user: `${user}-other`, name: `${name}-other` })
    const ids = async (q: string) => {
      const r = await api.get(`/manage/tokens?${q}`)
      expect(r.status, r.text).toBe(200)
      return (Array.isArray(r.json) ? r.json : r.json.tokens).map((t: { id: string }) => t.id)
    }
    expect(await ids(`user=${encodeURIComponent(user)}`)).toEqual([b.id, a.id])
    expect(await ids(`name=${encodeURIComponent(name)}`)).toEqual([c.id, b.id])
    expect(await ids(`user=${encodeURIComponent(user)}&name=${encodeURIComponent(name)}`)).toEqual([b.id])
    expect(await ids(`user=${encodeURIComponent(user)}&page_size=1`)).toEqual([b.id])
    expect(await ids(`search=${encodeURIComponent(user)}`)).toEqual([b.id, a.id])
    expect(await ids(`search=${encodeURIComponent(name)}`)).toEqual([c.id, b.id])
    expect(await ids(`user=nobody-${crypto.randomUUID()}`)).toEqual([])
    const tooLong = await api.get(`/manage/tokens?user=${"u".repeat(257)}`)
    expect({ status: tooLong.status, error: tooLong.json.error }).toEqual({
      status: 400,
      error: "user must be at most 256 characters"
    })
  })

  it("audit rows of token.create and token.update say for whom, and who acted", async () => {
    const user = uniqueName("audited-user")
    const t = await mint({ user, name: "audited", metadata: { plan: "pro" } })
    await api.patch(`/manage/tokens/${t.id}`, { user: `${user}-2` })
    const created = (await api.get(`/manage/audit?action=token.create&token_id=${t.id}`)).json.events[0]
    expect(created.actor).toBe("management_api")
    expect(JSON.parse(created.metadata)).toMatchObject({ user, name: "audited", metadata: { plan: "pro" } })
    const updated = (await api.get(`/manage/audit?action=token.update&token_id=${t.id}`)).json.events[0]
    expect(updated.actor).toBe("management_api")
    expect(JSON.parse(updated.metadata)).toMatchObject({ updated_user: `${user}-2` })
  })

  it("GET /manage/usage?user= sums the usage of every token of that end user", async () => {
    const user = uniqueName("usage-user")
    const a = await mint({ user })
    const b = await mint({ user })
    const other = await mint({ user: `${user}-x` })
    const hour = new Date(Math.floor(Date.now() / HOUR) * HOUR - HOUR).toISOString()
    const d = (tokenId: string, requests: number): HourlyUsage => ({
      hour,
      projectId,
      tokenId,
      requests,
      cacheHits: 0,
      errors: 0,
      promptTokens: 10 * requests,
      completionTokens: requests
    })
    await Effect.runPromise(
      Effect.gen(function*() {
        const store = yield* Store
        yield* store.addHourlyUsage([d(a.id, 2), d(b.id, 3), d(other.id, 100)])
      }).pipe(Effect.provide(databaseLayer(instance.database)))
    )
    const r = await api.get(`/manage/usage?user=${encodeURIComponent(user)}`)
    expect(r.status, r.text).toBe(200)
    expect(r.json.totals).toEqual({
      requests: 5,
      cost_usd: 0,
      cache_hits: 0,
      errors: 0,
      prompt_tokens: 50,
      completion_tokens: 5
    })
    const none = await api.get(`/manage/usage?user=nobody-${crypto.randomUUID()}`)
    expect(none.json.totals.requests).toBe(0)
  })
}

for (const backend of backends) describe(`token labels on ${backend.name}`, () => labelsSuite(backend))
