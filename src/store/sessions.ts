/**
 * The `admin_sessions` table (migration 0005) on @effect/sql, one SQL text for SQLite and PostgreSQL. Rows are keyed
 * by the SHA-256 of the session id; the lifetime rules (idle, absolute, how often `last_seen_ms` is refreshed) live
 * in src/http/session.ts, which is the only user.
 */
import { SqlClient, type SqlError, SqlSchema } from "@effect/sql"
import { Context, Effect, Layer, type Option, ParseResult, Schema } from "effect"
import { rowError, SqlNumber, sqlRow, SqlText, withStoreSpan } from "./columns.js"
import { StoreError } from "./Store.js"

export interface SessionRow {
  readonly idHash: string
  readonly createdMs: number
  readonly lastSeenMs: number
}

export interface AdminSessionStoreShape {
  readonly insert: (row: SessionRow) => Effect.Effect<void, StoreError>
  readonly get: (idHash: string) => Effect.Effect<Option.Option<SessionRow>, StoreError>
  readonly touch: (idHash: string, lastSeenMs: number) => Effect.Effect<void, StoreError>
  readonly delete: (idHash: string) => Effect.Effect<void, StoreError>
  /** Deletes sessions last seen at or before `idleBefore` or created at or before `createdBefore`; returns how many. */
  readonly deleteExpired: (idleBefore: number, createdBefore: number) => Effect.Effect<number, StoreError>
  /** Deletes the oldest sessions beyond the newest `keep`. */
  readonly keepNewest: (keep: number) => Effect.Effect<void, StoreError>
}

export class AdminSessionStore
  extends Context.Tag("llm-proxy/AdminSessionStore")<AdminSessionStore, AdminSessionStoreShape>()
{}

/** The times are BIGINTs: text to PostgreSQL's driver. */
const SessionFromRow = sqlRow("SessionRow", {
  id_hash: SqlText,
  created_ms: SqlNumber,
  last_seen_ms: SqlNumber
}, (r): SessionRow => ({ idHash: r.id_hash, createdMs: r.created_ms, lastSeenMs: r.last_seen_ms }))

export const make = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const wrap = <A>(operation: string, effect: Effect.Effect<A, SqlError.SqlError | ParseResult.ParseError>) =>
    effect.pipe(
      Effect.mapError((cause) => {
        const message = `database error during admin session ${operation}`
        return ParseResult.isParseError(cause) ? rowError(message, cause) : new StoreError({ message, cause })
      }),
      withStoreSpan(`AdminSessionStore.${operation}`)
    )
  const session = SqlSchema.findOne({
    Request: Schema.String,
    Result: SessionFromRow,
    execute: (idHash) => sql`SELECT id_hash, created_ms, last_seen_ms FROM admin_sessions WHERE id_hash = ${idHash}`
  })
  const store: AdminSessionStoreShape = {
    insert: (row) =>
      wrap(
        "insert",
        Effect.asVoid(
          sql`INSERT INTO admin_sessions ${
            sql.insert({ id_hash: row.idHash, created_ms: row.createdMs, last_seen_ms: row.lastSeenMs })
          }`
        )
      ),
    get: (idHash) => wrap("get", session(idHash)),
    touch: (idHash, lastSeenMs) =>
      wrap(
        "touch",
        // Never moves backwards when two instances refresh the same session at once.
        Effect.asVoid(sql`UPDATE admin_sessions SET last_seen_ms = ${lastSeenMs}
          WHERE id_hash = ${idHash} AND last_seen_ms < ${lastSeenMs}`)
      ),
    delete: (idHash) => wrap("delete", Effect.asVoid(sql`DELETE FROM admin_sessions WHERE id_hash = ${idHash}`)),
    deleteExpired: (idleBefore, createdBefore) =>
      wrap(
        "prune",
        Effect.map(
          sql`DELETE FROM admin_sessions WHERE last_seen_ms <= ${idleBefore} OR created_ms <= ${createdBefore}
            RETURNING id_hash`,
          (rows) => rows.length
        )
      ),
    keepNewest: (keep) =>
      wrap(
        "cap",
        // The subquery is NULL (nothing deleted) while there are at most `keep` sessions.
        Effect.asVoid(sql`DELETE FROM admin_sessions WHERE created_ms < (
          SELECT created_ms FROM admin_sessions ORDER BY created_ms DESC LIMIT 1 OFFSET ${keep - 1}
        )`)
      )
  }
  return store
})

export const layer: Layer.Layer<AdminSessionStore, never, SqlClient.SqlClient> = Layer.effect(AdminSessionStore, make)
