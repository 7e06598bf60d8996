/**
 * The AuditLog writer on its own: batching and order, nothing accepted lost on shutdown, a bounded queue,
 * sink failures retried and isolated, bounded fields, and the JSONL file sink across restarts.
 */
import { describe, expect, it } from "@effect/vitest"
import { Deferred, Effect, Exit, Layer, Ref, Scope } from "effect"
import { appendFileSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll } from "vitest"
import * as AuditLog from "../../src/audit/AuditLog.js"
import { fileLine, fileSink } from "../../src/audit/sinks.js"
import type { AuditEntry, AuditRecord } from "../../src/domain/audit.js"

const entry = (i: number, fields: Partial<AuditEntry> = {}): AuditEntry => ({
  action: "project.list",
  actor: "management_api",
  outcome: "success",
  requestId: `req-${i}`,
  ...fields
})

/** A sink that keeps what it is given; `gate` (when set) holds each write until it is opened. */
const memorySink = (options: { gate?: Deferred.Deferred<void>; delay?: number } = {}) =>
  Effect.gen(function*() {
    const batches = yield* Ref.make<Array<ReadonlyArray<AuditRecord>>>([])
    const sink: AuditLog.AuditSink = {
      name: "memory",
      queryable: true,
      write: (batch) =>
        Effect.gen(function*() {
          if (options.gate) yield* Deferred.await(options.gate)
          if (options.delay) yield* Effect.sleep(options.delay)
          yield* Ref.update(batches, (b) => [...b, batch])
        })
    }
    return { sink, batches, records: Effect.map(Ref.get(batches), (b) => b.flat()) }
  })

const logWith = (sinks: ReadonlyArray<AuditLog.AuditSink>, options: AuditLog.AuditLogOptions = {}) =>
  Effect.gen(function*() {
    const scope = yield* Scope.make()
    const ctx = yield* Layer.buildWithScope(
      AuditLog.layerWith(options).pipe(Layer.provide(Layer.succeed(AuditLog.AuditSinks, sinks))),
      scope
    )
    const log = ctx.unsafeMap.get(AuditLog.AuditLog.key) as AuditLog.AuditLogShape
    return { log, close: Scope.close(scope, Exit.void) }
  })

