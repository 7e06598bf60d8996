/**
 * A small HTTP listener of its own for programs without the main one (`llm-proxy dispatcher --metrics-addr`):
 * `GET /metrics` (Prometheus text, the same registry and series names as `serve`) and `GET /health` (the same JSON
 * as `serve`'s, 503 while a required dependency is down). Everything else: 404 (405 for other methods).
 */
import { Effect, Layer, Runtime } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import type { ListenAddress } from "../config/AppConfig.js"
import { Health } from "./Health.js"
import { Metrics } from "./Metrics.js"

const json = (status: number, body: unknown) => ({ status, type: "application/json", body: JSON.stringify(body) })

export const metricsEndpoint = (address: ListenAddress, what: string): Layer.Layer<never, Error, Metrics | Health> =>
  Layer.scopedDiscard(Effect.gen(function*() {
    const metrics = yield* Metrics
    const health = yield* Health
    const run = Runtime.runPromise(yield* Effect.runtime<never>())
    const answer = (method: string, path: string) =>
      Effect.gen(function*() {
        if (path !== "/metrics" && path !== "/health") return json(404, { error: "not found" })
        if (method !== "GET" && method !== "HEAD") return json(405, { error: "method not allowed" })
        if (path === "/metrics") return { status: 200, type: metrics.contentType, body: yield* metrics.prometheus }
        const { ready, ...report } = yield* health.report
        return json(ready ? 200 : 503, report)
      })
    const server = createServer((req, res) => {
      const path = (req.url ?? "/").split("?")[0] ?? "/"
      run(answer(req.method ?? "GET", path)).then(
        (r) => res.writeHead(r.status, { "content-type": r.type, "content-length": Buffer.byteLength(r.body) }).end(req.method === "HEAD" ? undefined : r.body),
        () => res.writeHead(500, { "content-type": "application/json" }).end(JSON.stringify({ error: "internal error" }))
      )
    })
    const bound = yield* Effect.acquireRelease(
      Effect.async<AddressInfo, Error>((resume) => {
        server.once("error", (e) => resume(Effect.fail(new Error(`cannot listen on ${address.host}:${address.port}: ${e.message}`))))
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
