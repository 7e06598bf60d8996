/**
 * Store behaviour, the same tests on SQLite (temp file) and PostgreSQL (fresh database; needs DATABASE_URL).
 * Each suite shares one migrated database; tests keep out of each other's way with their own projects.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Either, Layer, Option, Redacted } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { writeFileSync } from "node:fs"
import { firstPage } from "../../src/store/keyset.js"
import { postgresStore, sqliteStore } from "../../src/store/layers.js"
import type { Dialect } from "../../src/store/migrations.js"
import {
  DuplicateProjectName,
  type NewProject,
  type NewToken,
  NO_BUDGET,
  NOTHING_SPENT,
  Store,
  type StoredKey,
  StoreError,
  type TokenRow
} from "../../src/store/Store.js"
import { postgresUrl, withPgClient } from "../support/databases.js"
import { freshStore, tempSqlitePath } from "./backends.js"

// Timestamps with distinct milliseconds, so a backend that drops or rounds them is caught.
const T0 = Date.parse("2024-05-06T07:08:09.123Z")
/** T0 + `seconds`, as an ISO string with milliseconds. */
const at = (seconds: number) => new Date(T0 + seconds * 1000).toISOString()
const NOW = at(0)
const LATER = at(60)
const FUTURE = "2099-12-31T23:59:59.999Z"

const oneKey = (
  key: string,
  hint: string
): ReadonlyArray<StoredKey> => [{ id: randomUUID(), key, hint, weight: 1, provider: null }]

const newProject = (fields: Partial<NewProject> = {}): NewProject => ({
  id: randomUUID(),
  name: `project-${randomUUID()}`,
  apiKeys: oneKey("sk-provider-key", "sk-p****-key"),
  provider: "openai",
  now: NOW,
  ...fields
})

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

/** A project with `n` tokens created one second apart (oldest first). */
const projectWithTokens = (n: number, fields: Partial<NewProject> = {}) =>
  Effect.gen(function*() {
    const store = yield* Store
    const project = yield* store.createProject(newProject(fields))
    const tokens: Array<TokenRow> = []
    for (let i = 0; i < n; i++) tokens.push(yield* store.createToken(newToken(project.id, { now: at(i) })))
    return { project, tokens }
  })

const getToken = (id: string) => Effect.flatMap(Store, (s) => s.getToken(id)).pipe(Effect.map(Option.getOrThrow))
const getProject = (id: string) => Effect.flatMap(Store, (s) => s.getProject(id)).pipe(Effect.map(Option.getOrThrow))

/** Makes every UPDATE of a token of `projectId` fail inside the database, to check transactions roll back. */
const failTokenUpdates = (dialect: Dialect, projectId: string) =>
  Effect.acquireRelease(
    Effect.flatMap(SqlClient.SqlClient, (sql) =>
      dialect === "sqlite"
        ? sql.unsafe(`CREATE TRIGGER fail_token_updates BEFORE UPDATE ON tokens
            WHEN OLD.project_id = '${projectId}' BEGIN SELECT RAISE(ABORT, 'injected failure'); END`)
        : Effect.zipRight(
          sql.unsafe(`CREATE FUNCTION fail_token_updates() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$`),
          sql.unsafe(`CREATE TRIGGER fail_token_updates BEFORE UPDATE ON tokens FOR EACH ROW
            WHEN (OLD.project_id = '${projectId}') EXECUTE FUNCTION fail_token_updates()`)
        )),
    () =>
      Effect.flatMap(SqlClient.SqlClient, (sql) =>
        dialect === "sqlite"
          ? sql`DROP TRIGGER fail_token_updates`
          : Effect.zipRight(sql`DROP TRIGGER fail_token_updates ON tokens`, sql`DROP FUNCTION fail_token_updates()`))
        .pipe(
          Effect.orDie
        )
  )

