/**
 * Handlers of the `projects` group (docs/management-api.md "Projects") and of its project keys
 * (`/manage/projects/{id}/keys`). A project key may read its own project here, nothing else.
 */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { Providers } from "../config/Providers.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { obfuscateApiKey } from "../crypto/obfuscate.js"
import { generateProjectKey, hashProjectKey, projectKeyHint } from "../crypto/ProjectKey.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, Conflict, InternalError, NotFound } from "../domain/errors.js"
import { CreateProject, CreateProjectKey, UpdateProject, type UpstreamKeyInput } from "../domain/models.js"
import { isUuid, parsePageParam } from "../domain/validation.js"
import { Upstream } from "../proxy/Upstream.js"
import { Store, type StoredKey, type StoreError } from "../store/Store.js"
import { TokenValidator } from "../token/TokenValidator.js"
import { audited } from "./auditing.js"
import { readPayload, validate } from "./body.js"
import { caller, ownProjectOnly } from "./callers.js"
import { budgetPatch, budgetRow, type KeyStateView, projectJson, projectKeyJson, rateLimitRow } from "./present.js"

const now = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms).toISOString())

/** Store failures are logged with their cause and answered with a fixed message. */
export const internal = (message: string) => (e: StoreError) =>
  Effect.zipRight(Effect.logError(message, e.message), Effect.fail(new InternalError({ error: message })))

export const projectId = (raw: string) =>
  isUuid(raw) ? Effect.succeed(raw.toLowerCase()) : Effect.fail(new BadRequest({ error: "invalid project id" }))

const notFound = new NotFound({ error: "project not found" })
const conflict = (name: string) =>
  new Conflict({ error: `a project named "${name.slice(0, 64)}" already exists`, code: "duplicate_name" })

const readCreateProject = readPayload(CreateProject)
const readUpdateProject = readPayload(UpdateProject)
const readCreateProjectKey = readPayload(CreateProjectKey)

const keyNotFound = new NotFound({ error: "project key not found" })

