/**
 * AuditLog: records security-relevant events off the request path. `record` puts the event on a bounded queue
 * and returns; one background fiber takes whatever is queued (up to BATCH_SIZE events), hands the batch to every
 * sink (database, JSONL file — chosen in src/Layers.ts) and only then takes the next batch. Closing the layer's
 * scope stops intake, writes everything already accepted, then releases the sinks.
 *
 * Denials that anyone can cause without a credential (a /v1 request with a bad token, a failed management login)
 * go through `recordDenial` instead: they are folded into one event per (action, reason, client IP, token, project,
 * minute) carrying a `count`, written when its minute is over (or at `flush` / shutdown), so a flood adds a bounded
 * number of rows. At most MAX_PENDING_DENIALS such events wait at once; denials beyond that are folded into one event
 * per (action, reason, minute) without a client IP, marked `overflow`.
 */
import {
  Cause,
  Chunk,
  Clock,
  Context,
  Deferred,
  Duration,
  Effect,
  Exit,
  Fiber,
  Layer,
  Queue,
  Schedule,
  Schema
} from "effect"
import { uuidv7 } from "../crypto/uuidv7.js"
import type { AuditEntry, AuditRecord } from "../domain/audit.js"

export class AuditSinkError extends Schema.TaggedError<AuditSinkError>()("AuditSinkError", {
  message: Schema.String,
  cause: Schema.optional(Schema.Defect)
}) {}

/** Where events end up. `write` gets events in the order they were recorded; a batch is written whole or fails. */
export interface AuditSink {
  readonly name: string
  /** The database sink: events written here can be listed by `GET /manage/audit`. */
  readonly queryable: boolean
  readonly write: (batch: ReadonlyArray<AuditRecord>) => Effect.Effect<void, AuditSinkError>
}

export class AuditSinks extends Context.Tag("llm-proxy/AuditSinks")<AuditSinks, ReadonlyArray<AuditSink>>() {}

export interface AuditStats {
  /** Events taken onto the queue. */
  readonly accepted: number
  /** Events every sink has written. */
  readonly written: number
  /** Events refused because the queue was full (only `unsafeRecord` refuses; `record` waits). */
  readonly dropped: number
  /** Events a sink could not write after retrying (they may have reached the other sinks). */
  readonly failed: number
  /** Denials counted into an aggregated event (`recordDenial`), the first of each included. */
  readonly denials: number
  /** Of those, denials folded into an overflow event because MAX_PENDING_DENIALS keys were already waiting. */
  readonly overflowed: number
}

export interface AuditLogShape {
  readonly enabled: boolean
  /** Events reach the database, so `GET /manage/audit` shows them. */
  readonly queryable: boolean
  /** Queues the event; waits only while the queue is full. Never fails. */
  readonly record: (entry: AuditEntry) => Effect.Effect<void>
  /** For plain Node code on the data plane: queues the event if there is room, never waits. */
  readonly unsafeRecord: (entry: AuditEntry) => boolean
  /**
   * Counts a denial into its aggregated event (one per action, reason, client IP, token, project and minute); the
   * first denial's request fields stand for the others. Synchronous and never waits.
   */
  readonly recordDenial: (entry: AuditEntry) => void
  /** Completes once every event accepted before it has been handed to the sinks. */
  readonly flush: Effect.Effect<void>
  readonly stats: Effect.Effect<AuditStats>
}

export class AuditLog extends Context.Tag("llm-proxy/AuditLog")<AuditLog, AuditLogShape>() {}

export const QUEUE_CAPACITY = 10_000
export const BATCH_SIZE = 500
/**
 * After the first event of a batch, how long the writer waits for more before writing. A database commit costs
 * far more than a row (on SQLite ~1 ms of CPU, on the thread that also serves requests), so waiting a little buys
 * fewer, larger commits under load (measured: test/bench/audit-throughput.bench.ts, docs/performance.md).
 * A flush or shutdown cuts the wait short.
 */
export const LINGER_MS = 50
/** Aggregated denials waiting for their minute to end, at most (memory stays bounded under a flood of addresses). */
export const MAX_PENDING_DENIALS = 10_000
/** Client-chosen strings kept in an aggregated denial are shorter than in other events. */
const DENIAL_LIMITS: Partial<Record<keyof AuditEntry, number>> = { path: 256, userAgent: 256 }
const MINUTE_MS = 60_000
/** How often aggregated denials of minutes that ended are handed to the writer. */
const DENIAL_TICK = 5_000
/** How long shutdown waits for the sinks before giving up (a sink that hangs must not hang the process). */
const DRAIN_TIMEOUT = Duration.seconds(30)

type Item =
  | { readonly _tag: "event"; readonly record: AuditRecord }
  | { readonly _tag: "flush"; readonly done: Deferred.Deferred<void> }
  | { readonly _tag: "stop" }

// Bounds on what one event may carry: headers such as User-Agent are client-controlled.
const LIMITS: Partial<Record<keyof AuditEntry, number>> = {
  action: 128,
  actor: 128,
  projectId: 128,
  tokenId: 128,
  requestId: 128,
  correlationId: 128,
  clientIp: 64,
  method: 16,
  path: 2048,
  userAgent: 512,
  reason: 1024
}

