/** Handlers of the `audit` group (docs/audit.md "Reading the log", docs/management-api.md "Audit"). */
import { HttpApiBuilder } from "@effect/platform"
import { Effect, Either, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { AuditLog } from "../audit/AuditLog.js"
import { AuditRepo } from "../audit/AuditRepo.js"
import { AuditActions, validateAuditQuery } from "../domain/audit.js"
import { BadRequest, NotFound, ServiceUnavailable } from "../domain/errors.js"
import { audited } from "./auditing.js"
import { decodeCursor, encodeCursor } from "./cursor.js"
import { auditEventJson } from "./present.js"
import { internal } from "./ProjectsHttp.js"

const notFound = new NotFound({ error: "audit event not found" })

export const layer = HttpApiBuilder.group(ManagementApi, "audit", (handlers) =>
  Effect.gen(function*() {
    const repo = yield* AuditRepo
    const audit = yield* AuditLog

    const available = (message: string) =>
      audit.queryable ? Effect.void : Effect.fail(new ServiceUnavailable({ error: message }))

    // Events recorded before this request (including the caller's own) are written before we read, so a
    // client sees its own actions. Bounded, so a struggling sink cannot hold the request forever.
    const caughtUp = audit.flush.pipe(Effect.timeout("2 seconds"), Effect.ignore)

    return handlers
      .handle("list", ({ urlParams }) =>
        audited(AuditActions.auditList, (note) =>
          Effect.gen(function*() {
            yield* available("audit events not available")
            const query = yield* Either.mapLeft(validateAuditQuery(urlParams), (error) => new BadRequest({ error }))
            if (urlParams.cursor !== undefined) {
              if (urlParams.page !== undefined && urlParams.page !== "") {
                return yield* new BadRequest({ error: "page and cursor cannot be combined" })
              }
              const position = yield* Either.mapLeft(
                decodeCursor(urlParams.cursor),
                (error) => new BadRequest({ error })
              )
              yield* caughtUp
              const page = yield* repo.listPage(query, { limit: query.pageSize, position })
              Object.assign(note.details, { events_count: page.rows.length, page_size: query.pageSize, cursor: true })
              return {
                events: page.rows.map(auditEventJson),
                pagination: {
                  page_size: query.pageSize,
                  has_next: page.hasNext,
                  has_prev: page.hasPrev,
                  next_cursor: page.hasNext && page.lastKey !== undefined ? encodeCursor("after", page.lastKey) : null,
                  prev_cursor: page.hasPrev && page.firstKey !== undefined
                    ? encodeCursor("before", page.firstKey)
                    : null
                }
              }
            }
            yield* caughtUp
            const { events, hasNext, total, totalExact } = yield* repo.list(query)
            const totalPages = Math.ceil(total / query.pageSize)
            Object.assign(note.details, {
              events_count: events.length,
              page: query.page,
              page_size: query.pageSize,
              total_count: total
            })
            return {
              events: events.map(auditEventJson),
              pagination: {
                page: query.page,
                page_size: query.pageSize,
                total_count: total,
                total_pages: totalPages,
                // Past the counting cap the total is a lower bound: whether a next page exists comes from the rows.
                has_next: hasNext,
                has_prev: query.page > 1,
                total_exact: totalExact
              }
            }
          }).pipe(Effect.catchTag("StoreError", internal("failed to list audit events")))))
      .handle("get", ({ path }) =>
        audited(AuditActions.auditShow, (note) =>
          Effect.gen(function*() {
            note.details["audit_event_id"] = path.id.slice(0, 128)
            yield* available("audit event not available")
            yield* caughtUp
            const found = yield* repo.get(path.id)
            return auditEventJson(
              yield* Option.match(found, { onNone: () => Effect.fail(notFound), onSome: Effect.succeed })
            )
          }).pipe(Effect.catchTag("StoreError", internal("failed to get audit event")))))
  }))
