/**
 * What observability costs the data plane: llm-proxy saturated (closed loop, autocannon) with
 *   off       ENABLE_METRICS=false, no OTLP endpoint, ACCESS_LOG=false
 *   on        ENABLE_METRICS=true (+ a /metrics scrape every 5 s) and spans exported over OTLP/HTTP to a local sink
 *   on, 10%   the same with OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1
 *   on + log  the same plus one access-log line per request (LOG_LEVEL=info, JSON, to /dev/null)
 * Each variant runs as its own process pinned to core 1 (upstream, sink and load generator share core 0), one at
 * a time, in the order off, on, on 10%, on+log, then again; ratios use the mean of each variant's two runs.
 * Besides throughput it reports the proxy process's CPU time per request (/proc/PID/stat around each run): on a
 * shared machine throughput swings with other load, CPU per request much less, and its ratio is the capacity ratio.
 *
 * Run: `npm run build && npm run bench -- observability` (environment: BENCH_SECONDS, default 10; BENCH_CONNECTIONS, 64).
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { cpus } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import { children, cpuMsOf, fmt, hasTaskset, root, type Saturation, saturate, startJsonPort, startLlmProxy } from "./harness.js"

const seconds = Number(process.env["BENCH_SECONDS"] ?? 10)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)

const main = async () => {
  console.log(
    `observability benchmark — node ${process.version}, ${cpus()[0]?.model ?? "cpu"} ×${cpus().length}, ` +
      `${hasTaskset ? "llm-proxy pinned to core 1" : "no taskset: not pinned"}, ${seconds} s per run, ${connections} connections`
  )
  let spansBytes = 0
  let exports = 0
  const sink = createServer((req, res) => {
    req.on("data", (d: Buffer) => (spansBytes += d.length))
    req.on("end", () => {
      exports++
      res.writeHead(200, { "content-type": "application/json" })
      res.end("{}")
    })
  })
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r))
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const upstream = `http://127.0.0.1:${up.port}`

  const variants: Record<string, Record<string, string>> = {
    off: { ENABLE_METRICS: "false", ACCESS_LOG: "false" },
    on: { ENABLE_METRICS: "true", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl },
    "on, 10%": { ENABLE_METRICS: "true", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl, OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" },
    "on + log": { ENABLE_METRICS: "true", ACCESS_LOG: "true", LOG_LEVEL: "info", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }
  }
  type Run = Saturation & { readonly cpuUsPerRequest: number }
  const results: Record<string, { json: Array<Run>; sse: Array<Run> }> = {}
  console.log("\nvariant     kind    RPS        p50 ms  p99 ms  errors  CPU µs/request")
  for (let round = 0; round < 2; round++) {
    for (const [name, env] of Object.entries(variants)) {
      const proxy = await startLlmProxy(upstream, env)
      const headers = { authorization: `Bearer ${proxy.token}` }
      const scraper = env["ENABLE_METRICS"] === "true"
        ? setInterval(() => void request(`${proxy.url}/metrics`).then((r) => r.body.dump(), () => {}), 5_000)
        : undefined
      try {
        await saturate(proxy.url, headers, false, 2, connections) // warm-up: JIT, pools, token cache
        const measured = async (stream: boolean): Promise<Run> => {
          const before = cpuMsOf(proxy.pid)
          const s = await saturate(proxy.url, headers, stream, seconds, connections)
          return { ...s, cpuUsPerRequest: ((cpuMsOf(proxy.pid) - before) * 1000) / Math.max(1, s.total) }
        }
        const json = await measured(false)
        const sse = await measured(true)
        const r = (results[name] ??= { json: [], sse: [] })
        r.json.push(json)
        r.sse.push(sse)
        for (const [kind, s] of [["json", json], ["sse", sse]] as const) {
          console.log(
            `${name.padEnd(11)} ${kind.padEnd(7)} ${fmt(s.rps, 0).padStart(9)}  ${fmt(s.p50, 0).padStart(6)}  ${fmt(s.p99, 0).padStart(6)}  ` +
              `${String(s.errors).padStart(6)}  ${fmt(s.cpuUsPerRequest, 1).padStart(14)}`
          )
        }
      } finally {
        if (scraper) clearInterval(scraper)
        await proxy.stop()
      }
    }
  }
  const mean = (xs: Array<Run>, f: (r: Run) => number) => xs.reduce((a, s) => a + f(s), 0) / xs.length
  const rps = (r: Run) => r.rps
  const cpu = (r: Run) => r.cpuUsPerRequest
  console.log("\nratios against off (mean of two runs each)")
  console.log("  throughput: RPS(variant) / RPS(off); CPU capacity: CPU µs per request(off) / CPU µs per request(variant)")
  for (const name of ["on", "on, 10%", "on + log"]) {
    const r = results[name]!
    const off = results["off"]!
    console.log(
      `  ${name.padEnd(9)} throughput json ${fmt(mean(r.json, rps) / mean(off.json, rps))}×  sse ${fmt(mean(r.sse, rps) / mean(off.sse, rps))}×   ` +
        `CPU capacity json ${fmt(mean(off.json, cpu) / mean(r.json, cpu))}×  sse ${fmt(mean(off.sse, cpu) / mean(r.sse, cpu))}×`
    )
  }
  console.log(`\nOTLP sink received ${exports} exports, ${(spansBytes / 1e6).toFixed(1)} MB of spans`)
  sink.close()
}

main().then(
  () => {
    for (const c of children) c.kill("SIGTERM")
    process.exit(0)
  },
  (e) => {
    console.error(e)
    for (const c of children) c.kill("SIGKILL")
    process.exit(1)
  }
)
