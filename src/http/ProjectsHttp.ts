/** Handlers of the `projects` group (reference-system.md §2.3 with the CONTRACT §4 changes). */
import { HttpApiBuilder } from "@effect/platform"
import { Clock, Effect, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { Providers } from "../config/Providers.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { obfuscateApiKey } from "../crypto/obfuscate.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, Conflict, InternalError, NotFound } from "../domain/errors.js"
import { CreateProject, UpdateProject } from "../domain/models.js"
import { isUuid, parsePageParam } from "../domain/validation.js"
import { Store, type StoreError } from "../store/Store.js"
import { TokenValidator } from "../token/TokenValidator.js"
import { audited } from "./auditing.js"
import { readPayload, validate } from "./body.js"
import { budgetPatch, budgetRow, projectJson, rateLimitRow } from "./present.js"

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

export const ProjectsLive = HttpApiBuilder.group(ManagementApi, "projects", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    const cipher = yield* KeyCipher
    const providers = yield* Providers
    const validator = yield* TokenValidator
    // The configured providers are known at run time only: checked after the payload's own rules.
    const knownProvider = (provider: string) =>
      providers.names.has(provider)
        ? Effect.void
        : Effect.fail(new BadRequest({ error: `unknown provider "${provider.slice(0, 64)}"` }))

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
              return rows.map((r) => projectJson(r, nowMs))
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
              projects: result.rows.map((r) => projectJson(r, nowMs)),
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
          const row = yield* store.createProject({
            id: crypto.randomUUID(),
            name: input.name,
            apiKey: cipher.encrypt(input.api_key),
            apiKeyHint: obfuscateApiKey(input.api_key),
            provider,
            rateLimit: rateLimitRow(input.rate_limit ?? null),
            budget: budgetRow(input),
            now: yield* now
          })
          note.projectId = row.id
          note.details["project_name"] = row.name
          note.details["provider"] = row.provider
          if (row.budget.maxCostUsd !== null) note.details["max_cost_usd"] = row.budget.maxCostUsd
          if (row.budget.maxTokens !== null) note.details["max_tokens"] = row.budget.maxTokens
          return projectJson(row, yield* Clock.currentTimeMillis)
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
            const row = yield* store.getProject(id)
            return projectJson(
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
          // An empty api_key keeps the current key.
          const apiKey = input.api_key === "" ? undefined : input.api_key
          const revokeTokens = input.revoke_tokens === true
          note.details["updated_fields"] = [
            ...(input.name !== undefined ? ["name"] : []),
            ...(apiKey !== undefined ? ["api_key"] : []),
            ...(input.provider !== undefined ? ["provider"] : []),
            ...(input.is_active !== undefined ? ["is_active"] : []),
            ...(input.rate_limit !== undefined ? ["rate_limit"] : []),
            ...(input.max_cost_usd !== undefined ? ["max_cost_usd"] : []),
            ...(input.max_tokens !== undefined ? ["max_tokens"] : []),
            ...(input.budget_period !== undefined ? ["budget_period"] : []),
            ...(revokeTokens ? ["revoke_tokens"] : [])
          ]
          const budget = budgetPatch(input)
          const result = yield* store.updateProject(id, {
            ...(input.name !== undefined ? { name: input.name } : {}),
            ...(apiKey !== undefined ? { apiKey: cipher.encrypt(apiKey), apiKeyHint: obfuscateApiKey(apiKey) } : {}),
            ...(input.provider !== undefined ? { provider: input.provider } : {}),
            ...(input.rate_limit !== undefined ? { rateLimit: rateLimitRow(input.rate_limit) } : {}),
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
          return projectJson(updated.project, yield* Clock.currentTimeMillis)
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
            return { revoked_count: counts.revoked, already_revoked_count: counts.alreadyRevoked, total_tokens: counts.total }
          }).pipe(Effect.catchTag("StoreError", internal("failed to revoke project tokens")))))
  }))
