/**
 * Benchmark: management API throughput with the audit log off, on (database sink), and on with the JSONL file
 * too (the default), on SQLite. The full server stack runs in this process on 127.0.0.1; an undici pool with
 * keep-alive drives it at a fixed concurrency. Rounds are interleaved (off, db, db+file, off, …) and the median
 * round is reported, so background load on the machine hits every mode alike.
 *
 * Run with `npm run bench -- audit`. Not part of `npm test`. Optional environment: BENCH_SECONDS (3 per round),
 * BENCH_ROUNDS (3), BENCH_CONCURRENCY (16).
 */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { mkdtempSync, rmSync, statSync } from "node:fs"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import { Pool } from "undici"
import { AuditLog } from "../../src/audit/AuditLog.js"
import type { AppConfigShape } from "../../src/config/AppConfig.js"
import { ServerAddress } from "../../src/http/Server.js"
import { serveLayer } from "../../src/Layers.js"
import { migrateUp } from "../../src/store/migrations.js"

const SECONDS = Number(process.env["BENCH_SECONDS"] ?? 3)
const ROUNDS = Number(process.env["BENCH_ROUNDS"] ?? 3)
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 16)
const TOKEN = "bench-management-token"

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
  { name: "GET /manage/tokens?project_id= (token.list)", method: "GET", path: (id) => `/manage/tokens?project_id=${id}` }
]

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-audit-bench-"))

/** The `serve` stack (as src/Layers.ts serveLayer composes it) on an already migrated SQLite file. */
const startServer = async (mode: Mode, dbPath: string, auditFile: string) => {
  const config: AppConfigShape = {
    listen: { host: "127.0.0.1", port: 0 },
    managementToken: Option.some(Redacted.make(TOKEN)),
    managementTokenFile: join(dir, "management-token"),
    database: { _tag: "sqlite", path: dbPath },
    encryptionKey: Option.none(),
    requireEncryptionKey: false,
    logLevel: "error",
    logFormat: "json",
    audit: {
      enabled: mode !== "off",
      file: mode === "db+file" ? Option.some(auditFile) : Option.none(),
      storeInDb: true,
      retentionDays: 0
    },
    trustedProxies: [],
    apiConfigPath: Option.none(),
    openaiApiUrl: "https://api.openai.com",
    maxRequestSize: 33_554_432,
    requestTimeoutMs: 120_000,
    circuitBreakerThreshold: 5,
    circuitBreakerCooldownMs: 30_000,
    tokenCacheTtlMs: 5_000,
    usageFlushIntervalMs: 1_000,
    rateLimitBackend: "in-memory",
    invalidationBackend: "in-memory",
    redisUrl: "redis://127.0.0.1:6379"
  }
  // serveLayer applies no migration to the already migrated file; it is the whole stack `serve` runs.
  const layer = serveLayer(config)
  const scope = Effect.runSync(Scope.make())
  const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  return {
    url: `http://127.0.0.1:${Context.get(ctx, ServerAddress).port}`,
    audit: Context.get(ctx, AuditLog),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
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
  const dbPath = join(dir, "bench.db")
  const auditFile = join(dir, "audit.log")
  // Migrate once with the repository's migrations directory (the bundle cannot find it by itself).
  const { sqliteClient } = await import("../../src/store/layers.js")
  await Effect.runPromise(
    Effect.scoped(Effect.provide(migrateUp("sqlite", join(process.cwd(), "migrations")), sqliteClient(dbPath)))
  )
  // A project with 20 tokens, made through the API of an unaudited server.
  const setup = await startServer("off", dbPath, auditFile)
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
  const written: Record<Mode, number> = { off: 0, db: 0, "db+file": 0 }
  for (const scenario of SCENARIOS) {
    const results: Record<Mode, Array<RoundResult>> = { off: [], db: [], "db+file": [] }
    for (let round = 0; round < ROUNDS; round++) {
      for (const mode of MODES) {
        const server = await startServer(mode, dbPath, auditFile)
        results[mode].push(await drive(server.url, scenario, project.id))
        written[mode] += (await Effect.runPromise(server.audit.stats)).written
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
  console.log("")
  console.log(
    `audit events written: db ${written.db.toLocaleString("en-US")}, db+file ${written["db+file"].toLocaleString("en-US")} ` +
      `(file ${(statSync(auditFile).size / 1e6).toFixed(1)} MB); off ${written.off}`
  )
}

main()
  .catch((e: unknown) => {
    console.error(e)
    process.exitCode = 1
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }))
