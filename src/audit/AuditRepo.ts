/**
 * AuditRepo: the `audit_events` table on @effect/sql, the same SQL on SQLite and PostgreSQL (the differences are
 * handled at the edges: case-insensitive LIKE here, timestamps by the row schema's column schemas of
 * src/store/columns.ts). The AuditLog's database sink writes through it; `GET /manage/audit` and the retention fiber
 * read and prune through it.
 */
import { SqlClient, type SqlError, SqlSchema, type Statement } from "@effect/sql"
import { Context, Effect, Layer, type Option, ParseResult, Schema } from "effect"
import { type AuditQuery, type AuditRecord, type Outcome, OUTCOMES } from "../domain/audit.js"
import {
  decodeRows,
  nullable,
  oneOf,
  rowError,
  SqlNumber,
  sqlRow,
  SqlText,
  SqlTimestamp,
  withStoreSpan
} from "../store/columns.js"
import { boundedCount, type KeysetPage, keysetPage, type PageRequest } from "../store/keyset.js"
import { COUNT_CAP, StoreError } from "../store/Store.js"

/** An event as stored: the details are the JSON text of `metadata`. */
export interface StoredAuditEvent {
  readonly id: string
  readonly timestamp: string
  readonly action: string
  readonly actor: string
  readonly outcome: Outcome
  readonly projectId: string | null
  readonly tokenId: string | null
  readonly requestId: string | null
  readonly correlationId: string | null
  readonly clientIp: string | null
  readonly method: string | null
  readonly path: string | null
  readonly userAgent: string | null
  readonly reason: string | null
  readonly metadata: string | null
  /** How many requests the event stands for (aggregated denials); 1 for every other event. */
  readonly count: number
}

export interface AuditRepoShape {
  readonly insert: (records: ReadonlyArray<AuditRecord>) => Effect.Effect<void, StoreError>
  /**
   * One page by number, newest first, whether another follows, and how many events match — counted up to
   * COUNT_CAP (`totalExact` false beyond it). A deep page walks the rows before it (OFFSET): see `listPage`.
   */
  readonly list: (query: AuditQuery) => Effect.Effect<
    {
      readonly events: ReadonlyArray<StoredAuditEvent>
      readonly total: number
      readonly totalExact: boolean
      readonly hasNext: boolean
    },
    StoreError
  >
  /** One page by cursor (keyset on timestamp, id), newest first: any page costs what the first does. */
  readonly listPage: (query: AuditQuery, page: PageRequest) => Effect.Effect<KeysetPage<StoredAuditEvent>, StoreError>
  readonly get: (id: string) => Effect.Effect<Option.Option<StoredAuditEvent>, StoreError>
  /** Deletes up to `limit` of the oldest events older than `before`; returns how many it deleted. */
  readonly pruneBefore: (before: string, limit: number) => Effect.Effect<number, StoreError>
}

export class AuditRepo extends Context.Tag("llm-proxy/AuditRepo")<AuditRepo, AuditRepoShape>() {}

const Text = nullable(SqlText)

/** `SELECT * FROM audit_events`. */
const EventFromRow = sqlRow("StoredAuditEvent", {
  id: SqlText,
  timestamp: SqlTimestamp,
  action: SqlText,
  actor: SqlText,
  outcome: oneOf(OUTCOMES),
  project_id: Text,
  token_id: Text,
  request_id: Text,
  correlation_id: Text,
  client_ip: Text,
  method: Text,
  path: Text,
  user_agent: Text,
  reason: Text,
  metadata: Text,
  count: SqlNumber
}, (r): StoredAuditEvent => ({
  id: r.id,
  timestamp: r.timestamp,
  action: r.action,
  actor: r.actor,
  outcome: r.outcome,
  projectId: r.project_id,
  tokenId: r.token_id,
  requestId: r.request_id,
  correlationId: r.correlation_id,
  clientIp: r.client_ip,
  method: r.method,
  path: r.path,
  userAgent: r.user_agent,
  reason: r.reason,
  metadata: r.metadata,
  count: r.count
}))
const events = decodeRows(EventFromRow)

