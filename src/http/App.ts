/**
 * The HTTP application on one listener: health probes, the management API (+ OpenAPI and Swagger UI) and, as
 * later issues land, the proxy and admin UI. Unexpected failures are logged and answered with a generic 500.
 */
import {
  HttpApiBuilder,
  HttpApiError,
  HttpApiSwagger,
  type HttpApp,
  type HttpRouter,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { Cause, Context, Effect, Layer, Predicate } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import type { AuditLog } from "../audit/AuditLog.js"
import { makeTrustedProxies } from "../audit/clientIp.js"
import { AppConfig } from "../config/AppConfig.js"
import { BadRequest } from "../domain/errors.js"
import { Health } from "../observability/Health.js"
import { Metrics } from "../observability/Metrics.js"
import { Store } from "../store/Store.js"
import { AuditLive } from "./AuditHttp.js"
import { currentRequestMeta, requestMetaOf } from "./auditing.js"
import { ManagementAuthLive, ManagementToken } from "./auth.js"
import { CacheLive } from "./CacheHttp.js"
import { jsonError, managementFallback } from "./fallback.js"
import { ProjectsLive } from "./ProjectsHttp.js"
import { AdminAssets, serveAdmin } from "./AdminUi.js"
import { AdminSessions } from "./session.js"
import { SessionLive } from "./SessionHttp.js"
import { TokensLive } from "./TokensHttp.js"
import { UsageLive } from "./UsageHttp.js"

export const VERSION = "0.1.0"

type App = HttpApp.Default<never, HttpRouter.HttpRouter.DefaultServices>

export class ManagementApp extends Context.Tag("llm-proxy/ManagementApp")<ManagementApp, App>() {}

/**
 * The platform answers input its schemas reject (e.g. a query parameter given twice) with its own
 * `{"_tag":"HttpApiDecodeError","issues":…}` body; CONTRACT §4 wants `{"error": "..."}` for every error.
 */
const decodeErrorsAsBadRequest = HttpApiBuilder.middleware(ManagementApi, (app) =>
  Effect.catchIf(
    app as Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, HttpServerRequest.HttpServerRequest>,
    (e): e is HttpApiError.HttpApiDecodeError => e instanceof HttpApiError.HttpApiDecodeError,
    (e) => {
      const key = e.issues[0]?.path[0]
      return Effect.fail(new BadRequest({ error: key === undefined ? "invalid request" : `invalid parameter "${String(key)}"` }))
    }
  ) as HttpApp.Default<BadRequest>)

export const ManagementAppLive = Layer.effect(ManagementApp, HttpApiBuilder.httpApp).pipe(
  Layer.provide(decodeErrorsAsBadRequest),
  Layer.provide(HttpApiSwagger.layer({ path: "/manage/docs" })),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/manage/openapi.json" })),
  Layer.provide(
    HttpApiBuilder.api(ManagementApi).pipe(Layer.provide([ProjectsLive, TokensLive, UsageLive, SessionLive, AuditLive, CacheLive]))
  ),
  Layer.provide([HttpApiBuilder.Router.Live, HttpApiBuilder.Middleware.layer, ManagementAuthLive])
)

export { requestIdOf } from "./auditing.js"

export const makeApp = Effect.gen(function*() {
  const management = yield* ManagementApp
  const context = yield* Effect.context<Store | ManagementToken | AuditLog | AdminSessions | AdminAssets>()
  const trusted = makeTrustedProxies((yield* AppConfig).trustedProxies)
  const health = yield* Health
  const metrics = yield* Metrics
  const { enableMetrics } = yield* AppConfig

  const fallback = managementFallback.pipe(
    Effect.catchTags({
      Unauthorized: (e) => Effect.succeed(jsonError(401, e.error, e.code !== undefined ? { code: e.code } : undefined)),
      Forbidden: (e) => Effect.succeed(jsonError(403, e.error, e.code !== undefined ? { code: e.code } : undefined))
    })
  )

  const route = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const path = request.url.split("?")[0] ?? "/"
    switch (path) {
      case "/live":
        return HttpServerResponse.text("alive")
      case "/ready": {
        const h = yield* health.report
        return h.ready ? HttpServerResponse.text("ready") : HttpServerResponse.text("not ready", { status: 503 })
      }
      case "/health": {
        const h = yield* health.report
        const { ready: _, ...body } = h
        return HttpServerResponse.unsafeJson(body, { status: h.ready ? 200 : 503 })
      }
      case "/metrics":
      case "/metrics/prometheus":
        if (!enableMetrics) break
        return HttpServerResponse.text(yield* metrics.prometheus, { contentType: metrics.contentType })
      case "/metrics/json":
        if (!enableMetrics) break
        return HttpServerResponse.unsafeJson(yield* metrics.json)
    }
    if (path === "/admin" || path.startsWith("/admin/")) return yield* serveAdmin(path)
    if (path === "/manage" || path.startsWith("/manage/")) {
      // The router ignores a trailing slash and collapses `//`; `/manage/projects/` is an empty id, not the list
      // (reference §2.3), and `/manage/projects/<id>//tokens/revoke` is not the revoke endpoint.
      if (path.endsWith("/") || path.includes("//")) return yield* fallback
      // The router is typed as infallible but fails with RouteNotFound for paths it does not know.
      return yield* management.pipe(
        Effect.catchAllCause((cause) => {
          const failure = Cause.failureOption(cause as Cause.Cause<unknown>)
          return failure._tag === "Some" && Predicate.isTagged(failure.value, "RouteNotFound")
            ? fallback
            : Effect.failCause(cause)
        })
      )
    }
    return jsonError(404, "not found")
  }).pipe(Effect.provide(context))

  const app: App = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const meta = requestMetaOf(request, trusted)
    const requestId = meta.requestId
    const response = yield* route.pipe(
      Effect.locally(currentRequestMeta, meta),
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.failCause(cause)
          : Effect.as(
            Effect.logError("unhandled error", Cause.pretty(cause)).pipe(Effect.annotateLogs({ request_id: requestId })),
            jsonError(500, "internal server error")
          )
      )
    )
    return HttpServerResponse.setHeaders(response, { "x-request-id": requestId, "x-correlation-id": meta.correlationId })
  })
  return app
})