const storeSuite = (dialect: Dialect) =>
  layer(freshStore(dialect), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    describe("projects", () => {
      it.effect("creates, gets and lists projects sorted by name", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const prefix = `list-${randomUUID()}`
          const input = newProject({ name: `${prefix}-bravo`, provider: "anthropic" })
          const created = yield* store.createProject(input)
          expect(created).toEqual({
            id: input.id,
            name: input.name,
            apiKey: "sk-provider-key",
            apiKeyHint: "sk-p****-key",
            apiKeys: input.apiKeys,
            provider: "anthropic",
            isActive: true,
            deactivatedAt: null,
            rateLimit: null,
            allowedModels: null,
            maxTokenMinutes: null,
            maxTokenRequests: null,
            budget: NO_BUDGET,
            spend: NOTHING_SPENT,
            createdAt: NOW,
            updatedAt: NOW
          })
          expect(yield* store.getProject(input.id)).toEqual(Option.some(created))
          expect(yield* store.getProject(randomUUID())).toEqual(Option.none())

          yield* store.createProject(newProject({ name: `${prefix}-charlie` }))
          yield* store.createProject(newProject({ name: `${prefix}-alpha` }))
          const names = (yield* store.listProjects).map((p) => p.name)
          expect(names.filter((n) => n.startsWith(prefix))).toEqual([
            `${prefix}-alpha`,
            `${prefix}-bravo`,
            `${prefix}-charlie`
          ])
        }))

      it.effect("rejects a duplicate name on create with DuplicateProjectName", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const first = yield* store.createProject(newProject())
          const error = yield* Effect.flip(store.createProject(newProject({ name: first.name })))
          expect(error).toBeInstanceOf(DuplicateProjectName)
          expect(error).toMatchObject({ _tag: "DuplicateProjectName", name: first.name })
        }))

      it.effect("rejects renaming to a taken name with DuplicateProjectName and changes nothing", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const taken = yield* store.createProject(newProject())
          const { project, tokens } = yield* projectWithTokens(1)
          const error = yield* Effect.flip(
            store.updateProject(project.id, { name: taken.name, isActive: false, revokeTokens: true, now: LATER })
          )
          expect(error).toMatchObject({ _tag: "DuplicateProjectName", name: taken.name })
          expect(yield* getProject(project.id)).toEqual(project)
          expect((yield* getToken(tokens[0]!.id)).isActive).toBe(true)

          // Keeping its own name is not a conflict.
          const same = yield* store.updateProject(project.id, { name: project.name, now: LATER })
          expect(Option.getOrThrow(same).project.name).toBe(project.name)
        }))

      it.effect("updates only the given fields and stamps updatedAt", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const project = yield* store.createProject(newProject())
          const apiKeys = oneKey("sk-new", "sk-n****new")
          const updated = yield* store.updateProject(project.id, { apiKeys, now: LATER })
          const expected = { ...project, apiKey: "sk-new", apiKeyHint: "sk-n****new", apiKeys, updatedAt: LATER }
          expect(updated).toEqual(Option.some({ project: expected, revoked: 0 }))
          expect(yield* getProject(project.id)).toEqual(expected)

          const renamed = `renamed-${randomUUID()}`
          yield* store.updateProject(project.id, { name: renamed, provider: "anthropic", now: at(120) })
          expect(yield* getProject(project.id)).toEqual({
            ...expected,
            name: renamed,
            provider: "anthropic",
            updatedAt: at(120)
          })

          expect(yield* store.updateProject(randomUUID(), { name: "nobody", now: LATER })).toEqual(Option.none())
        }))

      it.effect("deactivation sets deactivatedAt (kept when repeated), reactivation clears it", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project, tokens } = yield* projectWithTokens(1)

          const off = Option.getOrThrow(yield* store.updateProject(project.id, { isActive: false, now: LATER }))
          expect(off.project).toMatchObject({ isActive: false, deactivatedAt: LATER })
          expect(off.revoked).toBe(0)
          // Without revokeTokens the tokens are left alone.
          expect((yield* getToken(tokens[0]!.id)).isActive).toBe(true)

          yield* store.updateProject(project.id, { isActive: false, now: at(120) })
          expect(yield* getProject(project.id)).toMatchObject({
            isActive: false,
            deactivatedAt: LATER,
            updatedAt: at(120)
          })

          const on = Option.getOrThrow(yield* store.updateProject(project.id, { isActive: true, now: at(180) }))
          expect(on.project).toMatchObject({ isActive: true, deactivatedAt: null })
          expect(yield* getProject(project.id)).toMatchObject({
            isActive: true,
            deactivatedAt: null,
            updatedAt: at(180)
          })
        }))

      it.effect("revokeTokens on deactivation revokes the active tokens and returns the count", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project, tokens } = yield* projectWithTokens(3)
          yield* store.revokeToken(tokens[0]!.id, NOW)

          const result = Option.getOrThrow(
            yield* store.updateProject(project.id, { isActive: false, revokeTokens: true, now: LATER })
          )
          expect(result.revoked).toBe(2)
          expect(result.project).toMatchObject({ isActive: false, deactivatedAt: LATER })
          expect(yield* getToken(tokens[0]!.id)).toMatchObject({ isActive: false, deactivatedAt: NOW })
          for (const t of tokens.slice(1)) {
            expect(yield* getToken(t.id)).toMatchObject({ isActive: false, deactivatedAt: LATER })
          }
        }))

      it.effect("revokeTokens also applies when the project is already inactive", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project } = yield* projectWithTokens(0)
          yield* store.updateProject(project.id, { isActive: false, now: NOW })
          // Tokens created while the project is inactive.
          const t1 = yield* store.createToken(newToken(project.id))
          const t2 = yield* store.createToken(newToken(project.id))

          const result = Option.getOrThrow(
            yield* store.updateProject(project.id, { isActive: false, revokeTokens: true, now: LATER })
          )
          expect(result.revoked).toBe(2)
          expect(result.project.deactivatedAt).toBe(NOW)
          expect((yield* getToken(t1.id)).isActive).toBe(false)
          expect((yield* getToken(t2.id)).isActive).toBe(false)
        }))

      it.scoped("deactivation and token revocation share one transaction", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project, tokens } = yield* projectWithTokens(2)
          yield* failTokenUpdates(dialect, project.id)

          const error = yield* Effect.flip(
            store.updateProject(project.id, { isActive: false, revokeTokens: true, now: LATER })
          )
          expect(error).toBeInstanceOf(StoreError)
          // The project update ran before the failing token update, and was rolled back with it.
          expect(yield* getProject(project.id)).toEqual(project)
          for (const t of tokens) expect((yield* getToken(t.id)).isActive).toBe(true)
        }))

      it.effect("revokeProjectTokens counts revoked, already revoked and total; None for an unknown project", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project, tokens } = yield* projectWithTokens(3)
          yield* store.revokeToken(tokens[1]!.id, NOW)

          expect(yield* store.revokeProjectTokens(project.id, LATER)).toEqual(
            Option.some({ revoked: 2, alreadyRevoked: 1, total: 3 })
          )
          for (const t of tokens) expect((yield* getToken(t.id)).isActive).toBe(false)
          expect((yield* getToken(tokens[1]!.id)).deactivatedAt).toBe(NOW)
          expect((yield* getToken(tokens[0]!.id)).deactivatedAt).toBe(LATER)

          expect(yield* store.revokeProjectTokens(project.id, at(120))).toEqual(
            Option.some({ revoked: 0, alreadyRevoked: 3, total: 3 })
          )
          const { project: empty } = yield* projectWithTokens(0)
          expect(yield* store.revokeProjectTokens(empty.id, LATER)).toEqual(
            Option.some({ revoked: 0, alreadyRevoked: 0, total: 0 })
          )
          expect(yield* store.revokeProjectTokens(randomUUID(), LATER)).toEqual(Option.none())
        }))

      it.effect("revokeProjectTokens counts stay consistent while tokens are being created", () =>
        Effect.gen(function*() {
          const store = yield* Store
          // Before the project row was locked, a token committed between the count and the revocation made
          // `alreadyRevoked` negative on Postgres (~5% of these rounds).
          for (let round = 0; round < 200; round++) {
            const { project } = yield* projectWithTokens(1)
            const create = Effect.suspend(() => store.createToken(newToken(project.id)))
            const [result] = yield* Effect.all(
              [store.revokeProjectTokens(project.id, LATER), Effect.all([create, create, create], { concurrency: 3 })],
              { concurrency: 2 }
            )
            const counts = Option.getOrThrow(result)
            expect(counts.alreadyRevoked).toBeGreaterThanOrEqual(0)
            expect(counts.revoked + counts.alreadyRevoked).toBe(counts.total)
          }
        }))
    })

    describe("tokens", () => {
      it.effect("createTokenForProject: created for an active project, refused for an unknown or inactive one", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project } = yield* projectWithTokens(0)
          const input = newToken(project.id, { maxRequests: 5, rateLimit: { requests: 2, windowSeconds: 60 } })
          const created = yield* store.createTokenForProject(input)
          expect(created._tag).toBe("created")
          const stored = yield* store.getToken(input.id)
          expect(created).toEqual({ _tag: "created", token: Option.getOrThrow(stored) })

          const unknown = newToken(randomUUID())
          expect(yield* store.createTokenForProject(unknown)).toEqual({ _tag: "project_not_found" })
          yield* store.updateProject(project.id, { isActive: false, now: LATER })
          const refused = newToken(project.id)
          expect(yield* store.createTokenForProject(refused)).toEqual({ _tag: "project_inactive" })
          expect(yield* store.getToken(unknown.id)).toEqual(Option.none())
          expect(yield* store.getToken(refused.id)).toEqual(Option.none())
        }))

      it.effect("createTokenForProject: concurrent creations all land (group commit); a bad row fails only itself", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project: active } = yield* projectWithTokens(0)
          const { project: inactive } = yield* projectWithTokens(0)
          yield* store.updateProject(inactive.id, { isActive: false, now: LATER })
          const taken = yield* store.createToken(newToken(active.id))
          const inputs = Array.from({ length: 60 }, (_, i) =>
            i % 10 === 3
              ? newToken(inactive.id)
              : i % 10 === 7
              ? newToken(active.id, { tokenHash: taken.tokenHash }) // duplicate hash: the database refuses it
              : newToken(active.id))
          const results = yield* Effect.all(inputs.map((t) => Effect.either(store.createTokenForProject(t))), {
            concurrency: "unbounded"
          })
          results.forEach((r, i) => {
            if (i % 10 === 3) expect(r).toEqual(Either.right({ _tag: "project_inactive" }))
            else if (i % 10 === 7) expect(r._tag === "Left" && r.left).toBeInstanceOf(StoreError)
            else expect(r._tag === "Right" && r.right._tag).toBe("created")
          })
          const page = yield* store.listTokens({ projectId: active.id, now: NOW }, { limit: 100, position: firstPage })
          expect(page.rows.map((t) => t.id).sort()).toEqual(
            [taken.id, ...inputs.filter((_, i) => i % 10 !== 3 && i % 10 !== 7).map((t) => t.id)].sort()
          )
        }))

      it.effect("creates a token and reads it back by id and by hash", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project } = yield* projectWithTokens(0)
          const input = newToken(project.id, { maxRequests: 100 })
          const created = yield* store.createToken(input)
          expect(created).toEqual({
            id: input.id,
            tokenHash: input.tokenHash,
            tokenHint: input.tokenHint,
            projectId: project.id,
            expiresAt: FUTURE,
            isActive: true,
            deactivatedAt: null,
            requestCount: 0,
            maxRequests: 100,
            rateLimit: null,
            budget: NO_BUDGET,
            spend: NOTHING_SPENT,
            cacheHitCount: 0,
            promptTokens: 0,
            completionTokens: 0,
            createdAt: NOW,
            lastUsedAt: null,
            name: null,
            user: null,
            metadata: null,
            allowedModels: null,
            projectKeyId: null
          })
          expect(yield* store.getToken(input.id)).toEqual(Option.some(created))
          expect(yield* store.getTokenByHash(input.tokenHash)).toEqual(Option.some(created))
          // Labels and scope are stored as given and read back alike (metadata and models as JSON text).
          const labelled = newToken(project.id, {
            name: "web session",
            user: "user-ü-1",
            metadata: { plan: "pro", "k\"ey": "v\u2028" },
            allowedModels: ["gpt-4o-mini", "claude-3-5-*"]
          })
          const withLabels = yield* store.createToken(labelled)
          expect(withLabels).toMatchObject({
            name: "web session",
            user: "user-ü-1",
            metadata: { plan: "pro", "k\"ey": "v\u2028" },
            allowedModels: ["gpt-4o-mini", "claude-3-5-*"]
          })
          expect(yield* store.getTokenByHash(labelled.tokenHash)).toEqual(Option.some(withLabels))
          expect(yield* store.getToken(randomUUID())).toEqual(Option.none())
          expect(yield* store.getTokenByHash(randomBytes(32).toString("hex"))).toEqual(Option.none())
        }))

      it.effect("listTokens filters by project and status, newest first", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { project: a } = yield* projectWithTokens(0)
          const { project: b } = yield* projectWithTokens(0)
          const oldest = yield* store.createToken(newToken(a.id, { now: at(1) }))
          const expired = yield* store.createToken(newToken(a.id, { now: at(2), expiresAt: at(30) }))
          const revoked = yield* store.createToken(newToken(a.id, { now: at(3) }))
          const newest = yield* store.createToken(newToken(a.id, { now: at(4), expiresAt: at(61) }))
          const other = yield* store.createToken(newToken(b.id, { now: at(5) }))
          yield* store.revokeToken(revoked.id, at(10))

          const all = (filter: Parameters<typeof store.listTokens>[0]) =>
            Effect.map(store.listTokens(filter, { limit: 1000, position: firstPage }), (page) => page.rows)
          const ids = (filter: Parameters<typeof store.listTokens>[0]) =>
            Effect.map(all(filter), (rows) => rows.map((t) => t.id))

          expect(yield* ids({ projectId: a.id, now: LATER })).toEqual([newest.id, revoked.id, expired.id, oldest.id])
          expect(yield* ids({ projectId: a.id, status: "active", now: LATER })).toEqual([newest.id, oldest.id])
          expect(yield* ids({ projectId: a.id, status: "expired", now: LATER })).toEqual([expired.id])
          expect(yield* ids({ projectId: a.id, status: "revoked", now: LATER })).toEqual([revoked.id])
          // Expiry is exclusive: a token expiring exactly at `now` is no longer active.
          expect(yield* ids({ projectId: a.id, status: "active", now: at(61) })).toEqual([oldest.id])
          expect(yield* ids({ projectId: a.id, status: "expired", now: at(61) })).toEqual([newest.id, expired.id])
          expect(yield* ids({ projectId: b.id, now: LATER })).toEqual([other.id])
          expect(yield* ids({ projectId: a.id, search: newest.id.slice(0, 8), now: LATER })).toEqual([newest.id])
          expect(yield* ids({ projectId: a.id, search: newest.id, now: LATER })).toEqual([newest.id])
          expect(yield* ids({ projectId: b.id, search: newest.id.slice(0, 8), now: LATER })).toEqual([])
          expect(yield* ids({ projectId: a.id, search: "not-an-id", now: LATER })).toEqual([])

          const everything = yield* ids({ now: LATER })
          expect(everything).toEqual(expect.arrayContaining([other.id, newest.id, revoked.id, expired.id, oldest.id]))
          const active = yield* ids({ status: "active", now: LATER })
          expect(active).toEqual(expect.arrayContaining([other.id, newest.id, oldest.id]))
          expect(active).not.toContain(revoked.id)
          expect(active).not.toContain(expired.id)
          // Newest first across projects too.
          const rows = yield* all({ now: LATER })
          const created = rows.map((t) => t.createdAt)
          expect(created).toEqual([...created].sort().reverse())
        }))

      it.effect("updateToken: isActive false sets deactivatedAt (kept on repeat), true clears it", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { tokens: [token] } = yield* projectWithTokens(1)
          const id = token!.id

          const off = yield* store.updateToken(id, { isActive: false, now: LATER })
          expect(off).toEqual(Option.some({ ...token!, isActive: false, deactivatedAt: LATER }))
          const again = yield* store.updateToken(id, { isActive: false, now: at(120) })
          expect(Option.getOrThrow(again)).toMatchObject({ isActive: false, deactivatedAt: LATER })
          const on = yield* store.updateToken(id, { isActive: true, now: at(180) })
          expect(on).toEqual(Option.some({ ...token!, isActive: true, deactivatedAt: null }))
          expect(yield* getToken(id)).toEqual(token)
        }))

      it.effect("updateToken: maxRequests (number / null), expiresAt, empty patch, unknown id", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { tokens: [token] } = yield* projectWithTokens(1)
          const id = token!.id

          expect(Option.getOrThrow(yield* store.updateToken(id, { maxRequests: 5, now: LATER })).maxRequests).toBe(5)
          expect((yield* getToken(id)).maxRequests).toBe(5)
          expect(Option.getOrThrow(yield* store.updateToken(id, { maxRequests: null, now: LATER })).maxRequests).toBe(
            null
          )
          expect((yield* getToken(id)).maxRequests).toBe(null)

          const expiresAt = at(3600)
          const moved = Option.getOrThrow(yield* store.updateToken(id, { expiresAt, maxRequests: 0, now: LATER }))
          expect(moved).toEqual({ ...token!, expiresAt, maxRequests: 0 })
          expect(yield* getToken(id)).toEqual(moved)

          expect(yield* store.updateToken(id, { now: LATER })).toEqual(Option.some(moved))
          expect(yield* store.updateToken(randomUUID(), { isActive: false, now: LATER })).toEqual(Option.none())
          expect(yield* store.updateToken(randomUUID(), { now: LATER })).toEqual(Option.none())
        }))

      it.effect("revokeToken is idempotent and false for an unknown id", () =>
        Effect.gen(function*() {
          const store = yield* Store
          const { tokens: [token] } = yield* projectWithTokens(1)
          expect(yield* store.revokeToken(token!.id, LATER)).toBe(true)
          expect(yield* getToken(token!.id)).toMatchObject({ isActive: false, deactivatedAt: LATER })
          expect(yield* store.revokeToken(token!.id, at(120))).toBe(true)
          expect(yield* getToken(token!.id)).toMatchObject({ isActive: false, deactivatedAt: LATER })
          expect(yield* store.revokeToken(randomUUID(), LATER)).toBe(false)
        }))
    })

    it.effect("timestamps round-trip as ISO strings with millisecond precision", () =>
      Effect.gen(function*() {
        const store = yield* Store
        const stamps = ["2001-02-03T04:05:06.007Z", "2030-01-01T00:00:00.000Z", "1999-12-31T23:59:59.999Z"]
        for (const stamp of stamps) {
          const project = yield* store.createProject(newProject({ now: stamp }))
          yield* store.updateProject(project.id, { isActive: false, now: stamp })
          expect(yield* getProject(project.id)).toMatchObject({
            createdAt: stamp,
            updatedAt: stamp,
            deactivatedAt: stamp
          })

          const token = yield* store.createToken(newToken(project.id, { now: stamp, expiresAt: stamp }))
          yield* store.revokeToken(token.id, stamp)
          const read = yield* getToken(token.id)
          expect(read).toMatchObject({ createdAt: stamp, expiresAt: stamp, deactivatedAt: stamp, lastUsedAt: null })
          expect(typeof read.requestCount).toBe("number")
        }
      }))

    describe("batches of several instances", () => {
      it.effect(
        "usage and spend batches touching the same rows in opposite orders at once: none deadlocks, every count lands",
        () =>
          Effect.gen(function*() {
            const store = yield* Store
            const project = yield* store.createProject(newProject())
            const tokens: Array<string> = []
            for (let i = 0; i < 40; i++) tokens.push((yield* store.createToken(newToken(project.id))).id)
            const usage = (ids: ReadonlyArray<string>) =>
              store.addUsage(ids.map((tokenId) => ({
                tokenId,
                requests: 1,
                promptTokens: 2,
                completionTokens: 3,
                cacheHits: 0,
                lastUsedAt: null
              })))
            const spend = (ids: ReadonlyArray<string>) =>
              store.addSpend(
                [...ids.map((id) => ({ scope: "token" as const, id })), { scope: "project" as const, id: project.id }]
                  .map((d) => ({ ...d, costUsd: 0.5, tokens: 5, dayStart: T0 - (T0 % 86_400_000), monthStart: 0 }))
              )
            const reversed = [...tokens].reverse()
            // Two instances flushing at once, each in the order its requests came: on PostgreSQL, rows taken in
            // opposite orders by two transactions deadlock (one of them fails after deadlock_timeout).
            for (let round = 0; round < 5; round++) {
              yield* Effect.all([usage(tokens), usage(reversed), spend(tokens), spend(reversed)], { concurrency: 4 })
            }
            for (const id of tokens) {
              const t = yield* getToken(id)
              expect([t.requestCount, t.promptTokens, t.completionTokens]).toEqual([10, 20, 30])
              expect(t.spend.spentUsd).toBeCloseTo(5, 9)
            }
          })
      )

      it.effect(
        "a bulk revoke while usage and spend batches of the project's tokens are written: none deadlocks, every count lands",
        () =>
          Effect.gen(function*() {
            const store = yield* Store
            for (let round = 0; round < 5; round++) {
              const project = yield* store.createProject(newProject())
              const tokens: Array<string> = []
              for (let i = 0; i < 40; i++) tokens.push((yield* store.createToken(newToken(project.id))).id)
              const usage = (ids: ReadonlyArray<string>) =>
                store.addUsage(ids.map((tokenId) => ({
                  tokenId,
                  requests: 1,
                  promptTokens: 0,
                  completionTokens: 0,
                  cacheHits: 0,
                  lastUsedAt: null
                })))
              const spend = store.addSpend(
                [...tokens.map((id) => ({ scope: "token" as const, id })), {
                  scope: "project" as const,
                  id: project.id
                }]
                  .map((d) => ({ ...d, costUsd: 0.5, tokens: 5, dayStart: T0 - (T0 % 86_400_000), monthStart: 0 }))
              )
              // A revoke locks the project, then its active tokens; the batches lock the rows they count.
              const [, , revoked] = yield* Effect.all(
                [usage(tokens), spend, store.revokeProjectTokens(project.id, NOW)],
                { concurrency: 3 }
              )
              expect(Option.getOrThrow(revoked).revoked).toBe(40)
              for (const id of tokens) {
                const t = yield* getToken(id)
                expect([t.requestCount, t.isActive]).toEqual([1, false])
                expect(t.spend.spentUsd).toBeCloseTo(0.5, 9)
              }
            }
          })
      )
    })

    describe("a broken database gives a StoreError (not a defect) without SQL parameters in its message", () => {
      const secret = `secret-${randomUUID()}`
      const expectStoreError = (error: unknown) => {
        expect(error).toBeInstanceOf(StoreError)
        const message = (error as StoreError).message
        expect(message).not.toContain(secret)
        // Nor SQL text: the operation name only.
        expect(message).not.toMatch(/\b(SELECT|INSERT|UPDATE|DELETE|FROM|WHERE)\b/)
        return message
      }

      it.effect("queries against dropped tables", () =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          yield* sql`DROP TABLE tokens`
          yield* sql`DROP TABLE project_keys`
          yield* sql`DROP TABLE projects`
          expect(expectStoreError(yield* Effect.flip(store.getTokenByHash(secret)))).toBe(
            "database error during getTokenByHash"
          )
          expectStoreError(yield* Effect.flip(store.createToken(newToken(randomUUID(), { tokenHash: secret }))))
          expectStoreError(
            yield* Effect.flip(
              store.listTokens({ projectId: secret, status: "active", now: secret }, { limit: 10, position: firstPage })
            )
          )
          expectStoreError(yield* Effect.flip(store.countTokens(secret, 10)))
          expectStoreError(yield* Effect.flip(store.pruneTokens(secret, 10)))
          expectStoreError(yield* Effect.flip(store.revokeProjectTokens(secret, secret)))
          expectStoreError(
            yield* Effect.flip(store.createProject(newProject({ name: secret, apiKeys: oneKey(secret, secret) })))
          )
          expectStoreError(yield* Effect.flip(store.updateProject(secret, { name: secret, now: secret })))
        }).pipe(Effect.provide(freshStore(dialect))))

      if (dialect === "sqlite") {
        it.effect("SQLite file replaced by garbage", () =>
          Effect.gen(function*() {
            const path = yield* tempSqlitePath
            writeFileSync(path, randomBytes(64 * 1024))
            const error = yield* Effect.flip(
              Effect.provide(Effect.flatMap(Store, (s) => s.getTokenByHash(secret)), sqliteStore(path))
            )
            expect(expectStoreError(error)).toBe(`cannot open SQLite database at ${path}`)
          }).pipe(Effect.scoped))
      } else {
        it.effect("database dropped under the pool", () =>
          Effect.gen(function*() {
            const store = yield* Store
            const sql = yield* SqlClient.SqlClient
            const [{ name }] = (yield* sql<{ name: string }>`SELECT current_database() AS name`) as [{ name: string }]
            yield* Effect.promise(() =>
              withPgClient(postgresUrl!, (c) => c.query(`DROP DATABASE "${name}" WITH (FORCE)`))
            )
            expectStoreError(yield* Effect.flip(store.getTokenByHash(secret)))
            expectStoreError(yield* Effect.flip(store.getTokenByHash(secret)))
          }).pipe(Effect.provide(freshStore(dialect))))

        it.effect("server not reachable", () =>
          Effect.gen(function*() {
            const error = yield* Effect.flip(
              Layer.build(postgresStore(Redacted.make(`postgres://postgres:${secret}@127.0.0.1:1/nowhere`), 1))
            )
            expect(expectStoreError(error)).toBe("cannot connect to PostgreSQL (DATABASE_URL)")
          }).pipe(Effect.scoped))
      }
    })
  })

describe("Store on SQLite", () => storeSuite("sqlite"))

describe.skipIf(!postgresUrl)(
  postgresUrl ? "Store on PostgreSQL" : "Store on PostgreSQL (skipped: DATABASE_URL not set)",
  () => storeSuite("postgres")
)
