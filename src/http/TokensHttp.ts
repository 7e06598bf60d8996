/** Handlers of the `tokens` group (reference-system.md §2.4 with the CONTRACT §4 changes). */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Either, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { generateProxyToken, hashProxyToken, tokenHint } from "../crypto/ProxyToken.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, Forbidden, NotFound } from "../domain/errors.js"
import { CreateToken, type ListTokensParams, UpdateToken } from "../domain/models.js"
import { isUuid, parseBooleanParam, parsePageParam, parseTimestamp } from "../domain/validation.js"
import { firstPage, type PagePosition } from "../store/keyset.js"
import { COUNT_CAP, Store, type TokenFilter, type TokenStatus } from "../store/Store.js"
import { TokenValidator } from "../token/TokenValidator.js"
import { audited } from "./auditing.js"
import { decodeBody, readJson, readPayload, validate } from "./body.js"
import { decodeCursor, encodeCursor } from "./cursor.js"
import { budgetPatch, budgetRow, quotaRow, rateLimitRow, tokenJson } from "./present.js"
import { internal } from "./ProjectsHttp.js"

const tokenNotFound = new NotFound({ error: "token not found" })

/** The most tokens the unpaged (array) form of `GET /manage/tokens` returns. */
export const LIST_MAX = 10_000

const STATUSES: ReadonlyArray<TokenStatus> = ["active", "expired", "revoked"]

export interface TokenListQuery {
  readonly projectId: string | undefined
  readonly filter: Omit<TokenFilter, "now">
  /** Present with page_size or cursor: the answer is one TokenPage. */
  readonly paged: { readonly pageSize: number; readonly position: PagePosition } | undefined
}

/** The query of `GET /manage/tokens`, validated. */
export const parseTokenListQuery = (p: typeof ListTokensParams.Type): Either.Either<TokenListQuery, string> =>
  Either.gen(function*() {
    const activeOnly = yield* parseBooleanParam(p.active_only)
    const raw = p.project_id ?? p.projectId
    if (raw !== undefined && raw !== "" && !isUuid(raw)) return yield* Either.left("invalid project_id")
    const projectId = raw ? raw.toLowerCase() : undefined
    const statusText = p.status?.trim().toLowerCase() ?? ""
    if (statusText !== "" && !(STATUSES as ReadonlyArray<string>).includes(statusText)) {
      return yield* Either.left("status must be active, expired or revoked")
    }
    if (activeOnly && statusText !== "" && statusText !== "active") {
      return yield* Either.left("active_only=true conflicts with status")
    }
    const status = activeOnly ? "active" : statusText === "" ? undefined : (statusText as TokenStatus)
    const search = p.search?.trim().toLowerCase() ?? ""
    if (search.length > 128) return yield* Either.left("search must be at most 128 characters")
    const paged = p.page_size !== undefined || p.cursor !== undefined
    const pageSize = yield* parsePageParam("page_size", p.page_size, 1, 100, 20)
    const position = yield* decodeCursor(p.cursor)
    return {
      projectId,
      filter: {
        ...(projectId !== undefined ? { projectId } : {}),
        ...(status !== undefined ? { status } : {}),
        ...(search !== "" ? { search } : {})
      },
      paged: paged ? { pageSize, position } : undefined
    }
  })

const tokenId = (raw: string) =>
  isUuid(raw) ? Effect.succeed(raw.toLowerCase()) : Effect.fail(new BadRequest({ error: "invalid token id" }))

const orNotFound = <A>(o: Option.Option<A>) =>
  Option.match(o, { onNone: () => Effect.fail(tokenNotFound), onSome: Effect.succeed })

const readCreateToken = readPayload(CreateToken)
const decodeUpdateToken = decodeBody(UpdateToken)

