/**
 * Micro-benchmark: Store.getTokenByHash on SQLite with 10,000 tokens, against the raw better-sqlite3 prepared
 * statement running the same query, to show what Effect + @effect/sql add per lookup.
 *
 * Run with `npm run bench` (scripts/bench.mjs bundles this file and runs it from the repository root).
 * Not part of `npm test`. Optional environment: BENCH_TOKENS (10000), BENCH_LOOKUPS (20000).
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Option } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { cpus, tmpdir } from "node:os"
import { join } from "node:path"
import { sqliteStore } from "../../src/store/layers.js"
import { migrateUp } from "../../src/store/migrations.js"
import { Store } from "../../src/store/Store.js"

// better-sqlite3 ships no type declarations (and @types/better-sqlite3 is not installed): describe what we use.
interface RawStatement {
  all(...params: ReadonlyArray<unknown>): Array<Record<string, unknown>>
  get(...params: ReadonlyArray<unknown>): Record<string, unknown> | undefined
}
interface RawDatabase {
  prepare(sql: string): RawStatement
  close(): void
}
type RawDatabaseConstructor = new(filename: string, options?: { readonly readonly?: boolean }) => RawDatabase
const Database = createRequire(import.meta.url)("better-sqlite3") as RawDatabaseConstructor

const TOKENS = Number(process.env["BENCH_TOKENS"] ?? 10_000)
const LOOKUPS = Number(process.env["BENCH_LOOKUPS"] ?? 20_000)
const WARMUP = Math.min(5_000, LOOKUPS)
const QUERY = "SELECT * FROM tokens WHERE token_hash = ?"

interface Result {
  readonly name: string
  readonly samples: Float64Array // nanoseconds per lookup
}

const now = () => process.hrtime.bigint()

/** Times `lookup(hash)` once per hash; the lookup must find a row. */
const measureSync = (name: string, hashes: ReadonlyArray<string>, lookup: (hash: string) => unknown): Result => {
  const samples = new Float64Array(hashes.length)
  for (let i = 0; i < hashes.length; i++) {
    const start = now()
    const found = lookup(hashes[i]!)
    samples[i] = Number(now() - start)
    if (found === undefined) throw new Error(`${name}: token not found`)
  }
  return { name, samples }
}

const row = (r: Result) => {
  const sorted = Float64Array.from(r.samples).sort()
  const us = (ns: number) => (ns / 1000).toFixed(2)
  const mean = sorted.reduce((a, b) => a + b, 0) / sorted.length
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!
  return [r.name, us(mean), us(at(0.5)), us(at(0.99)), Math.round(1e9 / mean).toLocaleString("en-US")]
}

const printTable = (results: ReadonlyArray<Result>) => {
  const header = ["lookup", "mean µs", "p50 µs", "p99 µs", "lookups/s"]
  const rows = [header, ...results.map(row)]
  const widths = header.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  const line = (r: ReadonlyArray<string>) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join("  ")
  console.log(line(header))
  console.log(widths.map((w) => "-".repeat(w)).join("  "))
  for (const r of rows.slice(1)) console.log(line(r))
}

const program = Effect.gen(function*() {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-"))
  yield* Effect.addFinalizer(() => Effect.sync(() => rmSync(dir, { recursive: true, force: true })))
  const file = join(dir, "bench.db")

  const ctx = yield* Layer.build(sqliteStore(file))
  yield* Effect.provide(migrateUp("sqlite", join(process.cwd(), "migrations")), ctx)
  const store = Effect.runSync(Effect.provide(Store, ctx)) // a plain value: the service
  const sql = Effect.runSync(Effect.provide(SqlClient.SqlClient, ctx))

  // 10,000 tokens (sha-256-sized hex hashes) over 10 projects, inserted through the Store in one transaction.
  const stamp = new Date().toISOString()
  const hashes: Array<string> = []
  yield* sql.withTransaction(Effect.gen(function*() {
    const projects: Array<string> = []
    for (let p = 0; p < 10; p++) {
      const id = randomUUID()
      projects.push(id)
      yield* store.createProject({
        id,
        name: `bench-${p}`,
        apiKeys: [{ id: randomUUID(), key: "k", hint: "k", weight: 1, provider: null }],
        provider: "openai",
        now: stamp
      })
    }
    for (let i = 0; i < TOKENS; i++) {
      const tokenHash = randomBytes(32).toString("hex")
      hashes.push(tokenHash)
      yield* store.createToken({
        id: randomUUID(),
        tokenHash,
        tokenHint: "sk-abcd****wxyz",
        projectId: projects[i % projects.length]!,
        expiresAt: "2099-01-01T00:00:00.000Z",
        maxRequests: null,
        now: stamp
      })
    }
  }))

  const pick = (n: number) => Array.from({ length: n }, () => hashes[Math.floor(Math.random() * hashes.length)]!)
  const warm = pick(WARMUP)
  const sample = pick(LOOKUPS)

  // Raw: a second connection to the same file, one prepared statement, same query, same .all() as @effect/sql.
  const raw = new Database(file, { readonly: true })
  yield* Effect.addFinalizer(() => Effect.sync(() => raw.close()))
  const statement = raw.prepare(QUERY)
  const rawLookup = (hash: string) => statement.all(hash)[0]

  // Store, the way a request handler uses it: yielded inside an already running fiber.
  const storeInFiber = (name: string, hashes: ReadonlyArray<string>) =>
    Effect.gen(function*() {
      const samples = new Float64Array(hashes.length)
      for (let i = 0; i < hashes.length; i++) {
        const start = now()
        const found = yield* store.getTokenByHash(hashes[i]!)
        samples[i] = Number(now() - start)
        if (Option.isNone(found)) throw new Error(`${name}: token not found`)
      }
      return { name, samples } satisfies Result
    })

  // Store, each lookup run as its own program (a fiber per call).
  const storeRunSync = (hash: string) => Option.getOrUndefined(Effect.runSync(store.getTokenByHash(hash)))

  // Warm-up (JIT, statement caches, page cache), then measure, interleaving nothing else.
  measureSync("warm-up raw", warm, rawLookup)
  yield* storeInFiber("warm-up store", warm)
  measureSync("warm-up runSync", warm, storeRunSync)

  const results: Array<Result> = [
    measureSync("better-sqlite3 prepared statement (.all)", sample, rawLookup),
    yield* storeInFiber("Store.getTokenByHash, inside a fiber", sample),
    measureSync("Store.getTokenByHash, Effect.runSync per call", sample, storeRunSync)
  ]

  const version = raw.prepare("SELECT sqlite_version() AS v").get()?.["v"]
  console.log(
    `token lookup by hash — SQLite ${String(version)}, ${TOKENS.toLocaleString("en-US")} tokens, ` +
      `${LOOKUPS.toLocaleString("en-US")} random existing hashes after ${WARMUP.toLocaleString("en-US")} warm-up ` +
      `lookups; node ${process.version}, ${cpus()[0]?.model ?? "unknown CPU"}`
  )
  console.log(`query: ${QUERY}`)
  console.log("")
  printTable(results)
  const [rawResult, fiberResult] = results.map((r) => r.samples.reduce((a, b) => a + b, 0) / r.samples.length)
  console.log("")
  console.log(
    `Effect/@effect/sql overhead per lookup (mean, inside a fiber): ${
      ((fiberResult! - rawResult!) / 1000).toFixed(2)
    } µs ` +
      `(${(fiberResult! / rawResult!).toFixed(1)}× the raw statement)`
  )
})

Effect.runPromise(Effect.scoped(program)).catch((e: unknown) => {
  console.error(e)
  process.exitCode = 1
})
