/**
 * The migration runner: first run, re-run, status, a failing migration, and instances migrating the same fresh
 * database at the same time (SQLite: three processes on one file; PostgreSQL: two pools, needs DATABASE_URL).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { build } from "esbuild"
import { spawn } from "node:child_process"
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { type Dialect, loadMigrations, migrateUp, migrationStatus } from "../../src/store/migrations.js"
import { StoreError } from "../../src/store/Store.js"
import { postgresUrl } from "../support/databases.js"
import { clientFor, freshLocation, tempSqlitePath, testPostgresUrl } from "./backends.js"

const migrationsRoot = fileURLToPath(new URL("../../migrations/", import.meta.url))

const allNames = (dialect: Dialect) => loadMigrations(dialect).map((m) => `${m.version}_${m.name}`)

const migrationRows = Effect.flatMap(
  SqlClient.SqlClient,
  (sql) => sql<{ version: string }>`SELECT version FROM schema_migrations ORDER BY version`
).pipe(Effect.map((rows) => rows.map((r) => r.version)))

/** A client on a new, empty database of the dialect (scoped). */
const freshClient = (dialect: Dialect) =>
  Effect.flatMap(freshLocation(dialect), (location) => Layer.build(clientFor(dialect, location)))

/** migrations/<dialect>/ in a temp directory, holding the given files. */
const migrationsDir = (dialect: Dialect, files: Record<string, string>) =>
  Effect.acquireRelease(
    Effect.sync(() => {
      const dir = mkdtempSync(join(tmpdir(), "llm-proxy-migrations-"))
      mkdirSync(join(dir, dialect))
      for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, dialect, name), text)
      return dir
    }),
    (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
  )

const runnerSuite = (dialect: Dialect) => {
  it.scopedLive("applies every migration to an empty database, then nothing; status shows appliedAt", () =>
    Effect.gen(function*() {
      const names = allNames(dialect)
      expect(names.length).toBeGreaterThan(0)
      const db = yield* freshClient(dialect)

      const before = yield* Effect.provide(migrationStatus(dialect), db)
      expect(before.map((m) => `${m.version}_${m.name}`)).toEqual(names)
      expect(before.every((m) => m.appliedAt === null)).toBe(true)

      const start = new Date().toISOString()
      expect(yield* Effect.provide(migrateUp(dialect), db)).toEqual(names)
      const end = new Date().toISOString()
      expect(yield* Effect.provide(migrateUp(dialect), db)).toEqual([])

      const after = yield* Effect.provide(migrationStatus(dialect), db)
      expect(after.map((m) => `${m.version}_${m.name}`)).toEqual(names)
      for (const m of after) {
        expect(m.appliedAt).not.toBeNull()
        expect(new Date(m.appliedAt!).toISOString()).toBe(m.appliedAt)
        expect(m.appliedAt! >= start && m.appliedAt! <= end).toBe(true)
      }
      // The schema is really there.
      const sql = yield* Effect.provide(SqlClient.SqlClient, db)
      expect(yield* sql`SELECT COUNT(*) AS n FROM tokens`).toHaveLength(1)
    }))

  it.scopedLive("a failing migration rolls back the whole run", () =>
    Effect.gen(function*() {
      const dir = yield* migrationsDir(dialect, {
        "0001_good.sql": "CREATE TABLE good (id TEXT PRIMARY KEY);\n\nINSERT INTO good (id) VALUES ('x');\n",
        "0002_bad.sql": "CREATE TABLE bad (id TEXT PRIMARY KEY);\n\nTHIS IS NOT SQL;\n"
      })
      const db = yield* freshClient(dialect)
      const error = yield* Effect.flip(Effect.provide(migrateUp(dialect, dir), db))
      expect(error).toBeInstanceOf(StoreError)
      expect(error.message).toBe("migration up failed")

      const status = yield* Effect.provide(migrationStatus(dialect, dir), db)
      expect(status.map((m) => m.appliedAt)).toEqual([null, null])
      const sql = yield* Effect.provide(SqlClient.SqlClient, db)
      expect(yield* Effect.flip(sql`SELECT id FROM good`)).toBeDefined()
    }))
}

/** Every migration recorded exactly once, as seen from the client. */
const expectEachRecordedOnce = (dialect: Dialect, versions: ReadonlyArray<string>) => {
  expect(versions).toEqual(loadMigrations(dialect).map((m) => m.version))
}

