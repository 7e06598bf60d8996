/** The SQL clients behind the Store, one per dialect. */
import { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Effect, Layer, Redacted, Schedule } from "effect"
import { dirname } from "node:path"
import { ensurePrivateFile, tightenPrivateFile } from "../config/privateFiles.js"
import * as SqlStore from "./SqlStore.js"
import { StoreError } from "./Store.js"

/**
 * SQLite's `synchronous` setting under WAL. `normal` (the default): a commit is durable once the process has
 * written it — a crash of llm-proxy loses nothing — but the last commits before a power loss or kernel crash may
 * be rolled back (the file stays consistent); there is no fsync per commit, only at checkpoints. `full`: an fsync
 * per commit, which holds the event loop for its duration (milliseconds on most disks). See docs/performance.md.
 */
export type SqliteSynchronous = "normal" | "full"

/**
 * The database file may hold provider keys in plain text (without ENCRYPTION_KEY): its directory is made 0700 and the
 * file is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the database file's mode); looser
 * modes found on them are tightened with a warning (src/config/privateFiles.ts).
 */
const preparePrivateDatabase = (path: string) =>
  Effect.gen(function*() {
    if (path === ":memory:") return
    const warnings = ensurePrivateFile(path, dirname(path))
    for (const suffix of ["-wal", "-shm", "-journal"]) warnings.push(...tightenPrivateFile(path + suffix))
    for (const warning of warnings) yield* Effect.logWarning(warning)
  })

/**
 * Opening switches the file to WAL, which takes a lock SQLite does not wait for: a process opening a fresh file while
 * another one does the same gets "database is locked" at once. Opening is retried while that is the failure (every
 * 50 ms, for up to 5 s); any other failure is final.
 */
const OPEN_RETRY = Schedule.spaced("50 millis").pipe(
  Schedule.intersect(Schedule.recurs(100)),
  Schedule.whileInput((e: StoreError) => isLocked(e.cause))
)

const isLocked = (cause: unknown): boolean =>
  typeof cause === "object" && cause !== null &&
  ((cause as { code?: unknown }).code === "SQLITE_BUSY" || /database is locked/.test(String(cause)))

export const sqliteClient = (path: string, synchronous: SqliteSynchronous = "normal") =>
  Layer.unwrapEffect(
    Effect.as(preparePrivateDatabase(path), SqliteClient.layer({ filename: path }))
  ).pipe(
    // Foreign keys are off by default in SQLite; the schema relies on them.
    Layer.tap((ctx) =>
      Effect.asVoid(
        SqlClient.SqlClient.pipe(Effect.flatMap((sql) => sql`PRAGMA foreign_keys = ON`), Effect.provide(ctx))
      )
    ),
    Layer.tap((ctx) =>
      Effect.asVoid(
        SqlClient.SqlClient.pipe(
          Effect.flatMap((sql) => sql.unsafe(`PRAGMA synchronous = ${synchronous === "full" ? "FULL" : "NORMAL"}`)),
          Effect.provide(ctx)
        )
      )
    ),
    // A statement journal (what lets one statement of a transaction be undone alone) is spilled to a temporary file
    // once it outgrows 64 KiB: on a large database every multi-row insert of the token group commit did (an open,
    // writes and an unlink per batch, measured). Kept in memory instead, with SQLite's other temporary structures; the
    // queries here make none that grow with the tables (docs/performance.md "Token creation").
    Layer.tap((ctx) =>
      Effect.asVoid(
        SqlClient.SqlClient.pipe(Effect.flatMap((sql) => sql`PRAGMA temp_store = MEMORY`), Effect.provide(ctx))
      )
    ),
    // better-sqlite3 throws synchronously while opening (e.g. "file is not a database" from the WAL pragma, or
    // "unable to open database file"), and @effect/sql-sqlite-node lets that escape as a defect: turn failures
    // and defects alike into a StoreError.
    Layer.catchAllCause((cause) =>
      Cause.isInterruptedOnly(cause)
        ? Layer.failCause(cause as Cause.Cause<never>)
        : Layer.fail(new StoreError({ message: `cannot open SQLite database at ${path}`, cause: Cause.squash(cause) }))
    ),
    Layer.retry(OPEN_RETRY)
  )

/** @effect/sql-pg (and pg) are loaded when PostgreSQL is configured: a SQLite deployment never evaluates them. */
export const postgresClient = (url: Redacted.Redacted<string>, poolSize: number) =>
  Layer.unwrapEffect(
    Effect.promise(() => import("@effect/sql-pg")).pipe(
      Effect.map(({ PgClient }) => PgClient.layer({ url, maxConnections: poolSize, applicationName: "llm-proxy" }))
    )
  ).pipe(
    Layer.mapError((cause) => new StoreError({ message: "cannot connect to PostgreSQL (DATABASE_URL)", cause }))
  )

export const sqliteStore = (path: string, synchronous?: SqliteSynchronous) =>
  SqlStore.layer("sqlite").pipe(Layer.provideMerge(sqliteClient(path, synchronous)))

export const postgresStore = (url: Redacted.Redacted<string>, poolSize: number) =>
  SqlStore.layer("postgres").pipe(Layer.provideMerge(postgresClient(url, poolSize)))
