/** Handlers of the `cache` group: `POST /manage/cache/purge` (reference-system.md §2.6, widened). */
import { HttpApiBuilder } from "@effect/platform"
import { Effect } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { parsePurge } from "../cache/policy.js"
import { ResponseCache } from "../cache/ResponseCache.js"
import { BadRequest, ServiceUnavailable } from "../domain/errors.js"
import { readJson } from "./body.js"

export const CacheLive = HttpApiBuilder.group(ManagementApi, "cache", (handlers) =>
  Effect.gen(function*() {
    const cache = yield* ResponseCache
    return handlers.handleRaw("purge", ({ request }) =>
      Effect.gen(function*() {
        if (!cache.enabled) return yield* new BadRequest({ error: "caching is disabled" })
        const body = yield* readJson(request).pipe(
          Effect.catchTag("BadRequest", () => Effect.fail(new BadRequest({ error: "invalid JSON" })))
        )
        const parsed = parsePurge(body)
        if (!parsed.ok) return yield* new BadRequest({ error: parsed.error })
        const deleted = yield* cache.purge(parsed.selector).pipe(
          Effect.catchTag("CacheUnavailable", (e) => Effect.fail(new ServiceUnavailable({ error: e.message })))
        )
        yield* Effect.logInfo("cache purge").pipe(Effect.annotateLogs({ purge_type: parsed.kind, deleted }))
        return { deleted: parsed.kind === "exact" ? deleted > 0 : deleted }
      }))
  }))
