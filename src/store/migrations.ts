/**
 * Migrations: plain SQL files under migrations/<dialect>/NNNN_name.sql, applied in order inside one transaction
 * that first takes a lock (Postgres advisory lock, SQLite write lock), so instances starting together apply
 * each migration exactly once.
 */
import { SqlClient } from "@effect/sql"
import { Effect } from "effect"
import { readdirSync, readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { StoreError } from "./Store.js"

export type Dialect = "sqlite" | "postgres"

export interface Migration {
  readonly version: string
  readonly name: string
  readonly statements: ReadonlyArray<string>
}

export interface MigrationState {
  readonly version: string
  readonly name: string
  readonly appliedAt: string | null
}

// Same depth from src/store/ and from the bundle in dist/cli/.
const defaultDir = fileURLToPath(new URL("../../migrations/", import.meta.url))
const LOCK_ID = 3141592653

/** Reads migrations/<dialect>/*.sql. Statements are separated by a `;` at the end of a line. */
export const loadMigrations = (dialect: Dialect, dir: string = defaultDir): ReadonlyArray<Migration> =>
  readdirSync(`${dir}/${dialect}`)
    .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const text = readFileSync(`${dir}/${dialect}/${file}`, "utf8")
      const statements = text
        .split(/;\s*$/m)
        .map((s) => s.replace(/^\s*--.*$/gm, "").trim())
        .filter((s) => s !== "")
      return { version: file.slice(0, 4), name: file.slice(5, -4), statements }
    })

const ensureTable = (sql: SqlClient.SqlClient) =>
  sql`CREATE TABLE IF NOT EXISTS schema_migrations (
    version TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at TEXT NOT NULL
  )`

const applied = (sql: SqlClient.SqlClient) =>
  Effect.map(
    sql<{ version: string; applied_at: string }>`SELECT version, applied_at FROM schema_migrations`,
    (rows) => new Map(rows.map((r) => [r.version, r.applied_at] as const))
  )

const fail = (operation: string) => (cause: unknown) =>
  new StoreError({ message: `migration ${operation} failed`, cause })

/** Applies pending migrations; returns the versions it applied. */
export const migrateUp = (dialect: Dialect, dir?: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const migrations = loadMigrations(dialect, dir)
    if (dialect === "sqlite") yield* ensureTable(sql)
    return yield* sql.withTransaction(
      Effect.gen(function*() {
        if (dialect === "postgres") {
          yield* sql`SELECT pg_advisory_xact_lock(${LOCK_ID})`
          yield* ensureTable(sql)
        } else {
          // A write as the first statement takes SQLite's write lock for the whole transaction.
          yield* sql`DELETE FROM schema_migrations WHERE version = '-lock-'`
        }
        const done = yield* applied(sql)
        const ran: Array<string> = []
        for (const m of migrations) {
          if (done.has(m.version)) continue
          for (const statement of m.statements) yield* sql.unsafe(statement)
          yield* sql`INSERT INTO schema_migrations (version, name, applied_at)
            VALUES (${m.version}, ${m.name}, ${new Date().toISOString()})`
          ran.push(`${m.version}_${m.name}`)
        }
        return ran
      })
    )
  }).pipe(Effect.mapError(fail("up")), Effect.withSpan("migrations.up"))

export const migrationStatus = (dialect: Dialect, dir?: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    yield* ensureTable(sql)
    const done = yield* applied(sql)
    return loadMigrations(dialect, dir).map((m): MigrationState => ({
      version: m.version,
      name: m.name,
      appliedAt: done.get(m.version) ?? null
    }))
  }).pipe(Effect.mapError(fail("status")))
