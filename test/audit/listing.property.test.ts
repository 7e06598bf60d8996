/**
 * `GET /manage/audit`'s two kinds of paging against a naive reference: random events (timestamps with ties, every
 * filtered column, search text with LIKE wildcards), random queries through the real validator (exact filters,
 * search, time range), page sizes from 1 to 100 — page numbers (first, every middle one, last, past the end, with
 * totals) and cursors (forwards, backwards, past both ends). On SQLite (file) and PostgreSQL (DATABASE_URL).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Either, FastCheck as fc, Layer } from "effect"
import * as AuditRepo from "../../src/audit/AuditRepo.js"
import { type AuditRecord, type ListAuditParams, OUTCOMES, validateAuditQuery } from "../../src/domain/audit.js"
import type { Dialect } from "../../src/store/migrations.js"
import { freshStore } from "../store/backends.js"
import { walk } from "../store/paging.js"
import { postgresUrl } from "../support/databases.js"

const T0 = Date.parse("2025-03-04T05:06:07.089Z")
const at = (second: number) => new Date(T0 + second * 1000).toISOString()

const pick = <A>(...values: ReadonlyArray<A>) => fc.constantFrom(...values)
const maybe = <A>(arb: fc.Arbitrary<A>) => fc.option(arb, { nil: undefined })
/** A filter that is usually absent, so a query combines a few of them and still matches events. */
const sometimes = <A>(arb: fc.Arbitrary<A>) =>
  fc.oneof({ arbitrary: fc.constant(undefined), weight: 5 }, { arbitrary: arb, weight: 1 })

const eventArb = fc.record({
  id: fc.uuid(),
  second: fc.nat(4),
  action: pick("token.create", "token.revoke", "project.update", "management.auth"),
  actor: pick("management_api", "admin", "anonymous"),
  outcome: fc.constantFrom(...OUTCOMES),
  projectId: maybe(pick("p-1", "p-2")),
  tokenId: maybe(pick("t-1", "t-2")),
  requestId: maybe(pick("req-a", "req-b")),
  clientIp: maybe(pick("10.0.0.1", "10.0.0.2")),
  method: maybe(pick("GET", "POST")),
  path: maybe(pick("/manage/tokens", "/manage/projects")),
  reason: maybe(pick("50% off_limits", "Denied Twice")),
  details: maybe(pick({ k: "x_y" }, { k: "100%" }))
})

const queryArb = fc.record({
  action: sometimes(pick("token.create", "project.update")),
  actor: sometimes(pick("admin", "anonymous")),
  outcome: sometimes(fc.constantFrom(...OUTCOMES)),
  project_id: sometimes(pick("p-1", "p-2")),
  token_id: sometimes(pick("t-1")),
  client_ip: sometimes(pick("10.0.0.1")),
  request_id: sometimes(pick("req-a")),
  method: sometimes(pick("get", "POST")),
  path: sometimes(pick("/manage/tokens")),
  search: sometimes(pick("%", "_", "TOKEN", "denied", "10.0", "x_y", "100%", "nothing-matches")),
  start_time: sometimes(fc.nat(4).map(at)),
  end_time: sometimes(fc.nat(4).map(at)),
  page_size: pick("1", "2", "3", "100")
})

const SEARCHED = [
  "requestId",
  "correlationId",
  "clientIp",
  "action",
  "actor",
  "method",
  "path",
  "reason",
  "metadata"
] as const

const suite = (dialect: Dialect) =>
  layer(AuditRepo.layer(dialect).pipe(Layer.provideMerge(freshStore(dialect))), {
    excludeTestServices: true,
    timeout: "60 seconds"
  })((it) => {
    it.effect.prop(
      "page numbers and cursors read exactly the events of the naive reference",
      [
        fc.uniqueArray(eventArb, { selector: (e) => e.id, maxLength: 30 }),
        fc.array(queryArb, { minLength: 5, maxLength: 5 })
      ],
      ([events, queries]) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const repo = yield* AuditRepo.AuditRepo
          yield* sql`DELETE FROM audit_events`
          const records: Array<AuditRecord> = events.map((e) => ({
            id: e.id,
            timestamp: at(e.second),
            action: e.action,
            actor: e.actor,
            outcome: e.outcome,
            projectId: e.projectId,
            tokenId: e.tokenId,
            requestId: e.requestId,
            clientIp: e.clientIp,
            method: e.method,
            path: e.path,
            reason: e.reason,
            details: e.details
          }))
          yield* repo.insert(records)
          const stored = records.map((r) => ({ ...AuditRepo.toColumns(r), second: Date.parse(r.timestamp) }))

          for (const params of queries) {
            const parsed = validateAuditQuery(params as ListAuditParams)
            if (Either.isLeft(parsed)) {
              // the validator's own refusals (start after end) are not listings
              expect(parsed.left).toBe("start_time must not be after end_time")
              continue
            }
            const q = parsed.right
            const expected = stored
              .filter((r) => {
                for (const [column, value] of Object.entries(q.exact)) {
                  if ((r as Record<string, unknown>)[column] !== value) return false
                }
                if (q.startTime !== undefined && r.second < Date.parse(q.startTime)) return false
                if (q.endTime !== undefined && r.second > Date.parse(q.endTime)) return false
                if (q.search !== undefined) {
                  const needle = q.search.toLowerCase()
                  const columns = {
                    requestId: r.request_id,
                    correlationId: r.correlation_id,
                    clientIp: r.client_ip,
                    action: r.action,
                    actor: r.actor,
                    method: r.method,
                    path: r.path,
                    reason: r.reason,
                    metadata: r.metadata
                  }
                  if (!SEARCHED.some((c) => columns[c]?.toLowerCase().includes(needle))) return false
                }
                return true
              })
              .sort((a, b) => b.second - a.second || (a.id < b.id ? 1 : -1))
              .map((r) => r.id)
            const label = JSON.stringify(params)
            const size = q.pageSize
            const pages = Math.max(1, Math.ceil(expected.length / size))
            for (let page = 1; page <= pages + 1; page++) {
              const result = yield* repo.list({ ...q, page })
              expect({
                ids: result.events.map((e) => e.id),
                total: result.total,
                totalExact: result.totalExact,
                hasNext: result.hasNext
              }, `${label} page ${page}`).toEqual({
                ids: expected.slice((page - 1) * size, page * size),
                total: expected.length,
                totalExact: true,
                hasNext: page * size < expected.length
              })
            }
            yield* walk((request) => repo.listPage(q, request), expected, size, (e) => e.id, `${label} by cursor`)
          }
        }),
      { fastCheck: { numRuns: dialect === "sqlite" ? 40 : 20 } }
    )
  })

describe("audit listing on SQLite", () => suite("sqlite"))

describe.skipIf(!postgresUrl)("audit listing on PostgreSQL (needs DATABASE_URL)", () => suite("postgres"))
