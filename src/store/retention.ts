/**
 * Token retention (`TOKEN_RETENTION_DAYS`): a background fiber deletes tokens that expired, or were revoked, more
 * than that many days ago — at start and then every `interval`, in batches of `batchSize` tokens, each its own
 * short transaction, with a pause between batches so requests keep being served while a backlog is worked off
 * (on SQLite a write holds the process's one connection for its duration). The tokens' per-hour usage rollups
 * (usage_hourly) and audit events stay: nothing references a token by foreign key.
 */
import { Cause, Clock, Duration, Effect, Layer, Schedule } from "effect"
import { Store, type StoreError } from "./Store.js"

export interface TokenRetentionOptions {
  readonly days: number
  readonly interval?: Duration.DurationInput
  readonly batchSize?: number
  readonly pause?: Duration.DurationInput
}

/** Measured on a million tokens (docs/performance.md): a batch of 100 holds SQLite for a few milliseconds. */
export const BATCH_SIZE = 100
export const PAUSE = Duration.millis(50)

/**
 * Runs `deleteBatch(batchSize)` until it deletes fewer than `batchSize` rows, pausing between batches; returns how
 * many it deleted in all.
 */
export const pruneInBatches = <E, R>(
  deleteBatch: (limit: number) => Effect.Effect<number, E, R>,
  batchSize: number,
  pause: Duration.DurationInput
): Effect.Effect<number, E, R> =>
  Effect.gen(function*() {
    let total = 0
    for (;;) {
      const deleted = yield* deleteBatch(batchSize)
      total += deleted
      if (deleted < batchSize) return total
      yield* Effect.sleep(pause)
    }
  })

/** Deletes every token expired or revoked more than `days` days ago; returns how many. */
export const pruneTokensOnce = (
  days: number,
  batchSize = BATCH_SIZE,
  pause: Duration.DurationInput = PAUSE
): Effect.Effect<number, StoreError, Store> =>
  Effect.gen(function*() {
    const store = yield* Store
    const cutoff = new Date((yield* Clock.currentTimeMillis) - days * 86_400_000).toISOString()
    return yield* pruneInBatches((limit) => store.pruneTokens(cutoff, limit), batchSize, pause)
  })

export const layer = (options: TokenRetentionOptions): Layer.Layer<never, never, Store> =>
  Layer.scopedDiscard(
    pruneTokensOnce(options.days, options.batchSize, options.pause).pipe(
      Effect.tap((n) =>
        n > 0
          ? Effect.logInfo(`token retention: deleted ${n} tokens expired or revoked more than ${options.days} days ago`)
          : Effect.void
      ),
      Effect.catchAllCause((cause) => Effect.logWarning("token retention failed; retrying later", Cause.pretty(cause))),
      Effect.repeat(Schedule.spaced(options.interval ?? Duration.hours(1))),
      Effect.forkScoped
    )
  )
