/**
 * The dispatcher: bus → transform → batch → backend → acknowledge.
 * - A reader fiber fills a bounded buffer (`--buffer`) from the subscription; when it is full the reader waits,
 *   so memory is bounded and unread events stay in the bus.
 * - The writer takes batches (`--batch-size`, or whatever arrived within `--flush-interval`), transforms them and
 *   sends them. Transient failures are retried with exponential backoff and jitter, for as long as it takes (the
 *   bus holds the events meanwhile); permanent rejections go to the dead-letter JSONL file. Only then are the
 *   events acknowledged, so a dispatcher killed mid-batch loses nothing: its entries are redelivered.
 * - A backend that refuses the API key pauses delivery: the batch is retried with the same backoff, loudly logged
 *   and counted (`credentialFailures`, `pausedSince`), and nothing is dead-lettered for it — the events are fine.
 * - On shutdown (SIGTERM) reading stops, what was read is delivered and acknowledged, within a drain timeout.
 */
import { type Chunk, Context, Deferred, Effect, Fiber, Layer, Option, Queue, Schedule } from "effect"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"
import { type BusError, type Delivery, EventSource, type Subscription } from "../eventbus/EventBus.js"
import { Backend, retry } from "./Backend.js"
import { makeJsonlWriter } from "./backends.js"
import { TokenCounter } from "./tokens.js"
import { transformEvent } from "./transform.js"

export interface DispatcherOptions {
  readonly group: string
  readonly consumer: string
  readonly batchSize: number
  readonly flushIntervalMs: number
  readonly buffer: number
  readonly deadLetterPath: string
  /** how often in-flight entries are refreshed so no other consumer reclaims them (Redis: claim idle / 3) */
  readonly keepAliveMs: number
  readonly retryBaseMs?: number
  readonly retryMaxMs?: number
  readonly drainTimeoutMs?: number
  /** "tty": one status line rewritten in place on stderr; "log": a structured log line; "off" */
  readonly status: "tty" | "log" | "off"
  readonly statusIntervalMs?: number
  /** periodic bus maintenance (Redis: trim entries every group acknowledged) */
  readonly maintenance?: Effect.Effect<unknown, BusError>
  readonly maintenanceIntervalMs?: number
}

export interface DispatcherStats {
  received: number
  redelivered: number
  delivered: number
  retries: number
  deadLettered: number
  invalid: number
  batches: number
  /** delivery rounds the backend refused our credentials (401/403, Lunary also 402/404) */
  credentialFailures: number
  /** since when delivery is paused because the backend refuses our credentials (epoch ms); null when it is not */
  pausedSince: number | null
  /** captured bodies left out because they decompressed to more than MAX_DECODED_BODY_BYTES */
  bodiesTooLarge: number
  /** when the backend last accepted an event (epoch ms) */
  lastDeliveryAt: number | null
  buffered: number
  lag: number | null
  pending: number | null
  ratePerSecond: number
}

/** Backoff before retry `attempt` (0-based): base·2^attempt capped at max, with "equal jitter" (50–100 %). */
export const backoffMs = (attempt: number, baseMs: number, maxMs: number, random: () => number = Math.random) => {
  const ceiling = Math.min(maxMs, baseMs * 2 ** Math.min(attempt, 30))
  return Math.round(ceiling / 2 + (ceiling / 2) * random())
}

export const formatStatus = (s: DispatcherStats, service: string) =>
  `dispatcher ${service}: ${s.delivered} delivered (${s.ratePerSecond.toFixed(1)}/s) · ` +
  `${s.redelivered} redelivered · ${s.deadLettered} dead-lettered · ${s.retries} retries · ` +
  `lag ${s.lag ?? "?"} · pending ${s.pending ?? "?"} · buffered ${s.buffered}` +
  (s.pausedSince === null ? "" : ` · PAUSED: ${service} refuses the API key`)

interface Item {
  readonly delivery: Delivery
  readonly event: DeliveredEvent
}

