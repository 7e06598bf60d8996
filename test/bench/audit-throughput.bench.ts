/**
 * Benchmark: management API throughput with the audit log off, on (database sink only), and on with the JSONL
 * file too (the default), on SQLite. Each mode is the built binary (`bin/llm-proxy.js serve`, pinned to core 1
 * when `taskset` exists) on the same migrated database; an undici pool with keep-alive drives it at a fixed
 * concurrency from this process. Rounds are interleaved (off, db, db+file, off, …) and the median round is
 * reported, so background load on the machine hits every mode alike.
 *
 * Run with `npm run build && npm run bench -- audit`. Not part of `npm test`. Optional environment:
 * BENCH_SECONDS (3 per round), BENCH_ROUNDS (3), BENCH_CONCURRENCY (16).
 */
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync, statSync } from "node:fs"
import { createRequire } from "node:module"
import { createServer } from "node:net"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import { Pool, request } from "undici"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 3)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 3)
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 16)
const TOKEN = "bench-management-token"
const root = process.cwd()
const hasTaskset = spawnSync("taskset", ["--version"]).status === 0

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
  { name: "GET /manage/tokens?project_id= (token.list, 20 tokens)", method: "GET", path: (id) => `/manage/tokens?project_id=${id}` }
]

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-audit-bench-"))
const dbPath = join(dir, "bench.db")
const auditFile = join(dir, "audit.log")

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const waitFor = async (url: string, ms = 20_000) => {
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

/** `serve` as users run it, with the audit settings of `mode`; stops with SIGTERM (flushing the audit log). */
const startServer = async (mode: Mode) => {
  const bin = join(root, "bin/llm-proxy.js")
  const port = await freePort()
  const argv = hasTaskset ? ["taskset", "-c", "1", process.execPath, bin, "serve"] : [process.execPath, bin, "serve"]
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    env: {
      PATH: process.env["PATH"] ?? "",
      LISTEN_ADDR: `127.0.0.1:${port}`,
      MANAGEMENT_TOKEN: TOKEN,
      DATABASE_PATH: dbPath,
      LOG_LEVEL: "warn",
      LOG_FORMAT: "json",
      AUDIT_ENABLED: mode === "off" ? "false" : "true",
      AUDIT_LOG_FILE: mode === "db+file" ? auditFile : ""
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()))
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/live`)
  return {
    url,
    close: async () => {
      child.kill("SIGTERM")
      await exited
    }
  }
}

interface RoundResult {
  readonly requests: number
  readonly rps: number
  readonly p50: number
  readonly p99: number
}

const drive = async (url: string, scenario: Scenario, projectId: string): Promise<RoundResult> => {
  const pool = new Pool(url, { connections: CONCURRENCY, pipelining: 1 })
  const headers = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }
  const latencies: Array<number> = []
  const one = async () => {
    const start = performance.now()
    const res = await pool.request({
      method: scenario.method,
      path: scenario.path(projectId),
      headers,
      ...(scenario.body !== undefined ? { body: scenario.body } : {})
    })
    await res.body.dump()
    if (res.statusCode !== 200) throw new Error(`${scenario.name}: HTTP ${res.statusCode}`)
    latencies.push(performance.now() - start)
  }
  // Warm-up, then the measured window.
  const warmUntil = performance.now() + 500
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < warmUntil) await one()
  }))
  latencies.length = 0
  const started = performance.now()
  const until = started + SECONDS * 1000
  await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
    while (performance.now() < until) await one()
  }))
  const elapsed = (performance.now() - started) / 1000
  await pool.close()
  const sorted = latencies.sort((a, b) => a - b)
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return { requests: sorted.length, rps: sorted.length / elapsed, p50: at(0.5), p99: at(0.99) }
}

const median = (xs: ReadonlyArray<RoundResult>) => [...xs].sort((a, b) => a.rps - b.rps)[Math.floor(xs.length / 2)]!

const main = async () => {
  if (!existsSync(join(root, "dist/cli/main.js"))) throw new Error("dist/ is missing: run `npm run build` first")
  // A project with 20 tokens, made through the API of an unaudited server (which also migrates the database).
  const setup = await startServer("off")
  const auth = { authorization: `Bearer ${TOKEN}`, "content-type": "application/json" }
  const project = await (await fetch(`${setup.url}/manage/projects`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ name: "bench", api_key: "sk-bench-key-1234567890abcdef" })
  })).json() as { id: string }
  for (let i = 0; i < 20; i++) {
    await fetch(`${setup.url}/manage/tokens`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ project_id: project.id, duration_minutes: 60 })
    })
  }
  await setup.close()

  console.log(
    `management API throughput, audit off vs on — SQLite, concurrency ${CONCURRENCY}, ${ROUNDS} interleaved rounds of ` +
      `${SECONDS}s per mode (median round shown); node ${process.version}, ${cpus().length}× ${cpus()[0]?.model ?? "unknown CPU"}`
  )
  for (const scenario of SCENARIOS) {
    const results: Record<Mode, Array<RoundResult>> = { off: [], db: [], "db+file": [] }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        const server = await startServer(mode)
        results[mode].push(await drive(server.url, scenario, project.id))
        await server.close()
      }
    }
    const off = median(results.off)
    console.log("")
    console.log(scenario.name)
    const header = ["audit", "req/s", "p50 ms", "p99 ms", "vs off"]
    const rows = MODES.map((mode) => {
      const r = median(results[mode])
      return [mode, r.rps.toFixed(0), r.p50.toFixed(2), r.p99.toFixed(2), (r.rps / off.rps).toFixed(3)]
    })
    const widths = header.map((_, c) => Math.max(...[header, ...rows].map((r) => r[c]!.length)))
    const line = (r: ReadonlyArray<string>) => r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ")
    console.log(line(header))
    console.log(widths.map((w) => "-".repeat(w)).join("  "))
    for (const r of rows) console.log(line(r))
  }
  const Database = createRequire(import.meta.url)("better-sqlite3") as new(p: string, o: object) => {
    prepare(q: string): { get(): Record<string, unknown> | undefined }
    close(): void
  }
  const db = new Database(dbPath, { readonly: true })
  const rows = Number(db.prepare("SELECT COUNT(*) AS n FROM audit_events").get()?.["n"] ?? 0)
  db.close()
  console.log("")
  console.log(
    `audit events written: ${rows.toLocaleString("en-US")} rows; JSONL file ${(statSync(auditFile).size / 1e6).toFixed(1)} MB` +
      (hasTaskset ? "; server pinned to core 1" : "")
  )
}

main()
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }))
