/**
 * Benchmark: management API throughput and server CPU per request with the audit log off, on (database sink
 * only), and on with the JSONL file too (the default), on SQLite. Three built binaries (`bin/llm-proxy.js serve`,
 * one per mode, each with its own directory and database) run side by side; an undici pool with keep-alive drives
 * one at a time at a fixed concurrency, the modes interleaved within every round, so load from elsewhere on the
 * machine falls on all of them alike. CPU per request (from /proc) is the steadier figure on a busy machine.
 *
 * Run with `npm run build && npm run bench -- audit`. Not part of `npm test`. Optional environment:
 * BENCH_SECONDS (2 per mode and round), BENCH_ROUNDS (8), BENCH_CONCURRENCY (16), BENCH_SCENARIO (a substring of
 * the scenario names, e.g. PATCH, to run only those).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { createServer } from "node:net"
import { cpus, loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { Pool, request } from "undici"
import { newManagementToken } from "../support/managementToken.js"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 2)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 8)
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 16)
const TOKEN = newManagementToken("bench")

type Mode = "off" | "db" | "db+file"
const MODES: ReadonlyArray<Mode> = ["off", "db", "db+file"]

interface Scenario {
  readonly name: string
  readonly method: "GET" | "PATCH"
  readonly path: (projectId: string) => string
  readonly body?: string
}

const SCENARIOS: ReadonlyArray<Scenario> = [
  { name: "GET /manage/projects/{id} (project.read)", method: "GET", path: (id) => `/manage/projects/${id}` },
  {
    name: "PATCH /manage/projects/{id} (project.update)",
    method: "PATCH",
    path: (id) => `/manage/projects/${id}`,
    body: JSON.stringify({ is_active: true })
  },
  {
    name: "GET /manage/tokens?project_id= (token.list, 20 tokens)",
    method: "GET",
    path: (id) => `/manage/tokens?project_id=${id}`
  }
]

const root = process.cwd()

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const waitFor = async (url: string, ms = 30_000) => {
  const until = Date.now() + ms
  while (Date.now() < until) {
    try {
      const r = await request(url)
      await r.body.dump()
      if (r.statusCode === 200) return
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${url} did not come up`)
}

/** User + system CPU time of a process so far, in ms (Linux /proc; NaN elsewhere). */
const cpuMs = (pid: number): number => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100 // utime + stime, in USER_HZ (100/s)
  } catch {
    return Number.NaN
  }
}

interface Server {
  readonly mode: Mode
  readonly url: string
  readonly pid: number
  readonly dir: string
  readonly projectId: string
  readonly close: () => Promise<void>
}

