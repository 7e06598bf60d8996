/**
 * Redis Streams bus.
 * Publishing: `publish` puts the event in a bounded local buffer (dropped + counted when full) and returns; one
 * background fiber drains the buffer with pipelined `XADD`s, so a request never waits for Redis. `MAXLEN ~ N` is
 * added only when configured (and then logged at start-up, since trimming can discard unconsumed events).
 * Consuming: consumer groups (`XGROUP CREATE … 0 MKSTREAM`); a consumer first re-reads its own pending entries,
 * then reads new ones, and every `claimIdle/2` takes over entries another consumer left pending for `claimIdle`
 * (`XAUTOCLAIM`). Entries are acknowledged only when the caller says so (after the backend accepted them).
 */
import { Effect, Layer, Option, Queue, Redacted, Runtime, Schedule } from "effect"
import { decodeProxyEventJson, type ProxyEvent } from "../domain/ProxyEvent.js"
import { ioredis } from "../redisClient.js"
import {
  type Backlog,
  BusError,
  type Delivery,
  EventBus,
  EventSource,
  type GroupBacklog,
  type Subscription
} from "./EventBus.js"

export interface RedisStreamsOptions {
  readonly url: Redacted.Redacted<string>
  readonly streamKey: string
  /** 0 = never trim */
  readonly maxLen: number
  readonly bufferSize: number
  /** idle time after which another consumer may take over a pending entry */
  readonly claimIdleMs: number
  /** entries per pipelined XADD round trip */
  readonly publishBatch?: number
}

/** `host:port` of a Redis URL, never its credentials. */
export const redisLocation = (url: Redacted.Redacted<string>) => {
  try {
    const u = new URL(Redacted.value(url))
    return `${u.hostname}:${u.port || "6379"}`
  } catch {
    return "the configured Redis"
  }
}

/**
 * One ioredis connection. Commands wait while Redis is unreachable (ioredis reconnects); the outage is logged once
 * when it starts and once when it ends, never per attempt.
 */
const connect = (url: Redacted.Redacted<string>, name: string) =>
  Effect.gen(function*() {
    const runtime = yield* Effect.runtime<never>()
    const log = (effect: Effect.Effect<void>) => void Runtime.runFork(runtime)(effect)
    const { Redis } = yield* ioredis
    return yield* Effect.acquireRelease(
      Effect.sync(() => {
        const redis = new Redis(Redacted.value(url), {
          lazyConnect: true,
          maxRetriesPerRequest: null,
          connectionName: name
        })
        let down = false
        redis.on("error", (e: Error) => {
          if (down) return
          down = true
          log(Effect.logWarning(`event bus: Redis at ${redisLocation(url)} unreachable (${e.message}); retrying`))
        })
        redis.on("ready", () => {
          if (!down) return
          down = false
          log(Effect.logInfo(`event bus: Redis at ${redisLocation(url)} reachable again`))
        })
        void redis.connect().catch(() => {})
        return redis
      }),
      // quit() would wait for a connection that may never come: only a ready connection says goodbye
      (redis) =>
        redis.status === "ready"
          ? Effect.promise(() => redis.quit().catch(() => redis.disconnect())).pipe(
            Effect.interruptible,
            Effect.timeoutTo({ duration: "2 seconds", onTimeout: () => redis.disconnect(), onSuccess: () => undefined })
          )
          : Effect.sync(() => redis.disconnect())
    )
  })

const describe = (e: unknown) => (e instanceof Error ? e.message : String(e))
const redisCall = <A>(what: string, f: () => Promise<A>) =>
  Effect.tryPromise({ try: f, catch: (e) => new BusError({ message: `${what}: ${describe(e)}` }) })

const flatInfo = (row: Array<unknown>): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (let i = 0; i + 1 < row.length; i += 2) out[String(row[i])] = row[i + 1]
  return out
}

const count = (v: unknown) => (typeof v === "number" && Number.isFinite(v) ? v : 0)

