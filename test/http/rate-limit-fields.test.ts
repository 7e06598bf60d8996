/**
 * The `rate_limit` field of projects and tokens in the management API (docs/management-api.md): `{"requests": N,
 * "window_seconds": S}` or null, on create and PATCH, shown on every read, validated with a 400.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import {
  MAX_COST_USD_MAX,
  MAX_TOKENS_MAX,
  RATE_LIMIT_REQUESTS_MAX,
  RATE_LIMIT_TOKENS_MAX,
  RATE_LIMIT_WINDOW_MAX
} from "../../src/domain/models.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type BackendInstance, backends, Client, providerKey, uniqueName } from "./harness.js"

describe.each(backends)("rate_limit fields on $name", (b) => {
  let backend: BackendInstance
  let server: TestServer
  let api: Client
  beforeAll(async () => {
    backend = await b.create()
    server = await startServer(testConfig(backend.database))
    api = new Client(server.url, server.token)
  })
  afterAll(async () => {
    await server.close()
    await backend.cleanup()
  })

  it("projects: null by default, set on create, changed and removed by PATCH, kept by other PATCHes", async () => {
    const plain = await api.post("/manage/projects", { name: uniqueName("rl"), api_key: providerKey() })
    expect(plain.json.rate_limit).toBeNull()
    const r = await api.post("/manage/projects", {
      name: uniqueName("rl"),
      api_key: providerKey(),
      rate_limit: { requests: 10, window_seconds: 60 }
    })
    expect(r.status).toBe(201)
    expect(r.json.rate_limit).toEqual({ requests: 10, window_seconds: 60 })
    const id = r.json.id as string
    expect((await api.get(`/manage/projects/${id}`)).json.rate_limit).toEqual({ requests: 10, window_seconds: 60 })
    expect((await api.patch(`/manage/projects/${id}`, { name: uniqueName("rl2") })).json.rate_limit).toEqual({
      requests: 10,
      window_seconds: 60
    })
    expect(
      (await api.patch(`/manage/projects/${id}`, { rate_limit: { requests: 5, window_seconds: 1 } })).json.rate_limit
    ).toEqual({
      requests: 5,
      window_seconds: 1
    })
    expect((await api.patch(`/manage/projects/${id}`, { rate_limit: null })).json.rate_limit).toBeNull()
    const listed = (await api.get("/manage/projects")).json.find((p: { id: string }) => p.id === id)
    expect(listed.rate_limit).toBeNull()
  })

  it("tokens: set on create, shown on get and list, changed and removed by PATCH", async () => {
    const p = await api.post("/manage/projects", { name: uniqueName("rl"), api_key: providerKey() })
    const t = await api.post("/manage/tokens", {
      project_id: p.json.id,
      duration_minutes: 5,
      rate_limit: { requests: 3, window_seconds: 10 }
    })
    expect(t.status).toBe(201)
    const id = t.json.id as string
    expect((await api.get(`/manage/tokens/${id}`)).json.rate_limit).toEqual({ requests: 3, window_seconds: 10 })
    const listed = (await api.get(`/manage/tokens?project_id=${p.json.id}`)).json
    expect(listed[0].rate_limit).toEqual({ requests: 3, window_seconds: 10 })
    expect(
      (await api.patch(`/manage/tokens/${id}`, { rate_limit: { requests: 7, window_seconds: 70 } })).json.rate_limit
    ).toEqual({
      requests: 7,
      window_seconds: 70
    })
    expect((await api.patch(`/manage/tokens/${id}`, { rate_limit: null })).json.rate_limit).toBeNull()
    const plain = await api.post("/manage/tokens", { project_id: p.json.id, duration_minutes: 5 })
    expect((await api.get(`/manage/tokens/${plain.json.id}`)).json.rate_limit).toBeNull()
  })

  it("the largest values the API accepts are stored and read back as given (tokens and projects)", async () => {
    const most = {
      requests: RATE_LIMIT_REQUESTS_MAX,
      tokens: RATE_LIMIT_TOKENS_MAX,
      window_seconds: RATE_LIMIT_WINDOW_MAX
    }
    const p = await api.post("/manage/projects", { name: uniqueName("rl"), api_key: providerKey(), rate_limit: most })
    expect(p.status).toBe(201)
    expect((await api.get(`/manage/projects/${p.json.id}`)).json.rate_limit).toEqual(most)
    const t = await api.post("/manage/tokens", {
      project_id: p.json.id,
      duration_minutes: 5,
      rate_limit: most,
      max_tokens: MAX_TOKENS_MAX,
      max_cost_usd: MAX_COST_USD_MAX
    })
    expect(t.status).toBe(201)
    expect((await api.get(`/manage/tokens/${t.json.id}`)).json).toMatchObject({
      rate_limit: most,
      max_tokens: MAX_TOKENS_MAX,
      max_cost_usd: MAX_COST_USD_MAX
    })
  })

  it.each([
    [{ requests: 0, window_seconds: 60 }],
    [{ requests: 1.5, window_seconds: 60 }],
    [{ requests: 10 }],
    [{ requests: 10, window_seconds: 0 }],
    [{ requests: 10, window_seconds: 31_536_001 }],
    [{ requests: "10", window_seconds: 60 }],
    [{ requests: 10, window_seconds: 60, burst: 1 }],
    [[10, 60]],
    ["10/min"]
  ])("invalid rate_limit %j → 400 on every endpoint, nothing changes", async (bad) => {
    const message = /^rate_limit must be null or/
    const p = await api.post("/manage/projects", { name: uniqueName("rl"), api_key: providerKey(), rate_limit: bad })
    expect(p.status).toBe(400)
    expect(p.json.error).toMatch(message)
    const good = await api.post("/manage/projects", { name: uniqueName("rl"), api_key: providerKey() })
    expect((await api.patch(`/manage/projects/${good.json.id}`, { rate_limit: bad })).json.error).toMatch(message)
    const t = await api.post("/manage/tokens", { project_id: good.json.id, duration_minutes: 5, rate_limit: bad })
    expect(t.status).toBe(400)
    expect(t.json.error).toMatch(message)
    const ok = await api.post("/manage/tokens", { project_id: good.json.id, duration_minutes: 5 })
    const patched = await api.patch(`/manage/tokens/${ok.json.id}`, { rate_limit: bad })
    expect(patched.status).toBe(400)
    expect((await api.get(`/manage/tokens/${ok.json.id}`)).json.rate_limit).toBeNull()
  })
})
