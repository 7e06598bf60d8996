/**
 * The Redis Streams bus against a real Redis (REDIS_URL), each suite on its own stream key (deleted afterwards):
 * delivery to the file backend, fan-out across groups, work sharing within a group, a dispatcher killed with
 * SIGKILL in the middle of a batch, trimming of acknowledged entries.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Layer, Redacted } from "effect"
import { Redis } from "ioredis"
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { Backend } from "../../src/dispatcher/Backend.js"
import { fileBackend, lunaryBackend } from "../../src/dispatcher/backends.js"
import * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { TokenCounter } from "../../src/dispatcher/tokens.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { flushRedisPrefix, redisUrl } from "../support/databases.js"
import { buildLayer, makeEvent, startReceiver, waitFor } from "../support/events.js"

const prefix = `llm-proxy-test:events:${process.pid}:${Date.now()}:`
const dir = mkdtempSync(join(tmpdir(), "llm-proxy-redis-events-"))
const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

const lines = (path: string): Array<Record<string, any>> =>
  existsSync(path) ? readFileSync(path, "utf8").split("\n").filter((l) => l !== "").map((l) => JSON.parse(l)) : []

let keyN = 0
const busOptions = (extra: Partial<RedisStreamsBus.RedisStreamsOptions> = {}): RedisStreamsBus.RedisStreamsOptions => ({
  url: Redacted.make(redisUrl ?? ""),
  streamKey: `${prefix}${++keyN}`,
  maxLen: 0,
  bufferSize: 10_000,
  claimIdleMs: 30_000,
  ...extra
})

const dispatcherOptions = (
  name: string,
  extra: Partial<Dispatcher.DispatcherOptions> = {}
): Dispatcher.DispatcherOptions => ({
  group: "dispatcher-file",
  consumer: name,
  batchSize: 50,
  flushIntervalMs: 100,
  buffer: 200,
  deadLetterPath: join(dir, `${name}.dead.jsonl`),
  keepAliveMs: 1000,
  retryBaseMs: 10,
  retryMaxMs: 100,
  status: "off",
  ...extra
})

const fileDispatcher = <E>(
  bus: RedisStreamsBus.RedisStreamsOptions,
  o: Dispatcher.DispatcherOptions,
  backend: Layer.Layer<Backend, E>
) =>
  buildLayer(
    Dispatcher.layer(o).pipe(
      Layer.provide(Layer.mergeAll(RedisStreamsBus.layerSource(bus), backend, TokenCounter.layer))
    )
  )

const publish = async (bus: RedisStreamsBus.RedisStreamsOptions, count: number) => {
  const publisher = await buildLayer(RedisStreamsBus.layerPublisher(bus))
  const events = Array.from({ length: count }, () => makeEvent())
  for (const e of events) expect(publisher.get(EventBus).publish(e)).toBe(true)
  // closing the publisher flushes its buffer to Redis
  await publisher.close()
  return events
}

describe("backlogOf (XINFO GROUPS rows)", () => {
  it.each([
    [[], 7, { lag: 7, length: 7 }],
    [[["name", "g", "consumers", 1, "pending", 2, "last-delivered-id", "1-0", "entries-read", 3, "lag", 4]], 9, {
      lag: 6,
      length: 9
    }],
    // Redis cannot tell the lag (entries trimmed by MAXLEN): unknown, not 0
    [[["name", "g", "consumers", 1, "pending", 2, "lag", null]], 9, { lag: null, length: 9 }],
    [[["name", "a", "pending", 0, "lag", null], ["name", "b", "pending", 1, "lag", 1]], 3, { lag: 2, length: 3 }]
  ])("%j, length %d → %j", (rows, length, expected) => {
    expect(RedisStreamsBus.backlogOf(rows as Array<Array<unknown>>, length)).toMatchObject(expected)
  })
})

describe.skipIf(!redisUrl)("Redis Streams bus", () => {
  let redis: Redis
  beforeAll(() => {
    redis = new Redis(redisUrl!)
  })
  afterAll(async () => {
    await redis.quit()
    await flushRedisPrefix(redisUrl!, prefix)
  })

  it("events published all arrive in the dispatcher's file, and the publisher reports what it wrote", async () => {
    const bus = busOptions()
    const publisher = await buildLayer(RedisStreamsBus.layerPublisher(bus))
    const events = Array.from({ length: 500 }, () => makeEvent())
    for (const e of events) publisher.get(EventBus).publish(e)
    const path = join(dir, "all.jsonl")
    const d = await fileDispatcher(bus, dispatcherOptions("all"), fileBackend(path))
    await waitFor(() => lines(path).length >= 500, 20_000, "500 lines")
    expect(await Effect.runPromise(publisher.get(EventBus).stats)).toMatchObject({
      kind: "redis-streams",
      published: 500,
      written: 500,
      dropped: 0,
      failed: 0,
      buffered: 0,
      maxLen: null
    })
    await publisher.close()
    await d.close()
    expect(lines(path).map((l) => l.request_id).sort()).toEqual(events.map((e) => e.request_id).sort())
    // every event acknowledged: nothing pending for the group
    expect(((await redis.xpending(bus.streamKey, "dispatcher-file")) as [number])[0]).toBe(0)
  })

  it("two consumer groups each receive everything", async () => {
    const bus = busOptions()
    const [a, b] = [join(dir, "group-a.jsonl"), join(dir, "group-b.jsonl")]
    const da = await fileDispatcher(bus, dispatcherOptions("a", { group: "group-a" }), fileBackend(a))
    const db = await fileDispatcher(bus, dispatcherOptions("b", { group: "group-b" }), fileBackend(b))
    const events = await publish(bus, 300)
    await waitFor(() => lines(a).length >= 300 && lines(b).length >= 300, 20_000, "both groups")
    await Promise.all([da.close(), db.close()])
    const ids = events.map((e) => e.request_id).sort()
    expect(lines(a).map((l) => l.request_id).sort()).toEqual(ids)
    expect(lines(b).map((l) => l.request_id).sort()).toEqual(ids)
    // both groups acknowledged everything: trimming removes every entry but the last one read
    expect(await redis.xlen(bus.streamKey)).toBe(300)
    const removed = await Effect.runPromise(RedisStreamsBus.trimAcknowledged(bus.url, bus.streamKey))
    expect(removed).toBe(299)
  })

  it("the backlog probe: each group's lag (undelivered + pending), the slowest group's as the stream's", async () => {
    const bus = busOptions()
    const probe = await buildLayer(Layer.scoped(EventBus, RedisStreamsBus.makePublisher(bus)))
    const backlog = () => Effect.runPromise(probe.get(EventBus).backlog)
    try {
      // no stream yet
      await waitFor(
        async () => (await Effect.runPromise(Effect.either(probe.get(EventBus).backlog)))._tag === "Right",
        5_000,
        "probe connected"
      )
      expect(await backlog()).toEqual({ lag: 0, length: 0, groups: [] })
      await publish(bus, 5)
      // no group: everything is unconsumed
      expect(await backlog()).toEqual({ lag: 5, length: 5, groups: [] })
      await redis.xgroup("CREATE", bus.streamKey, "fast", "0")
      await redis.xgroup("CREATE", bus.streamKey, "slow", "0")
      const read = (await redis.xreadgroup("GROUP", "fast", "c1", "COUNT", 5, "STREAMS", bus.streamKey, ">")) as Array<
        [string, Array<[string]>]
      >
      await redis.xack(bus.streamKey, "fast", ...read[0]![1].slice(0, 3).map(([id]) => id))
      expect(await backlog()).toEqual({
        lag: 5,
        length: 5,
        groups: [
          { group: "fast", undelivered: 0, pending: 2, consumers: 1, lag: 2 },
          { group: "slow", undelivered: 5, pending: 0, consumers: 0, lag: 5 }
        ]
      })
    } finally {
      await probe.close()
    }
  })

  it("two dispatchers in one group share the work, each event delivered once", async () => {
    const bus = busOptions()
    const [a, b] = [join(dir, "share-1.jsonl"), join(dir, "share-2.jsonl")]
    const o = { group: "shared", batchSize: 10, buffer: 10 }
    const d1 = await fileDispatcher(bus, dispatcherOptions("share-1", o), fileBackend(a))
    const d2 = await fileDispatcher(bus, dispatcherOptions("share-2", o), fileBackend(b))
    const events = await publish(bus, 1000)
    await waitFor(() => lines(a).length + lines(b).length >= 1000, 20_000, "1000 events")
    await Promise.all([d1.close(), d2.close()])
    const one = lines(a).map((l) => l.request_id)
    const two = lines(b).map((l) => l.request_id)
    expect(one.length).toBeGreaterThan(0)
    expect(two.length).toBeGreaterThan(0)
    expect([...one, ...two].sort()).toEqual(events.map((e) => e.request_id).sort())
  })

  it("a group created after the events were published still receives them; undecodable entries are dead-lettered", async () => {
    const bus = busOptions({ maxLen: 10_000 })
    const events = await publish(bus, 20)
    await redis.xadd(bus.streamKey, "*", "data", "{not json")
    const path = join(dir, "late.jsonl")
    const o = dispatcherOptions("late")
    const d = await fileDispatcher(bus, o, fileBackend(path))
    const state = d.get(Dispatcher.DispatcherState)
    await waitFor(() => lines(path).length >= 20 && state.deadLettered >= 1, 20_000, "late group")
    await d.close()
    expect(lines(path)).toHaveLength(events.length)
    expect(lines(o.deadLetterPath)).toMatchObject([{ reason: "not a valid event", event: "{not json" }])
    expect(state.invalid).toBe(1)
  })

  it("a slow backend: entries waiting in the dispatcher are kept alive, not reclaimed and delivered twice", async () => {
    const bus = busOptions({ claimIdleMs: 600 })
    const started = Date.now()
    const accepted: Array<string> = []
    const receiver = await startReceiver((r) => {
      if (Date.now() - started < 2500) return 503
      for (const e of (r.body as { events: Array<{ event: string; metadata: { request_id: string } }> }).events) {
        if (e.event === "start") accepted.push(e.metadata.request_id)
      }
      return 200
    })
    try {
      const events = await publish(bus, 60)
      const d = await fileDispatcher(
        bus,
        dispatcherOptions("slow", {
          group: "slow",
          batchSize: 10,
          buffer: 40,
          keepAliveMs: 200,
          retryBaseMs: 200,
          retryMaxMs: 400
        }),
        lunaryBackend(`${receiver.url}/ingest`, Redacted.make("k")).pipe(Layer.provide(NodeHttpClient.layerUndici))
      )
      const state = d.get(Dispatcher.DispatcherState)
      await waitFor(() => state.delivered >= 60, 30_000, "60 delivered")
      await d.close()
      expect(accepted.sort()).toEqual(events.map((e) => e.request_id).sort())
      expect(state.redelivered).toBe(0)
    } finally {
      await receiver.close()
    }
  })

  it.skipIf(!built)(
    "a dispatcher killed with SIGKILL mid-batch, then another one started: every event is delivered (duplicates counted)",
    async () => {
      const bus = busOptions()
      const events = await publish(bus, 400)
      const all = new Set(events.map((e) => e.request_id))
      const idsOf = (body: unknown) =>
        (body as { events: Array<{ event: string; metadata: { request_id: string } }> }).events
          .filter((e) => e.event === "start")
          .map((e) => e.metadata.request_id)
      const accepted: Array<string> = []
      // the first receiver accepts two batches, then never answers: the dispatcher hangs in the middle of a batch
      const first = await startReceiver((r, i) => {
        if (i >= 2) return undefined
        accepted.push(...idsOf(r.body))
        return 200
      })
      const second = await startReceiver((r) => {
        accepted.push(...idsOf(r.body))
        return 200
      })
      const start = (endpoint: string, name: string) => {
        const child = spawn(process.execPath, [
          bin,
          "dispatcher",
          "--service",
          "lunary",
          "--endpoint",
          endpoint,
          "--api-key",
          "test-key",
          "--batch-size",
          "50",
          "--flush-interval",
          "50ms",
          "--buffer",
          "100",
          "--consumer-name",
          name,
          "--claim-idle",
          "1s",
          "--redis-url",
          redisUrl!,
          "--stream-key",
          bus.streamKey,
          "--dead-letter",
          join(dir, `${name}.dead.jsonl`)
        ], {
          cwd: dir,
          env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", LLM_PROXY_EVENT_BUS: "redis-streams" }
        })
        let out = ""
        child.stdout.on("data", (c: Buffer) => (out += c.toString()))
        child.stderr.on("data", (c: Buffer) => (out += c.toString()))
        return { child, output: () => out }
      }
      const exited = (child: ChildProcess) =>
        new Promise<number | null>((resolve) => child.once("exit", (code) => resolve(code)))
      try {
        const d1 = start(`${first.url}/v1/runs/ingest`, "victim")
        await waitFor(() => first.received.length >= 3, 20_000, "a hanging batch")
        const gone = exited(d1.child)
        d1.child.kill("SIGKILL")
        await gone
        expect(accepted.length).toBe(100)
        const pending = (await redis.xpending(bus.streamKey, "dispatcher-lunary")) as [number]
        expect(pending[0]).toBeGreaterThan(0)

        const d2 = start(`${second.url}/v1/runs/ingest`, "survivor")
        await waitFor(() => [...all].every((id) => accepted.includes(id)), 30_000, "every event after the restart")
        await waitFor(
          async () => ((await redis.xpending(bus.streamKey, "dispatcher-lunary")) as [number])[0] === 0,
          10_000,
          "no pending"
        )
        const done = exited(d2.child)
        d2.child.kill("SIGTERM")
        expect(await done).toBe(0)
        const drained = d2.output().split("\n").filter((l) => l.includes("dispatcher drained")).map((l) =>
          JSON.parse(l)
        )
        expect(drained).toHaveLength(1)
        const redelivered = Number(drained[0].annotations.redelivered)
        const duplicates = accepted.length - all.size
        // the entries the victim had read but not acknowledged came back to the survivor
        expect(redelivered).toBeGreaterThan(0)
        expect(duplicates).toBeLessThanOrEqual(redelivered)
      } finally {
        await first.close()
        await second.close()
      }
    },
    60_000
  )
})
