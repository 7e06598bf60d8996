/**
 * The node:http listener. We own the server (rather than NodeHttpServer.layer) so the data plane can take
 * /v1/* requests as plain Node streams before the Effect app sees them (DESIGN.md "Two planes").
 */
import { HttpIncomingMessage } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Option } from "effect"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { AppConfig } from "../config/AppConfig.js"
import { isProxyPath } from "../proxy/policy.js"
import { ProxyHandler } from "../proxy/ProxyHandler.js"
import { makeApp } from "./App.js"
import { MAX_BODY_BYTES } from "./body.js"

export interface BoundAddress {
  readonly host: string
  readonly port: number
  readonly url: string
}

export class ServerAddress extends Context.Tag("llm-proxy/ServerAddress")<ServerAddress, BoundAddress>() {}

export const HttpServerLive = Layer.scoped(
  ServerAddress,
  Effect.gen(function*() {
    const config = yield* AppConfig
    const app = yield* makeApp
    const bounded = HttpIncomingMessage.withMaxBodySize(app, Option.some(MAX_BODY_BYTES + 1))
    const handler = yield* NodeHttpServer.makeHandler(bounded).pipe(Effect.provide(NodeHttpServer.layerContext))
    const proxy = yield* ProxyHandler
    // /v1/* never enters the Effect app: it is handled as plain Node streams (src/proxy/ProxyHandler.ts).
    const server = createServer(
      { keepAliveTimeout: 65_000 },
      (req, res) => (isProxyPath(req.url ?? "/") ? proxy(req, res) : handler(req, res))
    )
    yield* Effect.async<void, Error>((resume) => {
      const onError = (e: Error) => resume(Effect.fail(new Error(`cannot listen on ${config.listen.host}:${config.listen.port}: ${e.message}`)))
      server.once("error", onError)
      server.listen(config.listen.port, config.listen.host, () => {
        server.off("error", onError)
        resume(Effect.void)
      })
    })
    yield* Effect.addFinalizer(() =>
      Effect.async<void>((resume) => {
        server.close(() => resume(Effect.void))
        server.closeIdleConnections()
        // In-flight requests get a grace period, then their sockets are closed.
        const timer = setTimeout(() => server.closeAllConnections(), 10_000)
        timer.unref()
      })
    )
    const address = server.address() as AddressInfo
    const host = address.family === "IPv6" ? `[${address.address}]` : address.address
    const shownHost = host === "0.0.0.0" || host === "[::]" ? "localhost" : host
    return { host: address.address, port: address.port, url: `http://${shownHost}:${address.port}` }
  })
)
