/** `POST /manage/cache/purge` and `llm-proxy manage cache purge` against a real server (SQLite). */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { cli } from "../support/cli.js"
import { startServer, testCacheConfig, testConfig, type TestServer } from "../support/server.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-purge-"))

const purge = (server: TestServer, body: string, init: { method?: string; auth?: boolean } = {}) =>
  fetch(`${server.url}/manage/cache/purge`, {
    method: init.method ?? "POST",
    headers: {
      ...(init.auth === false ? {} : { authorization: `Bearer ${server.token}` }),
      "content-type": "application/json"
    },
    ...(init.method === "GET" ? {} : { body })
  }).then(async (r) => ({ status: r.status, type: r.headers.get("content-type"), body: await r.json() as unknown }))

describe("cache purge API", () => {
  let server: TestServer
  let disabled: TestServer
  beforeAll(async () => {
    server = await startServer(testConfig({ _tag: "sqlite", path: join(dir, "purge.db") }))
    disabled = await startServer(
      testConfig({ _tag: "sqlite", path: join(dir, "disabled.db") }, { cache: testCacheConfig({ enabled: false }) })
    )
  })
  afterAll(async () => {
    await server.close()
    await disabled.close()
  })

  it.each<[string, string, number, unknown]>([
    ["exact, nothing cached", "{\"method\":\"GET\",\"url\":\"/v1/models\"}", 200, { deleted: false }],
    ["prefix", "{\"prefix\":\"ab12\"}", 200, { deleted: 0 }],
    ["everything", "{\"all\":true}", 200, { deleted: 0 }],
    ["one project", "{\"all\":true,\"project_id\":\"11111111-1111-4111-8111-111111111111\"}", 200, { deleted: 0 }],
    ["missing url (scenario 92)", "{\"method\":\"GET\"}", 400, { error: "method and url are required" }],
    ["bad JSON (scenario 92)", "{nope", 400, { error: "invalid JSON" }],
    ["invalid URL", "{\"method\":\"GET\",\"url\":\"v1/models\"}", 400, { error: "invalid URL" }],
    ["wrong field type", "{\"method\":1,\"url\":\"/v1/models\"}", 400, { error: "method and url are required" }],
    ["bad project id", "{\"all\":true,\"project_id\":\"x\"}", 400, { error: "invalid project_id" }]
  ])("%s", async (_name, body, status, expected) => {
    const r = await purge(server, body)
    expect(r.status).toBe(status)
    expect(r.type).toContain("application/json")
    expect(r.body).toEqual(expected)
  })

  it("GET → 405 after authentication; no token → 401 (scenario 92)", async () => {
    expect(await purge(server, "", { method: "GET" })).toMatchObject({
      status: 405,
      body: { error: "method not allowed" }
    })
    expect(await purge(server, "", { method: "GET", auth: false })).toMatchObject({ status: 401 })
    expect(await purge(server, "{\"all\":true}", { auth: false })).toMatchObject({
      status: 401,
      body: { error: "missing or invalid Authorization header" }
    })
  })

  it("cache disabled → 400 caching is disabled (scenario 92)", async () => {
    expect(await purge(disabled, "{\"all\":true}")).toEqual({
      status: 400,
      type: "application/json",
      body: { error: "caching is disabled" }
    })
  })

  it("every purge is audited as cache.purge, failures with their reason", async () => {
    await purge(
      server,
      "{\"method\":\"GET\",\"url\":\"/v1/audited\",\"project_id\":\"11111111-1111-4111-8111-111111111111\"}"
    )
    await purge(server, "{\"method\":\"GET\"}")
    const r = await fetch(`${server.url}/manage/audit?action=cache.purge&page_size=100`, {
      headers: { authorization: `Bearer ${server.token}` }
    }).then((x) => x.json() as Promise<{ events: Array<Record<string, string>> }>)
    const ok = r.events.find((e) => e["metadata"]?.includes("/v1/audited"))
    expect(ok).toMatchObject({
      action: "cache.purge",
      outcome: "success",
      project_id: "11111111-1111-4111-8111-111111111111"
    })
    expect(JSON.parse(ok!["metadata"]!)).toMatchObject({
      purge_type: "exact",
      method: "GET",
      url: "/v1/audited",
      deleted: 0
    })
    expect(r.events.some((e) => e["outcome"] === "failure" && e["reason"] === "method and url are required")).toBe(true)
  })

  it("is in the OpenAPI document", async () => {
    const doc = await fetch(`${server.url}/manage/openapi.json`).then((r) => r.json() as Promise<{ paths: object }>)
    expect(Object.keys(doc.paths)).toContain("/manage/cache/purge")
  })

  it("llm-proxy manage cache purge (scenario 158)", async () => {
    const auth = ["--manage-api-base-url", server.url, "--management-token", server.token]
    expect(await cli("manage", "cache", "purge", "--method", "GET", "--url", "/v1/models", ...auth)).toMatchObject({
      ok: true,
      out: "Cache entry was not found"
    })
    expect(await cli("manage", "cache", "purge", "--all", ...auth)).toMatchObject({
      ok: true,
      out: "deleted 0 cache entries"
    })
    expect(await cli("manage", "cache", "purge", "--prefix", "abc", "--json", ...auth)).toMatchObject({
      ok: true,
      out: "{\n  \"deleted\": 0\n}"
    })
    expect(await cli("manage", "cache", "purge", ...auth)).toMatchObject({
      ok: false,
      err: "llm-proxy: pass exactly one of --method with --url, --prefix, or --all"
    })
    expect(await cli("manage", "cache", "purge", "--method", "GET", ...auth)).toMatchObject({
      ok: false,
      err: "llm-proxy: method and url are required"
    })
    const off = ["--manage-api-base-url", disabled.url, "--management-token", disabled.token]
    expect(await cli("manage", "cache", "purge", "--all", ...off)).toMatchObject({
      ok: false,
      err: "llm-proxy: caching is disabled"
    })
  })
})
