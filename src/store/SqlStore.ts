/**
 * Store on @effect/sql. The SQL is shared by both dialects; the differences are handled at the edges: rows are
 * decoded by the schemas of rows.ts (booleans, timestamps and bigints as either driver returns them), and
 * unique-violation codes and boolean parameters here.
 */
import { SqlClient, SqlError, SqlSchema, type Statement } from "@effect/sql"
import { Effect, Layer, Option, ParseResult, Schema, type Scope } from "effect"
import { CountRow, decodeFirst, decodeRows, rowError, withStoreSpan } from "./columns.js"
import { boundedCount, keysetPage } from "./keyset.js"
import {
  ProjectFromRow,
  ProjectKeyFromRow,
  ProjectStateFromRow,
  QuotaStateFromRow,
  SpendPairFromRow,
  TokenAuthFromRow,
  TokenFromRow,
  UsagePointFromRow
} from "./rows.js"
import {
  type BudgetRow,
  type BulkRevoke,
  COUNT_CAP,
  type CreateTokenResult,
  DuplicateProjectName,
  type NewToken,
  type ProjectRow,
  type QuotaResult,
  type RateLimitRow,
  type SpendDelta,
  type SpendRow,
  Store,
  type StoredKey,
  StoreError,
  type StoreShape,
  type TokenCount,
  type TokenFilter,
  type TokenRow,
  type TokenStatus
} from "./Store.js"
import { mergeHourlyUsage } from "./usage.js"

type Dialect = StoreShape["dialect"]

/** What a JSON column stores for a value (null stays NULL). */
const jsonText = (v: unknown): string | null => (v === null || v === undefined ? null : JSON.stringify(v))

/** A limit as a read gives it back (absent counts are null). */
const normalLimit = (l: RateLimitRow | null | undefined): RateLimitRow | null =>
  l === null || l === undefined
    ? null
    : { requests: l.requests ?? null, tokens: l.tokens ?? null, windowSeconds: l.windowSeconds }

const budgetColumns = (b: BudgetRow | undefined) => ({
  max_cost_usd: b?.maxCostUsd ?? null,
  max_tokens: b?.maxTokens ?? null,
  budget_period: b?.period ?? "total"
})

const NO_BUDGET_ROW: BudgetRow = { maxCostUsd: null, maxTokens: null, period: "total" }
/**
 * Rows written in one order by every instance (sorted by `key`): two instances' batches that touch the same rows on
 * PostgreSQL then take their row locks in the same order and wait for each other instead of deadlocking (a deadlock
 * costs the loser's whole batch, retried a flush later).
 */
const inLockOrder = <A>(rows: ReadonlyArray<A>, key: (a: A) => string): ReadonlyArray<A> =>
  [...rows].sort((a, b) => compareText(key(a), key(b)))

const compareText = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0)

/**
 * Spend deltas projects before tokens (the order of every statement that locks a project and then its tokens: a
 * bulk revoke, a deactivation), then id, then older day first for one row (a period restarts with its first delta).
 */
const spendInLockOrder = (deltas: ReadonlyArray<SpendDelta>): ReadonlyArray<SpendDelta> =>
  [...deltas].sort((a, b) =>
    (a.scope === b.scope ? compareText(a.id, b.id) : a.scope === "project" ? -1 : 1) ||
    a.dayStart - b.dayStart
  )

const NOTHING_SPENT_ROW: SpendRow = {
  spentUsd: 0,
  tokensUsed: 0,
  dayStart: null,
  dayCostUsd: 0,
  dayTokens: 0,
  monthStart: null,
  monthCostUsd: 0,
  monthTokens: 0
}

/** The columns that hold a project's keys: the list, and its first key where rows before lists keep it. */
const keyColumns = (keys: ReadonlyArray<StoredKey>) => ({
  api_key: keys[0]!.key,
  api_key_hint: keys[0]!.hint,
  api_keys: JSON.stringify(
    keys.map((k) => ({ id: k.id, key: k.key, hint: k.hint, weight: k.weight, provider: k.provider }))
  )
})

const isUniqueViolation = (e: SqlError.SqlError): boolean => {
  const code = (e.cause as { code?: unknown } | undefined)?.code
  return code === "23505" || code === "SQLITE_CONSTRAINT_UNIQUE"
}

/** What a token id can start with: token ids are lowercase UUIDs. */
const ID_PREFIX = /^[0-9a-f-]{1,36}$/

const HEX = "0123456789abcdef"

/**
 * An upper bound for the ids starting with `prefix` (an id prefix): the next hex prefix, ignoring dashes — ids
 * have theirs at fixed places, so this holds whether the database's collation orders dashes or ignores them.
 * Undefined when there is none (`ffff`).
 */
export const idPrefixEnd = (prefix: string): string | undefined => {
  for (let i = prefix.length - 1; i >= 0; i--) {
    const at = HEX.indexOf(prefix[i]!)
    // a dash is skipped, an `f` carries into the character before it
    if (at >= 0 && at < HEX.length - 1) return prefix.slice(0, i) + HEX[at + 1]
  }
  return undefined
}

