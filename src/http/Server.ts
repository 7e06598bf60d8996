/**
 * The node:http listener. We own the server (rather than NodeHttpServer.layer) so the data plane can take
 * /v1/* requests as plain Node streams before the Effect app sees them (docs/architecture.md "Two planes, one
 * listener").
 */
import { Headers, HttpIncomingMessage, HttpMiddleware, type HttpServerRequest } from "@effect/platform"
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Context, Effect, Layer, Option, Runtime } from "effect"
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"
import type { Duplex } from "node:stream"
import { makeTrustedProxies, normalizeIp } from "../audit/clientIp.js"
import { AppConfig } from "../config/AppConfig.js"
import { duplicateAuthorization, isProxyPath } from "../proxy/policy.js"
import { ProxyHandler } from "../proxy/ProxyHandler.js"
import { makeApp } from "./App.js"
import { MAX_BODY_BYTES } from "./body.js"
import { ConnectionLimiter, type ConnectionVerdict } from "./connections.js"
import { closeLingering, LINGER_MS } from "./linger.js"
import { isMintRequest, makeMintRoute } from "./mintRoute.js"
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

const spanName = (req: HttpServerRequest.HttpServerRequest) =>
  `${req.method} ${routeTemplate(req.url.split("?")[0] ?? "/")}`

/** Probes and scrapes are not traced: they would drown the management API's spans. */
const UNTRACED = new Set(["/health", "/ready", "/live", "/metrics", "/metrics/json", "/metrics/prometheus"])
const untraced = (req: HttpServerRequest.HttpServerRequest) => UNTRACED.has(req.url.split("?")[0] ?? "/")

/** Headers from which the platform's tracer would take a caller's trace (W3C Trace Context and B3). */
const TRACE_HEADERS = [
  "traceparent",
  "tracestate",
  "b3",
  "x-b3-traceid",
  "x-b3-spanid",
  "x-b3-parentspanid",
  "x-b3-sampled",
  "x-b3-flags"
]

/** Without TRUST_INCOMING_TRACE_CONTEXT a caller must not choose our trace ids: its trace headers are dropped. */
const dropTraceContext = (headers: IncomingHttpHeaders) => {
  for (const h of TRACE_HEADERS) if (headers[h] !== undefined) delete headers[h]
}

const DUPLICATE_AUTHORIZATION = JSON.stringify({ error: "more than one Authorization header" })

const refuseDuplicateAuthorization = (res: ServerResponse) => {
  res.writeHead(400, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(DUPLICATE_AUTHORIZATION)
  })
  res.end(DUPLICATE_AUTHORIZATION)
}

const OVER_LIMIT = {
  total: { status: 503, body: JSON.stringify({ error: "Too many connections", code: "too_many_connections" }) },
  per_ip: {
    status: 429,
    body: JSON.stringify({ error: "Too many connections from this address", code: "too_many_connections_per_ip" })
  }
} as const

/** A connection over a limit: its request is answered without being read, and the connection closed (lingering). */
const refuseConnection = (req: IncomingMessage, res: ServerResponse, verdict: Exclude<ConnectionVerdict, "ok">) => {
  const { body, status } = OVER_LIMIT[verdict]
  closeLingering(req, res)
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": Buffer.byteLength(body),
    "retry-after": "1",
    connection: "close"
  })
  res.end(body)
}

/** Connections over a limit that wait for their answer, at most; beyond it they are closed at once, unanswered. */
const MAX_REFUSING = 1_024

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

export const layer = Layer.scoped(
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
    // POST /manage/tokens without the platform's HTTP stack (mintRoute.ts).
    const mint = yield* makeMintRoute
    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
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
      (req, res) => dispatch(req, res)
    )
    // Connection limits: counted from `connection` to `close`. A connection over a limit is not counted; its first
    // request gets 503 (total) / 429 (per peer address) and the connection is closed.
    const trusted = makeTrustedProxies(config.trustedProxies)
    const limiter = new ConnectionLimiter(
      config.maxConnections,
      config.maxConnectionsPerIp,
      (ip) => trusted.contains(ip)
    )
    const refused = new WeakMap<
      Socket,
      { readonly verdict: Exclude<ConnectionVerdict, "ok">; readonly timer: NodeJS.Timeout }
    >()
    let refusing = 0
    let refusedSinceLog = 0
    let lastLog = 0
    const reportRefused = (verdict: Exclude<ConnectionVerdict, "ok">) => {
      refusedSinceLog++
      const now = Date.now()
      if (now - lastLog < 10_000) return
      lastLog = now
      const n = refusedSinceLog
      refusedSinceLog = 0
      runFork(Effect.logWarning(
        verdict === "total"
          ? `connections refused: MAX_CONNECTIONS (${config.maxConnections}) reached (${n} since the last warning)`
          : `connections refused: a peer address reached MAX_CONNECTIONS_PER_IP (${config.maxConnectionsPerIp}) (${n} since the last warning)`
      ))
    }
    if (config.maxConnections > 0 || config.maxConnectionsPerIp > 0) {
      server.on("connection", (socket: Socket) => {
        const ip = normalizeIp(socket.remoteAddress ?? "")
        const verdict = limiter.open(ip)
        if (verdict === "ok") {
          socket.once("close", () => limiter.close(ip))
          return
        }
        reportRefused(verdict)
        if (refusing >= MAX_REFUSING) return socket.destroy()
        refusing++
        // It has a moment to send its request (then it is answered); else it is closed.
        const timer = setTimeout(() => socket.destroy(), LINGER_MS)
        timer.unref()
        refused.set(socket, { verdict, timer })
        socket.once("close", () => {
          refusing--
          clearTimeout(timer)
        })
      })
    }
    const dispatch = (req: IncomingMessage, res: ServerResponse) => {
      const over = refused.get(req.socket)
      if (over !== undefined) {
        clearTimeout(over.timer)
        return refuseConnection(req, res, over.verdict)
      }
      if (isProxyPath(req.url ?? "/")) return proxy(req, res)
      // Node keeps the first of two Authorization headers and drops the other unseen; refuse the ambiguity.
      if (duplicateAuthorization(req.rawHeaders)) return refuseDuplicateAuthorization(res)
      if (mint !== undefined && isMintRequest(req)) return mint(req, res)
      if (untrustedTrace) dropTraceContext(req.headers)
      return handler(req, res)
    }
    // `Expect: 100-continue`: the proxy sends `100 Continue` itself once the token is checked and it reads the body
    // (a refused request's body is never sent); everything else gets it at once, as Node would send it.
    server.on("checkContinue", (req: IncomingMessage, res: ServerResponse) => {
      if (refused.get(req.socket) === undefined && !isProxyPath(req.url ?? "/")) res.writeContinue()
      dispatch(req, res)
    })
    server.on("clientError", answerClientError)
    yield* Effect.async<void, Error>((resume) => {
      const onError = (e: Error) =>
        resume(Effect.fail(new Error(`cannot listen on ${config.listen.host}:${config.listen.port}: ${e.message}`)))
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
