/** The SQL clients behind the Store, one per dialect. */
import { SqlClient } from "@effect/sql"
import { PgClient } from "@effect/sql-pg"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Effect, Layer, Redacted } from "effect"
import { mkdirSync } from "node:fs"
import { dirname } from "node:path"
import * as SqlStore from "./SqlStore.js"
import { StoreError } from "./Store.js"

export const sqliteClient = (path: string) =>
  Layer.unwrapEffect(
    Effect.sync(() => {
      if (path !== ":memory:") mkdirSync(dirname(path), { recursive: true })
      return SqliteClient.layer({ filename: path })
    })
  ).pipe(
    // Foreign keys are off by default in SQLite; the schema relies on them.
    Layer.tap((ctx) => Effect.asVoid(SqlClient.SqlClient.pipe(Effect.flatMap((sql) => sql`PRAGMA foreign_keys = ON`), Effect.provide(ctx)))),
    Layer.mapError((cause) => new StoreError({ message: `cannot open SQLite database at ${path}`, cause }))
  )

export const postgresClient = (url: Redacted.Redacted<string>, poolSize: number) =>
  PgClient.layer({ url, maxConnections: poolSize, applicationName: "llm-proxy" }).pipe(
    Layer.mapError((cause) => new StoreError({ message: "cannot connect to PostgreSQL (DATABASE_URL)", cause }))
  )

export const sqliteStore = (path: string) => SqlStore.layer("sqlite").pipe(Layer.provideMerge(sqliteClient(path)))

export const postgresStore = (url: Redacted.Redacted<string>, poolSize: number) =>
  SqlStore.layer("postgres").pipe(Layer.provideMerge(postgresClient(url, poolSize)))
