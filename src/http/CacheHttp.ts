/**
 * Handlers of the `cache` group: `POST /manage/cache/purge` (docs/management-api.md, docs/cache.md). Every call is
 * audited as `cache.purge` (details `purge_type`, `method`/`url` or `prefix`, `project_id`, `deleted`).
 */
import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { parsePurge } from "../cache/policy.js"
import { ResponseCache } from "../cache/ResponseCache.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, ServiceUnavailable } from "../domain/errors.js"
import { audited } from "./auditing.js"
import { readJson } from "./body.js"

/** What of the request body goes into the audit event (bounded: it came from a client). */
const described = (body: unknown): Record<string, unknown> => {
  if (typeof body !== "object" || body === null) return {}
  const out: Record<string, unknown> = {}
  for (const field of ["method", "url", "prefix", "all", "project_id"]) {
    const v = (body as Record<string, unknown>)[field]
    if (typeof v === "string") out[field] = v.slice(0, 2048)
    else if (typeof v === "boolean") out[field] = v
  }
  return out
}

export const layer = HttpApiBuilder.group(ManagementApi, "cache", (handlers) =>
  Effect.gen(function*() {
    const cache = yield* ResponseCache
    return handlers.handleRaw("purge", ({ request }) =>
      audited(AuditActions.cachePurge, (note) =>
        Effect.gen(function*() {
          if (!cache.enabled) {
            return yield* new BadRequest({ error: "caching is disabled" })
          }
          const body = yield* readJson(request).pipe(
            Effect.catchTag("BadRequest", () =>
              Effect.fail(new BadRequest({ error: "invalid JSON" })))
          )
          Object.assign(note.details, described(body))
          const parsed = parsePurge(body)
          if (!parsed.ok) return yield* new BadRequest({ error: parsed.error })
          note.details["purge_type"] = parsed.kind
          const pid = (body as { project_id?: unknown }).project_id
          if (typeof pid === "string" && pid !== "") note.projectId = pid.toLowerCase()
          const deleted = yield* cache.purge(parsed.selector).pipe(
            Effect.catchTag("CacheUnavailable", (e) => Effect.fail(new ServiceUnavailable({ error: e.message })))
          )
          note.details["deleted"] = deleted
          return { deleted: parsed.kind === "exact" ? deleted > 0 : deleted }
        })))
  }))
