/**
 * Retention (`AUDIT_RETENTION_DAYS`): a background fiber deletes database events older than the retention
 * period, at start and then every `interval`, in batches of `batchSize` rows so no single statement holds the
 * table for long. The JSONL file is left to logrotate (docs/audit.md).
 */
import { Cause, Clock, Duration, Effect, Layer, Schedule } from "effect"
import { AuditRepo } from "./AuditRepo.js"

export interface RetentionOptions {
  readonly days: number
  readonly interval?: Duration.DurationInput
  readonly batchSize?: number
}

/** Deletes every event older than `days` before now, batch by batch; returns how many it deleted. */
export const pruneOnce = (days: number, batchSize = 1000) =>
  Effect.gen(function*() {
    const repo = yield* AuditRepo
    const now = yield* Clock.currentTimeMillis
    const cutoff = new Date(now - days * 86_400_000).toISOString()
    let total = 0
    for (;;) {
      const deleted = yield* repo.pruneBefore(cutoff, batchSize)
      total += deleted
      if (deleted < batchSize) return total
      yield* Effect.yieldNow()
    }
  })

export const retentionLayer = (options: RetentionOptions): Layer.Layer<never, never, AuditRepo> =>
  Layer.scopedDiscard(
    pruneOnce(options.days, options.batchSize).pipe(
      Effect.tap((n) => (n > 0 ? Effect.logInfo(`audit retention: deleted ${n} events older than ${options.days} days`) : Effect.void)),
      Effect.catchAllCause((cause) => Effect.logWarning("audit retention failed; retrying later", Cause.pretty(cause))),
      Effect.repeat(Schedule.spaced(options.interval ?? Duration.hours(1))),
      Effect.forkScoped
    )
  )
