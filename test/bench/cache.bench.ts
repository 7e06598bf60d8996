/**
 * Response-cache benchmark: a cache hit against a proxied miss and against the raw node:http + undici proxy
 * (test/bench/raw-proxy.mjs), all on the same fast stand-in upstream (test/bench/upstream.mjs), in one run.
 *
 * The request is what a client opting in would send: POST /v1/chat/completions with
 * `Cache-Control: public, max-age=3600` and the same body every time (the key hashes the body). "miss" is the same
 * request without the opt-in header (looked at by the cache, forwarded). Proxies are pinned to core 1 with
 * `taskset` when it exists; the upstream and the load generator share core 0.
 *
 * Scenarios
 *   1. saturation (autocannon, closed loop): RPS, p50, p99 — and CPU time of the proxy process per request
 *      (utime + stime from /proc over the run, divided by the requests answered): a hit must cost less than a miss
 *   2. a fixed 1,000 RPS for 10 s (open loop): p50 / p99 latency
 *
 * Targets: raw proxy, llm-proxy with the cache off (what the cache costs a miss), llm-proxy miss, llm-proxy hit (in-memory), and llm-proxy hit (Redis) when REDIS_URL is set.
 * Run: `npm run build && npm run bench -- cache`. Environment: BENCH_SECONDS (10), BENCH_CONNECTIONS (64).
 */
import autocannon from "autocannon"
import { cpus } from "node:os"
import { join } from "node:path"
import { Agent, request } from "undici"
import { children, cpuMsOf, hasTaskset, type LlmProxy, root, startJsonPort, startLlmProxy } from "./harness.js"

const seconds = Number(process.env["BENCH_SECONDS"] ?? 10)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)
const redisUrl = process.env["REDIS_URL"] || undefined
const proxies: Array<LlmProxy> = []

/** The built `serve` (harness defaults: core 1, SQLite, no audit file) with a project and a token. */
const startProxy = async (upstream: string, env: Record<string, string>) => {
  const proxy = await startLlmProxy(upstream, env)
  proxies.push(proxy)
  return proxy
}

interface Target {
  readonly name: string
  readonly url: string
  readonly headers: Record<string, string>
  readonly pid: number
  /** The answers must carry this Cache-Status (checked once before measuring). */
  readonly expect?: string
}

const BODY = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Say hello." }] })
const PATH = "/v1/chat/completions"
const OPT_IN = { "cache-control": "public, max-age=3600" }

/** utime + stime of a process, in seconds. */
const cpuOf = (pid: number) => cpuMsOf(pid) / 1000

const saturate = async (t: Target) => {
  const before = cpuOf(t.pid)
  const result = await autocannon({
    url: `${t.url}${PATH}`,
    method: "POST",
    headers: { ...t.headers, "content-type": "application/json" },
    body: BODY,
    connections,
    duration: seconds
  })
  const cpu = cpuOf(t.pid) - before
  const answered = result.requests.total
  return {
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.non2xx + result.timeouts,
    cpuUsPerRequest: answered > 0 ? (cpu * 1e6) / answered : NaN
  }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) =>
  sorted.length === 0 ? NaN : sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!

const fixedRate = async (t: Target, rate: number, secs: number) => {
  const agent = new Agent({ connections: 512, keepAliveTimeout: 60_000 })
  const latencies: Array<number> = []
  let errors = 0
  const inflight: Array<Promise<void>> = []
  const one = async () => {
    const start = process.hrtime.bigint()
    try {
      const r = await request(`${t.url}${PATH}`, {
        method: "POST",
        dispatcher: agent,
        headers: { ...t.headers, "content-type": "application/json" },
        body: BODY
      })
      await r.body.dump()
      if (r.statusCode === 200) latencies.push(Number(process.hrtime.bigint() - start) / 1e6)
      else errors++
    } catch {
      errors++
    }
  }
  const total = rate * secs
  const startedAt = performance.now()
  for (let sent = 0; sent < total;) {
    const due = Math.min(total, Math.floor(((performance.now() - startedAt) / 1000) * rate))
    while (sent < due) {
      inflight.push(one())
      sent++
    }
    await new Promise((r) => setTimeout(r, 1))
  }
  await Promise.all(inflight)
  await agent.close()
  latencies.sort((a, b) => a - b)
  return { p50: percentile(latencies, 50), p99: percentile(latencies, 99), errors }
}

const check = async (t: Target) => {
  if (t.expect === undefined) return
  // the first opted-in request stores; give a Redis write a moment to land
  for (let i = 0; i < 50; i++) {
    const r = await request(`${t.url}${PATH}`, {
      method: "POST",
      headers: { ...t.headers, "content-type": "application/json" },
      body: BODY
    })
    await r.body.dump()
    if (r.headers["cache-status"] === t.expect) return
    await new Promise((res) => setTimeout(res, 20))
  }
  throw new Error(`${t.name}: answers never carried Cache-Status "${t.expect}"`)
}

const fmt = (n: number, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : "—")

