/**
 * Handlers of the `tokens` group (docs/management-api.md "Tokens"). A project key may call every
 * one of them for its own project's tokens (callers.ts), within the project's bounds on what it mints
 * (delegation.ts).
 */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Either, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { generateProxyToken, hashProxyToken, tokenHint } from "../crypto/ProxyToken.js"
import { uuidv7 } from "../crypto/uuidv7.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, Forbidden, NotFound, type PayloadTooLarge } from "../domain/errors.js"
import { CreateToken, type ListTokensParams, UpdateToken, USER_MAX } from "../domain/models.js"
import { isUuid, parseBooleanParam, parsePageParam, parseTimestamp } from "../domain/validation.js"
import { firstPage, type PagePosition } from "../store/keyset.js"
import {
  COUNT_CAP,
  type ProjectRow,
  Store,
  type TokenFilter,
  type TokenLabels,
  type TokenStatus
} from "../store/Store.js"
import { TokenValidator } from "../token/TokenValidator.js"
import { audited, type AuditNote } from "./auditing.js"
import { decodeBody, readJson, validate } from "./body.js"
import { caller, isProjectKey, ownProjectOnly, projectScope } from "./callers.js"
import { decodeCursor, encodeCursor } from "./cursor.js"
import { checkDelegation, type DelegatedToken } from "./delegation.js"
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
    // Not lower-cased: an id prefix matches in any case, a user or name exactly.
    const search = p.search?.trim() ?? ""
    if (search.length > USER_MAX) return yield* Either.left(`search must be at most ${USER_MAX} characters`)
    const exact = (name: "user" | "name") => {
      const v = p[name]
      if (v === undefined || v === "") return Either.right(undefined)
      return v.length > USER_MAX ? Either.left(`${name} must be at most ${USER_MAX} characters`) : Either.right(v)
    }
    const user = yield* exact("user")
    const name = yield* exact("name")
    const paged = p.page_size !== undefined || p.cursor !== undefined
    const pageSize = yield* parsePageParam("page_size", p.page_size, 1, 100, 20)
    const position = yield* decodeCursor(p.cursor)
    return {
      projectId,
      filter: {
        ...(projectId !== undefined ? { projectId } : {}),
        ...(status !== undefined ? { status } : {}),
        ...(search !== "" ? { search } : {}),
        ...(user !== undefined ? { user } : {}),
        ...(name !== undefined ? { name } : {})
      },
      paged: paged ? { pageSize, position } : undefined
    }
  })

const tokenId = (raw: string) =>
  isUuid(raw) ? Effect.succeed(raw.toLowerCase()) : Effect.fail(new BadRequest({ error: "invalid token id" }))

const orNotFound = <A>(o: Option.Option<A>) =>
  Option.match(o, { onNone: () => Effect.fail(tokenNotFound), onSome: Effect.succeed })

const decodeCreateToken = decodeBody(CreateToken)
const decodeUpdateToken = decodeBody(UpdateToken)

/** A payload's labels (name, user, metadata, allowed_models) as the store keeps them; absent fields stay absent. */
const labelsOf = (p: {
  readonly name?: string | null | undefined
  readonly user?: string | null | undefined
  readonly metadata?: { readonly [x: string]: string } | null | undefined
  readonly allowed_models?: ReadonlyArray<string> | null | undefined
}): TokenLabels => ({
  ...(p.name !== undefined ? { name: p.name } : {}),
  ...(p.user !== undefined ? { user: p.user } : {}),
  ...(p.metadata !== undefined ? { metadata: p.metadata } : {}),
  ...(p.allowed_models !== undefined ? { allowedModels: p.allowed_models } : {})
})

/** What of the labels goes into an audit event (the audit log is where "who minted this for whom" is looked up). */
const noteLabels = (note: AuditNote, labels: TokenLabels, prefix = "") => {
  if (labels.name !== undefined) note.details[`${prefix}name`] = labels.name
  if (labels.user !== undefined) note.details[`${prefix}user`] = labels.user
  if (labels.metadata !== undefined) note.details[`${prefix}metadata`] = labels.metadata
  if (labels.allowedModels !== undefined) note.details[`${prefix}allowed_models`] = labels.allowedModels
}

