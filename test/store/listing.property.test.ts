/**
 * The paged listings against a naive reference: random projects and tokens (ties in creation time, every state,
 * PostgreSQL times with microseconds), then random queries — every filter, page sizes from 1 to 100 — read page by
 * page forwards from the first page, backwards from the last, and past both ends; each page must be exactly the
 * slice of "filter everything in memory, sort, slice", with the right has_next / has_prev. On SQLite (file) and
 * PostgreSQL (DATABASE_URL).
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, FastCheck as fc } from "effect"
import type { Dialect } from "../../src/store/migrations.js"
import { COUNT_CAP, Store, type TokenFilter, type TokenRow, type TokenStatus } from "../../src/store/Store.js"
import { postgresUrl } from "../support/databases.js"
import { freshStore } from "./backends.js"
import { walk } from "./paging.js"

const T0_US = Date.parse("2024-05-06T07:08:09.123Z") * 1000
const NOW_US = T0_US + 3_000_000
const NOW = new Date(NOW_US / 1000).toISOString()

/** Microseconds since the epoch → the text stored: milliseconds on SQLite (what the app writes), µs on PostgreSQL. */
const timeText = (us: number, dialect: Dialect) => {
  const ms = Math.floor(us / 1000)
  const iso = new Date(ms).toISOString()
  return dialect === "sqlite" ? iso : `${iso.slice(0, 23)}${String(us % 1000).padStart(3, "0")}Z`
}

interface GenToken {
  readonly id: string
  readonly project: number
  /** Offset from T0 in whole seconds (few values, so many ties) plus a few microseconds on PostgreSQL. */
  readonly createdSecond: number
  readonly createdMicro: number
  readonly expires: "none" | "past" | "now" | "justAfter" | "future"
  readonly revoked: "no" | "yes" | "yesWithoutTime"
}

const PROJECTS = 3

const tokenArb = fc.record({
  id: fc.uuid(),
  project: fc.nat(PROJECTS - 1),
  createdSecond: fc.nat(5),
  createdMicro: fc.constantFrom(0, 0, 0, 1, 400, 999),
  expires: fc.constantFrom("none", "past", "now", "justAfter", "future"),
  revoked: fc.constantFrom("no", "no", "yes", "yesWithoutTime")
}) satisfies fc.Arbitrary<GenToken>

const nameChar = fc.constantFrom(..."abcXYZ019 _%-\\".split(""))
const projectNames = fc.uniqueArray(fc.string({ unit: nameChar, minLength: 1, maxLength: 5 }), {
  minLength: PROJECTS,
  maxLength: PROJECTS
})

const tokenQueryArb = fc.record({
  project: fc.option(fc.nat(PROJECTS), { nil: undefined }), // PROJECTS = a project without tokens' id
  status: fc.option(fc.constantFrom<TokenStatus>("active", "expired", "revoked"), { nil: undefined }),
  search: fc.option(
    fc.oneof(
      fc.record({ of: fc.nat(), length: fc.integer({ min: 1, max: 36 }) }),
      fc.constantFrom("0", "f", "ff", "abc", "zz", "-", "%", "_")
    ),
    { nil: undefined }
  ),
  size: fc.constantFrom(1, 2, 3, 5, 100)
})

const datasetArb = fc.record({
  names: projectNames,
  tokens: fc.uniqueArray(tokenArb, { selector: (t) => t.id, maxLength: 40 }),
  tokenQueries: fc.array(tokenQueryArb, { minLength: 6, maxLength: 6 }),
  projectQueries: fc.array(
    fc.record({
      search: fc.option(fc.string({ unit: nameChar, maxLength: 3 }), { nil: undefined }),
      size: fc.constantFrom(1, 2, 5, 100),
      countCap: fc.constantFrom(1, 2, COUNT_CAP)
    }),
    { minLength: 3, maxLength: 3 }
  )
})

interface RefToken {
  readonly id: string
  readonly projectId: string
  readonly createdUs: number
  readonly expiresUs: number | null
  readonly isActive: boolean
}

