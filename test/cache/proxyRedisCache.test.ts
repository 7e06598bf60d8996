/**
 * Scenario 95: two proxy instances on one database share the Redis response cache — stored through one, hit
 * through the other; purge through either removes it for both. Plus a Redis outage seen through the proxy:
 * requests keep working (misses), and caching resumes when Redis is back.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, eventually, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { json, type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { testCacheConfig } from "../support/server.js"
import { startTcpProxy, type TcpProxy } from "../support/tcpProxy.js"

const sqlite = backends.find((b) => b.name === "sqlite")!
const prefix = `llmproxy:test:proxycache:${crypto.randomUUID()}:`
const MODELS = { object: "list", data: [{ id: "gpt-4o-mini" }] }

describe.skipIf(!redisUrl)("Redis response cache shared by two proxy instances", () => {
  let backend: BackendInstance
  let mock: MockUpstream
  let one: Stack
  let two: Stack
  let tcp: TcpProxy
  let flaky: Stack

  beforeAll(async () => {
    backend = await sqlite.create()
    mock = await startMockUpstream()
    const cache = testCacheConfig({ backend: "redis", redisKeyPrefix: prefix })
    one = await startStack(backend, { cache, redisUrl: redisUrl! }, undefined, mock)
    two = await startStack(backend, { cache, redisUrl: redisUrl! }, undefined, mock)
    const target = new URL(redisUrl!)
    tcp = await startTcpProxy(target.hostname, Number(target.port || 6379))
    flaky = await startStack(
      backend,
      { cache: testCacheConfig({ backend: "redis", redisKeyPrefix: `${prefix}flaky:` }), redisUrl: tcp.url("redis") },
      undefined,
      mock
    )
  })
  afterAll(async () => {
    await Promise.all([one.close(), two.close(), flaky.close()])
    await tcp.close()
    await mock.close()
    await backend.cleanup()
    await flushRedisPrefix(redisUrl!, prefix)
  })

  it("95: stored through one instance, a hit through the other; purge through either clears both", async () => {
    const t = await projectAndToken(one.manage)
    const url = "/v1/models?shared=1"
    mock.route("/v1/models", json(MODELS, { headers: { "cache-control": "public, max-age=60" } }))
    const stored = await call(one.server.url, url, { token: t.token })
    expect(stored.headers["cache-status"]).toBe("llm-proxy; stored")
    // the write is fire-and-forget: wait until the other instance sees it
    let hit = await call(two.server.url, url, { token: t.token })
    await eventually(async () => {
      hit = await call(two.server.url, url, { token: t.token })
      return hit.headers["cache-status"] === "llm-proxy; hit"
    })
    expect(hit.text).toBe(stored.text)
    expect(hit.headers["x-proxy-cache-key"]).toBe(stored.headers["x-proxy-cache-key"])
    const upstreamBefore = mock.requests.length

    const purged = await two.manage.post("/manage/cache/purge", { method: "GET", url })
    expect(purged.json).toEqual({ deleted: true })
    expect((await call(one.server.url, url, { token: t.token })).headers["cache-status"]).toBe("llm-proxy; stored")
    expect(mock.requests.length).toBe(upstreamBefore + 1)
  })

  it("a Redis outage degrades to misses through the proxy, and caching resumes after it", async () => {
    const t = await projectAndToken(flaky.manage)
    const url = "/v1/models?outage=1"
    mock.route("/v1/models", json(MODELS, { headers: { "cache-control": "public, max-age=60" } }))
    await call(flaky.server.url, url, { token: t.token })
    await eventually(async () =>
      (await call(flaky.server.url, url, { token: t.token })).headers["cache-status"] === "llm-proxy; hit"
    )

    await tcp.stop()
    for (let i = 0; i < 3; i++) {
      const r = await call(flaky.server.url, url, { token: t.token })
      expect(r.status).toBe(200)
      expect(r.json).toEqual(MODELS)
      expect(r.headers["cache-status"]).not.toBe("llm-proxy; hit")
    }
    const purge = await flaky.manage.post("/manage/cache/purge", { all: true })
    expect(purge.status).toBe(503)
    expect(purge.json).toEqual({ error: "the Redis response cache is unavailable" })

    await tcp.start()
    await eventually(
      async () => (await call(flaky.server.url, url, { token: t.token })).headers["cache-status"] === "llm-proxy; hit",
      15_000,
      200
    )
  })
})
