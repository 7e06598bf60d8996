/**
 * A bounded load test on loopback: three `serve` processes (the built binary) on this suite's own PostgreSQL and
 * Redis (shared rate limits; token invalidations over PostgreSQL, the default), 200 concurrent clients for
 * LOAD_SECONDS (default 60), 2/3 JSON and 1/3 SSE against the bench upstream (test/bench/upstream.mjs, its own
 * process) answering after 60 ms. It asserts counts, never timings: no 5xx,
 * every request the upstream saw is counted in `tokens.request_count` (and its usage in prompt/completion tokens),
 * every request's event reaches a dispatcher worker's JSONL file (LLM_PROXY_EVENT_BUS=redis-streams), and
 * prints throughput and latency percentiles for docs/performance.md. Part of `npm run test:scale`.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { join } from "node:path"
import { Agent, request } from "undici"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { completeLines } from "../support/events.js"
import { newManagementToken } from "../support/managementToken.js"
import { stopAll } from "../support/processes.js"
import {
  bin,
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

const MT = newManagementToken("scale-load")
const SECONDS = Number(process.env["LOAD_SECONDS"] ?? 60)
const CLIENTS = Number(process.env["LOAD_CLIENTS"] ?? 200)
const LATENCY_MS = 60
const TOKENS = 40

/** CPU seconds (user + system) and resident memory of a process, from /proc. */
const usageOf = (pid: number) => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  const cpu = (Number(fields[11]) + Number(fields[12])) / 100
  const rss = Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024
  return { cpu, rssMb: Math.round(rss) }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0

