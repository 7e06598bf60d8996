/**
 * What several provider keys on a project cost: one `serve`, a token of a project with one key and a token of a
 * project with three (`api_keys`, requests spread over them by weight), loaded in turn at saturation (closed loop,
 * autocannon), alternating which goes first in each round so that drift in the machine's speed favours neither. Prints
 * each run's RPS and CPU per request of `serve` (from /proc), and the ratios three keys ÷ one key: the median of the
 * rounds' ratios, and of the means.
 *
 * Layout as in proxy.bench.ts: `serve` pinned to core 1, the upstream and the load generator on core 0.
 *
 * Run: `npm run build && npm run bench -- keys`. Environment: BENCH_SECONDS (4) per run, BENCH_ROUNDS (6),
 * BENCH_CONNECTIONS (64).
 */
import { join } from "node:path"
import { cpuMsOf, fmt, pinSelfToCore0, root, runBench, saturate, startJsonPort, startLlmProxy } from "./harness.js"

const seconds = Number(process.env["BENCH_SECONDS"] ?? 4)
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 6)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)

interface Run {
  readonly rps: number
  readonly cpuUs: number
}

const main = async () => {
  pinSelfToCore0()
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const llm = await startLlmProxy(`http://127.0.0.1:${up.port}`)
  try {
    const run = async (token: string, stream: boolean, secs: number): Promise<Run> => {
      const before = cpuMsOf(llm.pid)
      const r = await saturate(llm.url, { authorization: `Bearer ${token}` }, stream, secs, connections)
      return { rps: r.rps, cpuUs: ((cpuMsOf(llm.pid) - before) * 1000) / Math.max(1, r.total) }
    }
    console.log(`several keys benchmark — ${seconds} s per run, ${connections} connections, ${rounds} rounds`)
    // warm-up: pools, JIT, the token cache, both tokens and both kinds
    for (const stream of [false, true]) {
      await run(llm.token, stream, 3)
      await run(llm.threeKeysToken, stream, 3)
    }
    const mean = (xs: ReadonlyArray<Run>, k: keyof Run) => xs.reduce((a, x) => a + x[k], 0) / xs.length
    const show = (xs: ReadonlyArray<Run>) => xs.map((x) => `${fmt(x.rps, 0)}/${fmt(x.cpuUs, 0)}`).join(" ")
    console.log("\nkind  keys  runs (RPS/CPU µs per request)")
    const ratios: Array<string> = []
    for (const stream of [false, true]) {
      const one: Array<Run> = []
      const three: Array<Run> = []
      for (let i = 0; i < rounds; i++) {
        if (i % 2 === 0) {
          one.push(await run(llm.token, stream, seconds))
          three.push(await run(llm.threeKeysToken, stream, seconds))
        } else {
          three.push(await run(llm.threeKeysToken, stream, seconds))
          one.push(await run(llm.token, stream, seconds))
        }
      }
      const kind = stream ? "sse " : "json"
      console.log(`${kind}  1     ${show(one)}`)
      console.log(`${kind}  3     ${show(three)}`)
      // Each round's two runs are adjacent in time: the median of the rounds' ratios is not moved by a step in the
      // machine's speed between rounds (a shared host halved every figure midway through one run), the means are.
      const median = (k: keyof Run) => {
        const rs = one.map((o, i) => three[i]![k] / o[k]).sort((a, b) => a - b)
        return rs.length % 2 === 1 ? rs[rs.length >> 1]! : (rs[rs.length / 2 - 1]! + rs[rs.length / 2]!) / 2
      }
      ratios.push(
        `${kind.trim()}: three keys ÷ one key, median of the rounds: throughput ${fmt(median("rps"), 3)}×, CPU per ` +
          `request ${fmt(median("cpuUs"), 3)}× (of the means: ${fmt(mean(three, "rps") / mean(one, "rps"), 3)}×, ${
            fmt(mean(three, "cpuUs") / mean(one, "cpuUs"), 3)
          }×)`
      )
    }
    console.log(`\n${ratios.join("\n")}`)
  } finally {
    await llm.stop()
  }
}

runBench(main)
