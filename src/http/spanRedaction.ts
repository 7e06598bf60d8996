/**
 * What the management API's server spans must not export. The platform's `HttpMiddleware.tracer` records
 * `url.full`, `url.query` and every request and response header verbatim, except the few headers it redacts
 * (`authorization`, `cookie`, `set-cookie`, `x-api-key`). Users do put credentials in query strings (`?token=…`,
 * `?api_key=…`) and in headers it does not know (the admin UI's `X-CSRF-Token`, Azure's `api-key`); without this
 * they reached the trace collector.
 *
 * Query parameters the management API declares (page, project_id, …) keep their values; any other value becomes
 * `REDACTED` (a bare name that does not look like one, e.g. `?sk-…`, entirely).
 */
import type { HttpApp } from "@effect/platform"
import { HttpServerRequest } from "@effect/platform"
import { Effect, Option } from "effect"
import { ListAuditParams } from "../domain/audit.js"
import { ListProjectsParams, ListTokensParams, UsageParams } from "../domain/models.js"
import { isPlainName } from "../domain/validation.js"
import { CSRF_HEADER } from "./session.js"

/** For `Headers.currentRedactedNames`: the platform's defaults plus the credential headers we know of. */
export const REDACTED_HEADER_NAMES: ReadonlyArray<string> = [
  "authorization",
  "proxy-authorization",
  "cookie",
  "set-cookie",
  "x-api-key",
  "api-key",
  CSRF_HEADER
]

const DECLARED = new Set(
  [ListProjectsParams, ListTokensParams, UsageParams, ListAuditParams].flatMap((s) => Object.keys(s.fields))
)

const decode = (s: string) => {
  try {
    return decodeURIComponent(s.replace(/\+/g, " "))
  } catch {
    return s
  }
}

/** `page=2&token=abc` → `page=2&token=REDACTED` (the query without its `?`). */
export const redactQuery = (query: string): string =>
  query
    .split("&")
    .map((part) => {
      if (part === "") return part
      const eq = part.indexOf("=")
      const name = decode(eq === -1 ? part : part.slice(0, eq))
      if (DECLARED.has(name)) return part
      return isPlainName(name) ? `${part.slice(0, eq === -1 ? part.length : eq)}=REDACTED` : "REDACTED"
    })
    .join("&")

/** Rewrites `url.full` / `url.query` of the request's server span (the app runs inside it). */
export const redactQueryInSpan = <E, R>(app: HttpApp.Default<E, R>): HttpApp.Default<E, R> =>
  Effect.flatMap(HttpServerRequest.HttpServerRequest, (request) => {
    const q = request.url.indexOf("?")
    if (q === -1) return app
    return Effect.zipRight(
      Effect.map(
        Effect.option(Effect.currentSpan),
        Option.map((span) => {
          const query = redactQuery(request.url.slice(q + 1))
          const full = span.attributes.get("url.full")
          if (typeof full === "string" && full.includes("?")) {
            span.attribute("url.full", `${full.slice(0, full.indexOf("?"))}?${query}`)
          }
          if (span.attributes.has("url.query")) {
            span.attribute("url.query", query)
          }
        })
      ),
      app
    )
  })