/** One applied everything, the others found nothing to do. */
const expectOneRan = (dialect: Dialect, results: ReadonlyArray<ReadonlyArray<string>>) => {
  const [first, ...rest] = [...results].sort((x, y) => y.length - x.length)
  expect(first).toEqual(allNames(dialect))
  expect(rest.every((r) => r.length === 0)).toBe(true)
}

/**
 * Bundles fixtures/migrate-sqlite.ts into a temp directory whose node_modules points at ours (better-sqlite3
 * stays external and must resolve from the bundle's location).
 */
const bundledMigrator = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "llm-proxy-migrate-child-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
).pipe(
  Effect.tap((dir) =>
    Effect.promise(async () => {
      symlinkSync(fileURLToPath(new URL("../../node_modules", import.meta.url)), join(dir, "node_modules"), "dir")
      await build({
        entryPoints: [fileURLToPath(new URL("./fixtures/migrate-sqlite.ts", import.meta.url))],
        outfile: join(dir, "migrate-sqlite.mjs"),
        bundle: true,
        platform: "node",
        format: "esm",
        target: "node20",
        external: ["better-sqlite3", "pg-native"],
        banner: { js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);" },
        logLevel: "warning"
      })
    })
  ),
  Effect.map((dir) => join(dir, "migrate-sqlite.mjs"))
)

interface ChildResult {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** Starts `n` migrator processes on `file`, waits until each has opened it, then lets them all go at once. */
const runMigrators = async (script: string, file: string, n: number): Promise<ReadonlyArray<ChildResult>> => {
  const children = Array.from({ length: n }, () => {
    const child = spawn(process.execPath, [script, file, migrationsRoot])
    const output = { stdout: "", stderr: "" }
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => (output.stdout += chunk))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => (output.stderr += chunk))
    const exit = new Promise<number | null>((resolve) => child.on("close", resolve))
    const ready = new Promise<void>((resolve, reject) => {
      child.stdout.on("data", () => (output.stdout.includes("ready\n") ? resolve() : undefined))
      child.on("close", () => reject(new Error(`migrator exited before it was ready: ${output.stderr}`)))
    })
    return { child, output, exit, ready }
  })
  try {
    await Promise.all(children.map((c) => c.ready))
  } catch (e) {
    for (const { child } of children) child.kill()
    throw e
  }
  for (const { child } of children) child.stdin.end("go\n")
  return Promise.all(children.map(async ({ exit, output }) => ({ code: await exit, ...output })))
}

describe("migrations on SQLite", () => {
  runnerSuite("sqlite")

  // Separate processes, as when several instances start together. (Two SqliteClients in one process do not
  // interleave: better-sqlite3 is synchronous, so the first migration runs to completion before the second
  // starts, and such a test passes even without the lock.)
  it.scopedLive(
    "processes migrating the same fresh file at once each apply every migration exactly once",
    () =>
      Effect.gen(function*() {
        const script = yield* bundledMigrator
        for (let round = 0; round < 5; round++) {
          const file = yield* tempSqlitePath
          const children = yield* Effect.promise(() => runMigrators(script, file, 3))
          for (const child of children) expect(child, child.stderr).toMatchObject({ code: 0 })
          expectOneRan("sqlite", children.map((c) => JSON.parse(c.stdout.trim().split("\n").at(-1)!) as Array<string>))
          const db = yield* Layer.build(clientFor("sqlite", file))
          expectEachRecordedOnce("sqlite", yield* Effect.provide(migrationRows, db))
        }
      }),
    60_000
  )
})

describe.skipIf(!postgresUrl)(
  postgresUrl ? "migrations on PostgreSQL" : "migrations on PostgreSQL (skipped: DATABASE_URL not set)",
  () => {
    runnerSuite("postgres")

    it.scopedLive(
      "two pools migrating the same fresh database at once each apply every migration exactly once",
      () =>
        Effect.gen(function*() {
          for (let round = 0; round < 5; round++) {
            const url = yield* testPostgresUrl
            const a = yield* Layer.build(clientFor("postgres", url))
            const b = yield* Layer.build(clientFor("postgres", url))
            const results = yield* Effect.all(
              [Effect.provide(migrateUp("postgres"), a), Effect.provide(migrateUp("postgres"), b)],
              { concurrency: 2 }
            )
            expectOneRan("postgres", results)
            expectEachRecordedOnce("postgres", yield* Effect.provide(migrationRows, a))
            expectEachRecordedOnce("postgres", yield* Effect.provide(migrationRows, b))
          }
        }),
      60_000
    )
  }
)
