/**
 * The data plane: one plain Node handler for /v1/* (src/http/Server.ts routes to it before the Effect app).
 *
 * Stages, in order (each answers locally and stops on failure; docs/proxy.md has the table):
 *   1. preflight        OPTIONS → 204 with CORS headers, no authentication
 *   2. route            safe path, method and endpoint allow-lists (any provider that could serve it)
 *   3. origin           required / allowed origins
 *   4. body             size (413 from Content-Length before reading; bounded read of JSON bodies) and the
 *                       parameter whitelist for any JSON content type
 *   5. authenticate     bearer token: format, existence, active, expiry (TokenValidator; warm = no I/O)
 *   6. project          project active, its provider's policy, its key
 *   7. hooks            beforeUpstream (response cache lookup)
 *   8. admit            window rate limits (token, project), then the atomic quota for limited tokens
 *   9. forward          circuit breaker, undici request, stream the answer back through UsageCapture
 *  10. complete         once per request on `close`: usage counters, onComplete hooks
 *
 * The hot path is synchronous up to the upstream call when the token is warm and unlimited: no DB, no await,
 * no Effect per request. Effects run only on a cache miss (token load), for quotas and with the Redis limiter.
 */
import { Context, Effect, Layer, Option, Redacted, Runtime } from "effect"
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http"
import { EventEmitter } from "node:events"
import { type Readable, Transform } from "node:stream"
import type { Dispatcher } from "undici"
import { AppConfig } from "../config/AppConfig.js"
import { type ProviderConfig, Providers } from "../config/Providers.js"
import { hashProxyToken, isProxyTokenFormat } from "../crypto/ProxyToken.js"
import { Store } from "../store/Store.js"
import { type Exceeded, RateLimits, Unavailable } from "../token/RateLimits.js"
import { judge, type TokenGrant, TokenValidator } from "../token/TokenValidator.js"
import { UsageRecorder } from "../token/UsageRecorder.js"
import { isFailureStatus } from "./CircuitBreaker.js"
import {
  Answers,
  bearerCredential,
  checkOrigin,
  checkParams,
  corsHeaders,
  downstreamHeaders,
  duplicateAuthorization,
  endpointAllowed,
  isJsonContentType,
  isSafePath,
  type LocalAnswer,
  methodAllowed,
  preflight,
  requestIdOf,
  serverTiming,
  splitUrl,
  upstreamRequestHeaders
} from "./policy.js"
import { ProxyHooks, ProxyRequestContext } from "./ProxyHooks.js"
import { Upstream, type UpstreamTarget } from "./Upstream.js"
import { UsageCapture, UsageReader } from "./usage.js"

export type NodeHandler = (req: IncomingMessage, res: ServerResponse) => void

export class ProxyHandler extends Context.Tag("llm-proxy/ProxyHandler")<ProxyHandler, NodeHandler>() {}

/** Per-request state the stages share and the handler does not expose to hooks. */
interface Flow {
  readonly ctx: ProxyRequestContext
  readonly req: IncomingMessage
  readonly res: ServerResponse
  candidates: ReadonlyArray<ProviderConfig>
  /** Parsed JSON body, when a whitelist needed it. */
  json: unknown
  /** What goes upstream as the body. */
  body: Buffer | IncomingMessage | Transform | undefined
  bodyLength: number | undefined
  bodyTooLarge: boolean
  grant: TokenGrant | undefined
  abort: UpstreamAbort | undefined
  capture: UsageReader | undefined
  done: boolean
}

/**
 * The abort signal handed to undici: an EventEmitter (undici accepts one) because an AbortController costs an
 * EventTarget per request, and its abort() an AbortError.
 */
class UpstreamAbort extends EventEmitter {
  aborted = false
  abort() {
    if (this.aborted) return
    this.aborted = true
    this.emit("abort")
  }
}

/** For the log only (never an answer): the store's message and the driver's reason under it. */
const storeDetail = (e: unknown): string => {
  const parts: Array<string> = []
  let cur = e as { message?: unknown; cause?: unknown } | undefined
  for (let i = 0; i < 3 && cur !== undefined && cur !== null; i++) {
    if (typeof cur.message === "string" && cur.message !== "") parts.push(cur.message)
    cur = cur.cause as typeof cur
  }
  return parts.join(": ")
}

const ignore = () => {}

/** Drops an upstream body we will not send. undici's body emits an AbortError when destroyed: without a listener that
 * would be an uncaught exception. */
