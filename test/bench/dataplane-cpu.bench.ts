/**
 * Quick data-plane check (the full benchmark suite is separate): non-streaming saturation through
 *   direct   the mock upstream itself
 *   raw      a minimal node:http + undici proxy (the floor for any Node proxy)
 *   llm      llm-proxy (`bin/llm-proxy.js serve`, SQLite, a real unlimited token, warm cache)
 * Each server runs in its own process; this process is the load generator (closed loop, undici Pool).
 * Rounds alternate raw/llm so background load hits both alike. Prints RPS, p50/p99 and llm/raw.
 *
 *   npm run bench -- dataplane-cpu     (env: BENCH_SECONDS=5, BENCH_CONCURRENCY=32, BENCH_ROUNDS=2)
 *
 * BENCH_BASELINE=/path/to/other/bin/llm-proxy.js adds a "baseline" target (another build, e.g. main's, with its
 * own dist/ next to it) measured in the same rounds: a before/after comparison under the same background load.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Pool } from "undici"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 5)
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 32)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 2)
const BODY = JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hi" }] })

const MOCK = `
const http = require("node:http")
const body = JSON.stringify({ id: "x", object: "chat.completion", choices: [{ index: 0, message: { role: "assistant", content: "Hello!" }, finish_reason: "stop" }], usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 } })
const s = http.createServer((req, res) => { req.resume(); req.on("end", () => { res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(body) }); res.end(body) }) })
s.keepAliveTimeout = 60000
s.listen(0, "127.0.0.1", () => console.log("PORT " + s.address().port))
`

const RAW = `
const http = require("node:http")
const { Pool } = require("undici")
const pool = new Pool(process.env.UPSTREAM, { connections: null, keepAliveTimeout: 60000 })
const s = http.createServer((req, res) => {
  const headers = { ...req.headers }
  delete headers.host; delete headers.connection
  headers.authorization = "Bearer sk-upstream"
  pool.request({ path: req.url, method: req.method, headers, body: req }).then(
    (r) => { res.writeHead(r.statusCode, r.headers); r.body.pipe(res) },
    () => { res.writeHead(502); res.end() })
})
s.keepAliveTimeout = 60000
s.listen(0, "127.0.0.1", () => console.log("PORT " + s.address().port))
`

const start = (
  args: ReadonlyArray<string>,
  env: Record<string, string>,
  ready: RegExp
): Promise<{ child: ChildProcess; match: RegExpMatchArray }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    const onData = (d: Buffer) => {
      out += d.toString()
      const m = out.match(ready)
      if (m) {
        child.stdout!.off("data", onData)
        child.stderr!.off("data", onData)
        child.stdout!.resume()
        child.stderr!.resume()
        resolve({ child, match: m })
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`child exited (${code}): ${out}`)))
  })

interface Result {
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly errors: number
  /** CPU time of the measured server process per request, µs (from /proc; robust to other load on the machine). */
  readonly cpuUs: number
}

/** utime + stime of a process, ms (Linux /proc, 100 ticks/s). */
const cpuMs = (pid: number | undefined): number => {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return (Number(fields[11]) + Number(fields[12])) * 10
  } catch {
    return Number.NaN
  }
}

const load = async (origin: string, headers: Record<string, string>, pid?: number): Promise<Result> => {
  const pool = new Pool(origin, { connections: CONCURRENCY, pipelining: 1, keepAliveTimeout: 60_000 })
  const latencies: Array<number> = []
  let errors = 0
  const until = performance.now() + SECONDS * 1000
  const worker = async () => {
    while (performance.now() < until) {
      const t0 = performance.now()
      try {
        const r = await pool.request({ path: "/v1/chat/completions", method: "POST", headers, body: BODY })
        await r.body.text()
        if (r.statusCode !== 200) errors++
      } catch {
        errors++
      }
      latencies.push(performance.now() - t0)
    }
  }
  const t0 = performance.now()
  const cpu0 = cpuMs(pid)
  await Promise.all(Array.from({ length: CONCURRENCY }, worker))
  const elapsed = (performance.now() - t0) / 1000
  const cpuUs = ((cpuMs(pid) - cpu0) * 1000) / latencies.length
  await pool.close()
  latencies.sort((a, b) => a - b)
  const at = (q: number) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]!
  return { rps: latencies.length / elapsed, p50: at(0.5), p99: at(0.99), errors, cpuUs }
}

