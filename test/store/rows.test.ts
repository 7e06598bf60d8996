/**
 * Rows as either database returns them, decoded by the row schemas (src/store/columns.ts, src/store/rows.ts): rows
 * written by hand — booleans, timestamps and counters in each dialect's own types, JSON columns that are not what the
 * store writes, values that are not of their column's type at all — read back the same on SQLite and PostgreSQL.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, it, layer } from "@effect/vitest"
import { Effect, Either, Layer, Option, Schema } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import * as AuditRepo from "../../src/audit/AuditRepo.js"
import { uuidv7 } from "../../src/crypto/uuidv7.js"
import { nullable, rowError, SqlBool, SqlJson, SqlNumber, SqlTimestamp } from "../../src/store/columns.js"
import { firstPage } from "../../src/store/keyset.js"
import type { Dialect } from "../../src/store/migrations.js"
import { type NewToken, Store, StoreError } from "../../src/store/Store.js"
import { postgresUrl } from "../support/databases.js"
import { freshStore } from "./backends.js"

const NOW = "2024-05-06T07:08:09.123Z"
const FUTURE = "2099-12-31T23:59:59.999Z"
/** 2^40: beyond 32 bits, so PostgreSQL's driver hands the BIGINT over as text. */
const BIG = 1_099_511_627_776

const newToken = (projectId: string, fields: Partial<NewToken> = {}): NewToken => ({
  id: randomUUID(),
  tokenHash: randomBytes(32).toString("hex"),
  tokenHint: "sk-abcd****wxyz",
  projectId,
  expiresAt: FUTURE,
  maxRequests: null,
  now: NOW,
  ...fields
})

/** A project with one token, both with model scopes, the token with metadata. */
const projectAndToken = Effect.gen(function*() {
  const store = yield* Store
  const project = yield* store.createProject({
    id: randomUUID(),
    name: `project-${randomUUID()}`,
    apiKeys: [{ id: randomUUID(), key: "sk-provider-key", hint: "sk-p****-key", weight: 3, provider: "anthropic" }],
    provider: "openai",
    allowedModels: ["gpt-*"],
    now: NOW
  })
  const input = newToken(project.id, { allowedModels: ["gpt-4o"], metadata: { team: "a" }, user: "u-1", name: "n-1" })
  const token = yield* store.createToken(input)
  return { project, token, hash: input.tokenHash }
})

