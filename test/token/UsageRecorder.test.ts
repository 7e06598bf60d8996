/**
 * The usage flush's per-hour rollups on a real SQLite store: every recorded request lands in its (hour, token) row,
 * and a failed write is retried with the next batch without losing or doubling anything. A flush that writes is traced.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Tracer } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import { Store } from "../../src/store/Store.js"
import { layer as usageRecorderLayer, UsageRecorder } from "../../src/token/UsageRecorder.js"
import { freshStore } from "../store/backends.js"
import { testConfig } from "../support/server.js"

const HOUR = 3_600_000
const T0 = Date.parse("2026-03-04T05:00:00.000Z")

const recorder = usageRecorderLayer.pipe(
  Layer.provideMerge(freshStore("sqlite")),
  // The background fiber never fires during the test: flushes are explicit.
  Layer.provide(
    Layer.succeed(AppConfig, testConfig({ _tag: "sqlite", path: ":memory:" }, { usageFlushIntervalMs: 3_600_000 }))
  )
)

const series = (tokenId: string) =>
  Effect.flatMap(
    Store,
    (s) =>
      s.usageSeries({ since: new Date(T0 - HOUR).toISOString(), until: new Date(T0 + 3 * HOUR).toISOString(), tokenId })
  )

describe("UsageRecorder rollups", () => {
  layer(recorder)((it) => {
    it.effect("sums every answered request per hour and token; cache hits and errors counted", () =>
      Effect.gen(function*() {
        const usage = yield* UsageRecorder
        const rollup = { projectId: "p1", status: 200 }
        usage.record("t1", {
          request: true,
          promptTokens: 10,
          completionTokens: 2,
          spend: { costUsd: 0.5, tokens: 12 },
          at: T0 + 1,
          rollup
        })
        usage.record("t1", {
          request: false,
          promptTokens: 5,
          completionTokens: 1,
          spend: { costUsd: 0.25, tokens: 6 },
          at: T0 + 2,
          rollup
        })
        usage.record("t1", { cacheHit: true, at: T0 + 3, rollup })
        usage.record("t1", { request: true, at: T0 + HOUR + 5, rollup: { projectId: "p1", status: 502 } })
        usage.record("t2", { request: true, at: T0 + 4, rollup })
        usage.record("t2", { request: true, at: T0 + 4 }) // no rollup: counters only
        yield* usage.flush
        expect(yield* series("t1")).toEqual([
          {
            hour: new Date(T0).toISOString(),
            requests: 3,
            cacheHits: 1,
            errors: 0,
            promptTokens: 15,
            completionTokens: 3,
            costUsd: 0.75
          },
          {
            hour: new Date(T0 + HOUR).toISOString(),
            requests: 1,
            cacheHits: 0,
            errors: 1,
            promptTokens: 0,
            completionTokens: 0,
            costUsd: 0
          }
        ])
        expect((yield* series("t2")).map((p) => p.requests)).toEqual([1])
        expect(usage.pending()).toBe(0)
      }))

    it.effect("keeps a batch the database refused and writes it once with the next flush", () =>
      Effect.gen(function*() {
        const usage = yield* UsageRecorder
        const sql = yield* SqlClient.SqlClient
        usage.record("t3", { request: true, promptTokens: 1, at: T0 + 10, rollup: { projectId: "p1", status: 200 } })
        // The database refuses rollup writes for a while.
        yield* sql`CREATE TRIGGER refuse_usage BEFORE INSERT ON usage_hourly BEGIN SELECT RAISE(ABORT, 'refused'); END`
        yield* usage.flush // fails, logged, kept
        expect(yield* series("t3")).toEqual([])
        usage.record("t3", { request: true, promptTokens: 1, at: T0 + 20, rollup: { projectId: "p1", status: 200 } })
        yield* sql`DROP TRIGGER refuse_usage`
        yield* usage.flush
        expect(yield* series("t3")).toEqual([
          {
            hour: new Date(T0).toISOString(),
            requests: 2,
            cacheHits: 0,
            errors: 0,
            promptTokens: 2,
            completionTokens: 0,
            costUsd: 0
          }
        ])
        yield* usage.flush
        expect((yield* series("t3"))[0]!.requests).toBe(2)
      }))

    it.effect("a flush that writes is one UsageRecorder.flush span over its store writes; an idle flush traces nothing", () =>
      Effect.gen(function*() {
        const usage = yield* UsageRecorder
        const spans: Array<{ name: string; parent: string | undefined }> = []
        const native = yield* Effect.tracer
        const recording = Tracer.make({
          span: (name, parent, ...rest) => {
            spans.push({
              name,
              parent: parent._tag === "Some" && parent.value._tag === "Span" ? parent.value.name : undefined
            })
            return native.span(name, parent, ...rest)
          },
          context: (f, fiber) => native.context(f, fiber)
        })
        const stores = () => spans.filter((s) => !s.name.startsWith("sql."))
        yield* Effect.withTracer(usage.flush, recording)
        expect(stores()).toEqual([])
        usage.record("t4", { request: true, at: T0 + 30, rollup: { projectId: "p1", status: 200 } })
        yield* Effect.withTracer(usage.flush, recording)
        expect(stores()).toEqual([
          { name: "UsageRecorder.flush", parent: undefined },
          { name: "Store.addUsage", parent: "UsageRecorder.flush" },
          { name: "Store.addHourlyUsage", parent: "UsageRecorder.flush" }
        ])
      }))
  })
})
