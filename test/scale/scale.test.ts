/**
 * Several `serve` processes (the built binary) on one PostgreSQL and one Redis, all started by this suite on
 * loopback with the environment of docs/deployment.md (no INVALIDATION_BACKEND: its default carries invalidations
 * over PostgreSQL): cross-instance invalidation, shared quotas and window limits, and what happens when Redis or
 * PostgreSQL stops and comes back. `npm run test:scale` (not part of `npm test`). The same without Redis:
 * postgresOnly.test.ts.
 *
 *   A, B  TOKEN_CACHE_TTL=10m: a cached token would be served for minutes without the invalidation channel
 *   C     TOKEN_CACHE_TTL=1s, TOKEN_CACHE_STALE_TTL=60s: for the database outage
 *   D     RATE_LIMIT_FAILURE_MODE=closed
 *   R1, R2 INVALIDATION_BACKEND=redis, for the Redis outage (started in that test)
 */
import { rmSync } from "node:fs"
import { createRequire } from "node:module"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { newManagementToken } from "../support/managementToken.js"
import { chatChunks, type MockUpstream, sse, startMockUpstream } from "../support/mockUpstream.js"
import {
  built,
  chat,
  haveServers,
  type Instance,
  management,
  type Postgres,
  type RedisServer,
  sleep,
  startInstance,
  startPostgres,
  startRedis,
  tempRoot,
  waitFor
} from "./harness.js"

interface PgClient {
  connect(): Promise<void>
  query(sql: string, params?: ReadonlyArray<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
  end(): Promise<void>
}
const { Client } = createRequire(import.meta.url)("pg") as { Client: new(o: { connectionString: string }) => PgClient }

const MT = newManagementToken("scale-suite")

/** A chat completion with extra request headers (the cache opt-in). */
const cached = async (url: string, token: string, headers: Record<string, string>) => {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json", ...headers },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "cache me" }] })
  })
  return { status: r.status, headers: r.headers, text: await r.text() }
}

