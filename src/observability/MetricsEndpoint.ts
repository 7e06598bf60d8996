/**
 * A small HTTP listener of its own for programs without the main one (`llm-proxy dispatcher --metrics-addr`), or for
 * `serve`'s metrics moved off the main listener (`METRICS_ADDR`): `GET /metrics` (Prometheus text, the same registry
 * and series names as `serve`), `GET /metrics/json` when asked for, and `GET /health` (the same JSON as `serve`'s,
 * 503 while a required dependency is down). Everything else: 404 (405 for other methods). With a token, the metrics
 * need `Authorization: Bearer <token>` (compared in constant time); /health stays open like serve's.
 */
import { Effect, Layer, Redacted, Runtime } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import type { ListenAddress } from "../config/AppConfig.js"
import { constantTimeEqual } from "../crypto/constantTime.js"
import { Health } from "./Health.js"
import { Metrics } from "./Metrics.js"

const json = (status: number, body: unknown) => ({ status, type: "application/json", body: JSON.stringify(body) })

export interface MetricsEndpointOptions {
  /** Also serve `GET /metrics/json`. */
  readonly json?: boolean
  /** Require this bearer for the metrics. */
  readonly token?: Redacted.Redacted<string>
}

export const metricsEndpoint = (
  address: ListenAddress,
  what: string,
  options: MetricsEndpointOptions = {}
): Layer.Layer<never, Error, Metrics | Health> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const metrics = yield* Metrics
    const health = yield* Health
    const run = Runtime.runPromise(yield* Effect.runtime<never>())
    const paths = new Set(["/metrics", "/health", ...(options.json ? ["/metrics/json"] : [])])
    const authorized = (header: string | undefined) =>
      options.token === undefined ||
      (header?.startsWith("Bearer ") === true && constantTimeEqual(header.slice(7), Redacted.value(options.token)))
    const answer = (method: string, path: string, authorization: string | undefined) =>
      Effect.gen(function*() {
        if (!paths.has(path)) return json(404, { error: "not found" })
        if (method !== "GET" && method !== "HEAD") return json(405, { error: "method not allowed" })
        if (path !== "/health" && !authorized(authorization)) {
          return json(401, { error: "missing or invalid metrics token", code: "unauthorized" })
        }
        if (path === "/metrics") return { status: 200, type: metrics.contentType, body: yield* metrics.prometheus }
        if (path === "/metrics/json") return json(200, yield* metrics.json)
        const { ready, ...report } = yield* health.report
        return json(ready ? 200 : 503, report)
      })
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/"
      run(answer(req.method ?? "GET", path, req.headers.authorization)).then(
        (r) =>
          res.writeHead(r.status, { "content-type": r.type, "content-length": Buffer.byteLength(r.body) }).end(
            req.method === "HEAD" ? undefined : r.body
          ),
        () =>
          res.writeHead(500, { "content-type": "application/json" }).end(JSON.stringify({ error: "internal error" }))
      )
    })
    const bound = yield* Effect.acquireRelease(
      Effect.async<AddressInfo, Error>((resume) => {
        server.once(
          "error",
          (e) => resume(Effect.fail(new Error(`cannot listen on ${address.host}:${address.port}: ${e.message}`)))
        )
        server.listen(address.port, address.host, () => resume(Effect.succeed(server.address() as AddressInfo)))
      }),
      () =>
        Effect.async<void>((resume) => {
          server.closeAllConnections()
          server.close(() => resume(Effect.void))
        })
    )
    const host = bound.family === "IPv6" ? `[${bound.address}]` : bound.address
    yield* Effect.logInfo(`${what} metrics and health on http://${host}:${bound.port}`)
  }))