const rowsSuite = (dialect: Dialect) =>
  layer(freshStore(dialect), { excludeTestServices: true, timeout: "60 seconds" })(
    (it) => {
      const bool = (b: boolean) => (dialect === "sqlite" ? (b ? 1 : 0) : b)

      it.effect("JSON columns written by hand that are not what the store writes read back as none", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          const { project, token, hash } = yield* projectAndToken
          const cases: ReadonlyArray<{
            readonly text: string
            readonly models: ReadonlyArray<string> | null
            readonly metadata: Record<string, string> | null
          }> = [
            { text: "{not json", models: null, metadata: null },
            { text: "", models: null, metadata: null },
            { text: "[1, 2]", models: null, metadata: null },
            { text: "\"gpt-4o\"", models: null, metadata: null },
            { text: "{\"team\": 1}", models: null, metadata: null },
            { text: "[\"o1\"]", models: ["o1"], metadata: null },
            { text: "{\"team\": \"b\"}", models: null, metadata: { team: "b" } }
          ]
          for (const c of cases) {
            yield* sql`UPDATE tokens SET allowed_models = ${c.text}, metadata = ${c.text} WHERE id = ${token.id}`
            yield* sql`UPDATE projects SET allowed_models = ${c.text} WHERE id = ${project.id}`
            const read = Option.getOrThrow(yield* store.getToken(token.id))
            expect({ text: c.text, models: read.allowedModels, metadata: read.metadata }).toEqual(c)
            expect(Option.getOrThrow(yield* store.getTokenByHash(hash))).toEqual(read)
            const page = yield* store.listTokens({ projectId: project.id, now: NOW }, {
              limit: 10,
              position: firstPage
            })
            expect(page.rows).toEqual([read])
            const auth = Option.getOrThrow(yield* store.getTokenAuth(hash))
            expect(auth).toMatchObject({
              tokenAllowedModels: c.models,
              projectAllowedModels: c.models,
              metadata: c.metadata
            })
            expect(Option.getOrThrow(yield* store.getProject(project.id)).allowedModels).toEqual(c.models)
          }
          // NULL is none as well; the rest of the row is untouched throughout.
          yield* sql`UPDATE tokens SET allowed_models = NULL, metadata = NULL WHERE id = ${token.id}`
          expect(Option.getOrThrow(yield* store.getToken(token.id))).toEqual({
            ...token,
            allowedModels: null,
            metadata: null
          })
        }))

      it.effect("provider keys written by hand: a list that is not one of keys is the project's one key", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          const { project, hash } = yield* projectAndToken
          const oneKey = [{ id: project.id, key: "sk-provider-key", hint: "sk-p****-key", weight: 1, provider: null }]
          const cases: ReadonlyArray<readonly [string | null, unknown]> = [
            [null, oneKey],
            ["{oops", oneKey],
            ["[]", oneKey],
            ["{\"id\": \"k1\", \"key\": \"sk-1\", \"hint\": \"h1\"}", oneKey],
            // A key without its hint is not a key.
            ["[{\"id\": \"k1\", \"key\": \"sk-1\"}]", oneKey],
            // A weight or provider of another type is the default.
            [
              "[{\"id\": \"k1\", \"key\": \"sk-1\", \"hint\": \"h1\", \"weight\": \"2\", \"provider\": 7}]",
              [{ id: "k1", key: "sk-1", hint: "h1", weight: 1, provider: null }]
            ],
            [
              "[{\"id\": \"k1\", \"key\": \"sk-1\", \"hint\": \"h1\"}, {\"id\": \"k2\", \"key\": \"sk-2\", \"hint\": \"h2\", \"weight\": 2.5, \"provider\": \"azure\"}]",
              [
                { id: "k1", key: "sk-1", hint: "h1", weight: 1, provider: null },
                { id: "k2", key: "sk-2", hint: "h2", weight: 2.5, provider: "azure" }
              ]
            ]
          ]
          for (const [text, keys] of cases) {
            yield* sql`UPDATE projects SET api_keys = ${text} WHERE id = ${project.id}`
            expect({ text, keys: Option.getOrThrow(yield* store.getProject(project.id)).apiKeys }).toEqual({
              text,
              keys
            })
            expect({ text, keys: Option.getOrThrow(yield* store.getTokenAuth(hash)).apiKeys }).toEqual({ text, keys })
          }
        }))

      it.effect("booleans, timestamps and counters written in the dialect's own types read back the same on both", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          const { project, token, hash } = yield* projectAndToken
          // Without milliseconds, and with an offset: read back as UTC with milliseconds.
          yield* sql`UPDATE tokens SET is_active = ${bool(false)}, deactivated_at = ${"2024-05-06T07:08:09Z"},
              last_used_at = ${"2024-05-06T09:08:09.5+02:00"}, request_count = ${BIG}, prompt_tokens = ${BIG},
              tokens_used = ${BIG}, max_requests = 7
            WHERE id = ${token.id}`
          yield* sql`UPDATE projects SET is_active = ${bool(false)}, tokens_used = ${BIG + 1} WHERE id = ${project.id}`
          const read = Option.getOrThrow(yield* store.getToken(token.id))
          expect(read).toEqual({
            ...token,
            isActive: false,
            deactivatedAt: "2024-05-06T07:08:09.000Z",
            lastUsedAt: "2024-05-06T07:08:09.500Z",
            requestCount: BIG,
            promptTokens: BIG,
            maxRequests: 7,
            spend: { ...token.spend, tokensUsed: BIG }
          })
          expect(Option.getOrThrow(yield* store.getProject(project.id))).toMatchObject({
            isActive: false,
            spend: { tokensUsed: BIG + 1 }
          })
          expect(Option.getOrThrow(yield* store.getTokenAuth(hash))).toMatchObject({
            isActive: false,
            projectActive: false
          })
          expect(Option.getOrThrow(yield* store.spendOf(token.id))).toMatchObject({
            token: { tokensUsed: BIG },
            project: { tokensUsed: BIG + 1 }
          })
          expect(yield* store.consumeQuota(token.id, NOW)).toBe("inactive")
          yield* sql`UPDATE tokens SET is_active = ${bool(true)} WHERE id = ${token.id}`
          expect(yield* store.consumeQuota(token.id, NOW)).toBe("project_inactive")
          yield* sql`UPDATE projects SET is_active = ${bool(true)} WHERE id = ${project.id}`
          yield* sql`UPDATE tokens SET expires_at = ${"2024-05-06T07:08:09Z"} WHERE id = ${token.id}`
          expect(yield* store.consumeQuota(token.id, NOW)).toBe("expired")

          // Sums over BIGINT columns are NUMERIC on PostgreSQL, text to its driver.
          const hour = "2024-05-06T07:00:00.000Z"
          const usage = { hour, projectId: project.id, tokenId: token.id, requests: 1, cacheHits: 0, errors: 1 }
          yield* store.addHourlyUsage([{ ...usage, promptTokens: BIG, completionTokens: 2, costUsd: 0.25 }])
          expect(yield* store.usageSeries({ since: hour, until: FUTURE, tokenId: token.id })).toEqual([
            { hour, requests: 1, cacheHits: 0, errors: 1, promptTokens: BIG, completionTokens: 2, costUsd: 0.25 }
          ])
        }))

      it.effect("a row that does not decode is a StoreError naming its column, never its value", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          const repo = yield* AuditRepo.AuditRepo
          const { project, token, hash } = yield* projectAndToken
          const secret = `secret-${randomUUID()}`
          const event = uuidv7(Date.parse(NOW))
          yield* repo.insert([{ id: event, timestamp: NOW, action: "project.create", actor: "a", outcome: "success" }])
          // PostgreSQL's columns only hold their type: the columns become text first (a table edited by hand).
          if (dialect === "postgres") {
            yield* sql`ALTER TABLE tokens ALTER COLUMN request_count TYPE TEXT`
            yield* sql`ALTER TABLE projects ALTER COLUMN created_at TYPE TEXT`
            yield* sql`ALTER TABLE audit_events ALTER COLUMN "timestamp" TYPE TEXT`
          }
          yield* sql`UPDATE tokens SET request_count = ${secret} WHERE id = ${token.id}`
          yield* sql`UPDATE projects SET created_at = ${secret} WHERE id = ${project.id}`
          yield* sql`UPDATE audit_events SET "timestamp" = ${secret} WHERE id = ${event}`

          const failures = [
            ["getToken", "request_count", yield* Effect.flip(store.getToken(token.id))],
            ["getTokenByHash", "request_count", yield* Effect.flip(store.getTokenByHash(hash))],
            [
              "listTokens",
              "request_count",
              yield* Effect.flip(
                store.listTokens({ projectId: project.id, now: NOW }, { limit: 10, position: firstPage })
              )
            ],
            ["getProject", "created_at", yield* Effect.flip(store.getProject(project.id))],
            ["listProjects", "created_at", yield* Effect.flip(store.listProjects)],
            ["audit get", "timestamp", yield* Effect.flip(repo.get(event))]
          ] as const
          for (const [operation, column, error] of failures) {
            expect(error).toBeInstanceOf(StoreError)
            expect(error.message).toBe(`database error during ${operation}`)
            expect(error.detail).toContain(column)
            expect(`${error.detail} ${String(error.cause)} ${JSON.stringify(error)}`).not.toContain(secret)
          }
          // The columns that decode still serve: the data plane reads no created_at or request_count.
          expect(Option.getOrThrow(yield* store.getTokenAuth(hash)).tokenId).toBe(token.id)
        }).pipe(Effect.provide(AuditRepo.layer(dialect).pipe(Layer.provideMerge(freshStore(dialect))))))
    }
  )

