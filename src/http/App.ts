/**
 * The HTTP application on one listener: health probes, metrics, the management API (+ OpenAPI and Swagger UI) and
 * the admin UI. Unexpected failures are logged and answered with a generic 500.
 *
 * The metrics (`/metrics`, `/metrics/prometheus`, `/metrics/json`) say a lot about traffic, so by default they are
 * answered only to loopback clients (a direct socket peer on 127.0.0.0/8 or ::1 whose request names no forwarding
 * header — a reverse proxy on the same host does not make its clients local). `METRICS_TOKEN` requires that bearer
 * from anywhere instead; with `METRICS_ADDR` they are served on a listener of their own (Layers.ts) and 404 here.
 */
import {
  HttpApiBuilder,
  HttpApiError,
  type HttpApp,
  type HttpRouter,
  HttpServerRequest,
  HttpServerResponse
} from "@effect/platform"
import { Cause, Context, Effect, Layer, Option, Predicate, Redacted } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"
import type { AuditLog } from "../audit/AuditLog.js"
import { makeTrustedProxies, normalizeIp } from "../audit/clientIp.js"
import { AppConfig } from "../config/AppConfig.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { AuditActions } from "../domain/audit.js"
import { BadRequest } from "../domain/errors.js"
import { Health } from "../observability/Health.js"
import { Metrics } from "../observability/Metrics.js"
import { Store } from "../store/Store.js"
import type { ProjectKeys } from "../token/ProjectKeys.js"
import { AdminAssets, secureDocs, serveAdmin } from "./AdminUi.js"
import * as AuditHttp from "./AuditHttp.js"
import { currentRequestMeta, requestMetaOf } from "./auditing.js"
import * as Auth from "./auth.js"
import type { AuthThrottle } from "./authThrottle.js"
import * as CacheHttp from "./CacheHttp.js"
import { jsonError, managementFallback, unhandled } from "./fallback.js"
import * as ProjectsHttp from "./ProjectsHttp.js"
import { AdminSessions } from "./session.js"
import * as SessionHttp from "./SessionHttp.js"
import * as TokensHttp from "./TokensHttp.js"
import * as UsageHttp from "./UsageHttp.js"

type App = HttpApp.Default<never, HttpRouter.HttpRouter.DefaultServices>

export class ManagementApp extends Context.Tag("llm-proxy/ManagementApp")<ManagementApp, App>() {}

/**
 * The platform answers input its schemas reject (e.g. a query parameter given twice) with its own
 * `{"_tag":"HttpApiDecodeError","issues":…}` body; every management error is `{"error": "..."}`
 * (docs/management-api.md).
 */
const decodeErrorsAsBadRequest = HttpApiBuilder.middleware(ManagementApi, (app) =>
  Effect.catchIf(
    app as Effect.Effect<HttpServerResponse.HttpServerResponse, unknown, HttpServerRequest.HttpServerRequest>,
    (e): e is HttpApiError.HttpApiDecodeError => e instanceof HttpApiError.HttpApiDecodeError,
    (e) => {
      const key = e.issues[0]?.path[0]
      return Effect.fail(
        new BadRequest({ error: key === undefined ? "invalid request" : `invalid parameter "${String(key)}"` })
      )
    }
  ) as HttpApp.Default<BadRequest>)

export const layer = Layer.effect(ManagementApp, HttpApiBuilder.httpApp).pipe(
  Layer.provide(decodeErrorsAsBadRequest),
  Layer.provide(HttpApiBuilder.middlewareOpenApi({ path: "/manage/openapi.json" })),
  Layer.provide(
    HttpApiBuilder.api(ManagementApi).pipe(
      Layer.provide([
        ProjectsHttp.layer,
        TokensHttp.layer,
        UsageHttp.layer,
        SessionHttp.layer,
        AuditHttp.layer,
        CacheHttp.layer
      ])
    )
  ),
  Layer.provide([HttpApiBuilder.Router.Live, HttpApiBuilder.Middleware.layer, Auth.layer])
)

export { requestIdOf } from "./auditing.js"

/** 127.0.0.0/8, ::1 and their IPv4-mapped forms. */
export const isLoopback = (address: string): boolean => {
  const ip = normalizeIp(address)
  return ip === "::1" || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(ip)
}

const FORWARDING_HEADERS = ["x-forwarded-for", "forwarded", "x-real-ip"]

