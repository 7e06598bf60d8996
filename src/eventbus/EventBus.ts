/**
 * The instrumentation event bus. Two sides, two services:
 * - `EventBus` (publishing, used by the proxy): `publish` is synchronous and never blocks; when the local buffer is
 *   full the event is dropped and counted.
 * - `EventSource` (consuming, used by the dispatcher): subscriptions deliver batches that must be acknowledged once
 *   the backend has accepted them; unacknowledged deliveries come back (Redis Streams) after a crash.
 * Layers: `InMemoryBus` (one process) and `RedisStreamsBus`; `src/Layers.ts` picks one from `LLM_PROXY_EVENT_BUS`.
 */
import { Context, type Effect, Schema, type Scope } from "effect"
import type { ProxyEvent } from "../domain/ProxyEvent.js"

export type BusKind = "in-memory" | "redis-streams"

export interface PublishStats {
  readonly kind: BusKind
  /** accepted into the local buffer */
  readonly published: number
  /** dropped because the local buffer was full */
  readonly dropped: number
  /** written to the bus (Redis: XADD succeeded) */
  readonly written: number
  /** could not be written (Redis errors after the buffer) */
  readonly failed: number
  /** waiting in the local buffer */
  readonly buffered: number
  /** Redis: MAXLEN trimming configured (null = never trimmed by the publisher) */
  readonly maxLen: number | null
}

/** How far one consumer group (one kind of dispatcher) is behind (Redis: `XINFO GROUPS`). */
export interface GroupBacklog {
  readonly group: string
  /** entries not yet delivered to the group (null when Redis cannot tell, e.g. after MAXLEN trimming) */
  readonly undelivered: number | null
  /** delivered to one of its consumers, not yet acknowledged */
  readonly pending: number
  readonly consumers: number
  /** undelivered + pending: events the group has not acknowledged yet (null when undelivered is unknown) */
  readonly lag: number | null
}

/** What is waiting in the bus, read on demand (scrape / health time), never on the request path. */
export interface Backlog {
  /**
   * Events not yet consumed by the slowest consumer: Redis — the largest group `lag`, or the stream length when no
   * group exists yet; in-memory — events not yet taken by the slowest subscriber. null when unknown.
   */
  readonly lag: number | null
  /** Redis: `XLEN`; in-memory: events held by the bus */
  readonly length: number
  /** Redis: every consumer group of the stream; in-memory: none (subscribers have no names) */
  readonly groups: ReadonlyArray<GroupBacklog>
}

export class EventBus extends Context.Tag("llm-proxy/EventBus")<EventBus, {
  readonly kind: BusKind
  /** Never blocks, never throws. false = dropped (buffer full or bus closed). */
  readonly publish: (event: ProxyEvent) => boolean
  /**
   * Whether an event published now can reach anyone: in-memory — a subscriber (an in-process dispatcher) exists,
   * without one an event would be thrown away; Redis — always (consumers are other processes). The proxy builds no
   * event while it is false.
   */
  readonly listened: () => boolean
  readonly stats: Effect.Effect<PublishStats>
  /**
   * What is waiting to be consumed. Redis: one round trip on a connection of its own that fails at once (no
   * queueing) while Redis is unreachable — so it doubles as the bus's reachability check.
   */
  readonly backlog: Effect.Effect<Backlog, BusError>
}>() {}

export class BusError extends Schema.TaggedError<BusError>()("BusError", {
  message: Schema.String
}) {}

export interface Delivery {
  /** the bus's id for acknowledgement (Redis stream entry id) */
  readonly id: string
  /** undefined when the message could not be decoded; `raw` then holds what was read */
  readonly event: ProxyEvent | undefined
  readonly raw: string
  /** delivered before to some consumer and not acknowledged (possible duplicate) */
  readonly redelivered: boolean
}

export interface BusLag {
  /** entries in the stream not yet delivered to this group (null when the bus cannot tell) */
  readonly undelivered: number | null
  /** delivered to the group, not yet acknowledged */
  readonly pending: number
}

export interface Subscription {
  /** Up to `max` deliveries, waiting at most `waitMs` for the first; [] on timeout. */
  readonly take: (max: number, waitMs: number) => Effect.Effect<ReadonlyArray<Delivery>, BusError>
  /** The backend accepted (or permanently rejected) these: never deliver them again. */
  readonly ack: (ids: ReadonlyArray<string>) => Effect.Effect<void, BusError>
  /** Still working on these: do not let another consumer reclaim them yet. */
  readonly keepAlive: (ids: ReadonlyArray<string>) => Effect.Effect<void, BusError>
  readonly lag: Effect.Effect<BusLag, BusError>
}

export class EventSource extends Context.Tag("llm-proxy/EventSource")<EventSource, {
  readonly kind: BusKind
  /** Consumers of one group share the events; each group receives all of them. */
  readonly subscribe: (group: string, consumer: string) => Effect.Effect<Subscription, BusError, Scope.Scope>
}>() {}
