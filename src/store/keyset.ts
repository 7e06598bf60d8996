/**
 * Keyset paging, shared by the token and audit listings: a listing ordered newest first by (time, id) is read one
 * page at a time from an index on those two columns, so the first, a middle and the last page cost the same
 * whatever the table's size (OFFSET would walk every row before the page).
 *
 * A position is the key of a row — the two columns as the database prints them, so a PostgreSQL timestamp keeps
 * its microseconds — and a direction: the page after it (older rows) or before it (newer rows). Cursors on the
 * wire are that position, base64url-encoded (src/http/cursor.ts).
 */
import type { SqlClient, SqlError, Statement } from "@effect/sql"
import { Effect, Option, type ParseResult, Schema } from "effect"
import { CountRow, decodeFirst, sqlRow, SqlText } from "./columns.js"

/** The sort key of a row: its time column as text, and its id. */
export interface RowKey {
  readonly time: string
  readonly id: string
}

export type PagePosition =
  | { readonly _tag: "first" }
  | { readonly _tag: "last" }
  /** The rows after (older than) this key. */
  | { readonly _tag: "after"; readonly key: RowKey }
  /** The rows before (newer than) this key. */
  | { readonly _tag: "before"; readonly key: RowKey }

export interface PageRequest {
  readonly limit: number
  readonly position: PagePosition
}

export interface KeysetPage<A> {
  /** Newest first. */
  readonly rows: ReadonlyArray<A>
  /** Key of the first and last row (none when the page is empty), for the cursors of the neighbouring pages. */
  readonly firstKey: RowKey | undefined
  readonly lastKey: RowKey | undefined
  /** Older rows exist (after the last row). */
  readonly hasNext: boolean
  /** Newer rows exist (before the first row). */
  readonly hasPrev: boolean
}

export const firstPage: PagePosition = { _tag: "first" }

/** The key of a page row, selected under these aliases next to the row's own columns. */
const RowKeyFromRow = sqlRow("RowKey", { keyset_time: SqlText, keyset_id: SqlText }, (r): RowKey => ({
  time: r.keyset_time,
  id: r.keyset_id
}))
const rowKey = Schema.decodeUnknown(RowKeyFromRow)

export interface KeysetQuery<A, I> {
  readonly table: string
  /** The time column and the id column: the listing is ordered by both, descending. */
  readonly timeColumn: string
  readonly idColumn: string
  /** The listing's filters (combined with AND). */
  readonly where: ReadonlyArray<Statement.Fragment>
  /** The rows' schema (columns.ts). */
  readonly row: Schema.Schema<A, I>
}

/**
 * One page. Reads at most `limit + 1` rows through the (time, id) order, plus one existence probe for the side it
 * came from; the row values `(time, id) < (?, ?)` are what both SQLite and PostgreSQL turn into an index range.
 */
export const keysetPage = <A, I>(
  sql: SqlClient.SqlClient,
  q: KeysetQuery<A, I>,
  request: PageRequest
): Effect.Effect<KeysetPage<A>, SqlError.SqlError | ParseResult.ParseError> => {
  const time = sql(q.timeColumn)
  const id = sql(q.idColumn)
  const key = sql`(${time}, ${id})`
  // The key as the database prints it: the text of the time column keeps its full precision for the next cursor.
  const select = (conditions: ReadonlyArray<Statement.Fragment>, descending: boolean, limit: number) =>
    sql`SELECT *, CAST(${time} AS TEXT) AS keyset_time, ${id} AS keyset_id FROM ${sql(q.table)} WHERE ${
      sql.and(conditions)
    }
      ORDER BY ${time} ${sql.literal(descending ? "DESC" : "ASC")}, ${id} ${sql.literal(descending ? "DESC" : "ASC")}
      LIMIT ${limit}`
  const older = (k: RowKey, orSame = false) => sql`${key} ${sql.literal(orSame ? "<=" : "<")} (${k.time}, ${k.id})`
  const newer = (k: RowKey, orSame = false) => sql`${key} ${sql.literal(orSame ? ">=" : ">")} (${k.time}, ${k.id})`
  const exists = (condition: Statement.Fragment) =>
    Effect.map(
      sql`SELECT 1 AS found FROM ${sql(q.table)} WHERE ${sql.and([...q.where, condition])} LIMIT 1`,
      (rows) => rows.length > 0
    )
  const decodeRows = Schema.decodeUnknown(Schema.Array(q.row))
  const n = request.limit
  const position = request.position

  return Effect.gen(function*() {
    const forward = position._tag === "first" || position._tag === "after"
    const conditions = position._tag === "after"
      ? [...q.where, older(position.key)]
      : position._tag === "before"
      ? [...q.where, newer(position.key)]
      : q.where
    const fetched = yield* select(conditions, forward, n + 1)
    const more = fetched.length > n
    const page = fetched.slice(0, n)
    if (!forward) page.reverse()
    const firstKey = page.length > 0 ? yield* rowKey(page[0]) : undefined
    const lastKey = page.length > 0 ? yield* rowKey(page[page.length - 1]) : undefined
    let hasNext = forward ? more : false
    let hasPrev = forward ? false : more
    // What precedes an empty page is the cursor's own row and anything before it.
    if (position._tag === "after") hasPrev = yield* exists(firstKey ? newer(firstKey) : newer(position.key, true))
    if (position._tag === "before") hasNext = yield* exists(lastKey ? older(lastKey) : older(position.key, true))
    return { rows: yield* decodeRows(page), firstKey, lastKey, hasNext, hasPrev }
  })
}

const firstCount = decodeFirst(CountRow)

/**
 * Counts the matching rows, but reads at most `cap + 1` of them: the count is exact below `cap`. `orderBy` reads them
 * in the order where they usually sit, so the count stops early.
 */
export const boundedCount = (
  sql: SqlClient.SqlClient,
  table: string,
  where: ReadonlyArray<Statement.Fragment>,
  cap: number,
  orderBy?: Statement.Fragment
): Effect.Effect<{ readonly count: number; readonly exact: boolean }, SqlError.SqlError | ParseResult.ParseError> =>
  Effect.map(
    Effect.flatMap(
      sql`SELECT COUNT(*) AS n FROM (SELECT 1 AS one FROM ${sql(table)} WHERE ${sql.and(where)}
        ${orderBy ?? sql.literal("")} LIMIT ${cap + 1}) AS matching`,
      firstCount
    ),
    (count) => {
      const n = Option.getOrElse(count, () => 0)
      return n > cap ? { count: cap, exact: false } : { count: n, exact: true }
    }
  )
