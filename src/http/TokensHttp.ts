/** Handlers of the `tokens` group (reference-system.md §2.4 with the CONTRACT §4 changes). */
import { HttpApiBuilder, HttpServerResponse } from "@effect/platform"
import { Clock, Effect, Either, Option } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import { generateProxyToken, hashProxyToken, tokenHint } from "../crypto/ProxyToken.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest, Forbidden, NotFound } from "../domain/errors.js"
import { isUuid, parseBooleanParam, validateCreateToken, validateUpdateToken } from "../domain/validation.js"
import { Store } from "../store/Store.js"
import { TokenValidator } from "../token/TokenValidator.js"
import { audited } from "./auditing.js"
import { readJson, validate } from "./body.js"
import { tokenJson } from "./present.js"
import { internal } from "./ProjectsHttp.js"

const tokenNotFound = new NotFound({ error: "token not found" })

const tokenId = (raw: string) =>
  isUuid(raw) ? Effect.succeed(raw.toLowerCase()) : Effect.fail(new BadRequest({ error: "invalid token id" }))

const orNotFound = <A>(o: Option.Option<A>) =>
  Option.match(o, { onNone: () => Effect.fail(tokenNotFound), onSome: Effect.succeed })

export const TokensLive = HttpApiBuilder.group(ManagementApi, "tokens", (handlers) =>
  Effect.gen(function*() {
    const store = yield* Store
    const validator = yield* TokenValidator

    return handlers
      .handle("list", ({ urlParams }) =>
        audited(AuditActions.tokenList, (note) =>
        Effect.gen(function*() {
          const activeOnly = yield* validate(parseBooleanParam(urlParams.active_only))
          const raw = urlParams.project_id ?? urlParams.projectId
          if (raw !== undefined && raw !== "" && !isUuid(raw)) {
            return yield* new BadRequest({ error: "invalid project_id" })
          }
          if (raw) note.projectId = raw.toLowerCase()
          const rows = yield* store.listTokens({
            ...(raw ? { projectId: raw.toLowerCase() } : {}),
            activeOnly,
            now: new Date(yield* Clock.currentTimeMillis).toISOString()
          })
          Object.assign(note.details, { token_count: rows.length, filtered_by_project: !!raw, active_only: activeOnly })
          return rows.map(tokenJson)
        }).pipe(Effect.catchTag("StoreError", internal("failed to list tokens")))))
      .handleRaw("create", ({ request }) =>
        audited(AuditActions.tokenCreate, (note) =>
        Effect.gen(function*() {
          const body = yield* readJson(request)
          const input = yield* validate(validateCreateToken(body))
          note.projectId = input.projectId
          note.details["duration_minutes"] = input.durationMinutes
          const project = yield* store.getProject(input.projectId)
          if (Option.isNone(project)) return yield* new NotFound({ error: "project not found" })
          if (!project.value.isActive) {
            return yield* new Forbidden({ error: "cannot create tokens for inactive projects", code: "project_inactive" })
          }
          const nowMs = yield* Clock.currentTimeMillis
          const secret = generateProxyToken()
          const row = yield* store.createToken({
            id: crypto.randomUUID(),
            tokenHash: hashProxyToken(secret),
            tokenHint: tokenHint(secret),
            projectId: input.projectId,
            expiresAt: new Date(nowMs + input.durationMinutes * 60_000).toISOString(),
            maxRequests: input.maxRequests,
            rateLimit: input.rateLimit,
            now: new Date(nowMs).toISOString()
          })
          note.tokenId = row.id
          note.details["expires_at"] = row.expiresAt
          if (row.maxRequests !== null) note.details["max_requests"] = row.maxRequests
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
            return tokenJson(token)
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
            const patch = yield* Either.mapLeft(validateUpdateToken(body), (error) => new BadRequest({ error }))
            if (patch.isActive !== undefined) note.details["updated_is_active"] = patch.isActive
            if (patch.maxRequests !== undefined) note.details["updated_max_requests"] = patch.maxRequests ?? "unlimited"
            if (patch.expiresAt !== undefined) note.details["updated_expires_at"] = patch.expiresAt
            const row = yield* store.updateToken(id, {
              ...patch,
              now: new Date(yield* Clock.currentTimeMillis).toISOString()
            })
            yield* validator.invalidate({ kind: "token", id })
            yield* validator.settled
            return tokenJson(yield* orNotFound(row))
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