const main = async () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-"))
  const children: Array<ChildProcess> = []
  try {
    const mock = await start(["-e", MOCK], {}, /PORT (\d+)/)
    children.push(mock.child)
    const upstream = `http://127.0.0.1:${mock.match[1]}`
    const raw = await start(["-e", RAW], { UPSTREAM: upstream }, /PORT (\d+)/)
    children.push(raw.child)
    const mt = "bench-management-token-" + crypto.randomUUID()
    // BENCH_PROFILE=DIR writes a CPU profile of llm-proxy (and of the baseline) there (open it in Chrome DevTools).
    const profile = process.env["BENCH_PROFILE"] ? ["--cpu-prof", "--cpu-prof-dir", process.env["BENCH_PROFILE"]] : []
    const llm = await start([
      ...profile,
      "bin/llm-proxy.js",
      "serve",
      "--addr",
      "127.0.0.1:0",
      "--db",
      join(dir, "db.sqlite")
    ], {
      MANAGEMENT_TOKEN: mt,
      OPENAI_API_URL: upstream,
      LOG_LEVEL: "info",
      LOG_FORMAT: "json"
    }, /listening on http:\/\/[^:]+:(\d+)/)
    children.push(llm.child)
    const llmUrl = `http://127.0.0.1:${llm.match[1]}`
    const auth = { authorization: `Bearer ${mt}`, "content-type": "application/json" }
    const tokenFor = async (url: string) => {
      const project = await (await fetch(`${url}/manage/projects`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ name: "bench", api_key: "sk-upstream-key-0123456789" })
      })).json() as { id: string }
      const token = await (await fetch(`${url}/manage/tokens`, {
        method: "POST",
        headers: auth,
        body: JSON.stringify({ project_id: project.id, duration_minutes: 60 })
      })).json() as { token: string }
      return { "content-type": "application/json", authorization: `Bearer ${token.token}` }
    }
    const headers = await tokenFor(llmUrl)
    const baselineBin = process.env["BENCH_BASELINE"]
    let baseline: { url: string; pid: number | undefined; headers: Record<string, string> } | undefined
    if (baselineBin !== undefined && baselineBin !== "") {
      const b = await start([
        ...profile,
        baselineBin,
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--db",
        join(dir, "baseline.sqlite")
      ], {
        MANAGEMENT_TOKEN: mt,
        OPENAI_API_URL: upstream,
        LOG_LEVEL: "info",
        LOG_FORMAT: "json"
      }, /listening on http:\/\/[^:]+:(\d+)/)
      children.push(b.child)
      const url = `http://127.0.0.1:${b.match[1]}`
      baseline = { url, pid: b.child.pid, headers: await tokenFor(url) }
    }

    console.log(
      `non-streaming POST /v1/chat/completions, ${CONCURRENCY} concurrent, ${SECONDS} s per run, ${ROUNDS} rounds\n`
    )
    await load(llmUrl, headers) // warm-up (JIT, pools, token cache)
    if (baseline !== undefined) await load(baseline.url, baseline.headers)
    await load(`http://127.0.0.1:${raw.match[1]}`, headers)
    const rows: Array<[string, Result]> = []
    rows.push(["direct", await load(upstream, headers, mock.child.pid)])
    for (let i = 0; i < ROUNDS; i++) {
      rows.push(["raw", await load(`http://127.0.0.1:${raw.match[1]}`, headers, raw.child.pid)])
      // With a baseline, the two alternate which goes first.
      if (baseline !== undefined && i % 2 === 1) {
        rows.push(["baseline", await load(baseline.url, baseline.headers, baseline.pid)])
      }
      rows.push(["llm-proxy", await load(llmUrl, headers, llm.child.pid)])
      if (baseline !== undefined && i % 2 === 0) {
        rows.push(["baseline", await load(baseline.url, baseline.headers, baseline.pid)])
      }
    }
    console.log("target      RPS       p50 ms   p99 ms   errors   server CPU µs/request")
    for (const [name, r] of rows) {
      console.log(
        `${name.padEnd(10)} ${r.rps.toFixed(0).padStart(7)}  ${r.p50.toFixed(2).padStart(7)}  ${
          r.p99.toFixed(2).padStart(7)
        }   ${String(r.errors).padStart(6)}   ${r.cpuUs.toFixed(0).padStart(6)}`
      )
    }
    const avg = (name: string, f: (r: Result) => number) => {
      const xs = rows.filter(([n]) => n === name).map(([, r]) => f(r))
      return xs.reduce((a, b) => a + b, 0) / xs.length
    }
    console.log(
      `\nllm-proxy / raw throughput: ${(avg("llm-proxy", (r) => r.rps) / avg("raw", (r) => r.rps)).toFixed(2)}`
    )
    console.log(`llm-proxy - raw p50: ${(avg("llm-proxy", (r) => r.p50) - avg("raw", (r) => r.p50)).toFixed(2)} ms`)
    console.log(
      `llm-proxy / raw CPU per request: ${(avg("llm-proxy", (r) => r.cpuUs) / avg("raw", (r) => r.cpuUs)).toFixed(2)}`
    )
    if (baseline !== undefined) {
      console.log(
        `llm-proxy / baseline throughput: ${
          (avg("llm-proxy", (r) => r.rps) / avg("baseline", (r) => r.rps)).toFixed(2)
        }`
      )
      console.log(
        `llm-proxy / baseline CPU per request: ${
          (avg("llm-proxy", (r) => r.cpuUs) / avg("baseline", (r) => r.cpuUs)).toFixed(2)
        }`
      )
    }
  } finally {
    for (const c of children) c.kill("SIGINT")
    await new Promise((r) => setTimeout(r, 1500))
    rmSync(dir, { recursive: true, force: true })
  }
}

await main()