export const layer = HttpApiBuilder.group(ManagementApi, "projects", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    const cipher = yield* KeyCipher
    const providers = yield* Providers
    const validator = yield* TokenValidator
    const upstream = yield* Upstream
    // The configured providers are known at run time only: checked after the payload's own rules.
    const knownProvider = (provider: string) =>
      providers.names.has(provider)
        ? Effect.void
        : Effect.fail(new BadRequest({ error: `unknown provider "${provider.slice(0, 64)}"` }))

    /** `api_key` (one key) or `api_keys` as stored: encrypted, obfuscated, each under a new id. */
    const storedKeys = (apiKey: string | undefined, apiKeys: ReadonlyArray<UpstreamKeyInput> | undefined) =>
      Effect.gen(function*() {
        const given = apiKeys ?? [{ key: apiKey! }]
        for (const k of given) if (k.provider !== undefined) yield* knownProvider(k.provider)
        return given.map((k): StoredKey => ({
          id: crypto.randomUUID(),
          key: cipher.encrypt(k.key),
          hint: obfuscateApiKey(k.key),
          weight: k.weight ?? 1,
          provider: k.provider ?? null
        }))
      })

    /** This instance's view of a key: cooling down or its breaker open until when, else ok. */
    const keyState: KeyStateView = (id) => {
      const s = upstream.keys.peek(id)
      if (s === undefined) return { state: "ok" }
      const now = Date.now()
      const breakerUntil = now + s.breaker.retryInMs()
      if (s.coolUntil <= now && breakerUntil <= now) return { state: "ok" }
      return breakerUntil >= s.coolUntil
        ? { state: "circuit_open", until: new Date(breakerUntil).toISOString() }
        : { state: "cooling_down", until: new Date(s.coolUntil).toISOString() }
    }
    const present = (row: Parameters<typeof projectJson>[0], nowMs: number) => projectJson(row, keyState, nowMs)

    return handlers
      .handle("list", ({ urlParams }) =>
        audited(AuditActions.projectList, (note) =>
          Effect.gen(function*() {
            const paged = urlParams.page !== undefined || urlParams.page_size !== undefined
            const search = urlParams.search?.trim() ?? ""
            if (search !== "") note.details["search"] = search.slice(0, 128)
            if (!paged) {
              const rows = search === ""
                ? yield* store.listProjects
                : (yield* store.listProjectsPage({ search, limit: 2_147_483_647, offset: 0 })).rows
              note.details["project_count"] = rows.length
              const nowMs = yield* Clock.currentTimeMillis
              return rows.map((r) => present(r, nowMs))
            }
            const page = yield* validate(parsePageParam("page", urlParams.page, 1, 1_000_000_000, 1))
            const pageSize = yield* validate(parsePageParam("page_size", urlParams.page_size, 1, 100, 20))
            const result = yield* store.listProjectsPage({ search, limit: pageSize, offset: (page - 1) * pageSize })
            // Past COUNT_CAP the total is a lower bound, so has_next comes from the rows themselves.
            const totalPages = Math.ceil(result.total / pageSize)
            note.details["project_count"] = result.rows.length
            note.details["page"] = page
            const nowMs = yield* Clock.currentTimeMillis
            return {
              projects: result.rows.map((r) => present(r, nowMs)),
              pagination: {
                page,
                page_size: pageSize,
                total_count: result.total,
                total_pages: totalPages,
                has_next: result.hasNext,
                has_prev: page > 1,
                total_exact: result.totalExact
              }
            }
          }).pipe(Effect.catchTag("StoreError", internal("failed to list projects")))))
      .handleRaw("create", ({ request }) =>
        audited(AuditActions.projectCreate, (note) =>
          Effect.gen(function*() {
            const input = yield* readCreateProject(request)
            const provider = input.provider ?? providers.defaultProvider
            yield* knownProvider(provider)
            const apiKeys = yield* storedKeys(input.api_key, input.api_keys)
            const row = yield* store.createProject({
              id: crypto.randomUUID(),
              name: input.name,
              apiKeys,
              provider,
              rateLimit: rateLimitRow(input.rate_limit ?? null),
              allowedModels: input.allowed_models ?? null,
              maxTokenMinutes: input.max_token_minutes ?? null,
              maxTokenRequests: input.max_token_requests ?? null,
              budget: budgetRow(input),
              now: yield* now
            })
            note.projectId = row.id
            if (row.allowedModels !== null) note.details["allowed_models"] = row.allowedModels
            note.details["project_name"] = row.name
            note.details["provider"] = row.provider
            note.details["key_count"] = apiKeys.length
            if (row.budget.maxCostUsd !== null) note.details["max_cost_usd"] = row.budget.maxCostUsd
            if (row.budget.maxTokens !== null) note.details["max_tokens"] = row.budget.maxTokens
            return present(row, yield* Clock.currentTimeMillis)
          }).pipe(
            Effect.catchTags({
              DuplicateProjectName: (e) => Effect.fail(conflict(e.name)),
              StoreError: internal("failed to create project")
            })
          )))
      .handle("get", ({ path }) =>
        audited(AuditActions.projectRead, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            yield* ownProjectOnly(yield* caller, id)
            const row = yield* store.getProject(id)
            return present(
              yield* Option.match(row, { onNone: () => Effect.fail(notFound), onSome: Effect.succeed }),
              yield* Clock.currentTimeMillis
            )
          }).pipe(Effect.catchTag("StoreError", internal("failed to get project")))))
      .handleRaw("update", ({ path, request }) =>
        audited(AuditActions.projectUpdate, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            const input = yield* readUpdateProject(request)
            if (input.provider !== undefined) yield* knownProvider(input.provider)
            // An empty api_key keeps the current keys.
            const apiKey = input.api_key === "" ? undefined : input.api_key
            const apiKeys = apiKey !== undefined || input.api_keys !== undefined
              ? yield* storedKeys(apiKey, input.api_keys)
              : undefined
            const revokeTokens = input.revoke_tokens === true
            note.details["updated_fields"] = [
              ...(input.name !== undefined ? ["name"] : []),
              ...(apiKey !== undefined ? ["api_key"] : []),
              ...(input.api_keys !== undefined ? ["api_keys"] : []),
              ...(input.provider !== undefined ? ["provider"] : []),
              ...(input.is_active !== undefined ? ["is_active"] : []),
              ...(input.rate_limit !== undefined ? ["rate_limit"] : []),
              ...(input.allowed_models !== undefined ? ["allowed_models"] : []),
              ...(input.max_token_minutes !== undefined ? ["max_token_minutes"] : []),
              ...(input.max_token_requests !== undefined ? ["max_token_requests"] : []),
              ...(input.max_cost_usd !== undefined ? ["max_cost_usd"] : []),
              ...(input.max_tokens !== undefined ? ["max_tokens"] : []),
              ...(input.budget_period !== undefined ? ["budget_period"] : []),
              ...(revokeTokens ? ["revoke_tokens"] : [])
            ]
            const budget = budgetPatch(input)
            const result = yield* store.updateProject(id, {
              ...(input.name !== undefined ? { name: input.name } : {}),
              ...(apiKeys !== undefined ? { apiKeys } : {}),
              ...(input.provider !== undefined ? { provider: input.provider } : {}),
              ...(input.rate_limit !== undefined ? { rateLimit: rateLimitRow(input.rate_limit) } : {}),
              ...(input.allowed_models !== undefined ? { allowedModels: input.allowed_models } : {}),
              ...(input.max_token_minutes !== undefined ? { maxTokenMinutes: input.max_token_minutes } : {}),
              ...(input.max_token_requests !== undefined ? { maxTokenRequests: input.max_token_requests } : {}),
              ...(budget !== undefined ? { budget } : {}),
              ...(input.is_active !== undefined ? { isActive: input.is_active } : {}),
              revokeTokens,
              now: yield* now
            })
            const updated = yield* Option.match(result, { onNone: () => Effect.fail(notFound), onSome: Effect.succeed })
            // After the commit: the next proxy request re-reads activation, key and provider.
            yield* validator.invalidate({ kind: "project", id })
            yield* validator.settled
            note.details["project_name"] = updated.project.name
            note.details["is_active"] = updated.project.isActive
            if (revokeTokens) note.details["tokens_revoked"] = updated.revoked
            if (apiKeys !== undefined) note.details["key_count"] = apiKeys.length
            return present(updated.project, yield* Clock.currentTimeMillis)
          }).pipe(
            Effect.catchTags({
              DuplicateProjectName: (e) => Effect.fail(conflict(e.name)),
              StoreError: internal("failed to update project")
            })
          )))
      .handle("revokeTokens", ({ path }) =>
        audited(AuditActions.tokenRevokeBatch, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            const result = yield* store.revokeProjectTokens(id, yield* now)
            const counts = yield* Option.match(result, { onNone: () => Effect.fail(notFound), onSome: Effect.succeed })
            Object.assign(note.details, {
              total_tokens: counts.total,
              revoked_count: counts.revoked,
              already_revoked_count: counts.alreadyRevoked
            })
            yield* validator.invalidate({ kind: "project", id })
            yield* validator.settled
            return {
              revoked_count: counts.revoked,
              already_revoked_count: counts.alreadyRevoked,
              total_tokens: counts.total
            }
          }).pipe(Effect.catchTag("StoreError", internal("failed to revoke project tokens")))))
      .handle("listKeys", ({ path }) =>
        audited(AuditActions.projectKeyList, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            if (Option.isNone(yield* store.getProject(id))) return yield* notFound
            const keys = yield* store.listProjectKeys(id)
            note.details["key_count"] = keys.length
            return keys.map(projectKeyJson)
          }).pipe(Effect.catchTag("StoreError", internal("failed to list project keys")))))
      .handleRaw("createKey", ({ path, request }) =>
        audited(AuditActions.projectKeyCreate, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            const input = yield* readCreateProjectKey(request)
            const key = generateProjectKey()
            const created = yield* store.createProjectKey({
              id: crypto.randomUUID(),
              projectId: id,
              name: input.name,
              keyHash: hashProjectKey(key),
              keyHint: projectKeyHint(key),
              now: yield* now
            })
            const row = yield* Option.match(created, {
              onNone: () =>
                Effect.fail(notFound),
              onSome: Effect.succeed
            })
            Object.assign(note.details, { key_id: row.id, key_name: row.name })
            return HttpServerResponse.unsafeJson(
              { id: row.id, name: row.name, key, project_id: row.projectId, created_at: row.createdAt },
              { status: 201 }
            )
          }).pipe(Effect.catchTag("StoreError", internal("failed to create project key")))))
      .handle("revokeKey", ({ path }) =>
        audited(AuditActions.projectKeyRevoke, (note) =>
          Effect.gen(function*() {
            const id = yield* projectId(path.id)
            note.projectId = id
            if (!isUuid(path.key_id)) {
              return yield* new BadRequest({ error: "invalid project key id" })
            }
            const keyId = path.key_id.toLowerCase()
            note.details["key_id"] = keyId
            const revoked = yield* store.revokeProjectKey(id, keyId, yield* now)
            const row = yield* Option.match(revoked, {
              onNone: () =>
                Effect.fail(keyNotFound),
              onSome: Effect.succeed
            })
            // Keys are read from the database on every request (src/token/ProjectKeys.ts): its next request is
            // refused, whichever instance it reaches.
            note.details["key_name"] = row.name
            return HttpServerResponse.empty({ status: 204 })
          }).pipe(Effect.catchTag("StoreError", internal("failed to revoke project key")))))
  }))
