/**
 * AuditRepo: the `audit_events` table on @effect/sql, the same SQL on SQLite and PostgreSQL (the differences —
 * timestamp decoding, case-insensitive LIKE — are handled here). The AuditLog's database sink writes through it;
 * `GET /manage/audit` and the retention fiber read and prune through it.
 */
import { SqlClient, type SqlError, type Statement } from "@effect/sql"
import { Context, Effect, Layer, Option } from "effect"
import type { AuditQuery, AuditRecord, Outcome } from "../domain/audit.js"
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

type Row = Record<string, unknown>

const iso = (v: unknown): string => (v instanceof Date ? v.toISOString() : new Date(String(v)).toISOString())
const str = (v: unknown): string | null => (v === null || v === undefined ? null : String(v))

const toEvent = (r: Row): StoredAuditEvent => ({
  id: String(r.id),
  timestamp: iso(r.timestamp),
  action: String(r.action),
  actor: String(r.actor),
  outcome: String(r.outcome) as Outcome,
  projectId: str(r.project_id),
  tokenId: str(r.token_id),
  requestId: str(r.request_id),
  correlationId: str(r.correlation_id),
  clientIp: str(r.client_ip),
  method: str(r.method),
  path: str(r.path),
  userAgent: str(r.user_agent),
  reason: str(r.reason),
  metadata: str(r.metadata),
  count: r.count === null || r.count === undefined ? 1 : Number(r.count)
})

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

const SEARCHED = ["request_id", "correlation_id", "client_ip", "action", "actor", "method", "path", "reason", "metadata"]

/** `%`, `_` and the escape character itself match literally. */
const likePattern = (s: string) => `%${s.replace(/[\\%_]/g, (c) => `\\${c}`)}%`

export const make = (dialect: "sqlite" | "postgres") =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient

    const wrap = <A, R>(operation: string, effect: Effect.Effect<A, SqlError.SqlError, R>) =>
      effect.pipe(
        Effect.mapError((cause) => new StoreError({ message: `database error during audit ${operation}`, cause })),
        Effect.withSpan(`AuditRepo.${operation}`)
      )

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
            const rows = yield* sql<Row>`SELECT * FROM audit_events WHERE ${condition}
              ORDER BY "timestamp" DESC, id DESC LIMIT ${q.pageSize + 1} OFFSET ${(q.page - 1) * q.pageSize}`
            const count = yield* boundedCount(sql, "audit_events", [condition], COUNT_CAP)
            return {
              events: rows.slice(0, q.pageSize).map(toEvent),
              total: count.count,
              totalExact: count.exact,
              hasNext: rows.length > q.pageSize
            }
          })
        ),

      listPage: (q, page) =>
        wrap(
          "list",
          keysetPage(sql, { table: "audit_events", timeColumn: "timestamp", idColumn: "id", where: [where(q)], decode: toEvent }, page)
        ),

      get: (id) =>
        wrap(
          "get",
          Effect.map(sql<Row>`SELECT * FROM audit_events WHERE id = ${id}`, (rows) => Option.map(Option.fromNullable(rows[0]), toEvent))
        ),

      pruneBefore: (before, limit) =>
        wrap(
          "prune",
          Effect.map(
            sql<Row>`DELETE FROM audit_events WHERE id IN (
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
