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
import { Cause, Clock, Context, Effect, Layer, Predicate } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import type { AuditLog } from "../audit/AuditLog.js"
import { makeTrustedProxies } from "../audit/clientIp.js"
import { AppConfig } from "../config/AppConfig.js"
import { BadRequest } from "../domain/errors.js"
import { Store } from "../store/Store.js"
import { AuditLive } from "./AuditHttp.js"
import { currentRequestMeta, requestMetaOf } from "./auditing.js"
import { ManagementAuthLive, ManagementToken } from "./auth.js"
import { CacheLive } from "./CacheHttp.js"
import { jsonError, managementFallback } from "./fallback.js"
import { ProjectsLive } from "./ProjectsHttp.js"
import { TokensLive } from "./TokensHttp.js"

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
  Layer.provide(HttpApiBuilder.api(ManagementApi).pipe(Layer.provide([ProjectsLive, TokensLive, AuditLive, CacheLive]))),
  Layer.provide([HttpApiBuilder.Router.Live, HttpApiBuilder.Middleware.layer, ManagementAuthLive])
)

export { requestIdOf } from "./auditing.js"

const health = Effect.gen(function*() {
  const store = yield* Store
  const started = yield* Clock.currentTimeMillis
  const db = yield* Effect.either(Effect.timeout(store.ping, "2 seconds"))
  const latency = (yield* Clock.currentTimeMillis) - started
  const up = db._tag === "Right"
  return {
    up,
    body: {
      status: up ? "ok" : "degraded",
      timestamp: new Date(started).toISOString(),
      version: VERSION,
      checks: { database: { status: up ? "up" : "down", driver: store.dialect, latency_ms: latency } }
    }
  }
})

export const makeApp = Effect.gen(function*() {
  const management = yield* ManagementApp
  const context = yield* Effect.context<Store | ManagementToken | AuditLog>()
  const trusted = makeTrustedProxies((yield* AppConfig).trustedProxies)

  const route = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const path = request.url.split("?")[0] ?? "/"
    switch (path) {
      case "/live":
        return HttpServerResponse.text("alive")
      case "/ready": {
        const h = yield* health
        return h.up ? HttpServerResponse.text("ready") : HttpServerResponse.text("not ready", { status: 503 })
      }
      case "/health": {
        const h = yield* health
        return HttpServerResponse.unsafeJson(h.body, { status: h.up ? 200 : 503 })
      }
    }
    if (path === "/manage" || path.startsWith("/manage/")) {
      // The router ignores a trailing slash; `/manage/projects/` is an empty id, not the list (reference §2.3).
      if (path.endsWith("/")) {
        return yield* managementFallback.pipe(
          Effect.catchTag("Unauthorized", (e) => Effect.succeed(jsonError(401, e.error)))
        )
      }
      // The router is typed as infallible but fails with RouteNotFound for paths it does not know.
      return yield* management.pipe(
        Effect.catchAllCause((cause) => {
          const failure = Cause.failureOption(cause as Cause.Cause<unknown>)
          return failure._tag === "Some" && Predicate.isTagged(failure.value, "RouteNotFound")
            ? managementFallback.pipe(Effect.catchTag("Unauthorized", (e) => Effect.succeed(jsonError(401, e.error))))
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
