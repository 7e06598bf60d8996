/**
 * `GET /manage/usage`: per-hour usage rollups for the dashboard and token charts, of everything, one project, one
 * token or one end user's tokens. A project key reads its own project's only.
 */
import { HttpApiBuilder } from "@effect/platform"
import { Clock, Effect } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { BadRequest } from "../domain/errors.js"
import { USER_MAX } from "../domain/models.js"
import { isUuid, parseTimestamp } from "../domain/validation.js"
import { Store } from "../store/Store.js"
import { hourOf } from "../store/usage.js"
import { caller, projectScope } from "./callers.js"
import { internal } from "./ProjectsHttp.js"

const DAY_MS = 86_400_000
const MAX_RANGE_MS = 366 * DAY_MS

/** RFC 3339 only (as documented): `Date.parse` alone would also take `2026-12-01`, `Tue, 01 Dec 2026 …` and more. */
const instant = (name: string, raw: string | undefined, fallback: number) => {
  if (raw === undefined || raw === "") return Effect.succeed(fallback)
  const parsed = parseTimestamp(raw)
  return parsed !== undefined
    ? Effect.succeed(Date.parse(parsed))
    : Effect.fail(new BadRequest({ error: `${name} must be an RFC 3339 timestamp` }))
}

const optionalId = (name: string, raw: string | undefined) => {
  if (raw === undefined || raw === "") return Effect.succeed(undefined)
  return isUuid(raw) ? Effect.succeed(raw.toLowerCase()) : Effect.fail(new BadRequest({ error: `invalid ${name}` }))
}

export const layer = HttpApiBuilder.group(ManagementApi, "usage", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    return handlers.handle("series", ({ urlParams }) =>
      Effect.gen(function*() {
        const until = yield* instant("until", urlParams.until, yield* Clock.currentTimeMillis)
        const since = yield* instant("since", urlParams.since, until - DAY_MS)
        if (since >= until) return yield* new BadRequest({ error: "since must be before until" })
        if (until - since > MAX_RANGE_MS) return yield* new BadRequest({ error: "the range is limited to 366 days" })
        const projectId = yield* projectScope(yield* caller, yield* optionalId("project_id", urlParams.project_id))
        const tokenId = yield* optionalId("token_id", urlParams.token_id)
        const user = urlParams.user === undefined || urlParams.user === "" ? undefined : urlParams.user
        if (user !== undefined && user.length > USER_MAX) {
          return yield* new BadRequest({ error: `user must be at most ${USER_MAX} characters` })
        }
        // The hour containing `since` is included whole: rollups cannot be split.
        const q = {
          since: hourOf(since),
          until: new Date(until).toISOString(),
          ...(projectId !== undefined ? { projectId } : {}),
          ...(tokenId !== undefined ? { tokenId } : {}),
          ...(user !== undefined ? { user } : {})
        }
        const points = yield* store.usageSeries(q)
        const hours = points.map((p) => ({
          hour: p.hour,
          requests: p.requests,
          cache_hits: p.cacheHits,
          errors: p.errors,
          prompt_tokens: p.promptTokens,
          completion_tokens: p.completionTokens,
          cost_usd: p.costUsd
        }))
        const totals = { requests: 0, cache_hits: 0, errors: 0, prompt_tokens: 0, completion_tokens: 0, cost_usd: 0 }
        for (const h of hours) {
          totals.requests += h.requests
          totals.cache_hits += h.cache_hits
          totals.errors += h.errors
          totals.prompt_tokens += h.prompt_tokens
          totals.completion_tokens += h.completion_tokens
          totals.cost_usd += h.cost_usd
        }
        return { since: q.since, until: q.until, hours, totals }
      }).pipe(Effect.catchTag("StoreError", internal("failed to read usage"))))
  }))