const bounded = (entry: AuditEntry, limits: Partial<Record<keyof AuditEntry, number>> = LIMITS): AuditEntry => {
  let out: Record<string, unknown> | undefined
  for (const [key, max] of Object.entries(limits) as Array<[keyof AuditEntry, number]>) {
    const value = entry[key]
    if (typeof value === "string" && value.length > max) {
      out ??= { ...entry }
      out[key] = value.slice(0, max)
    }
  }
  return (out as AuditEntry | undefined) ?? entry
}

export const toRecord = (entry: AuditEntry, nowMs: number): AuditRecord => ({
  ...bounded(entry),
  id: uuidv7(nowMs),
  timestamp: new Date(nowMs).toISOString()
})

const retryPolicy = Schedule.exponential("100 millis").pipe(Schedule.intersect(Schedule.recurs(4)))

interface PendingDenial {
  readonly entry: AuditEntry
  readonly firstMs: number
  lastMs: number
  count: number
}

/** What the overflow event of an action and reason keeps: nothing that belongs to one client. */
const overflowEntry = (entry: AuditEntry): AuditEntry =>
  bounded(
    bounded({
      action: entry.action,
      actor: entry.actor,
      outcome: entry.outcome,
      reason: entry.reason,
      method: entry.method,
      path: entry.path,
      details: { ...entry.details, overflow: true }
    }),
    DENIAL_LIMITS
  )

/** The event an aggregate stands for: the first denial's fields, its time, and how many there were. */
const denialRecord = (p: PendingDenial): AuditRecord => ({
  ...p.entry,
  ...(p.count > 1 ? { details: { ...p.entry.details, last_seen: new Date(p.lastMs).toISOString() } } : {}),
  count: p.count,
  id: uuidv7(p.firstMs),
  timestamp: new Date(p.firstMs).toISOString()
})

export interface AuditLogOptions {
  readonly capacity?: number
  readonly batchSize?: number
  readonly lingerMs?: number
  readonly maxPendingDenials?: number
  /** The clock of `recordDenial` and of closing minutes (tests move it). */
  readonly now?: () => number
  /** How often minutes that ended are looked for, ms. */
  readonly denialTickMs?: number
}

