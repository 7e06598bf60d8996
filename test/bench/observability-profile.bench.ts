/**
 * What share of the proxy's CPU goes to observing itself, read from a CPU profile of the real `serve` under
 * saturation, per variant:
 *   metrics            ENABLE_METRICS=true (a /metrics scrape every 5 s)
 *   metrics+tracing    + every request's spans exported over OTLP/HTTP protobuf to a local sink
 *   … 10% sampled      OTEL_TRACES_SAMPLER=traceidratio, OTEL_TRACES_SAMPLER_ARG=0.1
 *   … http/json        OTEL_EXPORTER_OTLP_PROTOCOL=http/json
 *   … + access log     + one JSON access-log line per request (LOG_LEVEL=info, to /dev/null)
 *
 * Why a profile: on the shared VM this runs on, the whole machine speeds up and slows down by 20–50 % within
 * minutes (every function, native hashing included, takes longer together), so two runs of different settings
 * measured one after the other differ by more than the few percent observability costs. A profile's *shares* are
 * taken within one run and do not move with the machine's speed.
 *
 * A sample is counted as observability when any frame of its stack is code from src/observability/ (the `// src/...`
 * module markers of a readable bundle built for this benchmark, .bench-dist/cli/main.js, map lines to files): the metrics series, the hooks, span encoding, the exporter's
 * HTTP calls, the access log, scrapes. Garbage collection is not attributed to anyone (it is reported apart). The
 * throughput ratio on ÷ off that this predicts is 1 − share. The usage reader (src/proxy/usage.ts: usage for the
 * token counters and, on the side, the answer's model, id and finish reasons for the spans) is reported apart: it
 * is data-plane code that runs whatever observability is on.
 *
 * Run: `npm run build && npm run bench -- observability-profile` (BENCH_REQUESTS per variant, default 100,000;
 * BENCH_SSE=1 for streamed answers; BENCH_ONLY=name one variant; BENCH_TOP=n items listed, default 6).
 */
import autocannon from "autocannon"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"
import { chatBody, cpuMsOf, fmt, pinSelfToCore0, root, runBench, startJsonPort, startLlmProxy } from "./harness.js"

const requests = Number(process.env["BENCH_REQUESTS"] ?? 100_000)
const stream = process.env["BENCH_SSE"] === "1"

interface ProfileNode {
  readonly id: number
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number }
  readonly children?: ReadonlyArray<number>
}
interface Profile {
  readonly startTime: number
  readonly endTime: number
  readonly nodes: ReadonlyArray<ProfileNode>
  readonly samples: ReadonlyArray<number>
  readonly timeDeltas: ReadonlyArray<number>
}

// The shipped bundle is split and minified; the profile is taken of one unminified file with esbuild's `// path`
// markers, built the same way otherwise (scripts/build.mjs `buildCli`), under the repository root like dist/.
const readable = join(root, ".bench-dist/cli/main.js")
const built = spawnSync(process.execPath, [
  "--input-type=module",
  "-e",
  "const { buildCli } = await import('./scripts/build.mjs'); await buildCli('.bench-dist', { readable: true })"
], { cwd: root, stdio: "inherit" })
if (built.status !== 0) throw new Error("building .bench-dist failed")

// Module of each line of the bundle, from esbuild's `// path` markers.
const bundle = readFileSync(readable, "utf8").split("\n")
const markers: Array<readonly [number, string]> = []
bundle.forEach((line, i) => {
  const m = /^\/\/ (\S+\.(?:ts|js|mjs|cjs))$/.exec(line)
  if (m) markers.push([i, m[1]!])
})
const moduleAt = (line: number): string => {
  let lo = 0
  let hi = markers.length - 1
  let found = ""
  while (lo <= hi) {
    const mid = (lo + hi) >> 1
    if (markers[mid]![0] <= line) {
      found = markers[mid]![1]
      lo = mid + 1
    } else hi = mid - 1
  }
  return found
}