describe("rows on SQLite", () => rowsSuite("sqlite"))

describe.skipIf(!postgresUrl)(
  postgresUrl ? "rows on PostgreSQL" : "rows on PostgreSQL (skipped: DATABASE_URL not set)",
  () => rowsSuite("postgres")
)

describe("column schemas on their own", () => {
  const decode = <A, I>(schema: Schema.Schema<A, I>) => Schema.decodeUnknownEither(schema)

  it("read what either driver gives as the same value, and refuse anything else with no value in the message", () => {
    const cases: ReadonlyArray<readonly [Schema.Schema<any, any>, ReadonlyArray<unknown>, unknown]> = [
      [SqlBool.schema, [true, 1], true],
      [SqlBool.schema, [false, 0, 2], false],
      [SqlNumber.schema, [BIG, String(BIG)], BIG],
      [SqlNumber.schema, [0.25, "0.25"], 0.25],
      [SqlTimestamp.schema, [new Date(NOW), NOW, "2024-05-06T09:08:09.123+02:00"], NOW],
      [nullable(SqlTimestamp).schema, [null], null],
      [SqlJson(Schema.Array(Schema.String)).schema, ["[\"a\"]", ["a"]], ["a"]],
      [SqlJson(Schema.Array(Schema.String)).schema, [null, "[", "{}", 7], null]
    ]
    for (const [schema, given, value] of cases) {
      for (const v of given) expect(Either.getOrThrow(decode(schema)(v))).toEqual(value)
    }
    const secret = `secret-${randomUUID()}`
    const strict: ReadonlyArray<Schema.Schema<any, any>> = [
      SqlNumber.schema,
      SqlTimestamp.schema,
      SqlBool.schema,
      nullable(SqlNumber).schema
    ]
    for (const schema of strict) {
      for (const v of [secret, "", undefined, {}]) {
        const result = decode(schema)(v)
        expect(Either.isLeft(result)).toBe(true)
        if (Either.isLeft(result)) expect(rowError("m", result.left).detail).not.toContain(secret)
      }
    }
  })
})