/** A project key's request against its project's bounds (delegation.ts): the 400, or what it gets by default. */
const delegated = (token: DelegatedToken, project: ProjectRow) => {
  const verdict = checkDelegation(token, project)
  return verdict._tag === "refused"
    ? Effect.fail(new BadRequest({ error: verdict.message }))
    : Effect.succeed(verdict.defaults)
}

/**
 * `POST /manage/tokens` once the caller is known: reads the body with `readBody`, mints one token and records its
 * `token.create` event. Shared by the HttpApi handler and the direct route (mintRoute.ts).
 */
export const createToken = <R>(readBody: Effect.Effect<unknown, BadRequest | PayloadTooLarge, R>) =>
  Effect.flatMap(Store, (store) =>
    audited(AuditActions.tokenCreate, (note) =>
      Effect.gen(function*() {
        const who = yield* caller
        const body = yield* readBody
        // A project key may leave project_id out: its own project. Filled in before the Schema judges the body.
        const filled = isProjectKey(who) && typeof body === "object" && body !== null && !Array.isArray(body) &&
            !("project_id" in body)
          ? { ...body, project_id: who.projectId }
          : body
        const input = yield* decodeCreateToken(filled)
        const projectId = input.project_id.toLowerCase()
        note.projectId = projectId
        note.details["duration_minutes"] = input.duration_minutes
        yield* ownProjectOnly(who, projectId)
        let maxRequests = input.max_requests
        if (isProjectKey(who)) {
          // Bounded by what the project lets its keys mint. (One read more than the management token's path.)
          const project = yield* Option.match(yield* store.getProject(projectId), {
            onNone: () => Effect.fail(new NotFound({ error: "project not found" })),
            onSome: Effect.succeed
          })
          const defaults = yield* delegated({
            payload: input,
            lifetimeMinutes: input.duration_minutes,
            creating: true
          }, project)
          maxRequests ??= defaults["max_requests"]
        }
        const labels = labelsOf(input)
        noteLabels(note, labels)
        const nowMs = yield* Clock.currentTimeMillis
        const secret = generateProxyToken()
        // The store checks the project (exists, active) and inserts the token in one transaction.
        const result = yield* store.createTokenForProject({
          id: uuidv7(nowMs),
          tokenHash: hashProxyToken(secret),
          tokenHint: tokenHint(secret),
          projectId,
          expiresAt: new Date(nowMs + input.duration_minutes * 60_000).toISOString(),
          maxRequests: quotaRow(maxRequests ?? null),
          rateLimit: rateLimitRow(input.rate_limit ?? null),
          ...labels,
          ...(isProjectKey(who) ? { projectKeyId: who.keyId } : {}),
          budget: budgetRow(input),
          now: new Date(nowMs).toISOString()
        })
        if (result._tag === "project_not_found") return yield* new NotFound({ error: "project not found" })
        if (result._tag === "project_inactive") {
          return yield* new Forbidden({
            error: "cannot create tokens for inactive projects",
            code: "project_inactive"
          })
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
          ...(row.maxRequests !== null ? { max_requests: row.maxRequests } : {}),
          ...(row.name !== null ? { name: row.name } : {}),
          ...(row.user !== null ? { user: row.user } : {}),
          ...(row.metadata !== null ? { metadata: row.metadata } : {}),
          ...(row.allowedModels !== null ? { allowed_models: row.allowedModels } : {})
        }
      }).pipe(Effect.catchTag("StoreError", internal("failed to store token")))))