/** `XINFO GROUPS` rows → each group's backlog; the stream's lag is the largest (its length when no group exists). */
export const backlogOf = (rows: ReadonlyArray<Array<unknown>>, length: number): Backlog => {
  const groups = rows.map(flatInfo).map((g): GroupBacklog => {
    const undelivered = typeof g["lag"] === "number" ? g["lag"] : null
    const pending = count(g["pending"])
    return {
      group: String(g["name"]),
      undelivered,
      pending,
      consumers: count(g["consumers"]),
      lag: undelivered === null ? null : undelivered + pending
    }
  })
  const known = groups.flatMap((g) => (g.lag === null ? [] : [g.lag]))
  const lag = groups.length === 0 ? length : known.length === 0 ? null : Math.max(...known)
  return { lag, length, groups }
}

/**
 * A scoped reader of the stream's backlog for scrapes and health checks, on a connection of its own that never
 * queues commands: while Redis is unreachable a call fails at once (`not connected`) instead of waiting, so it
 * also tells whether the bus is reachable. Never used on the request path.
 */
export const makeBacklogProbe = (url: Redacted.Redacted<string>, key: string) =>
  Effect.gen(function*() {
    const { Redis } = yield* ioredis
    const redis = yield* Effect.acquireRelease(
      Effect.sync(() => {
        const c = new Redis(Redacted.value(url), {
          lazyConnect: true,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          connectTimeout: 2_000,
          connectionName: "llm-proxy-probe",
          retryStrategy: (times) => Math.min(times * 500, 5_000)
        })
        // the publisher and the consumers log outages; here a failure is the answer to the call
        c.on("error", () => {})
        c.connect().catch(() => {})
        return c
      }),
      (c) => Effect.sync(() => c.disconnect())
    )
    const call = <A>(what: string, f: () => Promise<A>) =>
      Effect.tryPromise({
        try: f,
        catch: (e) =>
          new BusError({
            message: redis.status === "ready"
              ? `${what}: ${describe(e)}`
              : `Redis at ${redisLocation(url)} not connected (${redis.status})`
          })
      })
    return Effect.gen(function*() {
      const [groups, length] = yield* call("XINFO GROUPS", () =>
        Promise.all([
          (redis.xinfo("GROUPS", key) as Promise<Array<Array<unknown>>>).catch((e: Error) => {
            // no stream yet: nothing was published and no group was created
            if (e.message.includes("no such key")) return []
            throw e
          }),
          redis.xlen(key)
        ]))
      return backlogOf(groups, length)
    })
  })

export const makePublisher = (options: RedisStreamsOptions) =>
  Effect.gen(function*() {
    const redis = yield* connect(options.url, "llm-proxy-publisher")
    const backlog = yield* makeBacklogProbe(options.url, options.streamKey)
    const buffer = yield* Queue.dropping<ProxyEvent>(options.bufferSize)
    const batchSize = options.publishBatch ?? 256
    const trim = options.maxLen > 0 ? ["MAXLEN", "~", String(options.maxLen)] : []
    let published = 0
    let dropped = 0
    let written = 0
    let failed = 0
    let inFlight = 0
    if (options.maxLen > 0) {
      yield* Effect.logWarning(
        `event stream ${options.streamKey} is trimmed to about ${options.maxLen} entries (REDIS_STREAM_MAX_LEN): ` +
          "events not yet consumed when they fall off are lost"
      )
    }

    const writeBatch = (events: ReadonlyArray<ProxyEvent>) =>
      redisCall("XADD", () => {
        const pipeline = redis.pipeline()
        for (const e of events) pipeline.xadd(options.streamKey, ...trim, "*", "data", JSON.stringify(e))
        return pipeline.exec()
      }).pipe(
        Effect.map((results) => {
          const errors = (results ?? []).filter(([err]) => err !== null).length
          written += events.length - errors
          failed += errors
        }),
        // a connection-level failure: keep the batch and try again; the buffer bounds what waits behind it
        Effect.retry(Schedule.exponential("100 millis").pipe(Schedule.union(Schedule.spaced("5 seconds")))),
        Effect.ensuring(Effect.sync(() => (inFlight = 0)))
      )

    const loop = Queue.takeBetween(buffer, 1, batchSize).pipe(
      Effect.tap((c) => Effect.sync(() => (inFlight = c.length))),
      Effect.flatMap((c) => writeBatch([...c])),
      Effect.forever
    )
    yield* Effect.forkScoped(loop)
    // Added after the fork, so it runs before the fiber is interrupted: buffered events get a few seconds to reach Redis.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const idle = Effect.suspend(() =>
          Effect.flatMap(Queue.size(buffer), (n) => (n <= 0 && inFlight === 0 ? Effect.void : Effect.fail("busy")))
        ).pipe(Effect.retry(Schedule.spaced("20 millis")))
        // finalizers are uninterruptible: `interruptible` lets the timeout end the wait
        yield* Effect.interruptible(idle).pipe(Effect.timeout("5 seconds"), Effect.ignore)
        const left = Math.max(0, Option.getOrElse(buffer.unsafeSize(), () => 0)) + inFlight
        if (left > 0) {
          dropped += left
          yield* Effect.logWarning(`event bus: ${left} buffered events could not be written to Redis before shutdown`)
        }
      })
    )
    return EventBus.of({
      kind: "redis-streams",
      listened: () => true,
      publish: (event) => {
        if (buffer.unsafeOffer(event)) {
          published++
          return true
        }
        dropped++
        return false
      },
      stats: Effect.sync(() => ({
        kind: "redis-streams" as const,
        published,
        dropped,
        written,
        failed,
        // a waiting taker shows as a negative size
        buffered: Math.max(0, Option.getOrElse(buffer.unsafeSize(), () => 0)) + inFlight,
        maxLen: options.maxLen > 0 ? options.maxLen : null
      })),
      backlog
    })
  })

