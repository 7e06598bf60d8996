/**
 * The response cache through the real proxy (serve stack on SQLite) and the in-process mock upstream:
 * docs/behaviour.md scenarios 74–95 and 99–100.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import {
  call,
  chatBody,
  eventually,
  type ProjectAndToken,
  projectAndToken,
  sleep,
  type Stack,
  startStack
} from "../proxy/stack.js"
import { chatChunks, handler, json, type MockUpstream, reset, sse, startMockUpstream } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { testCacheConfig } from "../support/server.js"

const sqlite = backends.find((b) => b.name === "sqlite")!

let seq = 0
/** A path no other test uses (the mock routes by path, the cache keys by path and query). */
const fresh = (base = "/v1/models") => `${base}?case=${++seq}`
const pathOf = (url: string) => url.split("?")[0]!

const upstreamCalls = (mock: MockUpstream, url: string) => mock.requests.filter((r) => r.url === url).length

const MODELS = { object: "list", data: [{ id: "gpt-4o-mini", object: "model" }] }
const publicFor = (seconds: number) => ({ "cache-control": `public, max-age=${seconds}` })

describe("response cache through the proxy (in-memory)", () => {
  let backend: BackendInstance
  let stack: Stack
  let mock: MockUpstream
  let a: ProjectAndToken
  let b: ProjectAndToken

  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend)
    mock = stack.mock
    a = await projectAndToken(stack.manage)
    b = await projectAndToken(stack.manage)
  })
  afterAll(async () => {
    await stack.close()
    await backend.cleanup()
  })

  const get = (url: string, token = a.token, headers: Record<string, string> = {}) =>
    call(stack.server.url, url, { token, headers })

  it("74: a public response is stored, then served from the cache without calling the upstream", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    const first = await get(url)
    expect(first.status).toBe(200)
    expect(first.headers["cache-status"]).toBe("llm-proxy; stored")
    expect(first.headers["x-proxy-cache"]).toBe("stored")
    expect(first.headers["x-proxy-cache-key"]).toMatch(/^[0-9a-f]{80}$/)
    const second = await get(url)
    expect(second.status).toBe(200)
    expect(second.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(second.headers["x-proxy-cache"]).toBe("hit")
    expect(second.headers["x-proxy-cache-key"]).toBe(first.headers["x-proxy-cache-key"])
    expect(second.headers["content-type"]).toBe("application/json")
    expect(second.text).toBe(first.text)
    expect(upstreamCalls(mock, url)).toBe(1)
  })

  it("75: no cache headers on either side → never stored, every answer a miss", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS))
    for (let i = 0; i < 2; i++) {
      const r = await get(url)
      expect(r.headers["cache-status"]).toBe("llm-proxy; miss")
      expect(r.headers["x-proxy-cache"]).toBeUndefined()
      expect(r.headers["x-cache-debug"]).toBe("ttl-zero")
    }
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("76: client opt-in (public, max-age) stores a silent upstream's answer (forced), then hits", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS))
    const optIn = { "cache-control": "public, max-age=30" }
    const first = await get(url, a.token, optIn)
    expect(first.headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    expect(first.headers["x-proxy-cache"]).toBe("stored")
    const second = await get(url, a.token, optIn)
    expect(second.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(second.headers["cache-control"]).toBe("public, max-age=30")
    expect(upstreamCalls(mock, url)).toBe(1)
  })

  it.each(["private", "no-store", "no-cache"])("77: opt-in, but the upstream says %s → not stored", async (cc) => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: { "cache-control": cc } }))
    const optIn = { "cache-control": "public, max-age=30" }
    const first = await get(url, a.token, optIn)
    expect(first.headers["cache-status"]).toBe("llm-proxy; miss")
    expect(first.headers["x-cache-debug"]).toBe(cc)
    await get(url, a.token, optIn)
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("78: POST without opt-in is never cached, whatever the upstream says", async () => {
    const url = fresh("/v1/chat/completions")
    mock.route(pathOf(url), json({ id: "x" }, { headers: publicFor(60) }))
    for (let i = 0; i < 2; i++) {
      const r = await call(stack.server.url, url, { token: a.token, body: chatBody() })
      expect(r.status).toBe(200)
      expect(r.headers["x-proxy-cache"]).toBeUndefined()
    }
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("79: opted-in POST: same body → hit; other body → miss; other max-age → miss", async () => {
    const url = fresh("/v1/chat/completions")
    mock.route(pathOf(url), json({ id: "completion" }))
    const post = (body: unknown, maxAge = 60) =>
      call(stack.server.url, url, { token: a.token, body, headers: { "cache-control": `public, max-age=${maxAge}` } })
    expect((await post(chatBody())).headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    expect((await post(chatBody())).headers["cache-status"]).toBe("llm-proxy; hit")
    expect((await post(chatBody({ temperature: 0.5 }))).headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    expect((await post(chatBody(), 61)).headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    expect(upstreamCalls(mock, url)).toBe(3)
  })

  it("80: a 404 is not stored even when public", async () => {
    const url = fresh()
    mock.route(pathOf(url), json({ error: "nope" }, { status: 404, headers: publicFor(60) }))
    const first = await get(url)
    expect(first.status).toBe(404)
    expect(first.headers["x-cache-debug"]).toBe("status-not-cacheable")
    await get(url)
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("81: different Accept-Language values are separate entries", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      handler((req, res) => {
        const body = JSON.stringify({ lang: req.headers["accept-language"] })
        res.writeHead(200, {
          "content-type": "application/json",
          "cache-control": "public, max-age=60",
          vary: "Accept-Language"
        })
        res.end(body)
      })
    )
    const de = await get(url, a.token, { "accept-language": "de" })
    const fr = await get(url, a.token, { "accept-language": "fr" })
    expect([de.headers["cache-status"], fr.headers["cache-status"]]).toEqual(["llm-proxy; stored", "llm-proxy; stored"])
    const de2 = await get(url, a.token, { "accept-language": "de" })
    const fr2 = await get(url, a.token, { "accept-language": "fr" })
    expect([de2.json, fr2.json]).toEqual([{ lang: "de" }, { lang: "fr" }])
    expect([de2.headers["cache-status"], fr2.headers["cache-status"]]).toEqual(["llm-proxy; hit", "llm-proxy; hit"])
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("Vary on a header outside the key: a request that differs on it is not served the entry", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      handler((req, res) => {
        res.writeHead(200, {
          "content-type": "application/json",
          "cache-control": "public, max-age=60",
          vary: "OpenAI-Beta"
        })
        res.end(JSON.stringify({ beta: req.headers["openai-beta"] }))
      })
    )
    await get(url, a.token, { "openai-beta": "assistants=v1" })
    expect((await get(url, a.token, { "openai-beta": "assistants=v1" })).headers["cache-status"]).toBe("llm-proxy; hit")
    const other = await get(url, a.token, { "openai-beta": "assistants=v2" })
    expect(other.json).toEqual({ beta: "assistants=v2" })
    expect(other.headers["cache-status"]).not.toBe("llm-proxy; hit")
  })

  it("82: an entry past its lifetime is a miss and is stored again", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(1) }))
    expect((await get(url)).headers["cache-status"]).toBe("llm-proxy; stored")
    expect((await get(url)).headers["cache-status"]).toBe("llm-proxy; hit")
    await sleep(1_100)
    expect((await get(url)).headers["cache-status"]).toBe("llm-proxy; stored")
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("83: If-None-Match matching the stored ETag → 304 from the cache", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: { ...publicFor(60), etag: "\"abc\"" } }))
    await get(url)
    const r = await get(url, a.token, { "if-none-match": "\"abc\"" })
    expect(r.status).toBe(304)
    expect(r.text).toBe("")
    expect(r.headers["cache-status"]).toBe("llm-proxy; conditional-hit")
    expect(r.headers["x-proxy-cache"]).toBe("conditional-hit")
    expect(r.headers["etag"]).toBe("\"abc\"")
    const stale = await get(url, a.token, { "if-none-match": "\"old\"" })
    expect(stale.status).toBe(200)
    expect(stale.headers["cache-status"]).toBe("llm-proxy; hit")
    const lm = fresh()
    mock.route(
      pathOf(lm),
      json(MODELS, { headers: { ...publicFor(60), "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT" } })
    )
    await get(lm)
    expect((await get(lm, a.token, { "if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT" })).status).toBe(304)
    expect(upstreamCalls(mock, url)).toBe(1)
    expect(upstreamCalls(mock, lm)).toBe(1)
  })

  it("84: client no-cache → revalidated upstream; the upstream's 304 refreshes the entry and the client gets the cached 200", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      handler((req, res) => {
        if (req.headers["if-none-match"] === "\"v1\"") {
          res.writeHead(304, { etag: "\"v1\"", "cache-control": "public, max-age=60" })
          return res.end()
        }
        res.writeHead(200, { "content-type": "application/json", etag: "\"v1\"", "cache-control": "public, max-age=1" })
        res.end(JSON.stringify(MODELS))
      })
    )
    const first = await get(url)
    expect(first.headers["cache-status"]).toBe("llm-proxy; stored")
    const revalidated = await get(url, a.token, { "cache-control": "no-cache" })
    expect(revalidated.status).toBe(200)
    expect(revalidated.text).toBe(first.text)
    expect(revalidated.headers["cache-status"]).toBe("llm-proxy; revalidated")
    expect(mock.requests.filter((r) => r.url === url)[1]!.headers["if-none-match"]).toBe("\"v1\"")
    // the 304 gave the entry a new lifetime of 60 s: still a hit after the original 1 s
    await sleep(1_100)
    const later = await get(url)
    expect(later.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(later.text).toBe(first.text)
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("84b: a client's own conditional with no-cache gets the upstream's 304 unchanged", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      handler((req, res) => {
        if (req.headers["if-none-match"] !== undefined) {
          res.writeHead(304, { etag: "\"v2\"" })
          return res.end()
        }
        res.writeHead(200, {
          "content-type": "application/json",
          etag: "\"v2\"",
          "cache-control": "public, max-age=60"
        })
        res.end("{}")
      })
    )
    await get(url)
    const r = await get(url, a.token, { "cache-control": "no-cache", "if-none-match": "\"other\"" })
    expect(r.status).toBe(304)
    // and a revalidation the upstream answers with a full 200 replaces the entry
    const full = await get(url, a.token, { "cache-control": "no-cache" })
    expect(full.status).toBe(200)
  })

  it("84c: an upstream 304 that forbids storing drops the entry; the client still gets the 200", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      handler((req, res) => {
        if (req.headers["if-none-match"] !== undefined) {
          res.writeHead(304, { etag: "\"v3\"", "cache-control": "no-store" })
          return res.end()
        }
        res.writeHead(200, {
          "content-type": "application/json",
          etag: "\"v3\"",
          "cache-control": "public, max-age=60"
        })
        res.end("{\"v\":3}")
      })
    )
    await get(url)
    const r = await get(url, a.token, { "cache-control": "no-cache" })
    expect(r.status).toBe(200)
    expect(r.json).toEqual({ v: 3 })
    expect(r.headers["cache-status"]).toBe("llm-proxy; revalidated")
    expect((await get(url)).headers["cache-status"]).toBe("llm-proxy; stored")
  })

  it("repeated upstream headers are replayed on a hit", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: { ...publicFor(60), link: ["<a>; rel=a", "<b>; rel=b"] } }))
    const first = await get(url)
    const hit = await get(url)
    expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(hit.headers["link"]).toBe(first.headers["link"])
    expect(hit.headers["link"]).toContain("<b>; rel=b")
  })

  it("85: a hit takes quota like a forwarded request; request_count counts every answer, cache_hit_count the hits", async () => {
    const limited = await projectAndToken(stack.manage, { max_requests: 3 })
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    expect((await get(url, limited.token)).headers["cache-status"]).toBe("llm-proxy; stored")
    for (let i = 0; i < 2; i++) {
      const hit = await get(url, limited.token)
      expect(hit.status).toBe(200)
      expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
    }
    // the quota is spent: the cached URL is refused like any other
    for (const u of [url, fresh()]) {
      const r = await get(u, limited.token)
      expect(r.status).toBe(429)
      expect(proxyError(r.json).description).toBe("request quota (max_requests) exhausted")
      expect(r.headers["cache-status"]).toBeUndefined()
    }
    await eventually(async () =>
      (await stack.manage.get(`/manage/tokens/${limited.tokenId}`)).json.cache_hit_count === 2
    )
    expect((await stack.manage.get(`/manage/tokens/${limited.tokenId}`)).json.request_count).toBe(3)
    expect(upstreamCalls(mock, url)).toBe(1)
  })

  it("85: an unlimited token's request_count counts its hits too", async () => {
    const t = await projectAndToken(stack.manage)
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    for (let i = 0; i < 3; i++) expect((await get(url, t.token)).status).toBe(200)
    await eventually(async () => {
      const row = (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json
      return row.request_count === 3 && row.cache_hit_count === 2
    })
  })

  it("max_requests=2: exactly two 200s, then 429s, however the cache is used (forced POST, GET hits, conditionals)", async () => {
    const limited = await projectAndToken(stack.manage, { max_requests: 2 })
    const url = fresh("/v1/chat/completions")
    mock.route(pathOf(url), json({ id: "c", object: "chat.completion" }, { headers: { etag: "\"v1\"" } }))
    const forced = { "cache-control": "public, max-age=31536000" }
    const post = () => call(stack.server.url, url, { token: limited.token, body: chatBody(), headers: forced })
    const statuses: Array<number> = []
    const first = await post()
    statuses.push(first.status)
    expect(first.headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    const second = await post()
    statuses.push(second.status)
    expect(second.headers["cache-status"]).toBe("llm-proxy; hit")
    for (let i = 0; i < 3; i++) statuses.push((await post()).status)
    const models = fresh()
    mock.route(pathOf(models), json(MODELS, { headers: { ...publicFor(60), etag: "\"m\"" } }))
    statuses.push((await get(models, limited.token)).status)
    statuses.push((await get(models, limited.token, { "if-none-match": "\"m\"" })).status)
    expect(statuses).toEqual([200, 200, 429, 429, 429, 429, 429])
    expect(mock.requests.filter((r) => r.url === url || r.url === models)).toHaveLength(1)
  })

  it("window rate limits apply to hits: the third request in the window is a 429, not a hit", async () => {
    const t = await projectAndToken(stack.manage)
    expect(
      (await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { rate_limit: { requests: 2, window_seconds: 60 } }))
        .status
    ).toBe(200)
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    expect((await get(url, t.token)).headers["cache-status"]).toBe("llm-proxy; stored")
    expect((await get(url, t.token)).headers["cache-status"]).toBe("llm-proxy; hit")
    const third = await get(url, t.token)
    expect(third.status).toBe(429)
    expect(proxyError(third.json).description).toBe("token rate limit exceeded")
    expect(third.headers["retry-after"]).toMatch(/^\d+$/)
  })

  it("a client-forced lifetime is capped by HTTP_CACHE_CLIENT_MAX_TTL (default 300 s)", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS))
    const year = { "cache-control": "public, max-age=31536000" }
    expect((await get(url, a.token, year)).headers["cache-status"]).toBe("llm-proxy; stored (forced)")
    const hit = await get(url, a.token, year)
    expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(hit.headers["cache-control"]).toBe("public, max-age=300")
    // a shorter one is kept as asked
    const short = fresh()
    mock.route(pathOf(short), json(MODELS))
    await get(short, a.token, { "cache-control": "public, max-age=30" })
    expect((await get(short, a.token, { "cache-control": "public, max-age=30" })).headers["cache-control"]).toBe(
      "public, max-age=30"
    )
  })

  it("86: a cached URL with a revoked, expired or unknown token → 401, never the cached answer", async () => {
    const t = await projectAndToken(stack.manage)
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    await get(url, t.token)
    expect((await get(url, t.token)).headers["cache-status"]).toBe("llm-proxy; hit")
    const unknown = await get(url, `sk-${"A".repeat(43)}`)
    expect(unknown.status).toBe(401)
    expect(proxyError(unknown.json).code).toBe("token_not_found")
    expect(unknown.headers["cache-status"]).toBeUndefined()

    const other = await stack.manage.post("/manage/tokens", { project_id: t.projectId, duration_minutes: 60 })
    await get(url, other.json.token) // warm and a hit
    expect((await stack.manage.patch(`/manage/tokens/${other.json.id}`, { expires_at: "2020-01-01T00:00:00Z" })).status)
      .toBe(200)
    const expired = await get(url, other.json.token)
    expect(expired.status).toBe(401)
    expect(proxyError(expired.json).code).toBe("token_expired")

    expect((await stack.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
    const revoked = await get(url, t.token)
    expect(revoked.status).toBe(401)
    expect(proxyError(revoked.json).code).toBe("token_inactive")
    expect(upstreamCalls(mock, url)).toBe(1)
  })

  it("hits still apply the project-active check", async () => {
    const t = await projectAndToken(stack.manage)
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    await get(url, t.token)
    await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false })
    const r = await get(url, t.token)
    expect(r.status).toBe(403)
    expect(proxyError(r.json).code).toBe("project_inactive")
  })

  it("87: project B never sees project A's entry", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    const fromA = await get(url, a.token)
    const fromB = await get(url, b.token)
    expect(fromB.headers["cache-status"]).toBe("llm-proxy; stored")
    expect(fromB.headers["x-proxy-cache-key"]).not.toBe(fromA.headers["x-proxy-cache-key"])
    expect((await get(url, b.token)).headers["cache-status"]).toBe("llm-proxy; hit")
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("88: a hit has no Set-Cookie, a fresh Date and the new request's own X-Request-ID", async () => {
    const url = fresh()
    mock.route(
      pathOf(url),
      json(MODELS, {
        headers: { ...publicFor(60), "set-cookie": "session=secret", date: "Mon, 01 Jan 2024 00:00:00 GMT" }
      })
    )
    const first = await get(url, a.token, { "x-request-id": "first-request" })
    expect(first.headers["x-request-id"]).toBe("first-request")
    await sleep(1_000)
    const hit = await get(url, a.token, { "x-request-id": "second-request", origin: "https://a.example" })
    expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
    expect(hit.headers["set-cookie"]).toBeUndefined()
    expect(hit.headers["x-request-id"]).toBe("second-request")
    expect(Math.abs(Date.parse(hit.headers["date"]!) - Date.now())).toBeLessThan(5_000)
    expect(Number(hit.headers["age"])).toBeGreaterThanOrEqual(1)
    expect(hit.headers["server-timing"]).toMatch(/^proxy;dur=/)
    expect(hit.headers["access-control-allow-origin"]).toBe("https://a.example")
    expect(hit.headers["vary"]).toBe("Origin")
    const anonymous = await get(url)
    expect(anonymous.headers["x-request-id"]).toMatch(/^[0-9a-f-]{36}$/)
    expect(anonymous.headers["access-control-allow-origin"]).toBeUndefined()
  })

  it("89: Vary: * is never stored", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: { ...publicFor(60), vary: "*" } }))
    expect((await get(url)).headers["x-cache-debug"]).toBe("vary-star")
    await get(url)
    expect(upstreamCalls(mock, url)).toBe(2)
  })

  it("90: exact purge deletes the URL's entries (also those stored with Accept headers)", async () => {
    const path = "/v1/models"
    mock.route(path, json(MODELS, { headers: publicFor(60) }))
    const accept = { accept: "application/json" }
    expect((await get(path, a.token, accept)).headers["x-proxy-cache"]).toMatch(/stored|hit/)
    expect((await get(path, a.token, accept)).headers["cache-status"]).toBe("llm-proxy; hit")
    const purged = await stack.manage.post("/manage/cache/purge", { method: "GET", url: path })
    expect(purged.json).toEqual({ deleted: true })
    expect((await get(path, a.token, accept)).headers["cache-status"]).toBe("llm-proxy; stored")
    expect((await stack.manage.post("/manage/cache/purge", { method: "GET", url: path, project_id: b.projectId })).json)
      .toEqual({
        deleted: false
      })
    expect((await stack.manage.post("/manage/cache/purge", { method: "GET", url: path })).json).toEqual({
      deleted: true
    })
    expect((await stack.manage.post("/manage/cache/purge", { method: "GET", url: path })).json).toEqual({
      deleted: false
    })
  })

  it("91: prefix purge with the first characters of X-PROXY-CACHE-KEY", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    const key = (await get(url)).headers["x-proxy-cache-key"] as string
    expect((await stack.manage.post("/manage/cache/purge", { prefix: key.slice(0, 40) })).json).toEqual({ deleted: 1 })
    expect((await get(url)).headers["cache-status"]).toBe("llm-proxy; stored")
  })

  it("purge of everything a project stored, and of everything", async () => {
    const url = fresh()
    mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
    await get(url, a.token)
    await get(url, b.token)
    expect((await stack.manage.post("/manage/cache/purge", { all: true, project_id: b.projectId })).json.deleted)
      .toBeGreaterThanOrEqual(1)
    expect((await get(url, a.token)).headers["cache-status"]).toBe("llm-proxy; hit")
    expect((await get(url, b.token)).headers["cache-status"]).toBe("llm-proxy; stored")
    expect((await stack.manage.post("/manage/cache/purge", { all: true })).json.deleted).toBeGreaterThanOrEqual(2)
    expect((await get(url, a.token)).headers["cache-status"]).toBe("llm-proxy; stored")
  })

  it("requests that are never looked up (a POST without opt-in) pass through untouched", async () => {
    const url = fresh("/v1/embeddings")
    mock.route(pathOf(url), json({ data: [] }, { headers: publicFor(60) }))
    const r = await call(stack.server.url, url, { token: a.token, body: { input: "x" } })
    expect(r.status).toBe(200)
    expect(r.headers["cache-status"]).toBeUndefined()
  })

  it("99 (flag off): an SSE answer is not cached even on opt-in", async () => {
    const url = fresh()
    mock.route(pathOf(url), sse(chatChunks(["a", "b"])))
    const optIn = { "cache-control": "public, max-age=60" }
    const first = await get(url, a.token, optIn)
    expect(first.headers["content-type"]).toContain("text/event-stream")
    expect(first.headers["x-cache-debug"]).toBe("streaming-response")
    await get(url, a.token, optIn)
    expect(upstreamCalls(mock, url)).toBe(2)
  })
})