describe.skipIf(!built || !haveServers())(`load: 3 instances, ${CLIENTS} clients, ${SECONDS} s, mixed JSON/SSE`, () => {
  let root: string
  let pg: Postgres
  let redis: RedisServer
  let upstream: ChildProcess
  let upstreamUrl: string
  let instances: Array<Instance> = []
  let dispatcher: ChildProcess | undefined
  let eventsFile = ""
  const delivered = () => completeLines(eventsFile).length
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
    upstream = spawn(process.execPath, [join(import.meta.dirname, "../bench/upstream.mjs")], {
      stdio: ["ignore", "pipe", "inherit"]
    })
    upstreamUrl = await new Promise<string>((resolve) =>
      upstream.stdout!.once(
        "data",
        (d: Buffer) => resolve(`http://127.0.0.1:${(JSON.parse(d.toString()) as { port: number }).port}`)
      )
    )
    const env = {
      DATABASE_URL: pg.url,
      REDIS_URL: redis.url,
      RATE_LIMIT_BACKEND: "redis",
      MANAGEMENT_TOKEN: MT,
      OPENAI_API_URL: upstreamUrl,
      LLM_PROXY_EVENT_BUS: "redis-streams",
      LOG_LEVEL: "warn"
    }
    const first = await startInstance({ ...env, LOG_LEVEL: "info" })
    instances = [
      first,
      ...(await Promise.all([
        startInstance({ ...env, LOG_LEVEL: "info" }),
        startInstance({ ...env, LOG_LEVEL: "info" })
      ]))
    ]
    // One dispatcher worker delivering the stream to a JSONL file.
    eventsFile = join(root, "events.jsonl")
    dispatcher = spawn(process.execPath, [
      bin,
      "dispatcher",
      "--service",
      "file",
      "--endpoint",
      eventsFile,
      "--batch-size",
      "500",
      "--flush-interval",
      "200ms"
    ], {
      cwd: root,
      env: {
        PATH: process.env.PATH ?? "",
        REDIS_URL: redis.url,
        LLM_PROXY_EVENT_BUS: "redis-streams",
        LOG_FORMAT: "json"
      },
      stdio: ["ignore", "ignore", "inherit"]
    })
  }, 120_000)

  afterAll(async () => {
    // The dispatcher first, while Redis is still there to shut down against; nothing may outlive the suite.
    await stopAll([dispatcher])
    await Promise.all(instances.map((i) => i.stop()))
    await stopAll([upstream])
    await redis?.destroy()
    pg?.destroy()
    if (root) rmSync(root, { recursive: true, force: true })
  }, 60_000)

  it("no 5xx; usage counters equal the requests the upstream saw; events delivered equal requests made", async () => {
    const m = management(instances[0]!.url, MT)
    const tokens: Array<string> = []
    for (let p = 0; p < 4; p++) {
      const project = await m.project(`load-${p}`)
      for (let t = 0; t < TOKENS / 4; t++) tokens.push((await m.token(project.id)).token)
    }
    // Half the tokens carry a window limit far above what they can reach: the Redis limiter is on every request.
    await sql(
      "UPDATE tokens SET rate_limit_requests = 1000000, rate_limit_window_seconds = 60 WHERE id IN (SELECT id FROM tokens ORDER BY id LIMIT 20)"
    )
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
          // The bench upstream takes its answer's shape from the query: 60 ms before the headers, 3 SSE chunks.
          const r = await request(`${base}/v1/chat/completions?latency=${LATENCY_MS}&chunks=3`, {
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
          if (r.statusCode === 200 && !(streaming ? text.includes("[DONE]") : text.includes("chatcmpl-bench"))) errors++
          statuses.set(r.statusCode, (statuses.get(r.statusCode) ?? 0) + 1)
          latencies.push(performance.now() - started)
        } catch {
          errors++
        }
      }
    }
    const cpuBefore = instances.map((i) => usageOf(i.child.pid!).cpu)
    const began = performance.now()
    await Promise.all(Array.from({ length: CLIENTS }, (_, c) => client(c)))
    const elapsed = (performance.now() - began) / 1000
    const after = instances.map((i) => usageOf(i.child.pid!))
    const cpuSeconds = after.reduce((a, u, k) => a + u.cpu - cpuBefore[k]!, 0)
    await agent.close()
    latencies.sort((a, b) => a - b)
    const ok = statuses.get(200) ?? 0
    const fivexx = [...statuses].filter(([s]) => s >= 500).reduce((a, [, n]) => a + n, 0)
    const stats = await (await fetch(`${upstreamUrl}/__stats`)).json() as { json: number; sse: number }
    const seen = stats.json + stats.sse
    const streamed = stats.sse
    // test/bench/upstream.mjs: JSON usage 12 + 7, SSE 12 + one per chunk.
    const expected = { requests: seen, prompt: seen * 12, completion: stats.json * 7 + stats.sse * 3 }
    let totals = { requests: -1, prompt: -1, completion: -1 }
    await waitFor("usage counters written", async () => {
      const row =
        (await sql("SELECT SUM(request_count) AS r, SUM(prompt_tokens) AS p, SUM(completion_tokens) AS c FROM tokens"))[
          0
        ]!
      totals = { requests: Number(row["r"]), prompt: Number(row["p"]), completion: Number(row["c"]) }
      return totals.requests === expected.requests && totals.prompt === expected.prompt
    }, 15_000).catch(() => {})
    let events = 0
    await waitFor("every event delivered", () => (events = delivered()) >= sent, 60_000).catch(() => {})
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
      counted: totals,
      events_delivered: events,
      serve_cpu_ms_per_request: Number(((cpuSeconds * 1000) / Math.max(1, sent)).toFixed(3)),
      serve_cpu_cores_used: Number((cpuSeconds / elapsed).toFixed(2)),
      serve_rss_mb: after.map((u) => u.rssMb),
      load_average: readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" "),
      // What the instances warned of (a failed usage write says so): the last few lines, to tell a lag from a loss.
      instance_warnings: instances.map((i) =>
        i.output().split("\n").filter((l) => /WARN|ERROR/.test(l)).slice(-5).map((l) => l.slice(0, 300))
      )
    }
    console.log(`LOAD RESULT ${JSON.stringify(summary)}`)
    expect(fivexx).toBe(0)
    expect(errors).toBe(0)
    expect(ok).toBe(sent)
    expect(seen).toBe(sent)
    expect(totals).toEqual(expected)
    expect(events).toBe(sent)
  }, (SECONDS + 120) * 1000)
})