/** Shares over the samples taken between `fromUs` and `toUs` (profile clock, µs). */
const analyse = (p: Profile, fromUs: number, toUs: number) => {
  const byId = new Map(p.nodes.map((n) => [n.id, n]))
  const parent = new Map<number, number>()
  for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
  /** Whether any frame from the node up to the root is code of a module whose path starts with `prefix`. */
  const under = (prefix: string) => {
    const known = new Map<number, boolean>()
    const test = (id: number): boolean => {
      const k = known.get(id)
      if (k !== undefined) return k
      const n = byId.get(id)!
      const own = n.callFrame.url.endsWith(".bench-dist/cli/main.js") &&
        moduleAt(n.callFrame.lineNumber).startsWith(prefix)
      const up = parent.get(id)
      const result = own || (up !== undefined && test(up))
      known.set(id, result)
      return result
    }
    return test
  }
  const isObserving = under("src/observability/")
  // The usage reader (src/proxy/usage.ts) reads usage for billing and, on the side, the answer's facts for the spans
  // and metrics: reported apart (it is data-plane code and runs with observability off too).
  const isReading = under("src/proxy/usage.ts")
  let busy = 0
  let obs = 0
  let reader = 0
  let gc = 0
  const topObs = new Map<string, number>()
  let at = p.startTime
  for (let i = 0; i < p.samples.length; i++) {
    const us = p.timeDeltas[i] ?? 0
    at += us
    if (at < fromUs || at > toUs) continue
    const n = byId.get(p.samples[i]!)!
    const name = n.callFrame.functionName
    if (name === "(idle)") continue
    busy += us
    if (name === "(garbage collector)") gc += us
    else if (isObserving(n.id)) {
      obs += us
      const key = `${name || "(anonymous)"} ${
        n.callFrame.url.endsWith("main.js") ? moduleAt(n.callFrame.lineNumber) : n.callFrame.url.split("/").pop()
      }`
      topObs.set(key, (topObs.get(key) ?? 0) + us)
    } else if (isReading(n.id)) reader += us
  }
  return {
    busy,
    obs,
    reader,
    gc,
    top: [...topObs].sort((a, b) => b[1] - a[1]).slice(0, Number(process.env["BENCH_TOP"] ?? 6))
  }
}

const main = async () => {
  pinSelfToCore0()
  const sink = createServer((req, res) => {
    req.resume()
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"))
  })
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r))
  const sinkUrl = `http://127.0.0.1:${(sink.address() as AddressInfo).port}`
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const only = process.env["BENCH_ONLY"]
  const variants: Array<readonly [string, Record<string, string>]> = ([
    ["metrics", { ENABLE_METRICS: "true", ACCESS_LOG: "false" }],
    ["metrics+tracing", { ENABLE_METRICS: "true", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }],
    ["… 10% sampled", {
      ENABLE_METRICS: "true",
      ACCESS_LOG: "false",
      OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl,
      OTEL_TRACES_SAMPLER: "traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0.1"
    }],
    ["… http/json", {
      ENABLE_METRICS: "true",
      ACCESS_LOG: "false",
      OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl,
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json"
    }],
    ["… + access log", {
      ENABLE_METRICS: "true",
      ACCESS_LOG: "true",
      LOG_LEVEL: "info",
      OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl
    }]
  ] as const).filter(([name]) => only === undefined || name === only)
  console.log(
    `observability share of serve's CPU — ${requests.toLocaleString("en-US")} ${
      stream ? "SSE" : "JSON"
    } requests per variant, 64 connections\n`
  )
  console.log(
    "| variant | CPU µs/request | observability share | usage reader share | GC share | predicted on ÷ off | largest observability items |"
  )
  console.log("|---|---|---|---|---|---|---|")
  for (const [name, env] of variants) {
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-prof-"))
    const proxy = await startLlmProxy(
      `http://127.0.0.1:${up.port}`,
      env,
      ["--cpu-prof", `--cpu-prof-dir=${dir}`],
      readable
    )
    const scrape = env["ENABLE_METRICS"] === "true"
      ? setInterval(() => void request(`${proxy.url}/metrics`).then((r) => r.body.dump(), () => {}), 5_000)
      : undefined
    const load = (amount: number) =>
      autocannon({
        url: `${proxy.url}/v1/chat/completions${stream ? "?chunks=20" : ""}`,
        method: "POST",
        headers: { authorization: `Bearer ${proxy.token}`, "content-type": "application/json" },
        body: chatBody(stream),
        connections: 64,
        amount
      })
    await load(Math.min(20_000, requests))
    const before = cpuMsOf(proxy.pid)
    const t0 = performance.now()
    const r = await load(requests)
    const t1 = performance.now()
    const cpuUs = ((cpuMsOf(proxy.pid) - before) * 1000) / Math.max(1, r.requests.total)
    if (scrape) clearInterval(scrape)
    await proxy.stop()
    const t2 = performance.now()
    const file = readdirSync(dir).find((f) => f.endsWith(".cpuprofile"))
    if (file === undefined) throw new Error(`no profile written for ${name}`)
    const profile = JSON.parse(readFileSync(join(dir, file), "utf8")) as Profile
    // The measured load, in the profile's clock: the profile ends when the process exits (≈ t2).
    const a = analyse(profile, profile.endTime - (t2 - t0) * 1000, profile.endTime - (t2 - t1) * 1000)
    if (process.env["BENCH_KEEP_PROFILE"] === undefined) rmSync(dir, { recursive: true, force: true })
    else console.log(`profile kept in ${dir}`)
    const share = a.obs / a.busy
    console.log(
      `| ${name} | ${fmt(cpuUs, 1)} | ${fmt(100 * share, 1)} % | ${fmt((100 * a.reader) / a.busy, 1)} % | ${
        fmt((100 * a.gc) / a.busy, 1)
      } % | ${fmt(1 - share, 3)} | ` +
        `${a.top.map(([k, us]) => `${k} ${fmt((100 * us) / a.busy, 1)} %`).join("; ")} |`
    )
  }
  sink.close()
}

runBench(main)
