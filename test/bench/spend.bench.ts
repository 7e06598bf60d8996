/**
 * What spend control costs on the data plane: one `serve`, two tokens (of two projects), one plain and one with a USD
 * budget, a token budget and a token-per-minute limit (none of them reached), loaded in turn at saturation
 * (closed loop, autocannon). The runs alternate (plain, spend, spend, plain, …) so that drift in the shared
 * machine's speed favours neither; each figure is the mean of its BENCH_ROUNDS runs, and the ratios are spend ÷ plain
 * within the run: of the means, each round's, and their median. CPU per request of the `serve` process (from /proc) is reported too.
 *
 * Layout as in proxy.bench.ts: `serve` pinned to core 1, the upstream and the load generator on core 0.
 *
 * Run: `npm run build && npm run bench -- spend`. Environment: BENCH_SECONDS (5) per run, BENCH_CONNECTIONS (64),
 * BENCH_ROUNDS (2: alternations per kind), BENCH_DATABASE_URL (PostgreSQL instead of SQLite), BENCH_PROFILE=dir (a CPU profile of `serve`, built
 * readable in .bench-dist, written to dir on exit), BENCH_ONLY=plain|spend (load one token only, for a profile).
 */
import { spawnSync } from "node:child_process"
import { join } from "node:path"
import {
  cpuMsOf,
  fmt,
  pinSelfToCore0,
  root,
  runBench,
  saturate,
  type Saturation,
  startJsonPort,
  startLlmProxy
} from "./harness.js"

const seconds = Number(process.env["BENCH_SECONDS"] ?? 5)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 2)
const profileDir = process.env["BENCH_PROFILE"]
const only = process.env["BENCH_ONLY"] as "plain" | "spend" | undefined
/** `serve` on this PostgreSQL database instead of its own SQLite file (budgets then read and write every 50 ms). */
const databaseUrl = process.env["BENCH_DATABASE_URL"]
const dbEnv: Record<string, string> = databaseUrl !== undefined ? { DATABASE_URL: databaseUrl } : {}

/** The CLI as one unminified file with esbuild's `// path` module markers (for reading a profile), as in observability-profile. */
const readableBundle = () => {
  const built = spawnSync(process.execPath, [
    "--input-type=module",
    "-e",
    "const { buildCli } = await import('./scripts/build.mjs'); await buildCli('.bench-dist', { readable: true })"
  ], { cwd: root, stdio: "inherit" })
  if (built.status !== 0) throw new Error("building .bench-dist failed")
  return join(root, ".bench-dist/cli/main.js")
}

const main = async () => {
  pinSelfToCore0()
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const upstream = `http://127.0.0.1:${up.port}`
  const llm = profileDir !== undefined
    ? await startLlmProxy(upstream, dbEnv, ["--cpu-prof", `--cpu-prof-dir=${profileDir}`], readableBundle())
    : await startLlmProxy(upstream, dbEnv)
  try {
    const plain = llm.token
    // A project of its own (same upstream key): the plain token's project has no budget either way.
    const project = await llm.manage("/manage/projects", { name: "bench-spend", api_key: "sk-upstream-key" })
    const spend = await llm.manage("/manage/tokens", {
      project_id: project["id"],
      duration_minutes: 600,
      max_cost_usd: 1_000_000,
      max_tokens: 1_000_000_000_000,
      budget_period: "month",
      rate_limit: { tokens: 1_000_000_000_000, window_seconds: 60 }
    })
    const spendToken = String(spend["token"])
    console.log(
      `spend control benchmark — ${seconds} s per run, ${connections} connections, ${rounds} rounds; ` +
        `token "spend": max_cost_usd, max_tokens (month), rate_limit.tokens per 60 s; ` +
        (databaseUrl !== undefined ? "PostgreSQL" : "SQLite")
    )
    const load = async (token: string, stream: boolean): Promise<Saturation & { cpuUs: number }> => {
      const before = cpuMsOf(llm.pid)
      const r = await saturate(llm.url, { authorization: `Bearer ${token}` }, stream, seconds, connections)
      return { ...r, cpuUs: ((cpuMsOf(llm.pid) - before) * 1000) / Math.max(1, r.total) }
    }
    // warm-up: pools, JIT, the token cache, the first read of what was spent
    if (only !== "spend") await load(plain, false)
    if (only !== "plain") await load(spendToken, false)
    console.log("\nkind  token   RPS (mean)  CPU µs/request  p99 ms  errors")
    const ratios: Array<string> = []
    for (const stream of [false, true]) {
      const runs: Record<"plain" | "spend", Array<Saturation & { cpuUs: number }>> = { plain: [], spend: [] }
      for (let i = 0; i < rounds; i++) {
        const order = i % 2 === 0 ? (["plain", "spend"] as const) : (["spend", "plain"] as const)
        for (const name of order) {
          if (only === undefined || only === name) {
            runs[name].push(await load(name === "plain" ? plain : spendToken, stream))
          }
        }
      }
      const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length
      const kind = stream ? "sse " : "json"
      const summary = (name: "plain" | "spend") => {
        const rs = runs[name]
        return {
          rps: mean(rs.map((r) => r.rps)),
          cpu: mean(rs.map((r) => r.cpuUs)),
          p99: Math.max(...rs.map((r) => r.p99)),
          errors: rs.reduce((a, r) => a + r.errors, 0)
        }
      }
      const p = summary("plain")
      const s = summary("spend")
      if (only !== undefined) {
        const r = only === "plain" ? p : s
        console.log(
          `${kind}  ${only}   ${fmt(r.rps, 0).padStart(10)}  ${fmt(r.cpu, 1).padStart(14)}  ${
            fmt(r.p99, 0).padStart(6)
          }  ${r.errors}`
        )
        continue
      }
      for (const [name, r] of [["plain", p], ["spend", s]] as const) {
        console.log(
          `${kind}  ${name}   ${fmt(r.rps, 0).padStart(10)}  ${fmt(r.cpu, 1).padStart(14)}  ${
            fmt(r.p99, 0).padStart(6)
          }  ${r.errors}`
        )
      }
      // Each round's spend run is paired with its plain run (back to back): the median of the rounds' ratios is
      // what one slow spell of the shared machine moves least.
      const perRound = runs.spend.map((r, i) => ({
        rps: r.rps / runs.plain[i]!.rps,
        cpu: r.cpuUs / runs.plain[i]!.cpuUs
      }))
      ratios.push(
        `${kind.trim()}: throughput spend ÷ plain ${fmt(s.rps / p.rps, 2)}× (rounds ${
          perRound.map((r) => fmt(r.rps, 2)).join(" ")
        }; median ${fmt(median(perRound.map((r) => r.rps)), 2)}×), CPU per request ${fmt(s.cpu / p.cpu, 2)}× (median ${
          fmt(median(perRound.map((r) => r.cpu)), 2)
        }×)`
      )
    }
    console.log(`\n${ratios.join("\n")}`)
  } finally {
    await llm.stop()
  }
}

const median = (xs: ReadonlyArray<number>) => {
  const s = [...xs].sort((a, b) => a - b)
  const mid = Math.floor(s.length / 2)
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2
}

runBench(main)