/** Column values of a record; details become the JSON `metadata` (absent when there are none). */
export const toColumns = (r: AuditRecord) => ({
  id: r.id,
  timestamp: r.timestamp,
  action: r.action,
  actor: r.actor,
  outcome: r.outcome,
  project_id: r.projectId ?? null,
  token_id: r.tokenId ?? null,
  request_id: r.requestId ?? null,
  correlation_id: r.correlationId ?? null,
  client_ip: r.clientIp ?? null,
  method: r.method ?? null,
  path: r.path ?? null,
  user_agent: r.userAgent ?? null,
  reason: r.reason ?? null,
  metadata: r.details !== undefined && Object.keys(r.details).length > 0 ? JSON.stringify(r.details) : null,
  count: r.count ?? 1
})

const SEARCHED = [
  "request_id",
  "correlation_id",
  "client_ip",
  "action",
  "actor",
  "method",
  "path",
  "reason",
  "metadata"
]

/** `%`, `_` and the escape character itself match literally. */
const likePattern = (s: string) => `%${s.replace(/[\\%_]/g, (c) => `\\${c}`)}%`

export const make = (dialect: "sqlite" | "postgres") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    // A database error, or a row that does not decode (written by hand), is a StoreError.
    const wrap = <A, R>(operation: string, effect: Effect.Effect<A, SqlError.SqlError | ParseResult.ParseError, R>) =>
      effect.pipe(
        Effect.mapError((cause) => {
          const message = `database error during audit ${operation}`
          return ParseResult.isParseError(cause) ? rowError(message, cause) : new StoreError({ message, cause })
        }),
        withStoreSpan(`AuditRepo.${operation}`)
      )

    const event = SqlSchema.findOne({
      Request: Schema.String,
      Result: EventFromRow,
      execute: (id) => sql`SELECT * FROM audit_events WHERE id = ${id}`
    })

    // SQLite's LIKE ignores ASCII case already; PostgreSQL's does not.
    const like = dialect === "postgres" ? sql.literal("ILIKE") : sql.literal("LIKE")

    const where = (q: AuditQuery) => {
      const conditions: Array<Statement.Fragment> = [
        ...Object.entries(q.exact).map(([column, value]) => sql`${sql(column)} = ${value}`),
        ...(q.startTime !== undefined ? [sql`"timestamp" >= ${q.startTime}`] : []),
        ...(q.endTime !== undefined ? [sql`"timestamp" <= ${q.endTime}`] : [])
      ]
      if (q.search !== undefined) {
        const pattern = likePattern(q.search)
        conditions.push(sql.or(SEARCHED.map((column) => sql`${sql(column)} ${like} ${pattern} ESCAPE '\\'`)))
      }
      return sql.and(conditions)
    }

    const repo: AuditRepoShape = {
      insert: (records) =>
        records.length === 0
          ? Effect.void
          : wrap("insert", Effect.asVoid(sql`INSERT INTO audit_events ${sql.insert(records.map(toColumns))}`)),

      list: (q) =>
        wrap(
          "list",
          Effect.gen(function*() {
            const condition = where(q)
            const rows = yield* sql`SELECT * FROM audit_events WHERE ${condition}
              ORDER BY "timestamp" DESC, id DESC LIMIT ${q.pageSize + 1} OFFSET ${(q.page - 1) * q.pageSize}`
            const count = yield* boundedCount(sql, "audit_events", [condition], COUNT_CAP)
            return {
              events: yield* events(rows.slice(0, q.pageSize)),
              total: count.count,
              totalExact: count.exact,
              hasNext: rows.length > q.pageSize
            }
          })
        ),

      listPage: (q, page) =>
        wrap(
          "list",
          keysetPage(sql, {
            table: "audit_events",
            timeColumn: "timestamp",
            idColumn: "id",
            where: [where(q)],
            row: EventFromRow
          }, page)
        ),

      get: (id) => wrap("get", event(id)),

      pruneBefore: (before, limit) =>
        wrap(
          "prune",
          Effect.map(
            sql`DELETE FROM audit_events WHERE id IN (
              SELECT id FROM audit_events WHERE "timestamp" < ${before} ORDER BY "timestamp" LIMIT ${limit}
            ) RETURNING id`,
            (rows) => rows.length
          )
        )
    }
    return repo
  })

export const layer = (dialect: "sqlite" | "postgres"): Layer.Layer<AuditRepo, never, SqlClient.SqlClient> =>
  Layer.effect(AuditRepo, make(dialect))