const discard = (body: Dispatcher.ResponseData["body"]) => {
  body.on("error", ignore)
  body.destroy()
}

const isPromise = <A>(v: A | Promise<A>): v is Promise<A> => typeof (v as { then?: unknown })?.then === "function"

const JSON_HEADERS = "application/json"

export const make = Effect.gen(function*() {
  const providers = yield* Providers
  const config = yield* AppConfig
  const validator = yield* TokenValidator
  const usage = yield* UsageRecorder
  const limits = yield* RateLimits
  const upstream = yield* Upstream
  const hooks = yield* ProxyHooks
  const store = yield* Store
  const runtime = yield* Effect.runtime<never>()
  const runPromise = Runtime.runPromise(runtime)
  const runFork = Runtime.runFork(runtime)
  const maxBody = config.maxRequestSize
  const allProviders = providers.all
  const allMethods = [...new Set(allProviders.flatMap((p) => p.allowedMethods))]
  const anyWhitelist = allProviders.some((p) => p.paramWhitelist.size > 0)
  const single = allProviders.length === 1 ? allProviders[0] : undefined

  const log = (level: "warn" | "error", message: string, ctx: ProxyRequestContext, detail?: string) =>
    void runFork(
      (level === "warn" ? Effect.logWarning(message) : Effect.logError(message)).pipe(
        Effect.annotateLogs({ request_id: ctx.requestId, ...(detail !== undefined ? { detail } : {}) })
      )
    )

  // -- answering ------------------------------------------------------------------------------------------------

  const reply = (f: Flow, answer: LocalAnswer, extra?: Record<string, string>) => {
    const { ctx, res } = f
    if (f.done || res.headersSent || res.destroyed) return
    f.done = true
    ctx.code = answer.body.code
    if (f.body instanceof Transform) {
      // A counted upload that will not go upstream: drain it so the connection can be reused.
      f.req.unpipe(f.body)
      f.req.resume()
    }
    const body = JSON.stringify(answer.body)
    const headers: OutgoingHttpHeaders = {
      "content-type": JSON_HEADERS,
      "content-length": Buffer.byteLength(body),
      "x-request-id": ctx.requestId,
      "server-timing": serverTiming(performance.now() - ctx.startedAt, ctx.upstreamMs),
      ...corsHeaders(ctx.origin),
      ...answer.headers,
      ...extra
    }
    res.writeHead(answer.status, headers)
    res.end(body)
  }

  const internal = (f: Flow, e: unknown) => {
    log("error", "proxy: unexpected failure", f.ctx, e instanceof Error ? e.stack ?? e.message : String(e))
    f.ctx.error = "internal error"
    if (!f.res.headersSent && !f.res.destroyed) {
      // Whatever stage failed may already have marked the flow done: the client still gets an answer.
      f.done = false
      reply(f, Answers.internalError)
    } else f.res.destroy()
  }

  const guard = <A>(f: Flow, step: () => A): void => {
    try {
      const r = step()
      if (isPromise(r)) r.then(undefined, (e) => internal(f, e))
    } catch (e) {
      internal(f, e)
    }
  }

  // -- 10. complete ---------------------------------------------------------------------------------------------

  const complete = (f: Flow) => {
    const { ctx, res } = f
    f.done = true
    ctx.durationMs = performance.now() - ctx.startedAt
    // writableEnded, not writableFinished: the latter can still be false at `close` while the kernel drains the
    // socket, and aborting then cost an AbortError + premature-close error per request.
    if (!res.writableEnded) {
      f.abort?.abort()
      if (!res.headersSent) {
        ctx.status = 499
        ctx.error ??= "client closed the connection"
      } else {
        ctx.status = res.statusCode
        ctx.error ??= "response not completed"
      }
    } else {
      ctx.status = res.statusCode
    }
    const capture = f.capture
    if (capture !== undefined) {
      ctx.usage = capture.usage
      ctx.answer = capture
      if (hooks.captureResponseBytes > 0) {
        ctx.responseBody = capture.captured.subarray(0, hooks.captureResponseBytes)
        ctx.responseTruncated = capture.bytes > hooks.captureResponseBytes
      }
    }
    const grant = f.grant
    if (grant !== undefined) {
      if (ctx.forwarded) {
        const u = ctx.usage
        usage.record(grant.tokenId, {
          request: grant.maxRequests === null,
          ...(u !== undefined ? { promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens } : {}),
          at: ctx.receivedAt,
          rollup: { projectId: grant.projectId, status: ctx.status }
        })
      } else if (ctx.cacheHit) {
        usage.record(grant.tokenId, {
          cacheHit: true,
          at: ctx.receivedAt,
          rollup: { projectId: grant.projectId, status: ctx.status }
        })
      }
    }
    for (const hook of hooks.onComplete) {
      try {
        hook(ctx)
      } catch (e) {
        log("warn", "proxy: onComplete hook failed", ctx, e instanceof Error ? e.message : String(e))
      }
    }
  }

  // -- 1.–3. preflight, route, origin ---------------------------------------------------------------------------

  const handle: NodeHandler = (req, res) => {
    const startedAt = performance.now()
    const url = req.url ?? "/"
    const { path } = splitUrl(url)
    const method = (req.method ?? "GET").toUpperCase()
    const rawOrigin = req.headers.origin
    const ctx = new ProxyRequestContext(
      requestIdOf(req.headers["x-request-id"] as string | undefined),
      method,
      url,
      path,
      rawOrigin === undefined || rawOrigin === "" ? undefined : rawOrigin,
      startedAt,
      Date.now()
    )
    ctx.peer = req.socket.remoteAddress
    ctx.headers = req.headers
    const f: Flow = {
      ctx,
      req,
      res,
      candidates: allProviders,
      json: undefined,
      body: undefined,
      bodyLength: undefined,
      bodyTooLarge: false,
      grant: undefined,
      abort: undefined,
      capture: undefined,
      done: false
    }
    req.on("error", () => {})
    res.once("close", () => complete(f))
    guard(f, () => start(f))
  }

  const start = (f: Flow) => {
    const { ctx, req, res } = f
    if (ctx.method === "OPTIONS") {
      f.done = true
      res.writeHead(204, {
        "x-request-id": ctx.requestId,
        "server-timing": serverTiming(performance.now() - ctx.startedAt, undefined),
        ...preflight(ctx.origin, req.headers["access-control-request-headers"] as string | undefined, allProviders)
      })
      res.end()
      return
    }
    if (!allMethods.includes(ctx.method)) return reply(f, Answers.methodNotAllowed(allMethods))
    if (!isSafePath(ctx.path)) return reply(f, Answers.endpointNotFound)
    if (single !== undefined) {
      // One provider (the common case): the same rules without the candidate lists.
      if (!endpointAllowed(ctx.path, single.allowedEndpoints)) return reply(f, Answers.endpointNotFound)
      if (!methodAllowed(ctx.method, single.allowedMethods)) return reply(f, Answers.methodNotAllowed(allMethods))
      const o = checkOrigin(ctx.origin, single)
      if (o !== undefined) return reply(f, o)
      return readBody(f)
    }
    let candidates = allProviders.filter((p) => methodAllowed(ctx.method, p.allowedMethods))
    const byPath = candidates.filter((p) => endpointAllowed(ctx.path, p.allowedEndpoints))
    if (byPath.length === 0) {
      // Known path, other method → 405; unknown path → 404.
      const pathOk = allProviders.some((p) => endpointAllowed(ctx.path, p.allowedEndpoints))
      return reply(f, pathOk ? Answers.methodNotAllowed(allMethods) : Answers.endpointNotFound)
    }
    candidates = byPath
    let originAnswer: LocalAnswer | undefined
    const byOrigin = candidates.filter((p) => {
      const a = checkOrigin(ctx.origin, p)
      originAnswer ??= a
      return a === undefined
    })
    if (byOrigin.length === 0) return reply(f, originAnswer ?? Answers.originNotAllowed)
    f.candidates = byOrigin
    return readBody(f)
  }

  // -- 4. body --------------------------------------------------------------------------------------------------

  const tooLarge = (f: Flow) => {
    f.bodyTooLarge = true
    // The rest of the body is not read: close the connection after answering.
    reply(f, Answers.requestTooLarge, { connection: "close" })
  }

  const readBody = (f: Flow) => {
    const { req } = f
    const cl = req.headers["content-length"]
    const chunked = req.headers["transfer-encoding"] !== undefined
    const declared = cl === undefined ? undefined : Number(cl)
    if (declared !== undefined && declared > maxBody) return tooLarge(f)
    if (!chunked && (declared === undefined || declared === 0)) return authenticate(f)
    if (!isJsonContentType(req.headers["content-type"])) {
      // Streamed through untouched (uploads); a chunked body is counted on the way.
      if (!chunked && declared !== undefined) {
        f.body = req
        f.bodyLength = declared
      } else {
        let seen = 0
        const counter = new Transform({
          transform(chunk: Buffer, _e, cb) {
            seen += chunk.length
            if (seen > maxBody) {
              f.bodyTooLarge = true
              cb(new Error("request body too large"))
            } else cb(null, chunk)
          }
        })
        // The limit can be crossed before undici reads the stream (while the token is checked): keep that error
        // from being an uncaught one; undici then sees a destroyed body and failed() answers 413.
        counter.on("error", ignore)
        req.pipe(counter)
        f.body = counter
      }
      return authenticate(f)
    }
    const parts: Array<Buffer> = []
    let size = 0
    let over = false
    req.on("data", (chunk: Buffer) => {
      if (over) return
      size += chunk.length
      if (size > maxBody) {
        over = true
        parts.length = 0
        req.pause()
        return tooLarge(f)
      }
      parts.push(chunk)
    })
    req.on("end", () => {
      if (over || f.done) return
      const body = parts.length === 1 ? parts[0]! : Buffer.concat(parts, size)
      f.ctx.requestBody = body
      f.body = body
      f.bodyLength = body.length
      guard(f, () => afterBody(f))
    })
  }

  const afterBody = (f: Flow) => {
    if (anyWhitelist && f.ctx.requestBody !== undefined) {
      try {
        f.json = JSON.parse(f.ctx.requestBody.toString("utf8"))
      } catch {
        // Not JSON after all: the whitelist has nothing to check (the upstream answers the syntax error).
        f.json = undefined
      }
      let paramAnswer: LocalAnswer | undefined
      const byParams = f.candidates.filter((p) => {
        const a = checkParams(f.json, p.paramWhitelist)
        paramAnswer ??= a
        return a === undefined
      })
      if (byParams.length === 0 && paramAnswer !== undefined) return reply(f, paramAnswer)
    }
    return authenticate(f)
  }

  // -- 5. authenticate ------------------------------------------------------------------------------------------

  const authenticate = (f: Flow) => {
    if (f.done) return
    if (duplicateAuthorization(f.req.rawHeaders)) return reply(f, Answers.duplicateAuthorization)
    const credential = bearerCredential(f.req.headers.authorization)
    if (credential === undefined) return reply(f, Answers.missingAuthorization)
    if (!isProxyTokenFormat(credential)) return reply(f, Answers.malformedToken)
    const hash = hashProxyToken(credential)
    const warm = validator.cached(hash, Date.now())
    if (warm !== undefined) return warm === null ? reply(f, Answers.tokenNotFound) : authorized(f, warm)
    return validator.load(hash).then(
      (grant) => (grant === undefined ? reply(f, Answers.tokenNotFound) : guard(f, () => authorized(f, grant))),
      (e: unknown) => {
        log("error", "proxy: token lookup failed", f.ctx, storeDetail((e as { cause?: unknown }).cause))
        f.ctx.error = "token lookup failed"
        reply(f, Answers.serviceUnavailable)
      }
    )
  }

  // -- 6. project -----------------------------------------------------------------------------------------------

  const authorized = (f: Flow, grant: TokenGrant) => {
    if (f.done) return
    const { ctx } = f
    ctx.tokenId = grant.tokenId
    ctx.projectId = grant.projectId
    ctx.provider = grant.provider
    const refusal = judge(grant, Date.now())
    if (refusal === "token_inactive") return reply(f, Answers.tokenInactive)
    if (refusal === "token_expired") return reply(f, Answers.tokenExpired)
    if (refusal === "project_inactive") {
      ctx.denial = "project_inactive"
      return reply(f, Answers.projectInactive)
    }
    const target = upstream.target(grant.provider)
    if (target === undefined) return reply(f, Answers.providerNotConfigured)
    const p = target.provider
    // The project's own provider decides (the pre-auth checks admitted the request for some provider).
    if (f.candidates.length !== 1 || f.candidates[0] !== p) {
      if (!methodAllowed(ctx.method, p.allowedMethods)) {
        return reply(f, endpointAllowed(ctx.path, p.allowedEndpoints) ? Answers.methodNotAllowed(p.allowedMethods) : Answers.endpointNotFound)
      }
      if (!endpointAllowed(ctx.path, p.allowedEndpoints)) return reply(f, Answers.endpointNotFound)
      const o = checkOrigin(ctx.origin, p)
      if (o !== undefined) return reply(f, o)
      if (p.paramWhitelist.size > 0 && f.json !== undefined) {
        const a = checkParams(f.json, p.paramWhitelist)
        if (a !== undefined) return reply(f, a)
      }
    }
    if (Option.isNone(grant.apiKey)) return reply(f, Answers.upstreamAuthError)
    f.grant = grant
    if (hooks.beforeUpstream.length > 0) return runHooks(f, target, 0)
    return admit(f, target)
  }

  // -- 7. hooks -------------------------------------------------------------------------------------------------

  const runHooks = (f: Flow, target: UpstreamTarget, i: number): void | Promise<void> => {
    for (; i < hooks.beforeUpstream.length; i++) {
      if (f.done) return
      const answered = hooks.beforeUpstream[i]!(f.ctx, f.req, f.res)
      if (isPromise(answered)) {
        const next = i + 1
        return answered.then((a) => {
          if (a) f.done = true
          else guard(f, () => runHooks(f, target, next))
        })
      }
      if (answered) {
        f.done = true
        return
      }
    }
    return admit(f, target)
  }

  // -- 8. admit -------------------------------------------------------------------------------------------------

  const admit = (f: Flow, target: UpstreamTarget): void | Promise<void> => {
    if (f.done) return
    const g = f.grant!
    const limited = limits.check(g.tokenId, g.tokenRateLimit, g.projectId, g.projectRateLimit)
    if (isPromise(limited)) return limited.then((v) => (v === undefined ? guard(f, () => quota(f, target)) : limitedBy(f, v)))
    if (limited !== undefined) return limitedBy(f, limited)
    return quota(f, target)
  }

  const limitedBy = (f: Flow, v: Exceeded | typeof Unavailable) => {
    if (v !== Unavailable) {
      f.ctx.rejectedBy = v.scope === "token" ? "token_rate_limit" : "project_rate_limit"
      return reply(f, Answers.rateLimited(v.retryAfterSeconds, v.scope))
    }
    f.ctx.error = "rate limiter unavailable"
    return reply(f, Answers.serviceUnavailable)
  }

  const quota = (f: Flow, target: UpstreamTarget): void | Promise<void> => {
    const g = f.grant!
    if (g.maxRequests === null) return forward(f, target)
    return runPromise(Effect.either(store.consumeQuota(g.tokenId, new Date().toISOString()))).then((r) => {
      if (f.done) return
      if (r._tag === "Left") {
        log("error", "proxy: quota update failed", f.ctx, storeDetail(r.left))
        f.ctx.error = "quota update failed"
        return reply(f, Answers.serviceUnavailable)
      }
      switch (r.right) {
        case "ok":
          return guard(f, () => forward(f, target))
        case "exhausted":
          f.ctx.rejectedBy = "quota"
          return reply(f, Answers.quotaExhausted)
        case "inactive":
          validator.invalidateToken(g.tokenId)
          return reply(f, Answers.tokenInactive)
        case "expired":
          return reply(f, Answers.tokenExpired)
        case "project_inactive":
          validator.invalidateProject(g.projectId)
          f.ctx.denial = "project_inactive"
          return reply(f, Answers.projectInactive)
        case "not_found":
          validator.invalidateToken(g.tokenId)
          return reply(f, Answers.tokenNotFound)
      }
    })
  }

  // -- 9. forward -----------------------------------------------------------------------------------------------

  const forward = (f: Flow, target: UpstreamTarget) => {
    if (f.done) return
    const { ctx, req } = f
    const breaker = target.breaker
    if (!breaker.admit()) return reply(f, Answers.circuitOpen)
    ctx.forwarded = true
    const abort = new UpstreamAbort()
    f.abort = abort
    const headers = upstreamRequestHeaders(
      req.headers,
      target.provider,
      Redacted.value(Option.getOrThrow(f.grant!.apiKey)),
      ctx.requestId,
      f.body instanceof Buffer ? f.bodyLength : f.body === req ? f.bodyLength : undefined
    )
    for (const hook of hooks.upstreamHeaders) {
      const extra = hook(ctx)
      if (extra !== undefined) Object.assign(headers, extra)
    }
    const sentAt = performance.now()
    ctx.proxyMs = sentAt - ctx.startedAt
    target.pool.request({
      path: ctx.url,
      method: ctx.method as Dispatcher.HttpMethod,
      headers,
      body: f.body ?? null,
      signal: abort,
      headersTimeout: target.headersTimeoutMs,
      bodyTimeout: 0
    }).then(
      (r) => {
        try {
          respond(f, target, r, sentAt)
        } catch (e) {
          discard(r.body)
          internal(f, e)
        }
      },
      (e: NodeJS.ErrnoException) => failed(f, target, e)
    )
  }

  const respond = (f: Flow, target: UpstreamTarget, r: Dispatcher.ResponseData, sentAt: number) => {
    const { ctx, res } = f
    ctx.upstreamMs = performance.now() - sentAt
    ctx.upstreamStatus = r.statusCode
    ctx.upstreamHeaders = r.headers
    target.breaker.record(isFailureStatus(r.statusCode))
    if (f.done || res.destroyed) {
      discard(r.body)
      return
    }
    f.done = true
    for (const hook of hooks.interceptResponse) {
      if (hook(ctx, r.statusCode, r.headers, r.body, res)) return
    }
    const out = downstreamHeaders(r.headers)
    out["x-request-id"] = ctx.requestId
    const timing = serverTiming(ctx.proxyMs!, ctx.upstreamMs)
    const theirs = r.headers["server-timing"]
    out["server-timing"] = theirs === undefined ? timing : `${timing}, ${Array.isArray(theirs) ? theirs.join(", ") : theirs}`
    if (ctx.origin !== undefined) {
      const vary = r.headers["vary"]
      Object.assign(out, corsHeaders(ctx.origin))
      if (vary !== undefined && !/\borigin\b/i.test(String(vary))) out["vary"] = `${String(vary)}, Origin`
    }
    const ct = r.headers["content-type"]
    const type = Array.isArray(ct) ? ct[0] : ct
    const mode = type !== undefined && type.includes("text/event-stream")
      ? "sse"
      : isJsonContentType(type)
      ? "json"
      : "none"
    ctx.stream = mode === "sse"
    for (const hook of hooks.decorateResponse) hook(ctx, r.statusCode, out)
    res.writeHead(r.statusCode, out)
    // SSE: the client sees the headers now, not with the first event.
    if (mode === "sse") res.flushHeaders()
    const body = r.body
    // Plain pipes, not stream.pipeline: pipeline allocates an AbortController and error objects per call (measured
    // ~10% of the proxy's CPU per request). Teardown is explicit instead: an upstream failure destroys the client's
    // response; a client that goes away aborts the upstream request (complete()).
    const lost = () => {
      if (!res.writableEnded) {
        ctx.error ??= "upstream connection lost mid-response"
        res.destroy()
      }
    }
    body.on("error", lost)
    // Hooks' Transforms (the response cache's tee) sit between the upstream body and everything after it.
    let source: Readable = body
    for (const hook of hooks.bodyTransforms) {
      const t = hook(ctx, r.statusCode, r.headers)
      if (t !== undefined) {
        t.on("error", lost)
        source = source.pipe(t)
      }
    }
    if (mode === "sse") {
      // Streams: a Transform between upstream and client, chunk for chunk.
      const capture = new UsageCapture(mode, hooks.captureResponseBytes)
      f.capture = capture.reader
      capture.on("error", lost)
      source.pipe(capture).pipe(res)
    } else {
      if (mode === "json" || hooks.captureResponseBytes > 0) {
        const reader = new UsageReader(mode, hooks.captureResponseBytes)
        f.capture = reader
        body.on("data", (chunk: Buffer) => reader.observe(chunk))
        body.on("end", () => reader.finish())
      }
      source.pipe(res)
    }
  }

  const failed = (f: Flow, target: UpstreamTarget, e: NodeJS.ErrnoException) => {
    const { ctx } = f
    if (f.abort?.aborted || f.done) {
      target.breaker.release()
      return
    }
    if (f.bodyTooLarge) {
      target.breaker.release()
      ctx.forwarded = false
      return tooLarge(f)
    }
    target.breaker.record(true)
    ctx.upstreamErrorType = e.code === "UND_ERR_HEADERS_TIMEOUT" ? "timeout" : e.code ?? e.name
    if (e.code === "UND_ERR_HEADERS_TIMEOUT") {
      ctx.error = "upstream response headers timed out"
      return reply(f, Answers.timeout)
    }
    ctx.error = `upstream request failed (${e.code ?? e.name})`
    log("warn", "proxy: upstream request failed", ctx, `${target.provider.name}: ${e.code ?? e.name}`)
    return reply(f, Answers.upstreamError)
  }

  return handle
})

export const layer = Layer.effect(ProxyHandler, make)
