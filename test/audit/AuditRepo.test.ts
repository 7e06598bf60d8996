/**
 * The audit_events repository and retention, the same tests on SQLite (temp file) and PostgreSQL (fresh
 * database; needs DATABASE_URL): filters, substring search, time range, pagination, newest-first order, pruning.
 * Each test keeps to its own events through a unique actor.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { randomUUID } from "node:crypto"
import * as AuditRepo from "../../src/audit/AuditRepo.js"
import { layer as retentionLayer, pruneOnce } from "../../src/audit/retention.js"
import { uuidv7 } from "../../src/crypto/uuidv7.js"
import { type AuditQuery, type AuditRecord, validateAuditQuery } from "../../src/domain/audit.js"
import type { Dialect } from "../../src/store/migrations.js"
import { freshStore } from "../store/backends.js"
import { postgresUrl } from "../support/databases.js"

const T0 = Date.parse("2021-03-04T05:06:07.089Z")
const at = (seconds: number) => T0 + seconds * 1000

const event = (actor: string, seconds: number, fields: Partial<AuditRecord> = {}): AuditRecord => ({
  id: uuidv7(at(seconds)),
  timestamp: new Date(at(seconds)).toISOString(),
  action: "project.create",
  actor,
  outcome: "success",
  ...fields
})

const query = (params: Parameters<typeof validateAuditQuery>[0]): AuditQuery => {
  const q = validateAuditQuery(params)
  if (q._tag === "Left") throw new Error(q.left)
  return q.right
}

const list = (params: Parameters<typeof validateAuditQuery>[0]) =>
  Effect.flatMap(AuditRepo.AuditRepo, (repo) => repo.list(query(params)))

const insert = (records: ReadonlyArray<AuditRecord>) =>
  Effect.flatMap(AuditRepo.AuditRepo, (repo) => repo.insert(records))

const repoSuite = (dialect: Dialect) =>
  layer(
    AuditRepo.layer(dialect).pipe(Layer.provideMerge(freshStore(dialect))),
    { excludeTestServices: true, timeout: "60 seconds" }
  )((it) => {
    it.effect("stores every column and reads it back; get of an unknown id is None", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        const full = event(actor, 0, {
          action: "token.create",
          outcome: "denied",
          projectId: randomUUID(),
          tokenId: randomUUID(),
          requestId: "req-1",
          correlationId: "corr-1",
          clientIp: "203.0.113.9",
          method: "POST",
          path: "/manage/tokens",
          userAgent: "curl/8",
          reason: "cannot create tokens for inactive projects",
          details: { duration_minutes: 60, nested: { a: [1, 2] } }
        })
        const aggregated = { ...full, count: 7 }
        const bare = event(actor, 1)
        yield* insert([aggregated, bare])
        const repo = yield* AuditRepo.AuditRepo
        const got = Option.getOrThrow(yield* repo.get(full.id))
        expect(got).toEqual({
          id: full.id,
          timestamp: full.timestamp,
          action: "token.create",
          actor,
          outcome: "denied",
          projectId: full.projectId,
          tokenId: full.tokenId,
          requestId: "req-1",
          correlationId: "corr-1",
          clientIp: "203.0.113.9",
          method: "POST",
          path: "/manage/tokens",
          userAgent: "curl/8",
          reason: "cannot create tokens for inactive projects",
          metadata: JSON.stringify(full.details),
          count: 7
        })
        const minimal = Option.getOrThrow(yield* repo.get(bare.id))
        expect(minimal).toMatchObject({ projectId: null, tokenId: null, metadata: null, reason: null, count: 1 })
        expect(Option.isNone(yield* repo.get(randomUUID()))).toBe(true)
      }))

    it.effect("exact filters, each alone and combined", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        const project = randomUUID()
        const token = randomUUID()
        yield* insert([
          event(actor, 0, {
            action: "project.create",
            projectId: project,
            clientIp: "10.0.0.1",
            method: "POST",
            path: "/manage/projects"
          }),
          event(actor, 1, {
            action: "token.create",
            projectId: project,
            tokenId: token,
            clientIp: "10.0.0.2",
            method: "POST",
            path: "/manage/tokens",
            requestId: "r-2",
            correlationId: "c-2"
          }),
          event(actor, 2, {
            action: "token.revoke",
            projectId: project,
            tokenId: token,
            outcome: "failure",
            clientIp: "10.0.0.2",
            method: "DELETE",
            path: `/manage/tokens/${token}`
          }),
          event(actor, 3, { action: "project.list", clientIp: "10.0.0.1", method: "GET", path: "/manage/projects" })
        ])
        const actions = (r: { events: ReadonlyArray<{ action: string }> }) => r.events.map((e) => e.action)
        expect(actions(yield* list({ actor }))).toEqual([
          "project.list",
          "token.revoke",
          "token.create",
          "project.create"
        ])
        expect(actions(yield* list({ actor, action: "token.create" }))).toEqual(["token.create"])
        expect(actions(yield* list({ actor, project_id: project }))).toEqual([
          "token.revoke",
          "token.create",
          "project.create"
        ])
        expect(actions(yield* list({ actor, token_id: token }))).toEqual(["token.revoke", "token.create"])
        expect(actions(yield* list({ actor, outcome: "failure" }))).toEqual(["token.revoke"])
        expect(actions(yield* list({ actor, client_ip: "10.0.0.1" }))).toEqual(["project.list", "project.create"])
        expect(actions(yield* list({ actor, method: "delete" }))).toEqual(["token.revoke"])
        expect(actions(yield* list({ actor, path: "/manage/projects" }))).toEqual(["project.list", "project.create"])
        expect(actions(yield* list({ actor, request_id: "r-2" }))).toEqual(["token.create"])
        expect(actions(yield* list({ actor, correlation_id: "c-2" }))).toEqual(["token.create"])
        expect(actions(yield* list({ actor, client_ip: "10.0.0.2", action: "token.revoke", outcome: "failure" })))
          .toEqual(["token.revoke"])
        expect(actions(yield* list({ actor, client_ip: "10.0.0.2", action: "project.list" }))).toEqual([])
        // Exact means exact: a prefix is not a match.
        expect(actions(yield* list({ actor, action: "token" }))).toEqual([])
        expect((yield* list({ actor: `${actor}-other` })).total).toBe(0)
      }))

    it.effect("search is a case-insensitive substring over ids, IP, action, actor, method, path, reason and metadata; % and _ are literal", () =>
      Effect.gen(function*() {
        const tag = randomUUID().slice(0, 8)
        const actor = `Actor-${tag}`
        yield* insert([
          event(actor, 0, { action: "token.revoke" }),
          event(actor, 1, { reason: `Project is INACTIVE ${tag}` }),
          event(actor, 2, { details: { project_name: `Billing ${tag}` } }),
          event(actor, 3, { path: `/manage/tokens/${tag}-x` }),
          event(actor, 4, { requestId: `req-${tag}` }),
          event(actor, 5, { clientIp: "198.51.100.77" }),
          event(actor, 6, { reason: "100% done_now" }),
          event(actor, 7, { reason: "1000 doneXnow" })
        ])
        const seconds = (r: { events: ReadonlyArray<{ timestamp: string }> }) =>
          r.events.map((e) => (Date.parse(e.timestamp) - T0) / 1000)
        expect(seconds(yield* list({ actor, search: "REVOKE" }))).toEqual([0])
        expect(seconds(yield* list({ actor, search: "inactive" }))).toEqual([1])
        expect(seconds(yield* list({ actor, search: "billing" }))).toEqual([2])
        expect(seconds(yield* list({ actor, search: `${tag}-x` }))).toEqual([3])
        expect(seconds(yield* list({ actor, search: `req-${tag}` }))).toEqual([4])
        expect(seconds(yield* list({ actor, search: "100.77" }))).toEqual([5])
        expect(seconds(yield* list({ actor, search: "100%" }))).toEqual([6])
        expect(seconds(yield* list({ actor, search: "done_now" }))).toEqual([6])
        // The actor itself is searched too, so every event matches its own actor.
        expect((yield* list({ search: actor.toLowerCase() })).total).toBe(8)
        expect((yield* list({ actor, search: "no such thing" })).total).toBe(0)
      }))

    it.effect("time range: start and end inclusive, with any RFC 3339 offset", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        yield* insert([0, 60, 120, 180].map((s) => event(actor, s)))
        const seconds = (r: { events: ReadonlyArray<{ timestamp: string }> }) =>
          r.events.map((e) => (Date.parse(e.timestamp) - T0) / 1000)
        const iso = (s: number) => new Date(at(s)).toISOString()
        expect(seconds(yield* list({ actor, start_time: iso(60) }))).toEqual([180, 120, 60])
        expect(seconds(yield* list({ actor, end_time: iso(120) }))).toEqual([120, 60, 0])
        expect(seconds(yield* list({ actor, start_time: iso(60), end_time: iso(120) }))).toEqual([120, 60])
        expect(seconds(yield* list({ actor, start_time: iso(61), end_time: iso(119) }))).toEqual([])
        // 05:07:07.089Z written as +02:00 local time.
        expect(seconds(yield* list({ actor, start_time: "2021-03-04T07:07:07.089+02:00" }))).toEqual([180, 120, 60])
      }))

    it.effect("pagination: newest first, consistent totals, ordered within the same millisecond", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        // Five events in one millisecond and two more: the ids keep the recording order.
        const same = Array.from({ length: 5 }, (_, i) => event(actor, 10, { requestId: `same-${i}` }))
        yield* insert([event(actor, 0, { requestId: "first" }), ...same, event(actor, 20, { requestId: "last" })])
        const ids = (r: { events: ReadonlyArray<{ requestId: string | null }> }) => r.events.map((e) => e.requestId)
        const page1 = yield* list({ actor, page_size: "3" })
        expect(page1.total).toBe(7)
        expect(ids(page1)).toEqual(["last", "same-4", "same-3"])
        expect(ids(yield* list({ actor, page_size: "3", page: "2" }))).toEqual(["same-2", "same-1", "same-0"])
        expect(ids(yield* list({ actor, page_size: "3", page: "3" }))).toEqual(["first"])
        const beyond = yield* list({ actor, page_size: "3", page: "4" })
        expect(beyond).toEqual({ events: [], total: 7, totalExact: true, hasNext: false })
      }))

    it.effect("pruning deletes only events older than the cutoff, in bounded batches", () =>
      Effect.gen(function*() {
        const repo = yield* AuditRepo.AuditRepo
        const actor = `actor-${randomUUID()}`
        const old = Array.from({ length: 7 }, (_, i) => event(actor, i, { action: "old" }))
        const recent = [event(actor, 1000, { action: "recent" })]
        yield* insert([...old, ...recent])
        const cutoff = new Date(at(500)).toISOString()
        // Other tests' events (2021) are older too, so count only ours.
        const ours = () => Effect.map(list({ actor, page_size: "100" }), (r) => r.events.map((e) => e.action))
        const first = yield* repo.pruneBefore(cutoff, 3)
        expect(first).toBe(3)
        expect((yield* ours()).length).toBeGreaterThanOrEqual(5)
        while ((yield* repo.pruneBefore(cutoff, 3)) === 3) {
          // keep going until a short batch
        }
        expect(yield* ours()).toEqual(["recent"])
      }))

    it.effect("retention: pruneOnce removes everything past the retention days and nothing newer", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        const now = Date.now()
        const daysAgo = (d: number) => ({
          ...event(actor, 0),
          id: uuidv7(now - d * 86_400_000),
          timestamp: new Date(now - d * 86_400_000).toISOString()
        })
        yield* insert([daysAgo(40), daysAgo(31), daysAgo(29), daysAgo(1), daysAgo(0)])
        yield* pruneOnce(30, 2)
        const left = (yield* list({ actor })).events.map((e) =>
          Math.round((now - Date.parse(e.timestamp)) / 86_400_000)
        )
        expect(left).toEqual([0, 1, 29])
      }))

    it.effect("retention: the background fiber prunes at start and keeps pruning", () =>
      Effect.gen(function*() {
        const actor = `actor-${randomUUID()}`
        const old = () => ({
          ...event(actor, 0),
          id: uuidv7(Date.now() - 10 * 86_400_000),
          timestamp: new Date(Date.now() - 10 * 86_400_000).toISOString()
        })
        const fresh = { ...event(actor, 0), id: uuidv7(), timestamp: new Date().toISOString() }
        yield* insert([old(), fresh])
        const count = () => Effect.map(list({ actor }), (r) => r.total)
        yield* Effect.gen(function*() {
          yield* Layer.build(retentionLayer({ days: 7, interval: "50 millis", batchSize: 10 }))
          while ((yield* count()) !== 1) yield* Effect.sleep("20 millis")
          // A later old event is pruned by a later run.
          yield* insert([old()])
          while ((yield* count()) !== 1) yield* Effect.sleep("20 millis")
        }).pipe(Effect.scoped, Effect.timeout("20 seconds"))
        expect((yield* list({ actor })).events.map((e) => e.id)).toEqual([fresh.id])
      }))
  })

describe("AuditRepo on SQLite", () => repoSuite("sqlite"))

describe.skipIf(!postgresUrl)(
  postgresUrl ? "AuditRepo on PostgreSQL" : "AuditRepo on PostgreSQL (skipped: DATABASE_URL not set)",
  () => repoSuite("postgres")
)
