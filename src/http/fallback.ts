/**
 * What the HttpApi router does not match under /manage: known resources with the wrong method get 405 (after
 * authentication, docs/behaviour.md #4), malformed ids get 400, anything else 404 without authentication.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Cause, Effect } from "effect"
import { AuditActions } from "../domain/audit.js"
import { isUuid } from "../domain/validation.js"
import { auditRequest } from "./auditing.js"
import { authorize } from "./auth.js"

export const jsonError = (
  status: number,
  error: string,
  extra?: Record<string, string>,
  headers?: Record<string, string>
) => HttpServerResponse.unsafeJson({ error, ...extra }, { status, ...(headers ? { headers } : {}) })

/** Logs what no handler expected (the answer is a generic 500; details are never returned). */
export const unhandled = (cause: Cause.Cause<unknown>, requestId: string) =>
  Effect.logError("unhandled error", Cause.pretty(cause)).pipe(Effect.annotateLogs({ request_id: requestId }))

type Known =
  | { readonly kind: "collection"; readonly allow: string }
  | { readonly kind: "project" }
  | { readonly kind: "item"; readonly allow: string; readonly invalidId: string }
  | { readonly kind: "bad-id"; readonly error: string }

// The router matches these methods whenever the id segment is usable, so a request that reaches the fallback with
// one of them has an id the router could not take (a malformed %-escape, or longer than its parameter limit):
// that is a bad id, not a wrong method.
const allows = (allow: string, method: string) => allow.split(", ").includes(method === "HEAD" ? "GET" : method)

const classify = (path: string): Known | undefined => {
  const parts = path.split("/").slice(2) // ["projects", ...] after "", "manage"
  const [resource, id, ...rest] = parts
  if (resource === "cache") {
    return id === "purge" && rest.length === 0
      ? { kind: "item", allow: "POST", invalidId: "invalid request" }
      : undefined
  }
  if (resource === "audit") {
    if (id === undefined) return { kind: "collection", allow: "GET" }
    if (id === "") return { kind: "bad-id", error: "audit event ID is required" }
    if (rest.length === 0) return { kind: "item", allow: "GET", invalidId: "invalid audit event id" }
    return { kind: "bad-id", error: "invalid audit event id" }
  }
  if (resource !== "projects" && resource !== "tokens") return undefined
  if (id === undefined) return { kind: "collection", allow: "GET, POST" }
  if (resource === "projects") {
    if (id === "") return { kind: "bad-id", error: "invalid project id" }
    if (rest.length === 0) return { kind: "project" }
    if (rest.length === 2 && rest[0] === "tokens" && rest[1] === "revoke") {
      return { kind: "item", allow: "POST", invalidId: "invalid project id" }
    }
    if (rest.length === 1 && rest[0] === "keys") {
      return { kind: "item", allow: "GET, POST", invalidId: "invalid project id" }
    }
    if (rest.length === 2 && rest[0] === "keys" && rest[1] !== "") {
      return { kind: "item", allow: "DELETE", invalidId: "invalid project key id" }
    }
    return { kind: "bad-id", error: "invalid path" }
  }
  if (id === "") return { kind: "bad-id", error: "token ID is required" }
  if (rest.length === 0) return { kind: "item", allow: "GET, PATCH, DELETE", invalidId: "invalid token id" }
  return { kind: "bad-id", error: "invalid token id" }
}

export const managementFallback = Effect.gen(function*() {
  const request = yield* HttpServerRequest.HttpServerRequest
  const path = request.url.split("?")[0] ?? ""
  const known = classify(path)
  if (known === undefined) return jsonError(404, "not found")
  yield* authorize
  switch (known.kind) {
    case "bad-id":
      return jsonError(400, known.error)
    case "project":
      if (allows("GET, PATCH", request.method)) return jsonError(400, "invalid project id")
      if (request.method === "DELETE") {
        const id = path.split("/")[3] ?? ""
        yield* auditRequest({
          action: AuditActions.projectDelete,
          outcome: "failure",
          reason: "project deletion is not permitted",
          ...(isUuid(id) ? { projectId: id.toLowerCase() } : {}),
          details: { error_type: "method not allowed" }
        })
        return jsonError(405, "method not allowed", { message: "project deletion is not permitted" }, {
          allow: "GET, PATCH"
        })
      }
      return jsonError(405, "method not allowed", undefined, { allow: "GET, PATCH" })
    case "item":
      if (allows(known.allow, request.method)) return jsonError(400, known.invalidId)
      return jsonError(405, "method not allowed", undefined, { allow: known.allow })
    case "collection":
      return jsonError(405, "method not allowed", undefined, { allow: known.allow })
  }
})
