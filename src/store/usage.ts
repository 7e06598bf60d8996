/** Pure helpers for the per-hour usage rollups (table usage_hourly, migration 0004). */
import type { HourlyUsage } from "./Store.js"

const HOUR_MS = 3_600_000

/** ISO start of the UTC hour containing `ms` (the rollup key). */
export const hourOf = (ms: number): string => new Date(Math.floor(ms / HOUR_MS) * HOUR_MS).toISOString()

/**
 * Sums deltas with the same (hour, token). A batch must not upsert one row twice: Postgres rejects
 * `ON CONFLICT DO UPDATE` touching the same row twice in one statement.
 */
export const mergeHourlyUsage = (deltas: ReadonlyArray<HourlyUsage>): ReadonlyArray<HourlyUsage> => {
  const merged = new Map<string, HourlyUsage>()
  for (const d of deltas) {
    const key = `${d.hour}|${d.tokenId}`
    const seen = merged.get(key)
    merged.set(
      key,
      seen === undefined ? d : {
        ...seen,
        requests: seen.requests + d.requests,
        cacheHits: seen.cacheHits + d.cacheHits,
        errors: seen.errors + d.errors,
        promptTokens: seen.promptTokens + d.promptTokens,
        completionTokens: seen.completionTokens + d.completionTokens
      }
    )
  }
  return [...merged.values()]
}