export const start = (options: DispatcherOptions) =>
  Effect.gen(function*() {
    const source = yield* EventSource
    const backend = yield* Backend
    const count = yield* TokenCounter
    const sub: Subscription = yield* source.subscribe(options.group, options.consumer)
    const deadLetter = yield* makeJsonlWriter(options.deadLetterPath)
    const queue = yield* Effect.acquireRelease(Queue.bounded<Delivery>(options.buffer), Queue.shutdown)
    const baseMs = options.retryBaseMs ?? 500
    const maxMs = options.retryMaxMs ?? 30_000
    const stats: DispatcherStats = {
      received: 0,
      redelivered: 0,
      delivered: 0,
      retries: 0,
      deadLettered: 0,
      invalid: 0,
      batches: 0,
      credentialFailures: 0,
      pausedSince: null,
      bodiesTooLarge: 0,
      lastDeliveryAt: null,
      buffered: 0,
      lag: null,
      pending: null,
      ratePerSecond: 0
    }
    let stopping = false
    let busy = false
    const stopSignal = yield* Deferred.make<void>()
    // Every entry read and not yet finished with (buffered or being delivered). They are refreshed together so
    // that no consumer — this one included — reclaims an entry that is only waiting its turn here.
    const held = new Set<string>()

    const reader = Effect.gen(function*() {
      while (!stopping) {
        const room = Math.max(1, Math.min(options.batchSize, options.buffer))
        const got = yield* sub.take(room, 1000).pipe(
          Effect.catchAll((e) =>
            Effect.logWarning(`event bus read failed, retrying: ${e.message}`).pipe(
              Effect.zipRight(Effect.sleep("1 second")),
              Effect.as([])
            )
          )
        )
        const fresh = got.filter((d) => !held.has(d.id))
        if (fresh.length === 0) continue
        for (const d of fresh) held.add(d.id)
        stats.received += fresh.length
        stats.redelivered += fresh.filter((d) => d.redelivered).length
        yield* Queue.offerAll(queue, fresh)
      }
    })

    const nextBatch = Effect.gen(function*() {
      const batch: Array<Delivery> = [...(yield* Queue.takeBetween(queue, 1, options.batchSize))]
      busy = true
      const deadline = Date.now() + options.flushIntervalMs
      while (batch.length < options.batchSize && !stopping) {
        const left = deadline - Date.now()
        if (left <= 0) break
        // wait for more until the flush interval ends or shutdown begins
        const more = yield* Queue.takeBetween(queue, 1, options.batchSize - batch.length).pipe(
          Effect.timeoutOption(left),
          Effect.raceFirst(Effect.as(Deferred.await(stopSignal), Option.none<Chunk.Chunk<Delivery>>()))
        )
        if (more._tag === "None") break
        batch.push(...more.value)
      }
      return batch
    })

    const writeDeadLetters = (
      entries: ReadonlyArray<{ readonly reason: string; readonly event: unknown; readonly id: string }>
    ) =>
      entries.length === 0
        ? Effect.succeed(true)
        : deadLetter(
          entries.map((d) => ({
            time: new Date().toISOString(),
            service: backend.name,
            reason: d.reason,
            event: d.event
          }))
        )
          .pipe(
            Effect.tap(() => Effect.sync(() => (stats.deadLettered += entries.length))),
            Effect.as(true),
            Effect.catchAll((e) =>
              Effect.logError(`cannot write the dead-letter file ${options.deadLetterPath}: ${e}`).pipe(
                Effect.as(false)
              )
            )
          )

    /** Delivers `items` until each is accepted or rejected; returns the ids that may be acknowledged. */
    const sendWithRetry = (items: ReadonlyArray<Item>): Effect.Effect<Array<string>> =>
      Effect.gen(function*() {
        const done: Array<string> = []
        let pending = items
        // failures of single events the backend reported (an outcome with `attempts`), by delivery id
        const failures = new Map<string, number>()
        for (let attempt = 0; pending.length > 0; attempt++) {
          const outcomes = yield* backend.send(pending.map((i) => i.event))
          if (backend.batched && pending.length > 1 && outcomes.every((o) => o._tag === "Rejected")) {
            // one bad event can make a backend refuse the whole batch: find it by sending one at a time
            for (const item of pending) done.push(...(yield* sendWithRetry([item])))
            return done
          }
          const retryable: Array<Item> = []
          const rejected: Array<{ reason: string; event: unknown; id: string }> = []
          let lastReason = ""
          let transient = 0
          let refused: string | undefined
          pending.forEach((item, i) => {
            const o = outcomes[i] ?? retry("no outcome")
            if (o._tag === "Accepted") {
              stats.delivered++
              stats.lastDeliveryAt = Date.now()
              done.push(item.delivery.id)
            } else if (o._tag === "Rejected") {
              rejected.push({ reason: o.reason, event: item.event, id: item.delivery.id })
            } else if (o._tag === "Unauthorized") {
              refused = o.reason
              retryable.push(item)
            } else {
              const n = (failures.get(item.delivery.id) ?? 0) + 1
              failures.set(item.delivery.id, n)
              if (o.attempts !== undefined && n >= o.attempts) {
                rejected.push({ reason: `${o.reason} (${n} attempts)`, event: item.event, id: item.delivery.id })
              } else {
                lastReason = o.reason
                transient++
                retryable.push(item)
              }
            }
          })
          if (refused === undefined && stats.pausedSince !== null) {
            yield* Effect.logWarning(
              `${backend.name} backend accepts the API key again: delivery resumed after ${
                Math.round((Date.now() - stats.pausedSince) / 1000)
              } s`
            )
            stats.pausedSince = null
          }
          if (yield* writeDeadLetters(rejected)) done.push(...rejected.map((r) => r.id))
          pending = retryable
          if (pending.length > 0) {
            // a refused key is counted as such, not as a transient failure
            if (transient > 0) stats.retries++
            const wait = backoffMs(attempt, baseMs, maxMs)
            if (refused !== undefined) {
              stats.credentialFailures++
              stats.pausedSince ??= Date.now()
              yield* Effect.logError(
                `${backend.name} backend refuses the API key (${refused}): delivery is PAUSED, ${pending.length} event(s) ` +
                  `wait in the bus and nothing is dead-lettered. Check --api-key / LLM_PROXY_API_KEY and --endpoint; ` +
                  `retrying in ${wait} ms`
              )
            } else {
              yield* Effect.logWarning(
                `${backend.name} backend: ${pending.length} event(s) not accepted (${lastReason}); retrying in ${wait} ms`
              )
            }
            yield* Effect.sleep(wait)
          }
        }
        return done
      })

    const deliver = (batch: ReadonlyArray<Delivery>) =>
      Effect.gen(function*() {
        const items: Array<Item> = []
        const invalid: Array<{ reason: string; event: unknown; id: string }> = []
        for (const d of batch) {
          if (d.event === undefined) {
            invalid.push({ reason: "not a valid event", event: d.raw, id: d.id })
            continue
          }
          try {
            items.push({ delivery: d, event: transformEvent(d.event, count, () => stats.bodiesTooLarge++) })
          } catch (e) {
            invalid.push({ reason: `transform failed: ${(e as Error).message}`, event: d.event, id: d.id })
          }
        }
        stats.invalid += invalid.length
        const ackable = (yield* writeDeadLetters(invalid)) ? invalid.map((i) => i.id) : []
        ackable.push(...(yield* sendWithRetry(items)))
        yield* sub.ack(ackable).pipe(
          Effect.retry(Schedule.exponential("200 millis").pipe(Schedule.compose(Schedule.recurs(5)))),
          Effect.catchAll((e) =>
            Effect.logWarning(`acknowledgement failed, these events will be redelivered: ${e.message}`)
          )
        )
        // unacknowledged ones (a failed ack) are left to be reclaimed: stop refreshing them either way
        for (const d of batch) held.delete(d.id)
        stats.batches++
      })

    const writer = Effect.forever(
      Effect.gen(function*() {
        const batch = yield* nextBatch
        const before = {
          delivered: stats.delivered,
          retries: stats.retries,
          deadLettered: stats.deadLettered,
          invalid: stats.invalid
        }
        // One span per batch (exported when OTEL_EXPORTER_OTLP_ENDPOINT is set): what it held and what became of it.
        yield* deliver(batch).pipe(
          Effect.tap(() =>
            Effect.annotateCurrentSpan({
              "llm_proxy.dispatcher.delivered": stats.delivered - before.delivered,
              "llm_proxy.dispatcher.retries": stats.retries - before.retries,
              "llm_proxy.dispatcher.dead_lettered": stats.deadLettered - before.deadLettered + stats.invalid -
                before.invalid
            })
          ),
          Effect.withSpan("dispatcher.batch", {
            kind: "consumer",
            attributes: {
              "llm_proxy.dispatcher.backend": backend.name,
              "llm_proxy.dispatcher.group": options.group,
              "llm_proxy.dispatcher.events": batch.length
            }
          }),
          Effect.ensuring(Effect.sync(() => (busy = false)))
        )
      })
    )

    let lastDelivered = 0
    let lastAt = Date.now()
    const refresh = Effect.gen(function*() {
      const now = Date.now()
      stats.ratePerSecond = ((stats.delivered - lastDelivered) * 1000) / Math.max(1, now - lastAt)
      lastDelivered = stats.delivered
      lastAt = now
      stats.buffered = Math.max(0, yield* Queue.size(queue))
      const lag = yield* Effect.either(sub.lag)
      if (lag._tag === "Right") {
        stats.lag = lag.right.undelivered
        stats.pending = lag.right.pending
      }
    })
    const report = refresh.pipe(
      Effect.zipRight(
        Effect.suspend(() => {
          if (options.status === "tty") {
            return Effect.sync(() => process.stderr.write(`\r\x1b[2K${formatStatus(stats, backend.name)}`))
          }
          if (options.status === "log") {
            return Effect.logInfo("dispatcher status").pipe(
              Effect.annotateLogs({
                service: backend.name,
                delivered: stats.delivered,
                rate_per_s: Math.round(stats.ratePerSecond * 10) / 10,
                redelivered: stats.redelivered,
                dead_lettered: stats.deadLettered,
                retries: stats.retries,
                paused: stats.pausedSince !== null,
                credential_failures: stats.credentialFailures,
                bodies_too_large: stats.bodiesTooLarge,
                lag: stats.lag,
                pending: stats.pending,
                buffered: stats.buffered
              })
            )
          }
          return Effect.void
        })
      )
    )

    const heartbeat = Effect.suspend(() => {
      const ids = [...held]
      const chunks = Array.from(
        { length: Math.ceil(ids.length / 1000) },
        (_, i) => ids.slice(i * 1000, i * 1000 + 1000)
      )
      return Effect.forEach(chunks, (c) => Effect.ignore(sub.keepAlive(c)), { discard: true })
    })

    const readerFiber = yield* Effect.forkScoped(reader)
    yield* Effect.forkScoped(
      heartbeat.pipe(Effect.repeat(Schedule.spaced(options.keepAliveMs)), Effect.delay(options.keepAliveMs))
    )
    yield* Effect.forkScoped(writer)
    yield* Effect.forkScoped(
      Effect.repeat(report, Schedule.spaced(options.statusIntervalMs ?? 5000)).pipe(
        Effect.delay(options.statusIntervalMs ?? 5000)
      )
    )
    if (options.maintenance !== undefined) {
      const every = options.maintenanceIntervalMs ?? 60_000
      yield* Effect.forkScoped(
        options.maintenance.pipe(Effect.ignore, Effect.repeat(Schedule.spaced(every)), Effect.delay(every))
      )
    }
    // Added last, so it runs first on shutdown: stop reading, deliver what was read, then let the fibers go.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        stopping = true
        yield* Deferred.succeed(stopSignal, undefined)
        const drained = Effect.gen(function*() {
          yield* Fiber.await(readerFiber)
          // an in-process bus has nowhere to keep what was not read yet: read it all
          if (source.kind === "in-memory") {
            for (;;) {
              const rest = yield* Effect.orElseSucceed(sub.take(options.batchSize, 0), () => [])
              if (rest.length === 0) break
              stats.received += rest.length
              for (const d of rest) held.add(d.id)
              yield* Queue.offerAll(queue, rest)
            }
          }
          while (busy || (yield* Queue.size(queue)) > 0) yield* Effect.sleep("20 millis")
        })
        // finalizers are uninterruptible: without `interruptible` the timeout could not stop the drain
        const finished = yield* Effect.interruptible(drained).pipe(
          Effect.timeout(options.drainTimeoutMs ?? 10_000),
          Effect.option
        )
        yield* refresh.pipe(Effect.ignore)
        if (options.status === "tty") process.stderr.write("\n")
        yield* Effect.logInfo(
          finished._tag === "Some"
            ? "dispatcher drained"
            : "dispatcher drain timed out; unacknowledged events will be redelivered"
        ).pipe(
          Effect.annotateLogs({
            delivered: stats.delivered,
            dead_lettered: stats.deadLettered,
            redelivered: stats.redelivered
          })
        )
      })
    )
    const info: DispatcherInfoShape = {
      backend: backend.name,
      group: options.group,
      stats,
      // read but not finished counts too: in-memory entries have no pending list, this process holds them
      lag: Effect.map(sub.lag, (l) => ({
        lag: l.undelivered === null ? null : l.undelivered + Math.max(l.pending, held.size),
        pending: Math.max(l.pending, held.size)
      }))
    }
    return info
  })

/** The running dispatcher's counters (for /metrics, tests and the status line). */
export class DispatcherState
  extends Context.Tag("llm-proxy/dispatcher/DispatcherState")<DispatcherState, DispatcherStats>()
{}

export interface DispatcherInfoShape {
  /** the backend's name: file, lunary, helicone */
  readonly backend: string
  readonly group: string
  /** the live counters (the same object as `DispatcherState`) */
  readonly stats: DispatcherStats
  /**
   * Events the group has not acknowledged yet (not delivered to it + delivered and not finished), read now — one
   * bus round trip, for scrapes and health checks. `pending`: read and not acknowledged.
   */
  readonly lag: Effect.Effect<{ readonly lag: number | null; readonly pending: number }, BusError>
}

/** Which dispatcher runs here, its counters and its lag (src/observability reads it at scrape / health time). */
export class DispatcherInfo
  extends Context.Tag("llm-proxy/dispatcher/DispatcherInfo")<DispatcherInfo, DispatcherInfoShape>()
{}

export const layer = (options: DispatcherOptions) =>
  Layer.scopedContext(
    Effect.map(start(options), (info) =>
      Context.make(DispatcherState, info.stats).pipe(Context.add(DispatcherInfo, info)))
  )
