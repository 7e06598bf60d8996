/**
 * Micro-benchmark: CPU cost of one audit event end to end — `AuditLog.record` on a fiber, plus its share of the
 * batched writes — for the database sink (SQLite), the JSONL file sink, and both, measured with
 * process.cpuUsage() (user + system) so a busy machine changes the figure little.
 *
 * Run with `npm run bench -- audit-record`. Not part of `npm test`. Optional environment: BENCH_EVENTS (20000).
 */
import { Effect, Exit, Layer, Scope } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import * as AuditLog from "../../src/audit/AuditLog.js"
import * as AuditRepo from "../../src/audit/AuditRepo.js"
import { layer as sinksLayer } from "../../src/audit/sinks.js"
import type { AuditEntry } from "../../src/domain/audit.js"
import { sqliteClient } from "../../src/store/layers.js"
import { migrateUp } from "../../src/store/migrations.js"

const EVENTS = Number(process.env["BENCH_EVENTS"] ?? 20_000)

const entry = (i: number): AuditEntry => ({
  action: "project.read",
  actor: "management_api",
  outcome: "success",
  projectId: "6f1c2a4e-9b7d-4c2e-8f00-123456789abc",
  requestId: `req-${i}`,
  correlationId: `req-${i}`,
  clientIp: "127.0.0.1",
  method: "GET",
  path: "/manage/projects/6f1c2a4e-9b7d-4c2e-8f00-123456789abc",
  userAgent: "bench/1.0",
  details: { project_count: 3 }
})

const run = (name: string, file: string | undefined, database: boolean, dir: string) =>
  Effect.gen(function*() {
    const dbPath = join(dir, `${name.replace(/\W/g, "-")}.db`)
    const client = sqliteClient(dbPath)
    const scope = yield* Scope.make()
    const ctx = yield* Layer.buildWithScope(
      AuditLog.layer.pipe(
        Layer.provide(sinksLayer({ file, database })),
        Layer.provide(AuditRepo.layer("sqlite")),
        Layer.provideMerge(client)
      ),
      scope
    )
    yield* Effect.provide(migrateUp("sqlite", join(process.cwd(), "migrations")), ctx)
    const log = ctx.unsafeMap.get(AuditLog.AuditLog.key) as AuditLog.AuditLogShape
    // Warm-up.
    for (let i = 0; i < 2000; i++) yield* log.record(entry(i))
    yield* log.flush
    const cpu0 = process.cpuUsage()
    const t0 = performance.now()
    // Requests arrive concurrently: 16 fibers record in turn, yielding between events like handlers do.
    yield* Effect.forEach(
      Array.from({ length: 16 }, (_, f) => f),
      (f) =>
        Effect.gen(function*() {
          for (let i = f; i < EVENTS; i += 16) {
            yield* log.record(entry(i))
            yield* Effect.yieldNow()
          }
        }),
      { concurrency: "unbounded", discard: true }
    )
    yield* log.flush
    const wall = performance.now() - t0
    const cpu = process.cpuUsage(cpu0)
    const stats = yield* log.stats
    yield* Scope.close(scope, Exit.void)
    const us = (cpu.user + cpu.system) / EVENTS
    console.log(
      `${name.padEnd(24)} ${us.toFixed(1).padStart(7)} µs CPU/event  ${
        (EVENTS / (wall / 1000)).toFixed(0).padStart(8)
      } events/s  (${stats.written} written)`
    )
  })

const main = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-audit-record-"))
  console.log(
    `audit event cost — ${EVENTS.toLocaleString("en-US")} events from 16 fibers, SQLite; node ${process.version}`
  )
  try {
    yield* run("no sinks (queue only)", undefined, false, dir)
    yield* run("database", undefined, true, dir)
    yield* run("file", join(dir, "audit.log"), false, dir)
    yield* run("database + file", join(dir, "audit2.log"), true, dir)
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
})

Effect.runPromise(main).catch((e: unknown) => {
  console.error(e)
  process.exitCode = 1
})