type Entry = [id: string, fields: Array<string>]

const toDelivery = (redelivered: boolean) => ([id, fields]: Entry): Delivery => {
  let raw = ""
  for (let i = 0; i + 1 < (fields?.length ?? 0); i += 2) if (fields[i] === "data") raw = fields[i + 1]!
  const decoded = decodeProxyEventJson(raw)
  return { id, event: decoded._tag === "Right" ? decoded.right : undefined, raw, redelivered }
}

export const makeSource = (options: RedisStreamsOptions) =>
  Effect.sync(() => {
    const key = options.streamKey
    const subscribe = (group: string, consumer: string) =>
      Effect.gen(function*() {
        // Blocking reads get their own connection so acks and claims never queue behind them.
        const reader = yield* connect(options.url, `llm-proxy-${consumer}-read`)
        const commands = yield* connect(options.url, `llm-proxy-${consumer}`)
        const ensureGroup = redisCall("XGROUP CREATE", () => commands.xgroup("CREATE", key, group, "0", "MKSTREAM"))
          .pipe(
            Effect.catchIf((e) => e.message.includes("BUSYGROUP"), () => Effect.void),
            Effect.asVoid
          )
        // a consumer that cannot reach Redis at start says so instead of waiting silently
        yield* ensureGroup.pipe(
          Effect.timeoutFail({
            duration: "15 seconds",
            onTimeout: () =>
              new BusError({ message: `cannot reach Redis at ${redisLocation(options.url)} (stream ${key})` })
          })
        )
        let ownPending = true
        let ownCursor = "0"
        let claimCursor = "0-0"
        let lastClaim = 0
        const claimEvery = Math.max(200, Math.floor(options.claimIdleMs / 2))

        const onNoGroup = <A>(self: Effect.Effect<A, BusError>) =>
          self.pipe(
            Effect.catchIf((e) => e.message.includes("NOGROUP"), (e) => Effect.zipRight(ensureGroup, Effect.fail(e)))
          )

        const readOwnPending = (max: number) =>
          redisCall("XREADGROUP", () =>
            reader.xreadgroup("GROUP", group, consumer, "COUNT", max, "STREAMS", key, ownCursor) as Promise<
              Array<[string, Array<Entry>]> | null
            >).pipe(
              Effect.map((res) => {
                // entries trimmed from the stream come back with null fields: skip them
                const entries = (res?.[0]?.[1] ?? []) as Array<Entry>
                if (entries.length === 0) ownPending = false
                else ownCursor = entries[entries.length - 1]![0]
                return entries.filter(([, f]) =>
                  f !== null
                ).map(toDelivery(true))
              })
            )

        const claim = (max: number) =>
          redisCall("XAUTOCLAIM", () =>
            commands.xautoclaim(key, group, consumer, options.claimIdleMs, claimCursor, "COUNT", max) as Promise<
              [string, Array<Entry>, Array<string>]
            >).pipe(
              Effect.flatMap(([next, entries, deleted]) => {
                claimCursor = next
                lastClaim = Date.now()
                // ids whose entries were trimmed away can never be delivered: drop them from the pending list
                const ackDeleted = deleted !== undefined && deleted.length > 0
                  ? redisCall("XACK", () =>
                    commands.xack(key, group, ...deleted))
                  : Effect.void
                return Effect.as(
                  ackDeleted,
                  entries.filter(([, f]) =>
                    f !== null
                  ).map(toDelivery(true))
                )
              })
            )

        const readNew = (max: number, waitMs: number) =>
          redisCall("XREADGROUP", () =>
            reader.xreadgroup(
              "GROUP",
              group,
              consumer,
              "COUNT",
              max,
              "BLOCK",
              Math.max(1, Math.floor(waitMs)),
              "STREAMS",
              key,
              ">"
            ) as Promise<Array<[string, Array<Entry>]> | null>).pipe(
              Effect.map((res) => ((res?.[0]?.[1] ?? []) as Array<Entry>).map(toDelivery(false)))
            )

        const take = (max: number, waitMs: number) =>
          Effect.gen(function*() {
            if (ownPending) {
              const own = yield* readOwnPending(max)
              if (own.length > 0) return own
            }
            if (Date.now() - lastClaim >= claimEvery) {
              const claimed = yield* claim(max)
              if (claimed.length > 0) return claimed
            }
            return yield* readNew(max, Math.min(waitMs, claimEvery))
          }).pipe(onNoGroup)

        const sub: Subscription = {
          take,
          ack: (ids) =>
            ids.length === 0
              ? Effect.void
              : redisCall("XACK", () => commands.xack(key, group, ...ids)).pipe(Effect.asVoid),
          keepAlive: (ids) =>
            ids.length === 0
              ? Effect.void
              : redisCall("XCLAIM", () => commands.xclaim(key, group, consumer, 0, ...ids, "JUSTID")).pipe(
                Effect.asVoid
              ),
          lag: redisCall("XINFO GROUPS", () => commands.xinfo("GROUPS", key) as Promise<Array<Array<unknown>>>).pipe(
            Effect.map((rows) => {
              const info = rows.map(flatInfo).find((r) => r["name"] === group)
              const lag = info?.["lag"]
              return {
                undelivered: typeof lag === "number" ? lag : null,
                pending: typeof info?.["pending"] === "number" ? (info["pending"] as number) : 0
              }
            })
          )
        }
        return sub
      })
    return EventSource.of({ kind: "redis-streams", subscribe })
  })

