/**
 * What observability costs the data plane: llm-proxy saturated (closed loop, autocannon) with
 *   off       ENABLE_METRICS=false, no OTLP endpoint, ACCESS_LOG=false
 *   on        ENABLE_METRICS=true (+ a /metrics scrape every 5 s) and spans exported over OTLP/HTTP to a local sink
 *   on + log  the same plus one access-log line per request (LOG_LEVEL=info, JSON, to /dev/null)
 * Each variant runs as its own process pinned to core 1 (upstream, sink and load generator share core 0), one at
 * a time, in the order off, on, on+log, off, on, on+log; ratios use the mean of each variant's two runs.
 *
 * Run: `npm run build && npm run bench -- observability` (environment: BENCH_SECONDS, default 10; BENCH_CONNECTIONS, 64).
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { cpus } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import { children, fmt, hasTaskset, root, type Saturation, saturate, startJsonPort, startLlmProxy } from "./harness.js"

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
    "on + log": { ENABLE_METRICS: "true", ACCESS_LOG: "true", LOG_LEVEL: "info", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }
  }
  const results: Record<string, { json: Array<Saturation>; sse: Array<Saturation> }> = {}
  console.log("\nvariant     kind    RPS        p50 ms  p99 ms  errors")
  for (let round = 0; round < 2; round++) {
    for (const [name, env] of Object.entries(variants)) {
      const proxy = await startLlmProxy(upstream, env)
      const headers = { authorization: `Bearer ${proxy.token}` }
      const scraper = env["ENABLE_METRICS"] === "true"
        ? setInterval(() => void request(`${proxy.url}/metrics`).then((r) => r.body.dump(), () => {}), 5_000)
        : undefined
      try {
        await saturate(proxy.url, headers, false, 2, connections) // warm-up: JIT, pools, token cache
        const json = await saturate(proxy.url, headers, false, seconds, connections)
        const sse = await saturate(proxy.url, headers, true, seconds, connections)
        const r = (results[name] ??= { json: [], sse: [] })
        r.json.push(json)
        r.sse.push(sse)
        for (const [kind, s] of [["json", json], ["sse", sse]] as const) {
          console.log(`${name.padEnd(11)} ${kind.padEnd(7)} ${fmt(s.rps, 0).padStart(9)}  ${fmt(s.p50, 0).padStart(6)}  ${fmt(s.p99, 0).padStart(6)}  ${s.errors}`)
        }
      } finally {
        if (scraper) clearInterval(scraper)
        await proxy.stop()
      }
    }
  }
  const mean = (xs: Array<Saturation>) => xs.reduce((a, s) => a + s.rps, 0) / xs.length
  console.log("\nthroughput ratios (mean of two runs each)")
  for (const name of ["on", "on + log"]) {
    console.log(
      `  ${name.padEnd(9)} / off   json ${fmt(mean(results[name]!.json) / mean(results["off"]!.json))}×   ` +
        `sse ${fmt(mean(results[name]!.sse) / mean(results["off"]!.sse))}×`
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