/** undefined when the metrics may be read by this request, else the answer (see the module comment). */
export const metricsRefusal = (
  request: HttpServerRequest.HttpServerRequest,
  token: Option.Option<Redacted.Redacted<string>>
): HttpServerResponse.HttpServerResponse | undefined => {
  if (Option.isSome(token)) {
    const header = request.headers.authorization ?? ""
    const presented = header.startsWith("Bearer ") ? header.slice("Bearer ".length) : ""
    if (presented !== "" && constantTimeEqual(presented, Redacted.value(token.value))) return undefined
    return jsonError(401, "missing or invalid metrics token", { code: "unauthorized" }, {
      "www-authenticate": "Bearer realm=\"metrics\""
    })
  }
  const peer = Option.getOrUndefined(request.remoteAddress)
  if (peer !== undefined && isLoopback(peer) && FORWARDING_HEADERS.every((h) => request.headers[h] === undefined)) {
    return undefined
  }
  return jsonError(
    403,
    "metrics are served to loopback clients only; set METRICS_TOKEN or METRICS_ADDR to scrape them from elsewhere",
    { code: "metrics_loopback_only" }
  )
}

export const makeApp = Effect.gen(function*() {
  const management = yield* ManagementApp
  const context = yield* Effect.context<
    Store | Auth.ManagementToken | AuditLog | AdminSessions | AdminAssets | AuthThrottle | ProjectKeys
  >()
  const trusted = makeTrustedProxies((yield* AppConfig).trustedProxies)
  const health = yield* Health
  const metrics = yield* Metrics
  const { enableMetrics, metricsAddr, metricsToken } = yield* AppConfig
  // On this listener unless METRICS_ADDR moved them.
  const metricsHere = enableMetrics && Option.isNone(metricsAddr)
  if (metricsHere && Option.isNone(metricsToken)) {
    yield* Effect.logInfo(
      "/metrics and /metrics/json answer loopback clients only; set METRICS_TOKEN to require a bearer from anywhere " +
        "instead, or METRICS_ADDR to serve them on a listener of their own"
    )
  }

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
        if (!metricsHere) break
        return metricsRefusal(request, metricsToken) ??
          HttpServerResponse.text(yield* metrics.prometheus, { contentType: metrics.contentType })
      case "/metrics/json":
        if (!metricsHere) break
        return metricsRefusal(request, metricsToken) ?? HttpServerResponse.unsafeJson(yield* metrics.json)
    }
    if (path === "/admin" || path.startsWith("/admin/")) return yield* serveAdmin(path)
    if (path === "/manage" || path.startsWith("/manage/")) {
      // A client over the brute-force limit gets 429 before any token is compared (auth.ts, authThrottle.ts).
      const login = path === "/manage/session" && request.method === "POST"
      if (login || request.headers.authorization !== undefined) {
        const refused = yield* Auth.throttled(login ? AuditActions.adminLogin : AuditActions.managementAuth)
        if (refused !== undefined) return refused
      }
      // The router ignores a trailing slash and collapses `//`; `/manage/projects/` is an empty id, not the list
      // (docs/behaviour.md #13), and `/manage/projects/<id>//tokens/revoke` is not the revoke endpoint.
      if (path.endsWith("/") || path.includes("//")) return yield* fallback
      // Swagger UI, loaded on first use (src/http/swaggerDocs.ts), with the same security headers as /admin and a
      // policy that admits its own inline code only.
      if (path === "/manage/docs" && request.method === "GET") {
        return secureDocs(yield* Effect.flatMap(Effect.promise(() => import("./swaggerDocs.js")), (m) => m.swaggerPage))
      }
      // The router is typed as infallible but fails with RouteNotFound for paths it does not know.
      const answer = yield* management.pipe(
        Effect.catchAllCause((cause) => {
          const failure = Cause.failureOption(cause as Cause.Cause<unknown>)
          return failure._tag === "Some" && Predicate.isTagged(failure.value, "RouteNotFound")
            ? fallback
            : Effect.failCause(cause)
        })
      )
      return answer
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
          : Effect.as(unhandled(cause, requestId), jsonError(500, "internal server error"))
      )
    )
    return HttpServerResponse.setHeaders(response, {
      "x-request-id": requestId,
      "x-correlation-id": meta.correlationId
    })
  })
  return app
})