describe("AuditLog", () => {
  it.live("writes events in the order they were recorded, with ids and timestamps, in batches", () =>
    Effect.gen(function*() {
      const memory = yield* memorySink()
      const { close, log } = yield* logWith([memory.sink], { batchSize: 50 })
      for (let i = 0; i < 120; i++) yield* log.record(entry(i))
      yield* log.flush
      const records = yield* memory.records
      expect(records.map((r) => r.requestId)).toEqual(Array.from({ length: 120 }, (_, i) => `req-${i}`))
      expect(new Set(records.map((r) => r.id)).size).toBe(120)
      // UUIDv7, increasing in recording order.
      expect(records.every((r) => /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(r.id)))
        .toBe(true)
      expect([...records.map((r) => r.id)].sort()).toEqual(records.map((r) => r.id))
      expect(records.every((r) => Math.abs(Date.parse(r.timestamp) - Date.now()) < 60_000)).toBe(true)
      expect(Math.max(...(yield* Ref.get(memory.batches)).map((b) => b.length))).toBeLessThanOrEqual(50)
      expect(yield* log.stats).toEqual({
        accepted: 120,
        written: 120,
        dropped: 0,
        failed: 0,
        denials: 0,
        overflowed: 0
      })
      expect(log.queryable).toBe(true)
      yield* close
    }))

  it.live("closing the scope writes every accepted event first, even with a slow sink", () =>
    Effect.gen(function*() {
      const memory = yield* memorySink({ delay: 5 })
      const { close, log } = yield* logWith([memory.sink], { batchSize: 100 })
      for (let i = 0; i < 3000; i++) yield* log.record(entry(i))
      yield* close
      const records = yield* memory.records
      expect(records.length).toBe(3000)
      expect(records.at(-1)?.requestId).toBe("req-2999")
      // After shutdown nothing more is taken.
      yield* log.record(entry(9999))
      expect(log.unsafeRecord(entry(9999))).toBe(false)
      expect((yield* memory.records).length).toBe(3000)
    }))

  it.live("the queue is bounded: unsafeRecord refuses (and counts) when it is full, record waits for room", () =>
    Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      const memory = yield* memorySink({ gate })
      const { close, log } = yield* logWith([memory.sink], { capacity: 4, batchSize: 1 })
      const accepted = Array.from({ length: 10 }, (_, i) => log.unsafeRecord(entry(i)))
      expect(accepted.filter(Boolean).length).toBe(4)
      // The writer takes one (and is held at the gate); that frees one place, and no more.
      yield* Effect.sleep(20)
      accepted.push(...Array.from({ length: 3 }, (_, i) => log.unsafeRecord(entry(10 + i))))
      expect(accepted.slice(10)).toEqual([true, false, false])
      const waiting = yield* Effect.fork(log.record(entry(100)))
      yield* Effect.sleep(20)
      expect(waiting.unsafePoll()).toBeNull()
      yield* Deferred.succeed(gate, undefined)
      yield* waiting.await
      yield* log.flush
      const stats = yield* log.stats
      expect(stats.dropped).toBe(accepted.filter((a) => !a).length)
      expect((yield* memory.records).map((r) => r.requestId)).toEqual([
        ...accepted.flatMap((ok, i) => (ok ? [`req-${i}`] : [])),
        "req-100"
      ])
      yield* close
    }))

  it.live("a failing sink is retried, then its loss is counted; the other sink still gets every event", () =>
    Effect.gen(function*() {
      const attempts = yield* Ref.make(0)
      const flaky: AuditLog.AuditSink = {
        name: "flaky",
        queryable: false,
        write: () =>
          Effect.flatMap(
            Ref.updateAndGet(attempts, (n) => n + 1),
            (n) => n <= 2 ? Effect.fail(new AuditLog.AuditSinkError({ message: "transient" })) : Effect.void
          )
      }
      const broken: AuditLog.AuditSink = {
        name: "broken",
        queryable: false,
        write: () => Effect.fail(new AuditLog.AuditSinkError({ message: "down" }))
      }
      const memory = yield* memorySink()
      const { close, log } = yield* logWith([flaky, broken, memory.sink], { batchSize: 100 })
      for (let i = 0; i < 3; i++) yield* log.record(entry(i))
      yield* log.flush
      expect(yield* Ref.get(attempts)).toBeGreaterThanOrEqual(3)
      expect((yield* memory.records).length).toBe(3)
      const stats = yield* log.stats
      expect(stats.failed).toBe(3)
      yield* close
    }).pipe(Effect.timeout("20 seconds")))

  it.live("the writer lingers to gather a batch; a flush or shutdown cuts the linger short", () =>
    Effect.gen(function*() {
      const memory = yield* memorySink()
      const { close, log } = yield* logWith([memory.sink], { lingerMs: 300 })
      // Three events a few ms apart land in one batch.
      for (let i = 0; i < 3; i++) {
        yield* log.record(entry(i))
        yield* Effect.sleep(5)
      }
      while ((yield* memory.records).length < 3) yield* Effect.sleep(20)
      expect((yield* Ref.get(memory.batches)).map((b) => b.length)).toEqual([3])
      // With a linger far longer than the test's timeout, a flush still returns, and so does shutdown.
      const slow = yield* logWith([memory.sink], { lingerMs: 600_000 })
      yield* slow.log.record(entry(10))
      yield* Effect.sleep(10) // the writer is now lingering
      yield* slow.log.flush
      yield* slow.log.record(entry(11))
      yield* Effect.sleep(10)
      yield* slow.close
      expect((yield* memory.records).map((r) => r.requestId)).toEqual(["req-0", "req-1", "req-2", "req-10", "req-11"])
      yield* close
    }).pipe(Effect.timeout("20 seconds")))

  it.live("client-controlled fields are bounded", () =>
    Effect.gen(function*() {
      const memory = yield* memorySink()
      const { close, log } = yield* logWith([memory.sink])
      yield* log.record(
        entry(0, { userAgent: "x".repeat(10_000), path: "/p".repeat(5_000), reason: "r".repeat(5_000) })
      )
      yield* log.flush
      const [r] = yield* memory.records
      expect(r?.userAgent?.length).toBe(512)
      expect(r?.path?.length).toBe(2048)
      expect(r?.reason?.length).toBe(1024)
      yield* close
    }))

  describe("aggregated denials", () => {
    const denial = (
      clientIp: string,
      reason: string,
      requestId: string,
      fields: Partial<AuditEntry> = {}
    ): AuditEntry => ({
      action: "token.validate",
      actor: "proxy",
      outcome: "denied",
      reason,
      clientIp,
      requestId,
      method: "POST",
      path: "/v1/chat/completions",
      details: { status: 401 },
      ...fields
    })
    const MINUTE = 60_000
    const T0 = Date.parse("2030-01-01T10:00:00.000Z")

    it.live("one event per (action, reason, client IP, token, project, minute) with a count; the first request's fields", () =>
      Effect.gen(function*() {
        let now = T0 + 1_000
        const memory = yield* memorySink()
        const { close, log } = yield* logWith([memory.sink], { now: () => now })
        for (let i = 0; i < 1000; i++) log.recordDenial(denial("203.0.113.1", "token_not_found", `a-${i}`))
        for (let i = 0; i < 5; i++) log.recordDenial(denial("203.0.113.2", "token_not_found", `b-${i}`))
        for (let i = 0; i < 3; i++) log.recordDenial(denial("203.0.113.1", "invalid_token", `c-${i}`))
        log.recordDenial(denial("203.0.113.1", "token_inactive", "d-0", { tokenId: "t-1" }))
        log.recordDenial(denial("203.0.113.1", "token_inactive", "e-0", { tokenId: "t-2" }))
        now = T0 + 59_999
        log.recordDenial(denial("203.0.113.1", "token_not_found", "a-last"))
        now = T0 + MINUTE + 5
        log.recordDenial(denial("203.0.113.1", "token_not_found", "f-0"))
        log.recordDenial(denial("203.0.113.1", "token_not_found", "f-1"))
        yield* log.flush
        const records = yield* memory.records
        const summary = records.map((r) => [r.clientIp, r.reason, r.tokenId, r.count, r.requestId, r.timestamp])
        expect(summary).toEqual([
          ["203.0.113.1", "token_not_found", undefined, 1001, "a-0", "2030-01-01T10:00:01.000Z"],
          ["203.0.113.2", "token_not_found", undefined, 5, "b-0", "2030-01-01T10:00:01.000Z"],
          ["203.0.113.1", "invalid_token", undefined, 3, "c-0", "2030-01-01T10:00:01.000Z"],
          ["203.0.113.1", "token_inactive", "t-1", 1, "d-0", "2030-01-01T10:00:01.000Z"],
          ["203.0.113.1", "token_inactive", "t-2", 1, "e-0", "2030-01-01T10:00:01.000Z"],
          ["203.0.113.1", "token_not_found", undefined, 2, "f-0", "2030-01-01T10:01:00.005Z"]
        ])
        expect(records[0]!.details).toEqual({ status: 401, last_seen: "2030-01-01T10:00:59.999Z" })
        expect(records[3]!.details).toEqual({ status: 401 })
        expect(yield* log.stats).toMatchObject({ accepted: 6, written: 6, denials: 1013, overflowed: 0 })
        yield* close
      }))

    it.live("a minute that ended is written without a flush; shutdown writes what is still counting", () =>
      Effect.gen(function*() {
        let now = T0
        const memory = yield* memorySink()
        const { close, log } = yield* logWith([memory.sink], { now: () => now, denialTickMs: 20 })
        log.recordDenial(denial("198.51.100.7", "invalid_token", "x-0"))
        log.recordDenial(denial("198.51.100.7", "invalid_token", "x-1"))
        yield* Effect.sleep(100)
        expect(yield* memory.records).toEqual([])
        now = T0 + MINUTE
        log.recordDenial(denial("198.51.100.7", "invalid_token", "y-0"))
        while ((yield* memory.records).length < 1) yield* Effect.sleep(20)
        expect((yield* memory.records).map((r) => [r.requestId, r.count])).toEqual([["x-0", 2]])
        yield* close
        expect((yield* memory.records).map((r) => [r.requestId, r.count])).toEqual([["x-0", 2], ["y-0", 1]])
        // After shutdown nothing more is counted.
        log.recordDenial(denial("198.51.100.7", "invalid_token", "z-0"))
        expect(yield* log.stats).toMatchObject({ denials: 3 })
      }).pipe(Effect.timeout("20 seconds")))

    it.live("bounded: beyond maxPendingDenials, new addresses fold into one overflow event per reason", () =>
      Effect.gen(function*() {
        const memory = yield* memorySink()
        const { close, log } = yield* logWith([memory.sink], { maxPendingDenials: 3 })
        for (let i = 0; i < 10; i++) {
          log.recordDenial(
            denial(`192.0.2.${i}`, "token_not_found", `r-${i}`, {
              userAgent: "u".repeat(1000),
              path: "/v1/" + "p".repeat(3000)
            })
          )
        }
        log.recordDenial(denial("192.0.2.0", "token_not_found", "again"))
        yield* log.flush
        const records = yield* memory.records
        expect(records.map((r) => [r.clientIp, r.count])).toEqual([
          ["192.0.2.0", 2],
          ["192.0.2.1", 1],
          ["192.0.2.2", 1],
          [undefined, 7]
        ])
        const overflow = records[3]!
        expect(overflow).toMatchObject({
          action: "token.validate",
          reason: "token_not_found",
          details: { status: 401, overflow: true }
        })
        expect(overflow.requestId).toBeUndefined()
        expect(overflow.userAgent).toBeUndefined()
        // Client-chosen strings kept in aggregated events are short.
        expect(records[1]!.userAgent).toHaveLength(256)
        expect(records[1]!.path).toHaveLength(256)
        expect(yield* log.stats).toMatchObject({ denials: 11, overflowed: 7 })
        yield* close
      }))
  })

  it.effect("disabled: records nothing", () =>
    Effect.gen(function*() {
      const log = yield* AuditLog.AuditLog
      yield* log.record(entry(0))
      expect(log.unsafeRecord(entry(1))).toBe(false)
      log.recordDenial(entry(2, { outcome: "denied" }))
      yield* log.flush
      expect(log.enabled).toBe(false)
      expect(yield* log.stats).toEqual({ accepted: 0, written: 0, dropped: 0, failed: 0, denials: 0, overflowed: 0 })
    }).pipe(Effect.provide(AuditLog.layerDisabled(true))))
})