const projectIdOf = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`

const expiresUs = (e: GenToken["expires"]): number | null =>
  e === "none"
    ? null
    : e === "past"
    ? NOW_US - 1_000_000
    : e === "now"
    ? NOW_US
    : e === "justAfter"
    ? NOW_US + 1
    : NOW_US + 60_000_000

const statusOf = (t: RefToken): TokenStatus =>
  !t.isActive ? "revoked" : t.expiresUs !== null && t.expiresUs <= NOW_US ? "expired" : "active"

/** Newest first: creation time, then id, both descending. */
const byKeyDesc = (a: RefToken, b: RefToken) => b.createdUs - a.createdUs || (a.id < b.id ? 1 : a.id > b.id ? -1 : 0)

const suite = (dialect: Dialect) =>
  layer(freshStore(dialect), { excludeTestServices: true, timeout: "60 seconds" })((it) => {
    it.effect.prop(
      "token and project listings page through exactly the rows of the naive reference",
      [datasetArb],
      ([data]) =>
        Effect.gen(function*() {
          const sql = yield* SqlClient.SqlClient
          const store = yield* Store
          yield* sql`DELETE FROM tokens`
          yield* sql`DELETE FROM projects`
          const projects = data.names.map((name, i) => ({ id: projectIdOf(i), name }))
          yield* sql`INSERT INTO projects ${
            sql.insert(projects.map((p) => ({
              id: p.id,
              name: p.name,
              api_key: "sk-x",
              api_key_hint: "sk-x",
              provider: "openai",
              is_active: dialect === "sqlite" ? 1 : true,
              created_at: NOW,
              updated_at: NOW
            })))
          }`
          const ref: Array<RefToken> = data.tokens.map((t) => ({
            id: t.id,
            projectId: projectIdOf(t.project),
            createdUs: T0_US + t.createdSecond * 1_000_000 + (dialect === "postgres" ? t.createdMicro : 0),
            // as stored: SQLite keeps milliseconds
            expiresUs: ((us) => us === null || dialect === "postgres" ? us : Math.floor(us / 1000) * 1000)(
              expiresUs(t.expires)
            ),
            isActive: t.revoked === "no"
          }))
          if (ref.length > 0) {
            yield* sql`INSERT INTO tokens ${
              sql.insert(ref.map((t, i) => ({
                id: t.id,
                token_hash: `hash-${t.id}`,
                token_hint: "sk-abcd****wxyz",
                project_id: t.projectId,
                expires_at: t.expiresUs === null ? null : timeText(t.expiresUs, dialect),
                is_active: dialect === "sqlite" ? (t.isActive ? 1 : 0) : t.isActive,
                deactivated_at: data.tokens[i]!.revoked === "yes" ? NOW : null,
                created_at: timeText(t.createdUs, dialect)
              })))
            }`
          }

          for (const q of data.tokenQueries) {
            const search = q.search === undefined
              ? undefined
              : typeof q.search === "string"
              ? q.search
              : ref.length === 0
              ? "0"
              : ref[q.search.of % ref.length]!.id.slice(0, q.search.length)
            const filter: TokenFilter = {
              now: NOW,
              ...(q.project !== undefined ? { projectId: projectIdOf(q.project) } : {}),
              ...(q.status !== undefined ? { status: q.status } : {}),
              ...(search !== undefined ? { search } : {})
            }
            const expected = ref
              .filter((t) =>
                (filter.projectId === undefined || t.projectId === filter.projectId) &&
                (filter.status === undefined || statusOf(t) === filter.status) &&
                (search === undefined || t.id.startsWith(search))
              )
              .sort(byKeyDesc)
              .map((t) => t.id)
            yield* walk(
              (request) => store.listTokens(filter, request),
              expected,
              q.size,
              (t: TokenRow) => t.id,
              `tokens ${JSON.stringify({ ...filter, size: q.size })}`
            )
          }

          const counts = yield* store.countTokens(NOW, COUNT_CAP)
          for (const status of ["active", "expired", "revoked"] as const) {
            expect(counts[status]).toEqual({ count: ref.filter((t) => statusOf(t) === status).length, exact: true })
          }
          for (let i = 0; i <= PROJECTS; i++) {
            const mine = ref.filter((t) => t.projectId === projectIdOf(i))
            const perProject = yield* store.countTokens(NOW, COUNT_CAP, projectIdOf(i))
            for (const status of ["active", "expired", "revoked"] as const) {
              expect(perProject[status]).toEqual({
                count: mine.filter((t) => statusOf(t) === status).length,
                exact: true
              })
            }
          }
          const capped = yield* store.countTokens(NOW, 2)
          for (const status of ["active", "expired", "revoked"] as const) {
            const n = ref.filter((t) => statusOf(t) === status).length
            expect(capped[status]).toEqual(n > 2 ? { count: 2, exact: false } : { count: n, exact: true })
          }

          const byName = [...projects].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
          expect((yield* store.listProjects).map((p) => p.id)).toEqual(byName.map((p) => p.id))
          for (const q of data.projectQueries) {
            const search = q.search?.trim() ?? ""
            const expected = byName
              .filter((p) =>
                search === "" || p.name.toLowerCase().includes(search.toLowerCase()) || p.id === search.toLowerCase()
              )
              .map((p) => p.id)
            const pages = Math.max(1, Math.ceil(expected.length / q.size))
            // first, every middle one, the last, and one past the end
            for (let page = 1; page <= pages + 1; page++) {
              const result = yield* store.listProjectsPage({
                search,
                limit: q.size,
                offset: (page - 1) * q.size,
                countCap: q.countCap
              })
              expect({
                rows: result.rows.map((p) => p.id),
                hasNext: result.hasNext,
                total: result.total,
                totalExact: result.totalExact
              }, `projects ${JSON.stringify({ ...q, search, page })}`).toEqual({
                rows: expected.slice((page - 1) * q.size, page * q.size),
                hasNext: page * q.size < expected.length,
                total: Math.min(expected.length, q.countCap),
                totalExact: expected.length <= q.countCap
              })
            }
          }
        }),
      { fastCheck: { numRuns: dialect === "sqlite" ? 40 : 20 } }
    )
  })

describe("paged listings on SQLite", () => suite("sqlite"))

describe.skipIf(!postgresUrl)("paged listings on PostgreSQL (needs DATABASE_URL)", () => suite("postgres"))
