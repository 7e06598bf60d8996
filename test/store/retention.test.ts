/**
 * Token retention (TOKEN_RETENTION_DAYS): which tokens go, which stay, that their usage rollups and audit events
 * stay, batching, and the background fiber — on SQLite and PostgreSQL (when DATABASE_URL is set).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it, layer } from "@effect/vitest"
import { ConfigProvider, Effect, Either, Layer } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"
import { firstPage } from "../../src/store/keyset.js"
import type { Dialect } from "../../src/store/migrations.js"
import { layer as tokenRetentionLayer, pruneTokensOnce } from "../../src/store/retention.js"
import { Store } from "../../src/store/Store.js"
import { postgresUrl } from "../support/databases.js"
import { freshStore } from "./backends.js"

const DAY = 86_400_000
const daysAgo = (d: number) => new Date(Date.now() - d * DAY).toISOString()

describe("TOKEN_RETENTION_DAYS", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSync(
      Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )
  it("defaults to 30 days; 0 keeps tokens forever; anything else but a whole number of days is refused", () => {
    const days = (env: Record<string, string>) => Either.map(load(env), (c) => c.tokenRetentionDays)
    expect(days({})).toEqual(Either.right(30))
    expect(days({ TOKEN_RETENTION_DAYS: "0" })).toEqual(Either.right(0))
    expect(days({ TOKEN_RETENTION_DAYS: "365" })).toEqual(Either.right(365))
    for (const bad of ["-1", "30d", "1.5"]) {
      expect(Either.mapLeft(load({ TOKEN_RETENTION_DAYS: bad }), formatConfigError)).toEqual(
        Either.left(`invalid configuration: TOKEN_RETENTION_DAYS: expected a non-negative integer, got "${bad}"`)
      )
    }
  })
})

const suite = (dialect: Dialect) =>
  layer(freshStore(dialect), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    /** A project with one token per case, inserted as stored (states a test cannot reach through the API in time). */
    const seed = Effect.gen(function*() {
      const sql = yield* SqlClient.SqlClient
      const projectId = randomUUID()
      const b = (v: boolean) => (dialect === "sqlite" ? (v ? 1 : 0) : v)
      yield* sql`INSERT INTO projects ${
        sql.insert({
          id: projectId,
          name: `retention-${projectId}`,
          api_key: "sk-x",
          api_key_hint: "sk-x",
          provider: "openai",
          is_active: b(true),
          created_at: daysAgo(400),
          updated_at: daysAgo(400)
        })
      }`
      const cases = {
        expiredLongAgo: { expires_at: daysAgo(31), is_active: true, deactivated_at: null },
        expiredRecently: { expires_at: daysAgo(29), is_active: true, deactivated_at: null },
        active: { expires_at: daysAgo(-10), is_active: true, deactivated_at: null },
        neverExpires: { expires_at: null, is_active: true, deactivated_at: null },
        revokedLongAgo: { expires_at: daysAgo(-300), is_active: false, deactivated_at: daysAgo(45) },
        revokedRecently: { expires_at: daysAgo(-300), is_active: false, deactivated_at: daysAgo(2) },
        // imported without a revocation time: kept until its expiry is old enough
        revokedWithoutTime: { expires_at: daysAgo(-300), is_active: false, deactivated_at: null },
        revokedAndExpiredLongAgo: { expires_at: daysAgo(90), is_active: false, deactivated_at: daysAgo(100) }
      } as const
      const ids = Object.fromEntries(Object.keys(cases).map((k) => [k, randomUUID()])) as Record<
        keyof typeof cases,
        string
      >
      yield* sql`INSERT INTO tokens ${
        sql.insert(
          Object.entries(cases).map(([name, c]) => ({
            id: ids[name as keyof typeof cases],
            token_hash: randomBytes(32).toString("hex"),
            token_hint: "sk-abcd****wxyz",
            project_id: projectId,
            expires_at: c.expires_at,
            is_active: b(c.is_active),
            deactivated_at: c.deactivated_at,
            created_at: daysAgo(400)
          }))
        )
      }`
      return { projectId, ids }
    })

    const remaining = (projectId: string) =>
      Effect.gen(function*() {
        const store = yield* Store
        const page = yield* store.listTokens({ projectId, now: new Date().toISOString() }, {
          limit: 100,
          position: firstPage
        })
        return page.rows.map((t) => t.id).sort()
      })

    it.effect("deletes tokens expired or revoked more than N days ago, in batches; keeps the rest", () =>
      Effect.gen(function*() {
        const { projectId, ids } = yield* seed
        // Several batches of 1: the loop runs until a short batch.
        expect(yield* pruneTokensOnce(30, 1, "1 millis")).toBeGreaterThanOrEqual(3)
        expect(yield* remaining(projectId)).toEqual(
          [ids.expiredRecently, ids.active, ids.neverExpires, ids.revokedRecently, ids.revokedWithoutTime].sort()
        )
        // Nothing left to do: a second run deletes nothing.
        expect(yield* pruneTokensOnce(30, 1, "1 millis")).toBe(0)
        // A shorter retention takes the recent ones too.
        yield* pruneTokensOnce(1, 100, "1 millis")
        expect(yield* remaining(projectId)).toEqual([ids.active, ids.neverExpires, ids.revokedWithoutTime].sort())
      }))

    it.effect("keeps the deleted tokens' usage rollups and audit events", () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient.SqlClient
        const store = yield* Store
        const { projectId, ids } = yield* seed
        const hour = new Date(Math.floor((Date.now() - 40 * DAY) / 3_600_000) * 3_600_000).toISOString()
        yield* store.addHourlyUsage([{
          hour,
          projectId,
          tokenId: ids.expiredLongAgo,
          requests: 7,
          cacheHits: 1,
          errors: 2,
          promptTokens: 100,
          completionTokens: 50
        }])
        const auditId = randomUUID()
        yield* sql`INSERT INTO audit_events ${
          sql.insert({
            id: auditId,
            timestamp: daysAgo(40),
            action: "token.create",
            actor: "management_api",
            outcome: "success",
            project_id: projectId,
            token_id: ids.expiredLongAgo
          })
        }`
        yield* pruneTokensOnce(30)
        expect(yield* store.getToken(ids.expiredLongAgo).pipe(Effect.map((o) => o._tag))).toBe("None")
        const series = yield* store.usageSeries({
          since: hour,
          until: new Date().toISOString(),
          tokenId: ids.expiredLongAgo
        })
        expect(series).toEqual([{
          hour,
          requests: 7,
          cacheHits: 1,
          errors: 2,
          promptTokens: 100,
          completionTokens: 50,
          costUsd: 0
        }])
        const events = yield* sql<{ id: string }>`SELECT id FROM audit_events WHERE token_id = ${ids.expiredLongAgo}`
        expect(events.map((e) => e.id)).toEqual([auditId])
      }))

    it.effect("the background fiber prunes at start and on its interval", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const { projectId, ids } = yield* seed
        yield* Effect.gen(function*() {
          yield* Layer.build(tokenRetentionLayer({ days: 30, interval: "50 millis", batchSize: 2, pause: "1 millis" }))
          while ((yield* remaining(projectId)).includes(ids.expiredLongAgo)) yield* Effect.sleep("20 millis")
          // A revocation time set after the first run (long ago, as an import would) is pruned by a later run.
          yield* store.revokeToken(ids.revokedWithoutTime, daysAgo(60))
          while ((yield* remaining(projectId)).includes(ids.revokedWithoutTime)) yield* Effect.sleep("20 millis")
        }).pipe(Effect.scoped, Effect.timeout("20 seconds"))
        expect(yield* remaining(projectId)).toEqual(
          [ids.expiredRecently, ids.active, ids.neverExpires, ids.revokedRecently].sort()
        )
      }))
  })

describe("token retention on SQLite", () => suite("sqlite"))

describe.skipIf(!postgresUrl)("token retention on PostgreSQL (needs DATABASE_URL)", () => suite("postgres"))
