/**
 * In-process bus on a bounded, dropping Effect `PubSub`: publishing is `unsafeOffer` (synchronous, never waits);
 * a subscriber that falls behind fills the shared buffer, after which new events are dropped and counted — the
 * publishers are never slowed. Every subscription receives every event (groups mean nothing in one process).
 */
import { Context, Effect, Layer, Option, PubSub, Queue } from "effect"
import type { ProxyEvent } from "../domain/ProxyEvent.js"
import { type Delivery, EventBus, EventSource, type Subscription } from "./EventBus.js"

export const make = (capacity: number) =>
  Effect.gen(function*() {
    const pubsub = yield* Effect.acquireRelease(PubSub.dropping<ProxyEvent>(capacity), PubSub.shutdown)
    let published = 0
    let dropped = 0
    let sequence = 0
    let subscribers = 0
    const held = () => Math.max(0, Option.getOrElse(pubsub.unsafeSize(), () => 0))
    const bus = EventBus.of({
      kind: "in-memory",
      listened: () => subscribers > 0,
      publish: (event) => {
        if (pubsub.unsafeOffer(event)) {
          published++
          return true
        }
        dropped++
        return false
      },
      stats: Effect.sync(() => ({
        kind: "in-memory" as const,
        published,
        dropped,
        written: published,
        failed: 0,
        buffered: held(),
        maxLen: null
      })),
      // the PubSub keeps an event until its slowest subscriber took it
      backlog: Effect.sync(() => ({ lag: held(), length: held(), groups: [] }))
    })
    const source = EventSource.of({
      kind: "in-memory",
      subscribe: () =>
        Effect.zipRight(
          Effect.acquireRelease(Effect.sync(() => subscribers++), () => Effect.sync(() => subscribers--)),
          PubSub.subscribe(pubsub)
        ).pipe(Effect.map((queue): Subscription => ({
          take: (max, waitMs) =>
            (waitMs <= 0
              ? Effect.map(Queue.takeUpTo(queue, max), (c) => [...c])
              : Queue.takeBetween(queue, 1, max).pipe(
                Effect.timeoutTo({ duration: waitMs, onTimeout: () => [], onSuccess: (c) => [...c] })
              )).pipe(
                Effect.map((events) =>
                  events.map((event): Delivery => ({ id: String(++sequence), event, raw: "", redelivered: false }))
                )
              ),
          ack: () => Effect.void,
          keepAlive: () => Effect.void,
          lag: Effect.map(Queue.size(queue), (n) => ({ undelivered: Math.max(0, n), pending: 0 }))
        })))
    })
    return { bus, source }
  })

/** Both sides of one in-process bus. */
export const layer = (capacity: number): Layer.Layer<EventBus | EventSource> =>
  Layer.scopedContext(
    Effect.map(make(capacity), ({ bus, source }) => Context.make(EventBus, bus).pipe(Context.add(EventSource, source)))
  )