export const TokensLive = HttpApiBuilder.group(ManagementApi, "tokens", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    const validator = yield* TokenValidator

    return handlers
      .handle("list", ({ urlParams }) =>
        audited(AuditActions.tokenList, (note) =>
        Effect.gen(function*() {
          const query = yield* validate(parseTokenListQuery(urlParams))
          if (query.projectId !== undefined) note.projectId = query.projectId
          const nowMs = yield* Clock.currentTimeMillis
          const filter = { ...query.filter, now: new Date(nowMs).toISOString() }
          Object.assign(note.details, {
            filtered_by_project: query.projectId !== undefined,
            active_only: query.filter.status === "active",
            ...(query.filter.status !== undefined ? { status: query.filter.status } : {}),
            ...(query.filter.search !== undefined ? { search: query.filter.search } : {})
          })
          if (query.paged === undefined) {
            // The legacy array: the newest LIST_MAX, with a header saying when more match.
            const page = yield* store.listTokens(filter, { limit: LIST_MAX, position: firstPage })
            note.details["token_count"] = page.rows.length
            const body = page.rows.map((r) => tokenJson(r, nowMs))
            return page.hasNext ? HttpServerResponse.unsafeJson(body, { headers: { "x-truncated": "true" } }) : body
          }
          const { pageSize, position } = query.paged
          const page = yield* store.listTokens(filter, { limit: pageSize, position })
          note.details["token_count"] = page.rows.length
          note.details["page_size"] = pageSize
          return {
            tokens: page.rows.map((r) => tokenJson(r, nowMs)),
            pagination: {
              page_size: pageSize,
              has_next: page.hasNext,
              has_prev: page.hasPrev,
              next_cursor: page.hasNext && page.lastKey !== undefined ? encodeCursor("after", page.lastKey) : null,
              prev_cursor: page.hasPrev && page.firstKey !== undefined ? encodeCursor("before", page.firstKey) : null
            }
          }
        }).pipe(Effect.catchTag("StoreError", internal("failed to list tokens")))))
      .handle("counts", ({ urlParams }) =>
        audited(AuditActions.tokenList, (note) =>
          Effect.gen(function*() {
            const raw = urlParams.project_id
            if (raw !== undefined && raw !== "" && !isUuid(raw)) return yield* new BadRequest({ error: "invalid project_id" })
            const projectId = raw ? raw.toLowerCase() : undefined
            if (projectId !== undefined) note.projectId = projectId
            const now = new Date(yield* Clock.currentTimeMillis).toISOString()
            const counts = yield* store.countTokens(now, COUNT_CAP, projectId)
            note.details["counts"] = true
            return counts
          }).pipe(Effect.catchTag("StoreError", internal("failed to count tokens")))))
      .handleRaw("create", ({ request }) =>
        audited(AuditActions.tokenCreate, (note) =>
        Effect.gen(function*() {
          const input = yield* readCreateToken(request)
          const projectId = input.project_id.toLowerCase()
          note.projectId = projectId
          note.details["duration_minutes"] = input.duration_minutes
          const nowMs = yield* Clock.currentTimeMillis
          const secret = generateProxyToken()
          // One statement checks the project (exists, active) and inserts the token.
          const result = yield* store.createTokenForProject({
            id: crypto.randomUUID(),
            tokenHash: hashProxyToken(secret),
            tokenHint: tokenHint(secret),
            projectId,
            expiresAt: new Date(nowMs + input.duration_minutes * 60_000).toISOString(),
            maxRequests: quotaRow(input.max_requests ?? null),
            rateLimit: rateLimitRow(input.rate_limit ?? null),
            budget: budgetRow(input),
            now: new Date(nowMs).toISOString()
          })
          if (result._tag === "project_not_found") return yield* new NotFound({ error: "project not found" })
          if (result._tag === "project_inactive") {
            return yield* new Forbidden({ error: "cannot create tokens for inactive projects", code: "project_inactive" })
          }
          const row = result.token
          note.tokenId = row.id
          note.details["expires_at"] = row.expiresAt
          if (row.maxRequests !== null) note.details["max_requests"] = row.maxRequests
          if (row.budget.maxCostUsd !== null) note.details["max_cost_usd"] = row.budget.maxCostUsd
          if (row.budget.maxTokens !== null) note.details["max_tokens"] = row.budget.maxTokens
          return {
            id: row.id,
            token: secret,
            project_id: row.projectId,
            expires_at: row.expiresAt ?? "",
            ...(row.maxRequests !== null ? { max_requests: row.maxRequests } : {})
          }
        }).pipe(Effect.catchTag("StoreError", internal("failed to store token")))))
      .handle("get", ({ path }) =>
        audited(AuditActions.tokenRead, (note) =>
          Effect.gen(function*() {
            const id = yield* tokenId(path.id)
            note.tokenId = id
            const token = yield* orNotFound(yield* store.getToken(id))
            note.projectId = token.projectId
            return tokenJson(token, yield* Clock.currentTimeMillis)
          }).pipe(Effect.catchTag("StoreError", internal("failed to get token")))))
      .handleRaw("update", ({ path, request }) =>
        audited(AuditActions.tokenUpdate, (note) =>
          Effect.gen(function*() {
            const id = yield* tokenId(path.id)
            note.tokenId = id
            const body = yield* readJson(request)
            // Existence is checked before the fields, as the reference does.
            const current = yield* orNotFound(yield* store.getToken(id))
            note.projectId = current.projectId
            const input = yield* decodeUpdateToken(body)
            const expiresAt = input.expires_at === undefined ? undefined : parseTimestamp(input.expires_at)
            const budget = budgetPatch(input)
            const patch = {
              ...(input.is_active !== undefined ? { isActive: input.is_active } : {}),
              ...(input.max_requests !== undefined ? { maxRequests: quotaRow(input.max_requests) } : {}),
              ...(expiresAt !== undefined ? { expiresAt } : {}),
              ...(input.rate_limit !== undefined ? { rateLimit: rateLimitRow(input.rate_limit) } : {}),
              ...(budget !== undefined ? { budget } : {})
            }
            if (patch.isActive !== undefined) note.details["updated_is_active"] = patch.isActive
            if (patch.maxRequests !== undefined) note.details["updated_max_requests"] = patch.maxRequests ?? "unlimited"
            if (patch.expiresAt !== undefined) note.details["updated_expires_at"] = patch.expiresAt
            if (budget?.maxCostUsd !== undefined) note.details["updated_max_cost_usd"] = budget.maxCostUsd ?? "none"
            if (budget?.maxTokens !== undefined) note.details["updated_max_tokens"] = budget.maxTokens ?? "none"
            if (budget?.period !== undefined) note.details["updated_budget_period"] = budget.period
            const row = yield* store.updateToken(id, {
              ...patch,
              now: new Date(yield* Clock.currentTimeMillis).toISOString()
            })
            yield* validator.invalidate({ kind: "token", id })
            yield* validator.settled
            return tokenJson(yield* orNotFound(row), yield* Clock.currentTimeMillis)
          }).pipe(Effect.catchTag("StoreError", internal("failed to update token")))))
      .handle("revoke", ({ path }) =>
        audited(AuditActions.tokenRevoke, (note) =>
          Effect.gen(function*() {
            const id = yield* tokenId(path.id)
            note.tokenId = id
            const before = yield* orNotFound(yield* store.getToken(id))
            note.projectId = before.projectId
            note.details["already_revoked"] = !before.isActive
            const found = yield* store.revokeToken(id, new Date(yield* Clock.currentTimeMillis).toISOString())
            if (!found) return yield* tokenNotFound
            yield* validator.invalidate({ kind: "token", id })
            yield* validator.settled
            return HttpServerResponse.empty({ status: 204 })
          }).pipe(Effect.catchTag("StoreError", internal("failed to revoke token")))))
  }))
