/**
 * The node:http listener. We own the server (rather than NodeHttpServer.layer) so the data plane can take
 * /v1/* requests as plain Node streams before the Effect app sees them (DESIGN.md "Two planes").
 */
import { Headers, HttpIncomingMessage, HttpMiddleware, type HttpServerRequest } from "@effect/platform"
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Option } from "effect"
import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import type { Duplex } from "node:stream"
import { AppConfig } from "../config/AppConfig.js"
import { duplicateAuthorization, isProxyPath } from "../proxy/policy.js"
import { ProxyHandler } from "../proxy/ProxyHandler.js"
import { makeApp } from "./App.js"
import { MAX_BODY_BYTES } from "./body.js"
import { REDACTED_HEADER_NAMES, redactQueryInSpan } from "./spanRedaction.js"

export interface BoundAddress {
  readonly host: string
  readonly port: number
  readonly url: string
}

export class ServerAddress extends Context.Tag("llm-proxy/ServerAddress")<ServerAddress, BoundAddress>() {}

/** `/manage/projects/1f0c…/tokens` → `/manage/projects/:id/tokens`: span names stay a small set. */
export const routeTemplate = (path: string): string =>
  path.split("/").map((seg, i) => (i >= 3 && /\d/.test(seg) ? ":id" : seg)).join("/")

const spanName = (req: HttpServerRequest.HttpServerRequest) => `${req.method} ${routeTemplate(req.url.split("?")[0] ?? "/")}`

/** Probes and scrapes are not traced: they would drown the management API's spans. */
const UNTRACED = new Set(["/health", "/ready", "/live", "/metrics", "/metrics/json", "/metrics/prometheus"])
const untraced = (req: HttpServerRequest.HttpServerRequest) => UNTRACED.has(req.url.split("?")[0] ?? "/")

/** Headers from which the platform's tracer would take a caller's trace (W3C Trace Context and B3). */
const TRACE_HEADERS = ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags"]

/** Without TRUST_INCOMING_TRACE_CONTEXT a caller must not choose our trace ids: its trace headers are dropped. */
const dropTraceContext = (headers: IncomingHttpHeaders) => {
  for (const h of TRACE_HEADERS) if (headers[h] !== undefined) delete headers[h]
}

const DUPLICATE_AUTHORIZATION = JSON.stringify({ error: "more than one Authorization header" })

const refuseDuplicateAuthorization = (res: ServerResponse) => {
  res.writeHead(400, { "content-type": "application/json", "content-length": Buffer.byteLength(DUPLICATE_AUTHORIZATION) })
  res.end(DUPLICATE_AUTHORIZATION)
}

/**
 * Requests the HTTP parser refuses (malformed line, bad framing, headers too large, too slow) get Node's statuses
 * with a JSON body like every other error, and the connection is closed.
 */
const answerClientError = (e: NodeJS.ErrnoException, socket: Duplex) => {
  // A response already under way on this connection (pipelining) cannot be followed by another status line.
  const inFlight = (socket as { _httpMessage?: { readonly headersSent?: boolean } })._httpMessage
  if (e.code === "ECONNRESET" || !socket.writable || inFlight?.headersSent === true) return socket.destroy()
  const [status, reason, error] = e.code === "HPE_HEADER_OVERFLOW"
    ? [431, "Request Header Fields Too Large", "request headers too large"]
    : e.code === "ERR_HTTP_REQUEST_TIMEOUT" || e.code === "HPE_HEADERS_TIMEOUT"
    ? [408, "Request Timeout", "request timeout"]
    : e.code === "HPE_CHUNK_EXTENSIONS_OVERFLOW"
    ? [413, "Payload Too Large", "request too large"]
    : [400, "Bad Request", "malformed HTTP request"]
  const body = JSON.stringify({ error })
  socket.end(
    `HTTP/1.1 ${status} ${reason}\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`
  )
}

export const HttpServerLive = Layer.scoped(
  ServerAddress,
  Effect.gen(function*() {
    const config = yield* AppConfig
    const app = yield* makeApp
    const bounded = HttpIncomingMessage.withMaxBodySize(redactQueryInSpan(app), Option.some(MAX_BODY_BYTES + 1))
    // The platform wraps every request of the Effect app in a server span (HttpMiddleware.tracer); a no-op when tracing
    // is off. Credentials in its URL and headers are redacted (spanRedaction.ts).
    const handler = yield* NodeHttpServer.makeHandler(bounded).pipe(
      Effect.provide(NodeHttpServer.layerContext),
      Effect.provideService(HttpMiddleware.SpanNameGenerator, spanName),
      Effect.locally(HttpMiddleware.currentTracerDisabledWhen, untraced),
      Effect.locally(Headers.currentRedactedNames, REDACTED_HEADER_NAMES)
    )
    const proxy = yield* ProxyHandler
    // /v1/* never enters the Effect app: it is handled as plain Node streams (src/proxy/ProxyHandler.ts).
    // Both client timeouts only cover receiving the request (responses and SSE streams are never cut by them).
    // Without them (requestTimeout 0 turns headersTimeout off too) a client sending its headers or body one byte
    // at a time (slowloris), or nothing at all, held a socket forever. Checked every second (default 30 s).
    const requestTimeout = config.clientRequestTimeoutMs
    const untrustedTrace = Option.exists(config.otlp, (o) => !o.trustIncomingTrace)
    const server = createServer(
      {
        keepAliveTimeout: 65_000,
        requestTimeout,
        headersTimeout: Math.min(config.headersTimeoutMs, requestTimeout),
        connectionsCheckingInterval: Math.min(1_000, config.headersTimeoutMs)
      },
      (req, res) => {
        if (isProxyPath(req.url ?? "/")) return proxy(req, res)
        // Node keeps the first of two Authorization headers and drops the other unseen; refuse the ambiguity.
        if (duplicateAuthorization(req.rawHeaders)) return refuseDuplicateAuthorization(res)
        if (untrustedTrace) dropTraceContext(req.headers)
        return handler(req, res)
      }
    )
    server.on("clientError", answerClientError)
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