export const layer = HttpApiBuilder.group(ManagementApi, "tokens", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    const validator = yield* TokenValidator

    return handlers
      .handle("list", ({ urlParams }) =>
        audited(AuditActions.tokenList, (note) =>
          Effect.gen(function*() {
            const query = yield* validate(parseTokenListQuery(urlParams))
            // A project key lists its own project's tokens, whether or not it names the project.
            const projectId = yield* projectScope(yield* caller, query.projectId)
            if (projectId !== undefined) note.projectId = projectId
            const nowMs = yield* Clock.currentTimeMillis
            const filter = {
              ...query.filter,
              ...(projectId !== undefined ? { projectId } : {}),
              now: new Date(nowMs).toISOString()
            }
            Object.assign(note.details, {
              filtered_by_project: projectId !== undefined,
              active_only: query.filter.status === "active",
              ...(query.filter.status !== undefined ? { status: query.filter.status } : {}),
              ...(query.filter.search !== undefined ? { search: query.filter.search } : {}),
              ...(query.filter.user !== undefined ? { user: query.filter.user } : {}),
              ...(query.filter.name !== undefined ? { name: query.filter.name } : {})
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
            if (raw !== undefined && raw !== "" && !isUuid(raw)) {
              return yield* new BadRequest({ error: "invalid project_id" })
            }
            const projectId = yield* projectScope(yield* caller, raw ? raw.toLowerCase() : undefined)
            if (projectId !== undefined) note.projectId = projectId
            const now = new Date(yield* Clock.currentTimeMillis).toISOString()
            const counts = yield* store.countTokens(now, COUNT_CAP, projectId)
            note.details["counts"] = true
            return counts
          }).pipe(Effect.catchTag("StoreError", internal("failed to count tokens")))))
      .handleRaw("create", ({ request }) => createToken(readJson(request)))
      .handle("get", ({ path }) =>
        audited(AuditActions.tokenRead, (note) =>
          Effect.gen(function*() {
            const id = yield* tokenId(path.id)
            note.tokenId = id
            const token = yield* orNotFound(yield* store.getToken(id))
            note.projectId = token.projectId
            yield* ownProjectOnly(yield* caller, token.projectId)
            return tokenJson(token, yield* Clock.currentTimeMillis)
          }).pipe(Effect.catchTag("StoreError", internal("failed to get token")))))
      .handleRaw("update", ({ path, request }) =>
        audited(AuditActions.tokenUpdate, (note) =>
          Effect.gen(function*() {
            const id = yield* tokenId(path.id)
            note.tokenId = id
            const body = yield* readJson(request)
            // Existence is checked before the fields: an unknown id is 404 even with an empty body
            // (docs/behaviour.md #32).
            const current = yield* orNotFound(yield* store.getToken(id))
            note.projectId = current.projectId
            const who = yield* caller
            yield* ownProjectOnly(who, current.projectId)
            const input = yield* decodeUpdateToken(body)
            const expiresAt = input.expires_at === undefined ? undefined : parseTimestamp(input.expires_at)
            const nowMs = yield* Clock.currentTimeMillis
            if (isProjectKey(who)) {
              const project = yield* store.getProject(current.projectId)
              if (Option.isSome(project)) {
                const lifetimeMinutes = expiresAt === undefined ? undefined : (Date.parse(expiresAt) - nowMs) / 60_000
                yield* delegated({ payload: input, lifetimeMinutes, creating: false }, project.value)
              }
            }
            const labels = labelsOf(input)
            noteLabels(note, labels, "updated_")
            const budget = budgetPatch(input)
            const patch = {
              ...(input.is_active !== undefined ? { isActive: input.is_active } : {}),
              ...(input.max_requests !== undefined ? { maxRequests: quotaRow(input.max_requests) } : {}),
              ...(expiresAt !== undefined ? { expiresAt } : {}),
              ...(input.rate_limit !== undefined ? { rateLimit: rateLimitRow(input.rate_limit) } : {}),
              ...labels,
              ...(budget !== undefined ? { budget } : {})
            }
            if (patch.isActive !== undefined) note.details["updated_is_active"] = patch.isActive
            if (patch.maxRequests !== undefined) note.details["updated_max_requests"] = patch.maxRequests ?? "unlimited"
            if (patch.expiresAt !== undefined) note.details["updated_expires_at"] = patch.expiresAt
            if (budget?.maxCostUsd !== undefined) note.details["updated_max_cost_usd"] = budget.maxCostUsd ?? "none"
            if (budget?.maxTokens !== undefined) note.details["updated_max_tokens"] = budget.maxTokens ?? "none"
            if (budget?.period !== undefined) note.details["updated_budget_period"] = budget.period
            const row = yield* store.updateToken(id, { ...patch, now: new Date(nowMs).toISOString() })
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
            yield* ownProjectOnly(yield* caller, before.projectId)
            note.details["already_revoked"] = !before.isActive
            const found = yield* store.revokeToken(id, new Date(yield* Clock.currentTimeMillis).toISOString())
            if (!found) return yield* tokenNotFound
            yield* validator.invalidate({ kind: "token", id })
            yield* validator.settled
            return HttpServerResponse.empty({ status: 204 })
          }).pipe(Effect.catchTag("StoreError", internal("failed to revoke token")))))
  }))
