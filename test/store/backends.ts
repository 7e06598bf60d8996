/**
 * Scoped test databases for the store suites: a temp SQLite file, or a fresh PostgreSQL database on the server
 * DATABASE_URL points at. Both are removed when the scope closes.
 */
import type { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { postgresClient, postgresStore, sqliteClient, sqliteStore } from "../../src/store/layers.js"
import { type Dialect, migrateUp } from "../../src/store/migrations.js"
import type { Store, StoreError } from "../../src/store/Store.js"
import { createTestDatabase } from "../support/databases.js"

/** Path of `store.db` in a new temp directory (the file does not exist yet); the directory goes with the scope. */
export const tempSqlitePath = Effect.acquireRelease(
  Effect.sync(() => mkdtempSync(join(tmpdir(), "llm-proxy-store-"))),
  (dir) => Effect.sync(() => rmSync(dir, { recursive: true, force: true }))
).pipe(Effect.map((dir) => join(dir, "store.db")))

/** URL of a new, empty PostgreSQL database; dropped (connections terminated) with the scope. */
export const testPostgresUrl = Effect.acquireRelease(
  Effect.promise(() => createTestDatabase()),
  (db) => Effect.promise(() => db.drop())
).pipe(Effect.map((db) => db.url))

/** A client for the dialect's database at `location` (file path or URL). */
export const clientFor = (dialect: Dialect, location: string, poolSize = 2) =>
  dialect === "sqlite" ? sqliteClient(location) : postgresClient(Redacted.make(location), poolSize)

/** A new empty database of the dialect (file path or URL), released with the scope. */
export const freshLocation = (dialect: Dialect) => (dialect === "sqlite" ? tempSqlitePath : testPostgresUrl)

/** Store + SqlClient on a new database with every migration applied. */
export const freshStore = (dialect: Dialect): Layer.Layer<Store | SqlClient.SqlClient, StoreError> =>
  Layer.unwrapScoped(
    Effect.map(
      freshLocation(dialect),
      (location) =>
        (dialect === "sqlite" ? sqliteStore(location) : postgresStore(Redacted.make(location), 4)).pipe(
          Layer.tap((ctx) => Effect.provide(migrateUp(dialect), ctx))
        )
    )
  )