describe("response cache: bounds, streams and switches", () => {
  let backend: BackendInstance
  let mock: MockUpstream
  beforeAll(async () => {
    backend = await sqlite.create()
    mock = await startMockUpstream()
  })
  afterAll(async () => {
    await mock.close()
    await backend.cleanup()
  })

  it("94: filled past HTTP_CACHE_MAX_BYTES, the oldest entries are evicted and the rest still hit", async () => {
    const stack = await startStack(
      backend,
      { cache: testCacheConfig({ maxBytes: 8_192, maxObjectBytes: 2_048 }) },
      undefined,
      mock
    )
    try {
      const t = await projectAndToken(stack.manage)
      const body = { data: "x".repeat(1_000) }
      const urls = Array.from({ length: 12 }, () => fresh())
      for (const url of urls) {
        mock.route(pathOf(url), json(body, { headers: publicFor(60) }))
        expect((await call(stack.server.url, url, { token: t.token })).headers["cache-status"]).toBe(
          "llm-proxy; stored"
        )
      }
      const last = await call(stack.server.url, urls[11]!, { token: t.token })
      expect(last.headers["cache-status"]).toBe("llm-proxy; hit")
      const oldest = await call(stack.server.url, urls[0]!, { token: t.token })
      expect(oldest.headers["cache-status"]).toBe("llm-proxy; stored")
      // an answer over HTTP_CACHE_MAX_OBJECT_BYTES is not stored
      const big = fresh()
      mock.route(pathOf(big), json({ data: "y".repeat(3_000) }, { headers: publicFor(60) }))
      expect((await call(stack.server.url, big, { token: t.token })).headers["x-cache-debug"]).toBe("too-large")
    } finally {
      await stack.close()
    }
  })

  it("HTTP_CACHE_DEFAULT_TTL is the lifetime of a public answer that names none", async () => {
    const stack = await startStack(backend, { cache: testCacheConfig({ defaultTtlSeconds: 1 }) }, undefined, mock)
    try {
      const t = await projectAndToken(stack.manage)
      const url = fresh()
      mock.route(pathOf(url), json(MODELS, { headers: { "cache-control": "public" } }))
      expect((await call(stack.server.url, url, { token: t.token })).headers["cache-status"]).toBe("llm-proxy; stored")
      const hit = await call(stack.server.url, url, { token: t.token })
      expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
      await sleep(1_100)
      expect((await call(stack.server.url, url, { token: t.token })).headers["cache-status"]).toBe("llm-proxy; stored")
    } finally {
      await stack.close()
    }
  })

  it("HTTP_CACHE_CLIENT_MAX_TTL: a forced one-year entry lives at most the cap; 0 = clients cannot force caching", async () => {
    const capped = await startStack(backend, { cache: testCacheConfig({ clientMaxTtlSeconds: 1 }) }, undefined, mock)
    try {
      const t = await projectAndToken(capped.manage)
      const url = fresh()
      mock.route(pathOf(url), json(MODELS))
      const year = { "cache-control": "public, max-age=31536000" }
      expect((await call(capped.server.url, url, { token: t.token, headers: year })).headers["cache-status"]).toBe(
        "llm-proxy; stored (forced)"
      )
      const hit = await call(capped.server.url, url, { token: t.token, headers: year })
      expect(hit.headers["cache-status"]).toBe("llm-proxy; hit")
      expect(hit.headers["cache-control"]).toBe("public, max-age=1")
      await sleep(1_100)
      expect((await call(capped.server.url, url, { token: t.token, headers: year })).headers["cache-status"]).toBe(
        "llm-proxy; stored (forced)"
      )
      expect(upstreamCalls(mock, url)).toBe(2)
    } finally {
      await capped.close()
    }
    const off = await startStack(backend, { cache: testCacheConfig({ clientMaxTtlSeconds: 0 }) }, undefined, mock)
    try {
      const t = await projectAndToken(off.manage)
      const url = fresh()
      mock.route(pathOf(url), json(MODELS))
      const year = { "cache-control": "public, max-age=31536000" }
      for (let i = 0; i < 2; i++) {
        expect((await call(off.server.url, url, { token: t.token, headers: year })).headers["x-cache-debug"]).toBe(
          "ttl-zero"
        )
      }
      const chat = fresh("/v1/chat/completions")
      mock.route(pathOf(chat), json({ id: "c" }))
      for (let i = 0; i < 2; i++) {
        const r = await call(off.server.url, chat, { token: t.token, body: chatBody(), headers: year })
        expect(r.headers["cache-status"]).toBeUndefined()
      }
      expect(upstreamCalls(mock, url) + upstreamCalls(mock, chat)).toBe(4)
      // the upstream's own lifetime still counts
      const pub = fresh()
      mock.route(pathOf(pub), json(MODELS, { headers: publicFor(60) }))
      await call(off.server.url, pub, { token: t.token })
      expect((await call(off.server.url, pub, { token: t.token })).headers["cache-status"]).toBe("llm-proxy; hit")
    } finally {
      await off.close()
    }
  })

  it("93: HTTP_CACHE_ENABLED=false → no cache headers, nothing cached", async () => {
    const stack = await startStack(backend, { cache: testCacheConfig({ enabled: false }) }, undefined, mock)
    try {
      const t = await projectAndToken(stack.manage)
      const url = fresh()
      mock.route(pathOf(url), json(MODELS, { headers: publicFor(60) }))
      for (let i = 0; i < 2; i++) {
        const r = await call(stack.server.url, url, { token: t.token })
        expect(r.status).toBe(200)
        expect(r.headers["cache-status"]).toBeUndefined()
        expect(r.headers["x-proxy-cache"]).toBeUndefined()
      }
      expect(upstreamCalls(mock, url)).toBe(2)
    } finally {
      await stack.close()
    }
  })

  it("99/100: with HTTP_CACHE_STREAM_RESPONSES, a completed SSE stream is replayed byte-identical; one over the bound is not stored", async () => {
    const stack = await startStack(
      backend,
      { cache: testCacheConfig({ streamResponses: true, maxObjectBytes: 4_096, maxBytes: 65_536 }) },
      undefined,
      mock
    )
    try {
      const t = await projectAndToken(stack.manage)
      const optIn = { "cache-control": "public, max-age=60" }
      const url = fresh()
      mock.route(pathOf(url), sse(chatChunks(["Hel", "lo", "!"]), { intervalMs: 20 }))
      const first = await call(stack.server.url, url, { token: t.token, headers: optIn })
      expect(first.headers["cache-status"]).toBe("llm-proxy; stored (forced)")
      const second = await call(stack.server.url, url, { token: t.token, headers: optIn })
      expect(second.headers["cache-status"]).toBe("llm-proxy; hit")
      expect(second.headers["content-type"]).toContain("text/event-stream")
      expect(second.text).toBe(first.text)
      expect(second.text).toContain("data: [DONE]")
      expect(upstreamCalls(mock, url)).toBe(1)

      const long = fresh()
      mock.route(pathOf(long), sse(Array.from({ length: 20 }, (_, i) => `data: ${"z".repeat(300)}${i}\n\n`)))
      const big = await call(stack.server.url, long, { token: t.token, headers: optIn })
      expect(big.text.length).toBeGreaterThan(4_096)
      const again = await call(stack.server.url, long, { token: t.token, headers: optIn })
      expect(again.headers["cache-status"]).not.toBe("llm-proxy; hit")
      expect(again.text).toBe(big.text)
      expect(upstreamCalls(mock, long)).toBe(2)

      // an upstream that dies mid-stream leaves nothing in the cache
      const cut = fresh()
      mock.route(pathOf(cut), reset(chatChunks(["par", "tial"]).slice(0, 2)))
      await call(stack.server.url, cut, { token: t.token, headers: optIn }).catch(() => undefined)
      mock.route(pathOf(cut), sse(chatChunks(["whole"])))
      const whole = await call(stack.server.url, cut, { token: t.token, headers: optIn })
      expect(whole.headers["cache-status"]).toBe("llm-proxy; stored (forced)")
      expect(whole.text).toContain("whole")
    } finally {
      await stack.close()
    }
  })
})