export const make = (options: AuditLogOptions = {}) =>
  Effect.gen(function*() {
    const sinks = yield* AuditSinks
    const batchSize = options.batchSize ?? BATCH_SIZE
    const lingerMs = options.lingerMs ?? LINGER_MS
    const queue = yield* Queue.bounded<Item>(options.capacity ?? QUEUE_CAPACITY)
    const stats = { accepted: 0, written: 0, dropped: 0, failed: 0, denials: 0, overflowed: 0 }
    const maxPending = options.maxPendingDenials ?? MAX_PENDING_DENIALS
    // Wall-clock time, like `unsafeRecord`: recordDenial is plain synchronous code on the data plane.
    const clock = options.now ?? Date.now
    const pending = new Map<string, PendingDenial>()
    let closed = false
    // Completed by flush and shutdown to end the writer's linger early.
    let wake: Deferred.Deferred<void> | undefined
    const wakeWriter = () => {
      if (wake !== undefined) Deferred.unsafeDone(wake, Exit.void)
    }

    const writeSink = (sink: AuditSink, batch: ReadonlyArray<AuditRecord>) =>
      sink.write(batch).pipe(
        Effect.retry(retryPolicy),
        Effect.catchAllCause((cause) => {
          stats.failed += batch.length
          return Effect.logError(`audit sink ${sink.name} lost ${batch.length} events`, Cause.pretty(cause))
        })
      )

    const writeBatch = (items: Iterable<Item>) =>
      Effect.gen(function*() {
        const batch: Array<AuditRecord> = []
        const waiting: Array<Deferred.Deferred<void>> = []
        let stop = false
        for (const item of items) {
          if (item._tag === "event") batch.push(item.record)
          else if (item._tag === "flush") waiting.push(item.done)
          else stop = true
        }
        if (batch.length > 0) {
          yield* Effect.forEach(sinks, (sink) => writeSink(sink, batch), { concurrency: "unbounded", discard: true })
          stats.written += batch.length
        }
        for (const done of waiting) yield* Deferred.succeed(done, undefined)
        return stop
      })

    const lingered = (first: Chunk.Chunk<Item>) =>
      Chunk.size(first) >= batchSize || lingerMs <= 0 || Chunk.some(first, (i) => i._tag !== "event")
        ? Effect.succeed(first)
        : Effect.gen(function*() {
          const w = yield* Deferred.make<void>()
          wake = w
          // The writer is uninterruptible here; the race's loser must not be, or the race would wait for it.
          yield* Effect.raceFirst(Effect.interruptible(Effect.sleep(lingerMs)), Effect.interruptible(Deferred.await(w)))
          wake = undefined
          return Chunk.appendAll(first, yield* Queue.takeUpTo(queue, batchSize - Chunk.size(first)))
        })

    // Each batch is written uninterruptibly: an event is off the queue only once it is in the sinks.
    const writer = Effect.uninterruptibleMask((restore) =>
      restore(Queue.takeBetween(queue, 1, batchSize)).pipe(Effect.flatMap(lingered), Effect.flatMap(writeBatch))
    ).pipe(Effect.repeat({ until: (stop) => stop }))

    const fiber = yield* Effect.forkScoped(writer)

    /** Takes the aggregated denials of minutes before `beforeMinute` (all of them when undefined) off `pending`. */
    const takeDenials = (beforeMinute: number | undefined): Array<Item> => {
      const items: Array<Item> = []
      for (const [key, p] of pending) {
        if (beforeMinute !== undefined && Math.floor(p.firstMs / MINUTE_MS) >= beforeMinute) continue
        pending.delete(key)
        stats.accepted++
        items.push({ _tag: "event", record: denialRecord(p) })
      }
      return items
    }
    const offerAll = (items: Array<Item>) => (items.length === 0 ? Effect.void : Queue.offerAll(queue, items))

    // Hands over the denials of minutes that have ended. Waits for room like `record`: nothing counted is lost.
    yield* Effect.suspend(() => offerAll(takeDenials(Math.floor(clock() / MINUTE_MS)))).pipe(
      Effect.repeat(Schedule.spaced(options.denialTickMs ?? DENIAL_TICK)),
      Effect.forkScoped
    )

    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        closed = true
        yield* offerAll(takeDenials(undefined))
        yield* Queue.offer(queue, { _tag: "stop" })
        wakeWriter()
        yield* Fiber.join(fiber)
        // Anything a racing caller managed to queue behind the stop marker.
        yield* writeBatch(yield* Queue.takeAll(queue))
      }).pipe(
        Effect.timeoutFail({ duration: DRAIN_TIMEOUT, onTimeout: () => "timeout" as const }),
        Effect.catchAllCause((cause) =>
          Effect.logError("audit log: could not write every event at shutdown", Cause.pretty(cause))
        )
      )
    )

    const accept = (record: AuditRecord) => {
      stats.accepted++
      return { _tag: "event", record } as const
    }

    const log: AuditLogShape = {
      enabled: true,
      queryable: sinks.some((s) => s.queryable),
      record: (entry) =>
        Effect.suspend(() => {
          if (closed) return Effect.logWarning(`audit event ${entry.action} after shutdown was not recorded`)
          return Effect.flatMap(Clock.currentTimeMillis, (now) => Queue.offer(queue, accept(toRecord(entry, now))))
        }).pipe(Effect.asVoid),
      unsafeRecord: (entry) => {
        if (closed) return false
        const ok = queue.unsafeOffer({ _tag: "event", record: toRecord(entry, Date.now()) })
        if (ok) stats.accepted++
        else stats.dropped++
        return ok
      },
      recordDenial: (entry) => {
        if (closed) return
        const now = clock()
        const minute = Math.floor(now / MINUTE_MS)
        let key =
          `${minute}\u0000${entry.action}\u0000${entry.actor}\u0000${entry.reason}\u0000${entry.clientIp}\u0000${entry.tokenId}\u0000${entry.projectId}`
        let p = pending.get(key)
        stats.denials++
        if (p === undefined && pending.size >= maxPending) {
          // The overflow event of this action and reason stands for every address that found no room.
          stats.overflowed++
          key = `${minute}\u0000${entry.action}\u0000${entry.actor}\u0000${entry.reason}\u0000*`
          p = pending.get(key)
          if (p === undefined) {
            p = { entry: overflowEntry(entry), firstMs: now, lastMs: now, count: 0 }
            pending.set(key, p)
          }
        } else if (p === undefined) {
          p = { entry: bounded(bounded(entry), DENIAL_LIMITS), firstMs: now, lastMs: now, count: 0 }
          pending.set(key, p)
        }
        p.count++
        p.lastMs = now
      },
      flush: Effect.gen(function*() {
        if (closed) return
        // Aggregated denials so far are written too (later ones of the same minute start a new event).
        yield* offerAll(takeDenials(undefined))
        const done = yield* Deferred.make<void>()
        yield* Queue.offer(queue, { _tag: "flush", done })
        wakeWriter()
        yield* Deferred.await(done)
      }),
      stats: Effect.sync(() => ({ ...stats }))
    }
    return log
  })

/** The AuditLog writing to the sinks in context. */
export const layer: Layer.Layer<AuditLog, never, AuditSinks> = Layer.scoped(AuditLog, make())

export const layerWith = (options: AuditLogOptions): Layer.Layer<AuditLog, never, AuditSinks> =>
  Layer.scoped(AuditLog, make(options))

/** AUDIT_ENABLED=false: nothing is recorded. `queryable` keeps earlier events listable. */
export const layerDisabled = (queryable: boolean): Layer.Layer<AuditLog> =>
  Layer.succeed(AuditLog, {
    enabled: false,
    queryable,
    record: () => Effect.void,
    unsafeRecord: () => false,
    recordDenial: () => {},
    flush: Effect.void,
    stats: Effect.succeed({ accepted: 0, written: 0, dropped: 0, failed: 0, denials: 0, overflowed: 0 })
  })
