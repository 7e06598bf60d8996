/**
 * Streaming saturation only, llm-proxy against the raw proxy (and, with BENCH_BASELINE, another build): the same
 * upstream, pinning and load as proxy.bench.ts's scenario 2 (20 SSE chunks per answer, 64 connections), in rounds
 * that alternate the targets' order so background load hits all alike. Prints streams/s and CPU µs per stream per
 * round, then the medians and the median of each round's ratio to the raw proxy. Quicker than the whole benchmark
 * for a before/after comparison of a change to the streaming path.
 *
 *   npm run build && npm run bench -- stream-ab
 *   env: BENCH_SECONDS (4 per run), BENCH_ROUNDS (8), BENCH_CONNECTIONS (64), BENCH_STREAM=0 (JSON answers instead),
 *        BENCH_BASELINE=/path/to/other/bin/llm-proxy.js (a build with its own dist/ and migrations/ next to it),
 *        BENCH_STREAM_QUERY (more of the upstream's query, test/bench/upstream.mjs: `&interval=1` sends the events
 *        1 ms apart, each in a read of its own, instead of all at once)
 */
import { join } from "node:path"
import { cpuMsOf, fmt, pinSelfToCore0, root, runBench, saturate, startJsonPort, startLlmProxy } from "./harness.js"

const seconds = Number(process.env["BENCH_SECONDS"] ?? 4)
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 8)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)
const stream = process.env["BENCH_STREAM"] !== "0"
const baseline = process.env["BENCH_BASELINE"]
const streamQuery = process.env["BENCH_STREAM_QUERY"] ?? ""

interface Target {
  readonly name: string
  readonly url: string
  readonly headers: Record<string, string>
  readonly pid: number
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const measure = async (t: Target, secs: number) => {
  const cpu = cpuMsOf(t.pid)
  const r = await saturate(t.url, t.headers, stream, secs, connections, streamQuery)
  if (r.errors > 0) throw new Error(`${t.name}: ${r.errors} failed requests`)
  return { rate: r.total / secs, us: ((cpuMsOf(t.pid) - cpu) * 1000) / r.total }
}

runBench(async () => {
  pinSelfToCore0()
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const upstream = `http://127.0.0.1:${up.port}`
  const raw = await startJsonPort(join(root, "test/bench/raw-proxy.mjs"), { UPSTREAM: upstream }, 1)
  const targets: Array<Target> = [{ name: "raw proxy", url: `http://127.0.0.1:${raw.port}`, headers: {}, pid: raw.pid }]
  const builds: Array<[string, string | undefined]> = [["llm-proxy", undefined]]
  if (baseline !== undefined) builds.push(["baseline", baseline])
  for (const [name, bin] of builds) {
    const llm = await startLlmProxy(upstream, {}, [], bin)
    targets.push({ name, url: llm.url, headers: { authorization: `Bearer ${llm.token}` }, pid: llm.pid })
  }
  console.log(
    `${
      stream ? `streaming (20 SSE chunks${streamQuery === "" ? "" : `, ${streamQuery.replace(/^&/, "")}`})` : "JSON"
    } saturation, ${connections} connections, ${rounds} rounds of ${seconds} s`
  )
  for (const t of targets) await measure(t, 3)
  const results = new Map(targets.map((t) => [t.name, [] as Array<{ rate: number; us: number }>]))
  for (let r = 0; r < rounds; r++) {
    const order = r % 2 === 0 ? targets : [...targets].reverse()
    const line: Array<string> = []
    for (const t of order) {
      const m = await measure(t, seconds)
      results.get(t.name)!.push(m)
      line.push(`${t.name} ${fmt(m.rate, 0)}/s ${fmt(m.us, 1)} µs`)
    }
    console.log(`round ${r + 1}: ${line.join(" · ")}`)
  }
  const rawRuns = results.get("raw proxy")!
  for (const t of targets) {
    const runs = results.get(t.name)!
    const ratio = t.name === "raw proxy"
      ? ""
      : ` · ÷ raw proxy: ${fmt(median(runs.map((m, i) => m.rate / rawRuns[i]!.rate)), 3)}× throughput, ` +
        `${fmt(median(runs.map((m, i) => m.us / rawRuns[i]!.us)), 3)}× CPU`
    console.log(
      `${t.name.padEnd(10)} median ${fmt(median(runs.map((m) => m.rate)), 0)}/s, ` +
        `${fmt(median(runs.map((m) => m.us)), 1)} µs per ${stream ? "stream" : "request"}${ratio}`
    )
  }
})