describe("JSONL file sink", () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-audit-file-"))
  afterAll(() => rmSync(dir, { recursive: true, force: true }))

  const runOnce = (path: string, entries: ReadonlyArray<AuditEntry>) =>
    Effect.gen(function*() {
      const sink = yield* fileSink(path)
      const { close, log } = yield* logWith([sink])
      for (const e of entries) yield* log.record(e)
      yield* close
    }).pipe(Effect.scoped)

  it.live("appends one JSON object per line, survives restarts without truncating, mode 0600", () =>
    Effect.gen(function*() {
      const path = join(dir, "nested", "dir", "audit.log")
      yield* runOnce(path, [
        entry(1),
        entry(2, { details: { project_name: "a" }, projectId: "p-1", clientIp: "127.0.0.1" })
      ])
      const first = readFileSync(path, "utf8")
      yield* runOnce(path, [entry(3)])
      const second = readFileSync(path, "utf8")
      expect(second.startsWith(first)).toBe(true)
      const lines = second.trimEnd().split("\n").map((l) => JSON.parse(l))
      expect(lines.map((l) => l.request_id)).toEqual(["req-1", "req-2", "req-3"])
      expect(lines[1]).toMatchObject({
        action: "project.list",
        actor: "management_api",
        result: "success",
        project_id: "p-1",
        client_ip: "127.0.0.1",
        details: { project_name: "a" }
      })
      expect(lines[0].details).toBeUndefined()
      expect(Object.keys(lines[0])).toEqual(["id", "timestamp", "action", "actor", "result", "request_id"])
      expect(statSync(path).mode & 0o777).toBe(0o600)
    }))

  it.live("a partial last line left by a crash does not swallow the next event", () =>
    Effect.gen(function*() {
      const path = join(dir, "crashed.log")
      writeFileSync(path, fileLine({ ...entry(1), id: "a", timestamp: new Date().toISOString() }))
      appendFileSync(path, "{\"id\":\"half")
      yield* runOnce(path, [entry(2)])
      const lines = readFileSync(path, "utf8").trimEnd().split("\n")
      expect(lines).toHaveLength(3)
      expect(JSON.parse(lines[2]!).request_id).toBe("req-2")
    }))

  it.effect("an unwritable path fails with a clear error", () =>
    Effect.gen(function*() {
      const blocker = join(dir, "not-a-dir")
      writeFileSync(blocker, "")
      const error = yield* Effect.flip(fileSink(join(blocker, "audit.log")))
      expect(error._tag).toBe("AuditSinkError")
      expect(error.message).toBe(`cannot open the audit log file ${join(blocker, "audit.log")}`)
    }).pipe(Effect.scoped))
})
