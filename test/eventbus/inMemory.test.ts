import { describe, expect, it } from "@effect/vitest"
import { Effect } from "effect"
import * as InMemoryBus from "../../src/eventbus/InMemoryBus.js"
import { makeEvent } from "../support/events.js"

// The real clock: `take` waits for events up to a timeout.

describe("in-memory bus", () => {
  it.scopedLive("a slow subscriber never slows publishers: overflow is dropped and counted", () =>
    Effect.gen(function*() {
      const { bus, source } = yield* InMemoryBus.make(100)
      const slow = yield* source.subscribe("g", "slow")
      // publish is synchronous: 1,000 calls complete without the subscriber reading anything
      let accepted = 0
      for (let i = 0; i < 1000; i++) if (bus.publish(makeEvent())) accepted++
      expect(accepted).toBe(100)
      expect(yield* bus.stats).toMatchObject({
        kind: "in-memory",
        published: 100,
        dropped: 900,
        buffered: 100,
        maxLen: null
      })
      expect(yield* slow.lag).toEqual({ undelivered: 100, pending: 0 })
      // the backlog (on /metrics and /health) is what the slowest subscriber has not taken
      expect(yield* bus.backlog).toEqual({ lag: 100, length: 100, groups: [] })
      const got = yield* slow.take(1000, 100)
      expect(got).toHaveLength(100)
      expect((yield* bus.backlog).lag).toBe(0)
      expect(got.every((d) => d.event !== undefined && !d.redelivered)).toBe(true)
      // caught up: publishing is accepted again, and an empty take times out with nothing
      expect(bus.publish(makeEvent())).toBe(true)
      expect(yield* slow.take(10, 0)).toHaveLength(1)
      expect(yield* slow.take(10, 20)).toHaveLength(0)
      yield* slow.ack(["1"])
      yield* slow.keepAlive(["1"])
    }))

  it.scopedLive("every subscription receives every event; without subscribers nothing accumulates", () =>
    Effect.gen(function*() {
      const { bus, source } = yield* InMemoryBus.make(10)
      for (let i = 0; i < 50; i++) bus.publish(makeEvent())
      expect((yield* bus.stats).buffered).toBe(0)
      const a = yield* source.subscribe("a", "1")
      const b = yield* source.subscribe("b", "1")
      const events = [makeEvent(), makeEvent(), makeEvent()]
      for (const e of events) bus.publish(e)
      const ids = (d: ReadonlyArray<{ event: { request_id: string } | undefined }>) => d.map((x) => x.event?.request_id)
      expect(ids(yield* a.take(10, 50))).toEqual(events.map((e) => e.request_id))
      expect(ids(yield* b.take(10, 50))).toEqual(events.map((e) => e.request_id))
    }))
})
