/**
 * What observability costs the data plane, end to end: llm-proxy saturated (closed loop, autocannon, 64
 * connections) with
 *   off              ENABLE_METRICS=false, no OTLP endpoint, ACCESS_LOG=false
 *   metrics          ENABLE_METRICS=true (+ a /metrics scrape every 5 s)
 *   metrics+tracing  + every request's spans exported over OTLP/HTTP protobuf to a local sink
 *   … http/json      the same with OTEL_EXPORTER_OTLP_PROTOCOL=http/json
 *   … 10%            OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1
 *   … + access log   + one JSON access-log line per request (LOG_LEVEL=info, to /dev/null)
 *
 * Method (the machine is a shared 2-core VM whose speed drifts by tens of percent within minutes): every variant
 * runs at once as its own process pinned to core 1, idle until its turn; this process (load generator, OTLP sink)
 * and the upstream are pinned to core 0. Rounds of short runs go through the variants in alternating order, so a
 * slow minute hits all variants alike. Reported per variant: total requests / total seconds (throughput) and the
 * proxy process's CPU time per request (/proc/PID/stat), and their ratios to `off`; the per-round ratio range shows
 * how much of a difference is noise.
 *
 * Run: `npm run build && npm run bench -- observability` (BENCH_ROUNDS, default 8; BENCH_SECONDS per run, default 3;
 * BENCH_CONNECTIONS, 64; BENCH_SSE=1 for streamed answers).
 */
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { cpus } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import {
  cpuMsOf,
  fmt,
  hasTaskset,
  type LlmProxy,
  pinSelfToCore0,
  root,
  runBench,
  saturate,
  startJsonPort,
  startLlmProxy
} from "./harness.js"

const rounds = Number(process.env["BENCH_ROUNDS"] ?? 8)
const seconds = Number(process.env["BENCH_SECONDS"] ?? 3)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)
const stream = process.env["BENCH_SSE"] === "1"

interface Variant {
  readonly name: string
  readonly env: Record<string, string>
  proxy?: LlmProxy
  requests: number
  cpuMs: number
  wallMs: number
  /** Per round: [requests/s, CPU µs per request]. */
  readonly perRound: Array<readonly [number, number]>
}

const main = async () => {
  const pinned = pinSelfToCore0()
  console.log(
    `observability benchmark — node ${process.version}, ${cpus()[0]?.model ?? "cpu"} ×${cpus().length}, ` +
      `${hasTaskset ? "llm-proxy processes pinned to core 1" : "no taskset: not pinned"}${
        pinned ? ", load generator on core 0" : ""
      }, ` +
      `${rounds} rounds × ${seconds} s per variant, ${connections} connections, ${stream ? "SSE" : "JSON"} answers`
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

  const traced = { ENABLE_METRICS: "true", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }
  const variants: Array<Variant> = [
    { name: "off", env: { ENABLE_METRICS: "false", ACCESS_LOG: "false" } },
    { name: "metrics", env: { ENABLE_METRICS: "true", ACCESS_LOG: "false" } },
    { name: "metrics+tracing", env: traced },
    { name: "… http/json", env: { ...traced, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" } },
    { name: "… 10%", env: { ...traced, OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.1" } },
    { name: "… + access log", env: { ...traced, ACCESS_LOG: "true", LOG_LEVEL: "info" } }
  ].map((v) => ({ ...v, requests: 0, cpuMs: 0, wallMs: 0, perRound: [] }))

  const scrapers: Array<ReturnType<typeof setInterval>> = []
  try {
    for (const v of variants) {
      const proxy = await startLlmProxy(upstream, v.env)
      v.proxy = proxy
      if (v.env["ENABLE_METRICS"] === "true") {
        scrapers.push(
          setInterval(() => void request(`${proxy.url}/metrics`).then((r) => r.body.dump(), () => {}), 5_000)
        )
      }
      // Warm-up: JIT, connection pools, the token cache.
      await saturate(proxy.url, { authorization: `Bearer ${proxy.token}` }, stream, 2, connections)
    }
    for (let round = 0; round < rounds; round++) {
      for (const v of round % 2 === 0 ? variants : [...variants].reverse()) {
        const proxy = v.proxy!
        const before = cpuMsOf(proxy.pid)
        const t0 = performance.now()
        const s = await saturate(proxy.url, { authorization: `Bearer ${proxy.token}` }, stream, seconds, connections)
        const wall = performance.now() - t0
        const cpu = cpuMsOf(proxy.pid) - before
        if (s.errors > 0) console.log(`  ${v.name}: ${s.errors} errors in round ${round + 1}`)
        v.requests += s.total
        v.cpuMs += cpu
        v.wallMs += wall
        v.perRound.push([s.total / (wall / 1000), (cpu * 1000) / Math.max(1, s.total)])
      }
    }
  } finally {
    for (const t of scrapers) clearInterval(t)
  }

  const off = variants[0]!
  const rps = (v: Variant) => v.requests / (v.wallMs / 1000)
  const cpuPer = (v: Variant) => (v.cpuMs * 1000) / Math.max(1, v.requests)
  console.log(
    "\n| variant | requests/s | CPU µs/request | throughput vs off | CPU capacity vs off | per-round capacity range |"
  )
  console.log("|---|---|---|---|---|---|")
  for (const v of variants) {
    const perRound = v.perRound.map(([, c], i) => off.perRound[i]![1] / c)
    console.log(
      `| ${v.name} | ${fmt(rps(v), 0)} | ${fmt(cpuPer(v), 1)} | ${fmt(rps(v) / rps(off), 3)} | ${
        fmt(cpuPer(off) / cpuPer(v), 3)
      } | ` +
        `${fmt(Math.min(...perRound), 2)}–${fmt(Math.max(...perRound), 2)} |`
    )
  }
  console.log(`\nOTLP sink received ${exports} exports, ${(spansBytes / 1e6).toFixed(1)} MB of spans`)
  for (const v of variants) await v.proxy?.stop()
  sink.close()
}

runBench(main)
