/**
 * Retention (`AUDIT_RETENTION_DAYS`): a background fiber deletes database events older than the retention
 * period, at start and then every `interval`, in batches of `batchSize` rows with a pause between them, so no
 * single statement holds the table for long and requests are served while a backlog is worked off (as token
 * retention does, src/store/retention.ts). The JSONL file is left to logrotate (docs/audit.md).
 */
import { Cause, Clock, Duration, Effect, Layer, Schedule } from "effect"
import { pruneInBatches } from "../store/retention.js"
import { AuditRepo } from "./AuditRepo.js"

export interface RetentionOptions {
  readonly days: number
  readonly interval?: Duration.DurationInput
  readonly batchSize?: number
  readonly pause?: Duration.DurationInput
}

/** Deletes every event older than `days` before now, batch by batch; returns how many it deleted. */
export const pruneOnce = (days: number, batchSize = 1000, pause: Duration.DurationInput = Duration.millis(50)) =>
  Effect.gen(function*() {
    const repo = yield* AuditRepo
    const now = yield* Clock.currentTimeMillis
    const cutoff = new Date(now - days * 86_400_000).toISOString()
    return yield* pruneInBatches((limit) => repo.pruneBefore(cutoff, limit), batchSize, pause)
  })

export const layer = (options: RetentionOptions): Layer.Layer<never, never, AuditRepo> =>
  Layer.scopedDiscard(
    pruneOnce(options.days, options.batchSize, options.pause).pipe(
      Effect.tap((n) => (n > 0
        ? Effect.logInfo(`audit retention: deleted ${n} events older than ${options.days} days`)
        : Effect.void)
      ),
      Effect.catchAllCause((cause) => Effect.logWarning("audit retention failed; retrying later", Cause.pretty(cause))),
      Effect.repeat(Schedule.spaced(options.interval ?? Duration.hours(1))),
      Effect.forkScoped
    )
  )