/** `serve` as users run it, with the audit settings of `mode`, its own directory and SQLite file. */
const startServer = async (mode: Mode): Promise<Server> => {
  const dir = mkdtempSync(join(tmpdir(), `llm-proxy-audit-bench-${mode.replace("+", "-")}-`))
  const port = await freePort()
  const child: ChildProcess = spawn(process.execPath, [join(root, "bin/llm-proxy.js"), "serve"], {
    cwd: dir,
    env: {
      PATH: process.env["PATH"] ?? "",
      LISTEN_ADDR: `127.0.0.1:${port}`,
      MANAGEMENT_TOKEN: TOKEN,
      DATABASE_PATH: join(dir, "bench.db"),
      LOG_LEVEL: "error",
      LOG_FORMAT: "json",
      AUDIT_ENABLED: mode === "off" ? "false" : "true",
      AUDIT_LOG_FILE: mode === "db+file" ? join(dir, "audit.log") : ""
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/live`)
  // A project with 20 tokens.
  const auth = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }
  const project = await (await fetch(`${url}/manage/projects`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ name: "bench", api_key: "sk-bench-key-1234567890abcdef" })
  })).json() as { id: string }
  for (let i = 0; i < 20; i++) {
    await fetch(`${url}/manage/tokens`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ project_id: project.id, duration_minutes: 60 })
    })
  }
  return {
    mode,
    url,
    pid: child.pid!,
    dir,
    projectId: project.id,
    close: async () => {
      child.kill("SIGTERM")
      await exited
    }
  }
}

interface Slice {
  readonly requests: number
  readonly seconds: number
  readonly cpuMs: number
  readonly latencies: ReadonlyArray<number>
}

/** Drives `server` with `scenario` at CONCURRENCY for `seconds`; counts requests and the server's CPU time. */
const drive = async (server: Server, scenario: Scenario, seconds: number): Promise<Slice> => {
  const pool = new Pool(server.url, { connections: CONCURRENCY, pipelining: 1 })
  const headers = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }
  const latencies: Array<number> = []
  const cpuBefore = cpuMs(server.pid)
  const started = performance.now()
  const until = started + seconds * 1000
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < until) {
      const t0 = performance.now()
      const res = await pool.request({
        method: scenario.method,
        path: scenario.path(server.projectId),
        headers,
        ...(scenario.body !== undefined ? { body: scenario.body } : {})
      })
      await res.body.dump()
      if (res.statusCode !== 200) throw new Error(`${scenario.name}: HTTP ${res.statusCode}`)
      latencies.push(performance.now() - t0)
    }
  }))
  const elapsed = (performance.now() - started) / 1000
  const cpu = cpuMs(server.pid) - cpuBefore
  await pool.close()
  return { requests: latencies.length, seconds: elapsed, cpuMs: cpu, latencies }
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!
const quantile = (xs: ReadonlyArray<number>, q: number) => {
  const sorted = [...xs].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
}

const main = async () => {
  if (!existsSync(join(root, "dist/cli/main.js"))) throw new Error("dist/ is missing: run `npm run build` first")
  const servers = await Promise.all(MODES.map(startServer))
  try {
    console.log(
      `management API, audit off vs on — SQLite, built binary, concurrency ${CONCURRENCY}, ${ROUNDS} rounds of ` +
        `${SECONDS}s per mode, modes interleaved within each round; node ${process.version}, ` +
        `${cpus().length}× ${cpus()[0]?.model ?? "unknown CPU"}, load average ${
          loadavg().map((l) => l.toFixed(1)).join(" ")
        }`
    )
    console.log(
      "req/s: median over rounds; CPU: server user+system time per request over all rounds; ratios against off"
    )
    const only = process.env["BENCH_SCENARIO"]
    for (const scenario of SCENARIOS.filter((s) => only === undefined || s.name.includes(only))) {
      for (const server of servers) await drive(server, scenario, 0.5) // warm-up
      const slices: Record<Mode, Array<Slice>> = { off: [], db: [], "db+file": [] }
      for (let round = 0; round < ROUNDS; round++) {
        // Rotate the order so no mode always runs first in a round.
        for (let k = 0; k < servers.length; k++) {
          const server = servers[(round + k) % servers.length]!
          slices[server.mode].push(await drive(server, scenario, SECONDS))
        }
      }
      const stats = (mode: Mode) => {
        const xs = slices[mode]
        const requests = xs.reduce((a, x) => a + x.requests, 0)
        return {
          rps: median(xs.map((x) => x.requests / x.seconds)),
          cpuUs: (xs.reduce((a, x) => a + x.cpuMs, 0) * 1000) / requests,
          p50: quantile(xs.flatMap((x) => x.latencies), 0.5),
          p99: quantile(xs.flatMap((x) => x.latencies), 0.99)
        }
      }
      const off = stats("off")
      console.log("")
      console.log(scenario.name)
      const header = ["audit", "req/s", "vs off", "CPU µs/req", "vs off", "p50 ms", "p99 ms"]
      const rows = MODES.map((mode) => {
        const r = stats(mode)
        return [
          mode,
          r.rps.toFixed(0),
          (r.rps / off.rps).toFixed(2),
          r.cpuUs.toFixed(0),
          (r.cpuUs / off.cpuUs).toFixed(2),
          r.p50.toFixed(1),
          r.p99.toFixed(1)
        ]
      })
      const widths = header.map((_, c) => Math.max(...[header, ...rows].map((r) => r[c]!.length)))
      const line = (r: ReadonlyArray<string>) =>
        r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ")
      console.log(line(header))
      console.log(widths.map((w) => "-".repeat(w)).join("  "))
      for (const r of rows) console.log(line(r))
    }
  } finally {
    await Promise.all(servers.map((s) => s.close()))
  }
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(p: string, o: object) => {
    prepare(q: string): { get(): Record<string, unknown> | undefined }
    close(): void
  }
  const counts = servers.map((server) => {
    const db = new Database(join(server.dir, "bench.db"), { readonly: true })
    const n = Number(db.prepare("SELECT COUNT(*) AS n FROM audit_events").get()?.["n"] ?? 0)
    db.close()
    const file = join(server.dir, "audit.log")
    return `${server.mode}: ${n.toLocaleString("en-US")} rows${
      existsSync(file) ? `, file ${(statSync(file).size / 1e6).toFixed(1)} MB` : ""
    }`
  })
  console.log("")
  console.log(`audit events written after shutdown — ${counts.join("; ")}`)
  for (const server of servers) rmSync(server.dir, { recursive: true, force: true })
}

main().catch((e: unknown) => {
  console.error(e)
  process.exitCode = 1
})