/**
 * Removes entries every consumer group has acknowledged (`XTRIM MINID`), so the stream does not grow without
 * bound when no MAXLEN is configured. An entry is kept while any group has not read it or still has it pending.
 */
export const trimAcknowledged = (url: Redacted.Redacted<string>, key: string) =>
  Effect.scoped(
    Effect.gen(function*() {
      const redis = yield* connect(url, "llm-proxy-trim")
      const groups = (yield* redisCall("XINFO GROUPS", () =>
        redis.xinfo("GROUPS", key) as Promise<Array<Array<unknown>>>))
        .map(flatInfo)
      if (groups.length === 0) return 0
      let min: string | undefined
      const older = (a: string, b: string) => {
        const [am, as] = a.split("-").map(BigInt) as [bigint, bigint]
        const [bm, bs] = b.split("-").map(BigInt) as [bigint, bigint]
        return am < bm || (am === bm && as < bs)
      }
      for (const g of groups) {
        let keep = String(g["last-delivered-id"])
        if (Number(g["pending"]) > 0) {
          const summary = yield* redisCall("XPENDING", () =>
            redis.xpending(key, String(g["name"])) as Promise<[number, string | null, string | null, unknown]>)
          if (summary[1] !== null) {
            keep = summary[1]
          }
        }
        if (min === undefined || older(keep, min)) {
          min = keep
        }
      }
      if (min === undefined || min === "0-0") {
        return 0
      }
      return yield* redisCall("XTRIM", () =>
        redis.xtrim(key, "MINID", min))
    })
  )

export const layerPublisher = (options: RedisStreamsOptions) => Layer.scoped(EventBus, makePublisher(options))
export const layerSource = (options: RedisStreamsOptions) => Layer.scoped(EventSource, makeSource(options))
export const layer = (options: RedisStreamsOptions) => Layer.merge(layerPublisher(options), layerSource(options))