const main = async () => {
  console.log(
    `cache benchmark — node ${process.version}, ${cpus()[0]?.model ?? "cpu"} ×${cpus().length}, ` +
      `${hasTaskset ? "proxies pinned to core 1" : "no taskset: not pinned"}, ${seconds} s per saturation run, ` +
      `${connections} connections`
  )
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const upstream = `http://127.0.0.1:${up.port}`
  const raw = await startJsonPort(join(root, "test/bench/raw-proxy.mjs"), { UPSTREAM: upstream }, 1)
  const memory = await startProxy(upstream, { HTTP_CACHE_ENABLED: "true", HTTP_CACHE_BACKEND: "in-memory" })
  const off = await startProxy(upstream, { HTTP_CACHE_ENABLED: "false" })
  const targets: Array<Target> = [
    {
      name: "raw proxy",
      url: `http://127.0.0.1:${raw.port}`,
      headers: { authorization: "Bearer anything" },
      pid: raw.pid
    },
    { name: "llm-proxy cache off", url: off.url, headers: { authorization: `Bearer ${off.token}` }, pid: off.pid },
    { name: "llm-proxy miss", url: memory.url, headers: { authorization: `Bearer ${memory.token}` }, pid: memory.pid },
    {
      name: "llm-proxy hit",
      url: memory.url,
      headers: { authorization: `Bearer ${memory.token}`, ...OPT_IN },
      pid: memory.pid,
      expect: "llm-proxy; hit"
    }
  ]
  if (redisUrl !== undefined) {
    const prefix = `llmproxy:bench:cache:${crypto.randomUUID()}:`
    const redis = await startProxy(upstream, {
      HTTP_CACHE_ENABLED: "true",
      HTTP_CACHE_BACKEND: "redis",
      REDIS_URL: redisUrl,
      REDIS_CACHE_KEY_PREFIX: prefix
    })
    targets.push({
      name: "llm-proxy hit (Redis)",
      url: redis.url,
      headers: { authorization: `Bearer ${redis.token}`, ...OPT_IN },
      pid: redis.pid,
      expect: "llm-proxy; hit"
    })
  }
  try {
    for (const t of targets) await check(t)
    for (const t of targets) await fixedRate(t, 200, 2) // warm-up: pools, JIT, token cache

    console.log("\n1. saturation (closed loop)")
    console.log("target                  RPS        p50 ms  p99 ms  errors  proxy CPU µs/request")
    const sat: Record<string, Awaited<ReturnType<typeof saturate>>> = {}
    for (const t of targets) {
      const r = (sat[t.name] = await saturate(t))
      console.log(
        `${t.name.padEnd(22)} ${fmt(r.rps, 0).padStart(9)}  ${fmt(r.p50, 0).padStart(6)}  ${
          fmt(r.p99, 0).padStart(6)
        }  ` +
          `${String(r.errors).padStart(6)}  ${fmt(r.cpuUsPerRequest, 1).padStart(8)}`
      )
    }

    console.log("\n2. fixed 1,000 RPS for 10 s (open loop)")
    console.log("target                  p50 ms   p99 ms   errors")
    const fixed: Record<string, Awaited<ReturnType<typeof fixedRate>>> = {}
    for (const t of targets) {
      const r = (fixed[t.name] = await fixedRate(t, 1000, 10))
      console.log(`${t.name.padEnd(22)} ${fmt(r.p50, 3).padStart(7)}  ${fmt(r.p99, 3).padStart(7)}  ${r.errors}`)
    }

    const hit = sat["llm-proxy hit"]!
    const miss = sat["llm-proxy miss"]!
    const rawSat = sat["raw proxy"]!
    console.log("\nratios")
    console.log(`  hit / raw proxy throughput       ${fmt(hit.rps / rawSat.rps)}×`)
    console.log(`  hit / llm-proxy miss throughput  ${fmt(hit.rps / miss.rps)}×`)
    console.log(`  hit / miss CPU per request       ${fmt(hit.cpuUsPerRequest / miss.cpuUsPerRequest)}×`)
    console.log(
      `  miss / cache-off CPU per request ${fmt(miss.cpuUsPerRequest / sat["llm-proxy cache off"]!.cpuUsPerRequest)}×`
    )
    console.log(
      `  p99 at 1,000 RPS                 hit ${fmt(fixed["llm-proxy hit"]!.p99, 3)} ms, miss ${
        fmt(fixed["llm-proxy miss"]!.p99, 3)
      } ms, raw ${fmt(fixed["raw proxy"]!.p99, 3)} ms`
    )
    const cheaper = hit.cpuUsPerRequest < miss.cpuUsPerRequest
    console.log(
      `\n${cheaper ? "PASS" : "FAIL"}: a cache hit costs ${cheaper ? "less" : "MORE"} proxy CPU than a proxied miss`
    )
    if (!cheaper) process.exitCode = 1
  } finally {
    await Promise.all(proxies.map((p) => p.stop()))
    for (const c of children) c.kill("SIGTERM")
  }
}

main().then(
  () => process.exit(process.exitCode ?? 0),
  (e) => {
    console.error(e)
    for (const c of children) c.kill("SIGKILL")
    process.exit(1)
  }
)