describe.skipIf(!built || !haveServers())("several instances on PostgreSQL and Redis", () => {
  let root: string
  let pg: Postgres
  let redis: RedisServer
  let mock: MockUpstream
  let A: Instance, B: Instance, C: Instance, D: Instance
  let env: Record<string, string>
  const sql = async (statement: string, params: ReadonlyArray<unknown> = []) => {
    const c = new Client({ connectionString: pg.url })
    await c.connect()
    try {
      return (await c.query(statement, params)).rows
    } finally {
      await c.end()
    }
  }
  const count = async (tokenId: string) =>
    Number((await sql("SELECT request_count FROM tokens WHERE id = $1", [tokenId]))[0]!["request_count"])

  beforeAll(async () => {
    root = tempRoot()
    pg = await startPostgres(root)
    redis = await startRedis(root)
    mock = await startMockUpstream()
    env = {
      DATABASE_URL: pg.url,
      REDIS_URL: redis.url,
      RATE_LIMIT_BACKEND: "redis",
      MANAGEMENT_TOKEN: MT,
      ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64"),
      OPENAI_API_URL: mock.url,
      USAGE_FLUSH_INTERVAL: "200ms",
      TOKEN_CACHE_TTL: "10m",
      LLM_PROXY_EVENT_BUS: "redis-streams",
      HTTP_CACHE_BACKEND: "redis",
      LOG_LEVEL: "info"
    }
    // One first, so the migrations run once; then the rest side by side.
    A = await startInstance(env)
    ;[B, C, D] = await Promise.all([
      startInstance(env),
      startInstance({ ...env, TOKEN_CACHE_TTL: "1s", TOKEN_CACHE_STALE_TTL: "60s" }),
      startInstance({ ...env, RATE_LIMIT_FAILURE_MODE: "closed" })
    ])
  }, 120_000)

  afterAll(async () => {
    await Promise.all([A, B, C, D].map((i) => i?.stop()))
    await mock?.close()
    await redis?.destroy()
    pg?.destroy()
    if (root) rmSync(root, { recursive: true, force: true })
  }, 60_000)

  const on = (i: Instance) => management(i.url, MT)

  describe("cross-instance invalidation", () => {
    it("revoke on A → the next call on B (which has the token cached) is 401 token_inactive", async () => {
      const p = await on(A).project("revoke")
      const t = await on(A).token(p.id)
      expect((await chat(B.url, t.token)).status).toBe(200)
      expect((await chat(B.url, t.token)).status).toBe(200)
      expect((await on(A).call("DELETE", `/manage/tokens/${t.id}`)).status).toBe(204)
      const r = await chat(B.url, t.token)
      expect([r.status, r.code]).toEqual([401, "token_inactive"])
    })

    it("token PATCH on B (is_active false, then true) → C and A follow at once", async () => {
      const p = await on(A).project("patch")
      const t = await on(A).token(p.id)
      for (const i of [A, C]) expect((await chat(i.url, t.token)).status).toBe(200)
      expect((await on(B).call("PATCH", `/manage/tokens/${t.id}`, { is_active: false })).status).toBe(200)
      expect((await chat(A.url, t.token)).code).toBe("token_inactive")
      expect((await chat(C.url, t.token)).code).toBe("token_inactive")
      expect((await on(B).call("PATCH", `/manage/tokens/${t.id}`, { is_active: true })).status).toBe(200)
      expect((await chat(A.url, t.token)).status).toBe(200)
    })

    it("project deactivation on B → 403 project_inactive on A; key rotation on A → B sends the new key", async () => {
      const p = await on(A).project("rotate")
      const t = await on(A).token(p.id)
      mock.reset()
      expect((await chat(B.url, t.token)).status).toBe(200)
      expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-upstream-rotate")
      expect((await on(A).call("PATCH", `/manage/projects/${p.id}`, { api_key: "sk-upstream-rotated" })).status).toBe(
        200
      )
      expect((await chat(B.url, t.token)).status).toBe(200)
      expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-upstream-rotated")
      expect((await on(B).call("PATCH", `/manage/projects/${p.id}`, { is_active: false })).status).toBe(200)
      const r = await chat(A.url, t.token)
      expect([r.status, r.code]).toEqual([403, "project_inactive"])
    })
  })

  describe("shared limits", () => {
    it("30 concurrent calls over A and B against max_requests 10 → exactly 10 reach the upstream", async () => {
      const p = await on(A).project("quota")
      const t = await on(A).token(p.id, { max_requests: 10 })
      mock.reset()
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) => chat(i % 2 === 0 ? A.url : B.url, t.token))
      )
      expect(results.filter((r) => r.status === 200)).toHaveLength(10)
      expect(results.filter((r) => r.status === 429 && r.code === "rate_limit_exceeded")).toHaveLength(20)
      expect(mock.requests).toHaveLength(10)
      expect(await count(t.id)).toBe(10)
    })

    it("a window limit of 20 per minute over three instances admits exactly 20", async () => {
      const p = await on(A).project("window")
      const t = await on(A).token(p.id)
      await sql("UPDATE tokens SET rate_limit_requests = 20, rate_limit_window_seconds = 60 WHERE id = $1", [t.id])
      // The grant is cached with the limit on the next load: make every instance re-read it.
      await on(A).call("PATCH", `/manage/tokens/${t.id}`, { is_active: true })
      mock.reset()
      const results = await Promise.all(Array.from({ length: 36 }, (_, i) => chat([A, B, C][i % 3]!.url, t.token)))
      expect(results.filter((r) => r.status === 200)).toHaveLength(20)
      const limited = results.filter((r) => r.status === 429)
      expect(limited).toHaveLength(16)
      expect(limited.every((r) => Number(r.headers.get("retry-after")) >= 1)).toBe(true)
      expect(mock.requests).toHaveLength(20)
    })
  })

  describe("response cache on Redis", () => {
    it("an entry stored through A is a hit through B (the upstream is not called again)", async () => {
      const p = await on(A).project("cache")
      const t = await on(A).token(p.id)
      mock.reset()
      const opt = { "cache-control": "public, max-age=60" }
      const first = await cached(A.url, t.token, opt)
      expect([first.status, first.headers.get("x-proxy-cache")]).toEqual([200, "stored"])
      expect(mock.requests).toHaveLength(1)
      let hit: Awaited<ReturnType<typeof cached>> | undefined
      await waitFor("the entry to be visible through B", async () => {
        hit = await cached(B.url, t.token, opt)
        return hit.headers.get("x-proxy-cache") === "hit"
      }, 10_000)
      expect(hit!.text).toBe(first.text)
      const seen = mock.requests.length
      expect((await cached(C.url, t.token, opt)).headers.get("x-proxy-cache")).toBe("hit")
      expect(mock.requests).toHaveLength(seen)
    })
  })

  describe("Redis stopped and restarted", () => {
    it(
      "keeps serving (fail-open; D fail-closed answers 503), invalidations still cross instances, and recovers every function",
      async () => {
        // R1, R2 carry invalidations over Redis (INVALIDATION_BACKEND=redis): the outage takes their channel away.
        const [R1, R2] = await Promise.all([
          startInstance({ ...env, INVALIDATION_BACKEND: "redis" }),
          startInstance({ ...env, INVALIDATION_BACKEND: "redis" })
        ])
        try {
          const p = await on(A).project("redis-outage")
          const limitedToken = await on(A).token(p.id)
          await sql("UPDATE tokens SET rate_limit_requests = 2, rate_limit_window_seconds = 60 WHERE id = $1", [
            limitedToken.id
          ])
          const plain = await on(A).token(p.id)
          const revoked = await on(A).token(p.id)
          const revokedOnRedis = await on(A).token(p.id)
          const behindBack = await on(A).token(p.id)
          for (const i of [A, B, D]) {
            expect((await chat(i.url, plain.token)).status).toBe(200)
            expect((await chat(i.url, revoked.token)).status).toBe(200)
          }
          expect((await chat(B.url, behindBack.token)).status).toBe(200)
          expect((await chat(R2.url, revokedOnRedis.token)).status).toBe(200)

          // Everything published so far has reached the stream (it stopped growing), so what comes after is the outage's.
          let last = -1
          await waitFor("the stream to settle", async () => {
            const now = redis.xlen("llm-proxy:events")
            const settled = now === last
            last = now
            await sleep(300)
            return settled
          })
          await redis.stop()
          let during = 0 // /v1 calls while Redis is down: each one is an event waiting in its instance's buffer
          const outage = (url: string, token: string) => {
            during++
            return chat(url, token)
          }
          // Plain and limited tokens are served; the failing limiter admits (A, B) or refuses with 503 (D).
          for (let k = 0; k < 4; k++) {
            expect((await outage(A.url, plain.token)).status).toBe(200)
            expect((await outage(B.url, limitedToken.token)).status).toBe(200)
          }
          const closed = await outage(D.url, limitedToken.token)
          expect([closed.status, closed.code]).toEqual([503, "service_unavailable"])
          expect((await outage(D.url, plain.token)).status).toBe(200)
          // The response cache is a miss (and the request goes upstream) while Redis is down.
          const miss = await cached(B.url, plain.token, { "cache-control": "public, max-age=60" })
          during++
          expect(miss.status).toBe(200)
          expect(miss.headers.get("x-proxy-cache")).not.toBe("hit")
          // Invalidations travel through PostgreSQL: a revocation through A reaches B and D, and B keeps trusting
          // its token cache (a change written behind its back is not seen: no database read per request).
          // (a revoked token's requests publish no event: not counted in `during`)
          expect((await on(A).call("DELETE", `/manage/tokens/${revoked.id}`)).status).toBe(204)
          expect((await chat(B.url, revoked.token)).code).toBe("token_inactive")
          expect((await chat(D.url, revoked.token)).code).toBe("token_inactive")
          await sql("UPDATE tokens SET is_active = false WHERE id = $1", [behindBack.id])
          expect((await outage(B.url, behindBack.token)).status).toBe(200)
          // Over Redis an invalidation cannot be delivered, so R2 must not trust what it cached: the revocation
          // through R1 applies anyway.
          expect((await on(R1).call("DELETE", `/manage/tokens/${revokedOnRedis.id}`)).status).toBe(204)
          expect((await chat(R2.url, revokedOnRedis.token)).code).toBe("token_inactive")

          await redis.start()
          // The events buffered during the outage reach the stream (the restarted Redis started empty).
          let xlen = -1
          await waitFor(
            "buffered events written to the stream",
            () => (xlen = redis.xlen("llm-proxy:events")) === during,
            20_000
          )
            .catch((e: Error) => {
              throw new Error(`${e.message}: XLEN ${xlen}, expected ${during}`)
            })
          // Recovered: R2 trusts its cache again — a change written behind its back is not seen (served from memory) …
          let probe: { id: string; token: string } | undefined
          await waitFor("R2 to trust its token cache again", async () => {
            const t = await on(R1).token(p.id)
            if ((await chat(R2.url, t.token)).status !== 200) return false
            await sql("UPDATE tokens SET is_active = false WHERE id = $1", [t.id])
            probe = t
            return (await chat(R2.url, t.token)).status === 200
          }, 30_000)
          // … and an invalidation from R1 reaches it again.
          expect((await on(R1).call("DELETE", `/manage/tokens/${probe!.id}`)).status).toBe(204)
          expect((await chat(R2.url, probe!.token)).code).toBe("token_inactive")
          // The response cache answers again: stored through A, hit through B.
          await waitFor("the cache to store again", async () => {
            await cached(A.url, plain.token, { "cache-control": "public, max-age=61" })
            return (await cached(B.url, plain.token, { "cache-control": "public, max-age=61" })).headers.get(
              "x-proxy-cache"
            ) === "hit"
          }, 20_000)
          // Window limits are enforced again, across instances.
          const again = await on(A).token(p.id)
          await sql("UPDATE tokens SET rate_limit_requests = 2, rate_limit_window_seconds = 60 WHERE id = $1", [
            again.id
          ])
          await waitFor(
            "the limiter to answer again",
            async () =>
              (await chat(D.url, plain.token)).status === 200 && (await chat(D.url, again.token)).status === 200
          )
          const rest = [await chat(A.url, again.token), await chat(B.url, again.token), await chat(C.url, again.token)]
          expect(rest.map((r) => r.status)).toEqual([200, 429, 429])
        } finally {
          await Promise.all([R1.stop(), R2.stop()])
        }
      },
      120_000
    )
  })

  describe("PostgreSQL stopped and restarted", () => {
    it(
      "/ready 503, validated tokens keep working, new tokens 503 service_unavailable, usage written after recovery",
      async () => {
        const p = await on(A).project("pg-outage")
        const warm = await on(A).token(p.id)
        const cold = await on(A).token(p.id)
        const quota = await on(A).token(p.id, { max_requests: 100 })
        expect((await chat(C.url, warm.token)).status).toBe(200)
        expect((await chat(C.url, quota.token)).status).toBe(200)
        await sleep(1_500) // past C's TOKEN_CACHE_TTL (1 s), inside its TOKEN_CACHE_STALE_TTL (60 s)
        await sleep(500) // the first request's usage batch is written
        expect(await count(warm.id)).toBe(1)

        pg.stop()
        expect((await fetch(`${C.url}/ready`)).status).toBe(503)
        expect((await fetch(`${A.url}/ready`)).status).toBe(503)
        let served = 0
        for (let k = 0; k < 5; k++) {
          const r = await chat(C.url, warm.token)
          expect(r.status).toBe(200)
          served++
        }
        // SSE through the outage too.
        mock.enqueue(sse(chatChunks(["a", "b"])))
        const stream = await chat(C.url, warm.token, { stream: true })
        expect(stream.status).toBe(200)
        expect(stream.text).toContain("[DONE]")
        served++
        const fresh = await chat(C.url, cold.token)
        expect([fresh.status, fresh.code]).toEqual([503, "service_unavailable"])
        // A quota needs the database (the one source of truth): 503, not an unchecked pass.
        const q = await chat(C.url, quota.token)
        expect([q.status, q.code]).toEqual([503, "service_unavailable"])
        await sleep(600) // a flush or two fails and is kept

        pg.start()
        await waitFor("C ready again", async () => (await fetch(`${C.url}/ready`)).status === 200, 30_000)
        await waitFor("A ready again", async () => (await fetch(`${A.url}/ready`)).status === 200, 30_000)
        expect((await chat(C.url, cold.token)).status).toBe(200)
        expect((await chat(A.url, cold.token)).status).toBe(200)
        expect((await chat(C.url, quota.token)).status).toBe(200)
        expect((await on(B).call("GET", `/manage/projects/${p.id}`)).status).toBe(200)
        // The requests served during the outage were counted and written once the database was back.
        await waitFor("usage of the outage written", async () => (await count(warm.id)) === 1 + served, 10_000)
        expect(await count(quota.id)).toBe(2)
      },
      90_000
    )
  })

  describe("an instance killed", () => {
    it(
      "SIGKILL mid-stream: the quota was counted once, the row is intact, other instances serve the token",
      async () => {
        const E = await startInstance({
          DATABASE_URL: pg.url,
          REDIS_URL: redis.url,
          RATE_LIMIT_BACKEND: "redis",
          MANAGEMENT_TOKEN: MT,
          ENCRYPTION_KEY: env["ENCRYPTION_KEY"]!,
          OPENAI_API_URL: mock.url,
          USAGE_FLUSH_INTERVAL: "200ms"
        })
        const p = await on(A).project("killed")
        const limited = await on(A).token(p.id, { max_requests: 5 })
        const plain = await on(A).token(p.id)
        for (let k = 0; k < 3; k++) expect((await chat(E.url, plain.token)).status).toBe(200)
        await sleep(700) // the batch with those 3 requests is written
        mock.reset()
        mock.enqueue(sse(chatChunks(Array.from({ length: 50 }, (_, i) => `w${i} `)), { intervalMs: 100 }))
        const pending = fetch(`${E.url}/v1/chat/completions`, {
          method: "POST",
          headers: { authorization: `Bearer ${limited.token}`, "content-type": "application/json" },
          body: JSON.stringify({ model: "gpt-4o-mini", messages: [], stream: true })
        }).then((r) => r.text()).then(() => "completed", () => "cut")
        await mock.waitForRequests(1)
        await sleep(300)
        await E.stop("SIGKILL")
        expect(await pending).toBe("cut")
        expect(await count(limited.id)).toBe(1)
        expect(await count(plain.id)).toBe(3)
        const row = (await sql("SELECT is_active, max_requests FROM tokens WHERE id = $1", [limited.id]))[0]!
        expect(row).toMatchObject({ is_active: true, max_requests: 5 })
        expect((await chat(A.url, limited.token)).status).toBe(200)
        expect(await count(limited.id)).toBe(2)
      },
      60_000
    )
  })
})