const storeError = (operation: string) => (cause: SqlError.SqlError) =>
  new StoreError({ message: `database error during ${operation}`, cause })

/** The most token creations one group commit takes. */
export const CREATE_BATCH_MAX = 256

const newTokenRow = (t: NewToken): TokenRow => ({
  id: t.id,
  tokenHash: t.tokenHash,
  tokenHint: t.tokenHint,
  projectId: t.projectId,
  expiresAt: t.expiresAt,
  isActive: true,
  deactivatedAt: null,
  requestCount: 0,
  maxRequests: t.maxRequests,
  rateLimit: normalLimit(t.rateLimit),
  cacheHitCount: 0,
  promptTokens: 0,
  completionTokens: 0,
  budget: t.budget ?? NO_BUDGET_ROW,
  spend: NOTHING_SPENT_ROW,
  createdAt: t.now,
  lastUsedAt: null,
  allowedModels: t.allowedModels ?? null,
  name: t.name ?? null,
  user: t.user ?? null,
  metadata: t.metadata ?? null,
  projectKeyId: t.projectKeyId ?? null
})

export const make = (dialect: Dialect): Effect.Effect<StoreShape, never, SqlClient.SqlClient | Scope.Scope> =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    // better-sqlite3 cannot bind booleans; Postgres wants real ones.
    const b = (v: boolean): boolean | number => (dialect === "sqlite" ? (v ? 1 : 0) : v)
    const TRUE = b(true)
    const FALSE = b(false)

    // A database error, or a row that does not decode (written by hand), is a StoreError.
    const wrap = <A, E, R>(
      operation: string,
      effect: Effect.Effect<A, E | SqlError.SqlError | ParseResult.ParseError, R>
    ) =>
      Effect.catchIf(
        effect,
        (e): e is SqlError.SqlError | ParseResult.ParseError =>
          e instanceof SqlError.SqlError || ParseResult.isParseError(e),
        (e) =>
          Effect.fail(
            ParseResult.isParseError(e) ? rowError(`database error during ${operation}`, e) : storeError(operation)(e)
          )
      ).pipe(withStoreSpan(`Store.${operation}`)) as Effect.Effect<
        A,
        Exclude<E, SqlError.SqlError | ParseResult.ParseError> | StoreError,
        R
      >

    // Queries by one key, and decoders of results, with their row schemas (rows.ts).
    const selectProject = SqlSchema.findOne({
      Request: Schema.String,
      Result: ProjectFromRow,
      execute: (id) => sql`SELECT * FROM projects WHERE id = ${id}`
    })
    const projects = decodeRows(ProjectFromRow)
    const firstToken = decodeFirst(TokenFromRow)
    const token = SqlSchema.findOne({
      Request: Schema.String,
      Result: TokenFromRow,
      execute: (id) => sql`SELECT * FROM tokens WHERE id = ${id}`
    })
    const tokenByHash = SqlSchema.findOne({
      Request: Schema.String,
      Result: TokenFromRow,
      execute: (hash) => sql`SELECT * FROM tokens WHERE token_hash = ${hash}`
    })
    const firstProjectKey = decodeFirst(ProjectKeyFromRow)
    const tokenAuth = SqlSchema.findOne({
      Request: Schema.String,
      Result: TokenAuthFromRow,
      execute: (hash) =>
        sql`SELECT t.id AS token_id, t.project_id, t.expires_at, t.is_active AS token_active, t.max_requests,
            t.rate_limit_requests AS token_rl_requests, t.rate_limit_window_seconds AS token_rl_window,
            t.rate_limit_tokens AS token_rl_tokens, t.max_cost_usd AS t_max_cost_usd, t.max_tokens AS t_max_tokens,
            t.budget_period AS t_budget_period,
            p.is_active AS project_active, p.api_key, p.api_key_hint, p.api_keys, p.provider,
            p.rate_limit_requests AS project_rl_requests, p.rate_limit_window_seconds AS project_rl_window,
            p.rate_limit_tokens AS project_rl_tokens, p.max_cost_usd AS p_max_cost_usd, p.max_tokens AS p_max_tokens,
            p.budget_period AS p_budget_period,
            t.allowed_models AS token_models, p.allowed_models AS project_models, t.name, t.end_user, t.metadata
          FROM tokens t JOIN projects p ON p.id = t.project_id WHERE t.token_hash = ${hash}`
    })
    const quotaState = decodeFirst(QuotaStateFromRow)
    const usagePoints = decodeRows(UsagePointFromRow)
    const projectKeys = decodeRows(ProjectKeyFromRow)
    const projectStates = decodeRows(ProjectStateFromRow)
    const spendPair = decodeFirst(SpendPairFromRow)

    const duplicateName =
      (name: string) => (e: SqlError.SqlError): Effect.Effect<never, SqlError.SqlError | DuplicateProjectName> =>
        isUniqueViolation(e) ? Effect.fail(new DuplicateProjectName({ name })) : Effect.fail(e)

    /**
     * The project, locked until the transaction ends on Postgres. FOR UPDATE also conflicts with the FOR KEY SHARE
     * lock that inserting a token takes on its project (foreign-key check), so no token of the project can be
     * created while the transaction counts and revokes them. (SQLite: the client runs one transaction at a time.)
     */
    const selectProjectForUpdate = (id: string) =>
      dialect === "postgres"
        ? Effect.flatMap(sql`SELECT * FROM projects WHERE id = ${id} FOR UPDATE`, decodeFirst(ProjectFromRow))
        : selectProject(id)

    // SQLite's unary + keeps a column from choosing the index (PostgreSQL plans from its statistics instead).
    const unindexed = (column: string) => (dialect === "sqlite" ? sql.literal(`+${column}`) : sql(column))
    // A literal, so SQLite can use the partial index of revoked tokens (it cannot prove a bound parameter is 0).
    const REVOKED = sql.literal(dialect === "sqlite" ? "is_active = 0" : "NOT is_active")

    /**
     * What a token search matches, one predicate per searched field, combined with OR: the id prefix (any case), the
     * exact end user, the exact name. An id prefix of three characters or more is searched through the primary key
     * (at most 1/4096 of the ids start with it, so sorting them is cheap); a shorter one is a filter on the listing's
     * own order. User and name are read through their indexes.
     */
    const tokenSearch = (search: string): ReadonlyArray<Statement.Fragment> => {
      const id = search.toLowerCase()
      return [
        ...(ID_PREFIX.test(id)
          ? [
            id.length >= 3
              ? sql.and([
                sql`id >= ${id}`,
                ...Option.toArray(Option.map(Option.fromNullable(idPrefixEnd(id)), (end) => sql`id < ${end}`)),
                sql`id LIKE ${`${id}%`}`
              ])
              : sql`id LIKE ${`${id}%`}`
          ]
          : []),
        sql`end_user = ${search}`,
        sql`name = ${search}`
      ]
    }

    const tokenConditions = (f: TokenFilter): ReadonlyArray<Statement.Fragment> => {
      const search = f.search ?? ""
      const matches = search === "" ? [] : tokenSearch(search)
      // A search (or a user / name filter) is selective: its own indexes must drive the query, not the project or
      // status index.
      const selective = search !== "" || f.user !== undefined || f.name !== undefined
      const column = (name: string) => (selective ? unindexed(name) : sql(name))
      return [
        ...(f.user !== undefined ? [sql`end_user = ${f.user}`] : []),
        ...(f.name !== undefined ? [sql`name = ${f.name}`] : []),
        ...(f.projectId !== undefined ? [sql`${column("project_id")} = ${f.projectId}`] : []),
        ...(f.status === "active"
          ? [sql`${column("is_active")} = ${TRUE}`, sql`(expires_at IS NULL OR expires_at > ${f.now})`]
          : f.status === "expired"
          ? [sql`${column("is_active")} = ${TRUE}`, sql`expires_at <= ${f.now}`]
          : f.status === "revoked"
          ? [sql`${column("is_active")} = ${FALSE}`]
          : []),
        ...(search === "" ? [] : [sql.or(matches)])
      ]
    }

    /**
     * Counts up to `cap` tokens, reading them in the order where they usually sit (active tokens are the newest,
     * expired ones the oldest), so the count stops early.
     */
    const cappedTokenCount = (
      conditions: ReadonlyArray<Statement.Fragment>,
      order: "ASC" | "DESC",
      cap: number
    ): Effect.Effect<TokenCount, SqlError.SqlError | ParseResult.ParseError> =>
      boundedCount(sql, "tokens", conditions, cap, sql`ORDER BY created_at ${sql.literal(order)}`)

    const tokenColumns = (t: NewToken) => ({
      id: t.id,
      token_hash: t.tokenHash,
      token_hint: t.tokenHint,
      project_id: t.projectId,
      expires_at: t.expiresAt,
      is_active: TRUE,
      max_requests: t.maxRequests,
      rate_limit_requests: t.rateLimit?.requests ?? null,
      rate_limit_window_seconds: t.rateLimit?.windowSeconds ?? null,
      rate_limit_tokens: t.rateLimit?.tokens ?? null,
      ...budgetColumns(t.budget),
      created_at: t.now,
      allowed_models: jsonText(t.allowedModels),
      name: t.name ?? null,
      end_user: t.user ?? null,
      metadata: jsonText(t.metadata),
      project_key_id: t.projectKeyId ?? null
    })

    /** The token, inserted only while its project exists and is active; else which of the two it is not. */
    const insertForProject = (t: NewToken): Effect.Effect<CreateTokenResult, SqlError.SqlError> =>
      Effect.gen(function*() {
        const c = tokenColumns(t)
        const inserted = yield* sql`INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at,
            is_active, max_requests, rate_limit_requests, rate_limit_window_seconds, rate_limit_tokens, max_cost_usd,
            max_tokens, budget_period, created_at, allowed_models, name, end_user, metadata, project_key_id)
          SELECT ${c.id}, ${c.token_hash}, ${c.token_hint}, ${c.project_id}, ${c.expires_at}, ${c.is_active},
            ${c.max_requests}, ${c.rate_limit_requests}, ${c.rate_limit_window_seconds}, ${c.rate_limit_tokens},
            ${c.max_cost_usd}, ${c.max_tokens}, ${c.budget_period}, ${c.created_at},
            ${c.allowed_models}, ${c.name}, ${c.end_user}, ${c.metadata}, ${c.project_key_id}
          FROM projects WHERE id = ${t.projectId} AND is_active = ${TRUE}
          RETURNING id`
        if (inserted.length > 0) return { _tag: "created", token: newTokenRow(t) }
        const found = yield* sql`SELECT 1 AS found FROM projects WHERE id = ${t.projectId}`
        return found.length === 0 ? { _tag: "project_not_found" } : { _tag: "project_inactive" }
      })

    /**
     * SQLite group commit: creations queue up while the one connection is busy and the writer commits whatever is
     * waiting in one transaction — one WAL append (and, with SQLITE_SYNCHRONOUS=full, one fsync) per batch instead of
     * per token. A batch that fails as a whole is retried token by token, so one bad row fails only its own request.
     */
    type Pending = {
      readonly token: NewToken
      readonly resume: (answer: Effect.Effect<CreateTokenResult, SqlError.SqlError>) => void
    }
    // Creations waiting for the writer, in arrival order. A plain array and a latch rather than a queue and a Deferred
    // per creation: those cost more per token than its insert (measured).
    const waiting: Array<Pending> = []
    const arrived = yield* Effect.makeLatch(false)
    // One transaction, two statements for the whole batch: which of its projects exist and are active, then one
    // multi-row insert of the tokens whose project is (statement by statement, the SQL client's own work per token
    // cost more than the insert).
    const insertBatch = (batch: ReadonlyArray<Pending>) =>
      Effect.gen(function*() {
        const projectIds = [...new Set(batch.map((p) => p.token.projectId))]
        const found = yield* projectStates(
          yield* sql`SELECT id, is_active FROM projects WHERE id IN ${sql.in(projectIds)}`
        )
        const active = new Map(found.map((p) => [p.id, p.isActive]))
        const admitted = batch.filter((p) => active.get(p.token.projectId) === true)
        if (admitted.length > 0) {
          yield* sql`INSERT INTO tokens ${sql.insert(admitted.map((p) => tokenColumns(p.token)))}`
        }
        return batch.map((p): CreateTokenResult => {
          const state = active.get(p.token.projectId)
          return state === undefined
            ? { _tag: "project_not_found" }
            : state
            ? { _tag: "created", token: newTokenRow(p.token) }
            : { _tag: "project_inactive" }
        })
      })
    const commitBatch = (batch: ReadonlyArray<Pending>) =>
      sql.withTransaction(insertBatch(batch)).pipe(
        Effect.flatMap((results) => Effect.sync(() => batch.forEach((p, i) => p.resume(Effect.succeed(results[i]!))))),
        Effect.catchAll(() =>
          Effect.forEach(
            batch,
            (p) => Effect.map(Effect.exit(insertForProject(p.token)), (exit) => p.resume(exit)),
            { discard: true }
          )
        )
      )
    // SQLite answers at once, so the writer woke by a creation would commit it alone before any other request got as
    // far (one transaction per token, measured): it first lets the event loop turn once, for the creations under way
    // to join the batch. A batch once taken is committed and answered even while the layer closes.
    const nextTurn = Effect.async<void>((resume) => {
      const turn = setImmediate(() => resume(Effect.void))
      return Effect.sync(() => clearImmediate(turn))
    })
    const takeBatch = Effect.sync(() => {
      const batch = waiting.splice(0, CREATE_BATCH_MAX)
      if (waiting.length === 0) arrived.unsafeClose()
      return batch
    })
    yield* Effect.uninterruptibleMask((restore) =>
      restore(Effect.zipRight(arrived.await, nextTurn)).pipe(
        Effect.zipRight(takeBatch),
        Effect.flatMap((batch) => batch.length === 0 ? Effect.void : commitBatch(batch))
      )
    ).pipe(Effect.forever, Effect.forkScoped)
    const groupCommitted = (token: NewToken) =>
      Effect.async<CreateTokenResult, SqlError.SqlError>((resume) => {
        const pending: Pending = { token, resume }
        waiting.push(pending)
        if (waiting.length === 1) arrived.unsafeOpen()
        // Interrupted while still waiting: it leaves the batch (once taken, it is committed all the same).
        return Effect.sync(() => {
          const at = waiting.indexOf(pending)
          if (at >= 0) waiting.splice(at, 1)
        })
      })

    /**
     * In a transaction that holds the project's lock. On PostgreSQL the tokens are locked first in the order the
     * batches take them (`inLockOrder`: by id, code unit by code unit, as COLLATE "C" sorts ASCII), not in the
     * order the update happens to find them: a usage or spend batch holding one of them then waits, never deadlocks.
     */
    const revokeActiveTokens = (projectId: string, now: string) =>
      Effect.zipRight(
        dialect === "postgres"
          ? Effect.asVoid(sql`SELECT id FROM tokens WHERE project_id = ${projectId} AND is_active = ${TRUE}
              ORDER BY id COLLATE "C" FOR UPDATE`)
          : Effect.void,
        Effect.map(
          sql`UPDATE tokens SET is_active = ${FALSE}, deactivated_at = COALESCE(deactivated_at, ${now})
            WHERE project_id = ${projectId} AND is_active = ${TRUE} RETURNING id`,
          (rows) => rows.length
        )
      )

    const store: StoreShape = {
      dialect,
      ping: wrap("ping", Effect.asVoid(sql`SELECT 1`)),

      listProjects: wrap("listProjects", Effect.flatMap(sql`SELECT * FROM projects ORDER BY name ASC`, projects)),

      listProjectsPage: (q) => {
        const search = q.search?.trim() ?? ""
        // LIKE wildcards in the user's text are matched literally.
        const pattern = `%${search.toLowerCase().replace(/[\\%_]/g, (c) => `\\${c}`)}%`
        const where = search === ""
          ? sql`1 = 1`
          : sql`(LOWER(name) LIKE ${pattern} ESCAPE '\\' OR id = ${search.toLowerCase()})`
        return wrap(
          "listProjectsPage",
          Effect.gen(function*() {
            const rows = yield* sql`SELECT * FROM projects WHERE ${where}
              ORDER BY name ASC LIMIT ${q.limit + 1} OFFSET ${q.offset}`
            const count = yield* boundedCount(sql, "projects", [where], q.countCap ?? COUNT_CAP)
            return {
              rows: yield* projects(rows.slice(0, q.limit)),
              hasNext: rows.length > q.limit,
              total: count.count,
              totalExact: count.exact
            }
          })
        )
      },

      getProject: (id) => wrap("getProject", selectProject(id)),

      createProject: (p) =>
        wrap(
          "createProject",
          sql`INSERT INTO projects ${
            sql.insert({
              id: p.id,
              name: p.name,
              ...keyColumns(p.apiKeys),
              provider: p.provider,
              is_active: TRUE,
              rate_limit_requests: p.rateLimit?.requests ?? null,
              rate_limit_window_seconds: p.rateLimit?.windowSeconds ?? null,
              allowed_models: jsonText(p.allowedModels),
              max_token_minutes: p.maxTokenMinutes ?? null,
              max_token_requests: p.maxTokenRequests ?? null,
              rate_limit_tokens: p.rateLimit?.tokens ?? null,
              ...budgetColumns(p.budget),
              created_at: p.now,
              updated_at: p.now
            })
          }`.pipe(
            Effect.catchAll(duplicateName(p.name)),
            Effect.as<ProjectRow>({
              id: p.id,
              name: p.name,
              apiKey: p.apiKeys[0]!.key,
              apiKeyHint: p.apiKeys[0]!.hint,
              apiKeys: p.apiKeys,
              provider: p.provider,
              isActive: true,
              deactivatedAt: null,
              rateLimit: normalLimit(p.rateLimit),
              allowedModels: p.allowedModels ?? null,
              maxTokenMinutes: p.maxTokenMinutes ?? null,
              maxTokenRequests: p.maxTokenRequests ?? null,
              budget: p.budget ?? NO_BUDGET_ROW,
              spend: NOTHING_SPENT_ROW,
              createdAt: p.now,
              updatedAt: p.now
            })
          )
        ),

      updateProject: (id, patch) =>
        wrap(
          "updateProject",
          sql.withTransaction(
            Effect.gen(function*() {
              const current = yield* selectProjectForUpdate(id)
              if (Option.isNone(current)) return Option.none()
              const was = current.value
              const isActive = patch.isActive ?? was.isActive
              const deactivatedAt = isActive ? null : was.isActive ? patch.now : was.deactivatedAt
              const next: ProjectRow = {
                ...was,
                name: patch.name ?? was.name,
                apiKey: patch.apiKeys?.[0]?.key ?? was.apiKey,
                apiKeyHint: patch.apiKeys?.[0]?.hint ?? was.apiKeyHint,
                apiKeys: patch.apiKeys ?? was.apiKeys,
                provider: patch.provider ?? was.provider,
                rateLimit: patch.rateLimit === undefined ? was.rateLimit : normalLimit(patch.rateLimit),
                allowedModels: patch.allowedModels === undefined ? was.allowedModels : patch.allowedModels,
                maxTokenMinutes: patch.maxTokenMinutes === undefined ? was.maxTokenMinutes : patch.maxTokenMinutes,
                maxTokenRequests: patch.maxTokenRequests === undefined ? was.maxTokenRequests : patch.maxTokenRequests,
                budget: patch.budget === undefined ? was.budget : {
                  maxCostUsd: patch.budget.maxCostUsd === undefined ? was.budget.maxCostUsd : patch.budget.maxCostUsd,
                  maxTokens: patch.budget.maxTokens === undefined ? was.budget.maxTokens : patch.budget.maxTokens,
                  period: patch.budget.period ?? was.budget.period
                },
                isActive,
                deactivatedAt,
                updatedAt: patch.now
              }
              yield* sql`UPDATE projects SET ${
                sql.update({
                  name: next.name,
                  ...(patch.apiKeys !== undefined ? keyColumns(patch.apiKeys) : {}),
                  provider: next.provider,
                  rate_limit_requests: next.rateLimit?.requests ?? null,
                  rate_limit_window_seconds: next.rateLimit?.windowSeconds ?? null,
                  allowed_models: jsonText(next.allowedModels),
                  max_token_minutes: next.maxTokenMinutes,
                  max_token_requests: next.maxTokenRequests,
                  rate_limit_tokens: next.rateLimit?.tokens ?? null,
                  ...budgetColumns(next.budget),
                  is_active: b(next.isActive),
                  deactivated_at: next.deactivatedAt,
                  updated_at: next.updatedAt
                })
              } WHERE id = ${id}`.pipe(Effect.catchAll(duplicateName(next.name)))
              // Revoking applies whether or not the project was already inactive (docs/behaviour.md #19).
              const revoked = patch.revokeTokens === true && !isActive ? yield* revokeActiveTokens(id, patch.now) : 0
              return Option.some({ project: next, revoked })
            })
          )
        ),

      revokeProjectTokens: (id, now) =>
        wrap(
          "revokeProjectTokens",
          sql.withTransaction(
            Effect.gen(function*() {
              // Locked: a token created between the count and the revocation made `alreadyRevoked` negative.
              const project = yield* selectProjectForUpdate(id)
              if (Option.isNone(project)) return Option.none<BulkRevoke>()
              const counted = yield* Effect.flatMap(
                sql`SELECT COUNT(*) AS n FROM tokens WHERE project_id = ${id}`,
                decodeFirst(CountRow)
              )
              const total = Option.getOrElse(counted, () => 0)
              const revoked = yield* revokeActiveTokens(id, now)
              return Option.some({ revoked, alreadyRevoked: total - revoked, total })
            })
          )
        ),

      createToken: (t) =>
        wrap(
          "createToken",
          Effect.as(sql`INSERT INTO tokens ${sql.insert(tokenColumns(t))}`, newTokenRow(t))
        ),

      createTokenForProject: (t) => wrap("createToken", dialect === "sqlite" ? groupCommitted(t) : insertForProject(t)),

      listTokens: (f, page) =>
        wrap(
          "listTokens",
          keysetPage(sql, {
            table: "tokens",
            timeColumn: "created_at",
            idColumn: "id",
            where: tokenConditions(f),
            row: TokenFromRow
          }, page)
        ),

      countTokens: (now, cap, projectId) => {
        const of = (status: TokenStatus) =>
          tokenConditions({ status, now, ...(projectId !== undefined ? { projectId } : {}) })
        return wrap(
          "countTokens",
          Effect.all({
            active: cappedTokenCount(of("active"), "DESC", cap),
            expired: cappedTokenCount(of("expired"), "ASC", cap),
            revoked: cappedTokenCount(of("revoked"), "DESC", cap)
          })
        )
      },

      pruneTokens: (before, limit) =>
        wrap(
          "pruneTokens",
          Effect.map(
            sql`DELETE FROM tokens WHERE id IN (
                SELECT id FROM tokens WHERE expires_at < ${before}
                UNION ALL
                SELECT id FROM tokens WHERE ${REVOKED} AND deactivated_at < ${before}
                LIMIT ${limit}
              ) RETURNING id`,
            (rows) => rows.length
          )
        ),

      getToken: (id) => wrap("getToken", token(id)),

      getTokenByHash: (hash) => wrap("getTokenByHash", tokenByHash(hash)),

      updateToken: (id, patch) => {
        const sets = [
          ...(patch.isActive === true ? [sql`is_active = ${TRUE}`, sql`deactivated_at = NULL`] : []),
          ...(patch.isActive === false
            ? [sql`is_active = ${FALSE}`, sql`deactivated_at = COALESCE(deactivated_at, ${patch.now})`]
            : []),
          ...(patch.maxRequests !== undefined ? [sql`max_requests = ${patch.maxRequests}`] : []),
          ...(patch.expiresAt !== undefined ? [sql`expires_at = ${patch.expiresAt}`] : []),
          ...(patch.rateLimit !== undefined
            ? [
              sql`rate_limit_requests = ${patch.rateLimit?.requests ?? null}`,
              sql`rate_limit_window_seconds = ${patch.rateLimit?.windowSeconds ?? null}`,
              sql`rate_limit_tokens = ${patch.rateLimit?.tokens ?? null}`
            ]
            : []),
          ...(patch.allowedModels !== undefined ? [sql`allowed_models = ${jsonText(patch.allowedModels)}`] : []),
          ...(patch.name !== undefined ? [sql`name = ${patch.name}`] : []),
          ...(patch.user !== undefined ? [sql`end_user = ${patch.user}`] : []),
          ...(patch.metadata !== undefined ? [sql`metadata = ${jsonText(patch.metadata)}`] : []),
          ...(patch.budget?.maxCostUsd !== undefined ? [sql`max_cost_usd = ${patch.budget.maxCostUsd}`] : []),
          ...(patch.budget?.maxTokens !== undefined ? [sql`max_tokens = ${patch.budget.maxTokens}`] : []),
          ...(patch.budget?.period !== undefined ? [sql`budget_period = ${patch.budget.period}`] : [])
        ]
        return wrap(
          "updateToken",
          sets.length === 0
            ? store.getToken(id)
            : Effect.flatMap(sql`UPDATE tokens SET ${sql.csv(sets)} WHERE id = ${id} RETURNING *`, firstToken)
        )
      },

      revokeToken: (id, now) =>
        wrap(
          "revokeToken",
          Effect.map(
            sql`UPDATE tokens SET is_active = ${FALSE}, deactivated_at = COALESCE(deactivated_at, ${now})
              WHERE id = ${id} RETURNING id`,
            (rows) => rows.length > 0
          )
        ),

      getTokenAuth: (hash) => wrap("getTokenAuth", tokenAuth(hash)),

      consumeQuota: (tokenId, now) =>
        wrap(
          "consumeQuota",
          Effect.gen(function*() {
            const updated = yield* sql`UPDATE tokens SET request_count = request_count + 1, last_used_at = ${now}
              WHERE id = ${tokenId} AND is_active = ${TRUE} AND (expires_at IS NULL OR expires_at > ${now})
                AND max_requests IS NOT NULL AND request_count < max_requests
                AND EXISTS (SELECT 1 FROM projects p WHERE p.id = tokens.project_id AND p.is_active = ${TRUE})
              RETURNING id`
            if (updated.length > 0) return "ok" as QuotaResult
            // Nothing updated: say why (the answer differs, the outcome — refused — does not).
            const state = yield* Effect.flatMap(
              sql`SELECT t.is_active, t.expires_at, p.is_active AS project_active
                FROM tokens t JOIN projects p ON p.id = t.project_id WHERE t.id = ${tokenId}`,
              quotaState
            )
            if (Option.isNone(state)) return "not_found" as QuotaResult
            const row = state.value
            if (!row.isActive) return "inactive" as QuotaResult
            if (!row.projectActive) return "project_inactive" as QuotaResult
            if (row.expiresAt !== null && row.expiresAt <= now) return "expired" as QuotaResult
            return "exhausted" as QuotaResult
          })
        ),

      addUsage: (deltas) =>
        deltas.length === 0 ? Effect.void : wrap(
          "addUsage",
          sql.withTransaction(
            Effect.forEach(inLockOrder(deltas, (d) => d.tokenId), (d) =>
              sql`UPDATE tokens SET request_count = request_count + ${d.requests},
                  prompt_tokens = prompt_tokens + ${d.promptTokens},
                  completion_tokens = completion_tokens + ${d.completionTokens},
                  cache_hit_count = cache_hit_count + ${d.cacheHits},
                  last_used_at = COALESCE(${d.lastUsedAt}, last_used_at)
                WHERE id = ${d.tokenId}`, { discard: true })
          )
        ),

      addHourlyUsage: (deltas) => {
        const rows = inLockOrder(mergeHourlyUsage(deltas), (d) => `${d.hour}|${d.tokenId}`).map((d) => ({
          hour: d.hour,
          project_id: d.projectId,
          token_id: d.tokenId,
          requests: d.requests,
          cache_hits: d.cacheHits,
          errors: d.errors,
          prompt_tokens: d.promptTokens,
          completion_tokens: d.completionTokens,
          cost_usd: d.costUsd ?? 0
        }))
        if (rows.length === 0) return Effect.void
        return wrap(
          "addHourlyUsage",
          Effect.asVoid(
            sql`INSERT INTO usage_hourly ${sql.insert(rows)}
              ON CONFLICT (hour, token_id) DO UPDATE SET
                requests = usage_hourly.requests + excluded.requests,
                cache_hits = usage_hourly.cache_hits + excluded.cache_hits,
                errors = usage_hourly.errors + excluded.errors,
                prompt_tokens = usage_hourly.prompt_tokens + excluded.prompt_tokens,
                completion_tokens = usage_hourly.completion_tokens + excluded.completion_tokens,
                cost_usd = usage_hourly.cost_usd + excluded.cost_usd`
          )
        )
      },

      usageSeries: (q) => {
        const conditions = [
          sql`hour >= ${q.since}`,
          sql`hour < ${q.until}`,
          ...(q.projectId !== undefined ? [sql`project_id = ${q.projectId}`] : []),
          ...(q.tokenId !== undefined ? [sql`token_id = ${q.tokenId}`] : []),
          ...(q.user !== undefined ? [sql`token_id IN (SELECT id FROM tokens WHERE end_user = ${q.user})`] : [])
        ]
        return wrap(
          "usageSeries",
          Effect.flatMap(
            sql`SELECT hour, SUM(requests) AS requests, SUM(cache_hits) AS cache_hits, SUM(errors) AS errors,
                SUM(prompt_tokens) AS prompt_tokens, SUM(completion_tokens) AS completion_tokens, SUM(cost_usd) AS cost_usd
              FROM usage_hourly WHERE ${sql.and(conditions)} GROUP BY hour ORDER BY hour`,
            usagePoints
          )
        )
      },

      createProjectKey: (k) =>
        wrap(
          "createProjectKey",
          Effect.flatMap(
            sql`INSERT INTO project_keys (id, project_id, name, key_hash, key_hint, created_at)
              SELECT ${k.id}, ${k.projectId}, ${k.name}, ${k.keyHash}, ${k.keyHint}, ${k.now}
              FROM projects WHERE id = ${k.projectId} RETURNING *`,
            firstProjectKey
          )
        ),

      listProjectKeys: (projectId) =>
        wrap(
          "listProjectKeys",
          Effect.flatMap(
            sql`SELECT * FROM project_keys WHERE project_id = ${projectId} ORDER BY created_at DESC, id DESC`,
            projectKeys
          )
        ),

      getProjectKeyByHash: (hash) =>
        wrap(
          "getProjectKeyByHash",
          Effect.flatMap(sql`SELECT * FROM project_keys WHERE key_hash = ${hash}`, firstProjectKey)
        ),

      revokeProjectKey: (projectId, keyId, now) =>
        wrap(
          "revokeProjectKey",
          Effect.flatMap(
            sql`UPDATE project_keys SET revoked_at = COALESCE(revoked_at, ${now})
              WHERE id = ${keyId} AND project_id = ${projectId} RETURNING *`,
            firstProjectKey
          )
        ),

      touchProjectKey: (id, now, notBefore) =>
        wrap(
          "touchProjectKey",
          Effect.asVoid(
            sql`UPDATE project_keys SET last_used_at = ${now}
              WHERE id = ${id} AND (last_used_at IS NULL OR last_used_at < ${notBefore})`
          )
        ),

      spendOf: (tokenId) =>
        wrap(
          "spendOf",
          Effect.flatMap(
            sql`SELECT t.spent_usd AS t_spent_usd, t.tokens_used AS t_tokens_used, t.day_start AS t_day_start,
                t.day_cost_usd AS t_day_cost_usd, t.day_tokens AS t_day_tokens, t.month_start AS t_month_start,
                t.month_cost_usd AS t_month_cost_usd, t.month_tokens AS t_month_tokens,
                p.spent_usd AS p_spent_usd, p.tokens_used AS p_tokens_used, p.day_start AS p_day_start,
                p.day_cost_usd AS p_day_cost_usd, p.day_tokens AS p_day_tokens, p.month_start AS p_month_start,
                p.month_cost_usd AS p_month_cost_usd, p.month_tokens AS p_month_tokens
              FROM tokens t JOIN projects p ON p.id = t.project_id WHERE t.id = ${tokenId}`,
            spendPair
          )
        ),

      addSpend: (deltas) =>
        deltas.length === 0 ? Effect.void : wrap(
          "addSpend",
          sql.withTransaction(
            Effect.forEach(spendInLockOrder(deltas), (d) => {
              const table = sql(d.scope === "token" ? "tokens" : "projects")
              // A period that began after the stored one starts from this delta; a delta of a period older than
              // the stored one (late) counts only in the totals.
              return sql`UPDATE ${table} SET spent_usd = spent_usd + ${d.costUsd}, tokens_used = tokens_used + ${d.tokens},
                  day_cost_usd = CASE WHEN day_start = ${d.dayStart} THEN day_cost_usd + ${d.costUsd}
                    WHEN day_start IS NULL OR day_start < ${d.dayStart} THEN ${d.costUsd} ELSE day_cost_usd END,
                  day_tokens = CASE WHEN day_start = ${d.dayStart} THEN day_tokens + ${d.tokens}
                    WHEN day_start IS NULL OR day_start < ${d.dayStart} THEN ${d.tokens} ELSE day_tokens END,
                  day_start = CASE WHEN day_start IS NULL OR day_start < ${d.dayStart} THEN ${d.dayStart} ELSE day_start END,
                  month_cost_usd = CASE WHEN month_start = ${d.monthStart} THEN month_cost_usd + ${d.costUsd}
                    WHEN month_start IS NULL OR month_start < ${d.monthStart} THEN ${d.costUsd} ELSE month_cost_usd END,
                  month_tokens = CASE WHEN month_start = ${d.monthStart} THEN month_tokens + ${d.tokens}
                    WHEN month_start IS NULL OR month_start < ${d.monthStart} THEN ${d.tokens} ELSE month_tokens END,
                  month_start = CASE WHEN month_start IS NULL OR month_start < ${d.monthStart} THEN ${d.monthStart}
                    ELSE month_start END
                WHERE id = ${d.id}`
            }, { discard: true })
          )
        )
    }
    return store
  })

export const layer = (dialect: Dialect): Layer.Layer<Store, never, SqlClient.SqlClient> =>
  Layer.scoped(Store, make(dialect))
