/**
 * A bounded load test on loopback: three `serve` processes (the built binary) on this suite's own PostgreSQL and
 * Redis (shared rate limits and invalidation on), 200 concurrent clients for LOAD_SECONDS (default 60), 2/3 JSON
 * and 1/3 SSE against the in-process mock upstream answering after 60 ms. It asserts counts, never timings: no 5xx,
 * every request the mock saw is counted in `tokens.request_count` (and its usage in prompt/completion tokens), and
 * prints throughput and latency percentiles for docs/performance.md. Part of `npm run test:scale`.
 */
import { createRequire } from "node:module"
import { rmSync } from "node:fs"
import { Agent, request } from "undici"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { chatChunks, chatCompletion, json, type MockUpstream, sse, startMockUpstream } from "../support/mockUpstream.js"
import {
  built,
  haveServers,
  type Instance,
  management,
  type Postgres,
  type RedisServer,
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

const MT = "scale-load-management-token"
const SECONDS = Number(process.env["LOAD_SECONDS"] ?? 60)
const CLIENTS = Number(process.env["LOAD_CLIENTS"] ?? 200)
const LATENCY_MS = 60
const TOKENS = 40

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0

describe.skipIf(!built || !haveServers())(`load: 3 instances, ${CLIENTS} clients, ${SECONDS} s, mixed JSON/SSE`, () => {
  let root: string
  let pg: Postgres
  let redis: RedisServer
  let mock: MockUpstream
  let instances: Array<Instance> = []
  const sql = async (statement: string) => {
    const c = new Client({ connectionString: pg.url })
    await c.connect()
    try {
      return (await c.query(statement)).rows
    } finally {
      await c.end()
    }
  }

  beforeAll(async () => {
    root = tempRoot()
    pg = await startPostgres(root)
    redis = await startRedis(root)
    mock = await startMockUpstream()
    mock.setDefault(json(chatCompletion("Hello!", { prompt_tokens: 9, completion_tokens: 3 }), { delayMs: LATENCY_MS }))
    mock.route("/v1/completions", sse(chatChunks(["Hel", "lo", "!"], { prompt_tokens: 5, completion_tokens: 3 }), { delayMs: LATENCY_MS }))
    const env = {
      DATABASE_URL: pg.url,
      REDIS_URL: redis.url,
      RATE_LIMIT_BACKEND: "redis",
      INVALIDATION_BACKEND: "redis",
      MANAGEMENT_TOKEN: MT,
      OPENAI_API_URL: mock.url,
      LOG_LEVEL: "warn"
    }
    const first = await startInstance({ ...env, LOG_LEVEL: "info" })
    instances = [first, ...(await Promise.all([startInstance({ ...env, LOG_LEVEL: "info" }), startInstance({ ...env, LOG_LEVEL: "info" })]))]
  }, 120_000)

  afterAll(async () => {
    await Promise.all(instances.map((i) => i.stop()))
    await mock?.close()
    await redis?.destroy()
    pg?.destroy()
    if (root) rmSync(root, { recursive: true, force: true })
  }, 60_000)

  it("no 5xx; usage counters equal the requests the mock saw", async () => {
    const m = management(instances[0]!.url, MT)
    const tokens: Array<string> = []
    for (let p = 0; p < 4; p++) {
      const project = await m.project(`load-${p}`)
      for (let t = 0; t < TOKENS / 4; t++) tokens.push((await m.token(project.id)).token)
    }
    // Half the tokens carry a window limit far above what they can reach: the Redis limiter is on every request.
    await sql("UPDATE tokens SET rate_limit_requests = 1000000, rate_limit_window_seconds = 60 WHERE id IN (SELECT id FROM tokens ORDER BY id LIMIT 20)")
    const agent = new Agent({ connections: CLIENTS, keepAliveTimeout: 30_000 })
    const statuses = new Map<number, number>()
    const latencies: Array<number> = []
    let errors = 0
    let sent = 0
    const until = Date.now() + SECONDS * 1000
    const client = async (c: number) => {
      let n = c
      while (Date.now() < until) {
        n++
        const base = instances[n % 3]!.url
        const token = tokens[n % tokens.length]!
        const streaming = n % 3 === 0
        const started = performance.now()
        sent++
        try {
          const r = await request(`${base}/v1/${streaming ? "completions" : "chat/completions"}`, {
            method: "POST",
            dispatcher: agent,
            headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
            body: JSON.stringify({
              model: "gpt-4o-mini",
              messages: [{ role: "user", content: "hi" }],
              ...(streaming ? { stream: true, stream_options: { include_usage: true } } : {})
            })
          })
          const text = await r.body.text()
          if (r.statusCode === 200 && !(streaming ? text.includes("[DONE]") : text.includes("chatcmpl-mock"))) errors++
          statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1)
          latencies.push(performance.now() - started)
        } catch {
          errors++
        }
      }
    }
    const began = performance.now()
    await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)))
    const elapsed = (performance.now() - began) / 1000
    await agent.close()
    latencies.sort((a, b) => a - b)
    const ok = statuses.get(200) ?? 0
    const fivexx = [...statuses].filter(([s]) => s >= 500).reduce((a, [, n]) => a + n, 0)
    const seen = mock.requests.length
    const streamed = mock.requests.filter((r) => r.path === "/v1/completions").length
    const expected = { requests: seen, prompt: (seen - streamed) * 9 + streamed * 5, completion: seen * 3 }
    let totals = { requests: -1, prompt: -1, completion: -1 }
    await waitFor("usage counters written", async () => {
      const row = (await sql("SELECT SUM(request_count) AS r, SUM(prompt_tokens) AS p, SUM(completion_tokens) AS c FROM tokens"))[0]!
      totals = { requests: Number(row["r"]), prompt: Number(row["p"]), completion: Number(row["c"]) }
      return totals.requests === expected.requests && totals.prompt === expected.prompt
    }, 15_000).catch(() => {})
    const summary = {
      seconds: Number(elapsed.toFixed(1)),
      clients: CLIENTS,
      requests: sent,
      rps: Math.round(ok / elapsed),
      statuses: Object.fromEntries(statuses),
      errors,
      upstream_seen: seen,
      sse: streamed,
      latency_ms: {
        p50: Math.round(percentile(latencies, 0.5)),
        p90: Math.round(percentile(latencies, 0.9)),
        p99: Math.round(percentile(latencies, 0.99)),
        max: Math.round(latencies.at(-1) ?? 0)
      },
      counted: totals
    }
    console.log(`LOAD RESULT ${JSON.stringify(summary)}`)
    expect(fivexx).toBe(0)
    expect(errors).toBe(0)
    expect(ok).toBe(sent)
    expect(seen).toBe(sent)
    expect(totals).toEqual(expected)
  }, (SECONDS + 120) * 1000)
})
