/**
 * The data plane: one plain Node handler for /v1/* (src/http/Server.ts routes to it before the Effect app).
 *
 * Stages, in order (each answers locally and stops on failure; docs/proxy.md has the table):
 *   1. preflight        OPTIONS → 204 with CORS headers, no authentication
 *   2. route            safe path, no credential in the query, method + endpoint allow-list (any provider that
 *                       could serve it; policy.ts routeOf)
 *   3. origin           required / allowed origins
 *   4. authenticate     bearer token: format, existence, active, expiry (TokenValidator; warm = no I/O)
 *   5. project          project active, its provider's policy, its key
 *   6. body             size (413 from Content-Length before reading; bounded read of JSON bodies), the model
 *                       scope (`allowed_models` of project and token: the body's `model`, `/v1/models/{id}`; a
 *                       scoped `GET /v1/models` is answered filtered), the parameter whitelist of the project's
 *                       provider, and the token's end user as `user` where the provider says `inject_user`
 *   7. admit            window rate limits (token, project)
 *   8. hooks            beforeUpstream (response cache lookup); a hit is served after the quota is taken (9)
 *   9. forward          circuit breaker, then the atomic quota of a limited token (taken only for a request that is
 *                       answered: forwarded, or served by a hook), undici request, the answer streamed back through
 *                       UsageCapture
 *  10. complete         once per request on `close`: usage counters, onComplete hooks
 *
 * Stages 1–5 read nothing but the headers: nothing is done for a caller before its token is checked. An answer
 * given while a declared body is still unread (every refusal in 1–5, and a 413) closes the connection lingering
 * (src/http/linger.ts) instead of reading the body.
 *
 * The hot path is synchronous up to the upstream call when the token is warm and unlimited: no DB, no await,
 * no Effect per request. Effects run only on a cache miss (token load), for quotas and with the Redis limiter, all
 * through one runtime bridge (`run` below) that hands the stage the value or the typed failure.
 */
import { Cause, Context, Effect, Exit, Layer, Option, Redacted, Runtime } from "effect"
import { absurd } from "effect/Function"
import { EventEmitter } from "node:events"
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http"
import { type Readable, Transform } from "node:stream"
import type { Dispatcher } from "undici"
import { AppConfig } from "../config/AppConfig.js"
import { type ProviderConfig, Providers } from "../config/Providers.js"
import { hashProxyToken, isAcceptedTokenFormat } from "../crypto/ProxyToken.js"
import { lazyTokenCounter } from "../dispatcher/tokens.js"
import { closeLingering } from "../http/linger.js"
import { type BudgetExceeded, Budgets } from "../spend/Budgets.js"
import { chargeOf } from "../spend/charge.js"
import { makePrices, Prices } from "../spend/prices.js"
import { askForUsage, estimateCutShort } from "../spend/streamUsage.js"
import { type BudgetRow, Store } from "../store/Store.js"
import { type Exceeded, RateLimits, Unavailable } from "../token/RateLimits.js"
import { type GrantKey, judge, type TokenGrant, TokenValidator } from "../token/TokenValidator.js"
import { UsageRecorder } from "../token/UsageRecorder.js"
import { isFailureStatus } from "./CircuitBreaker.js"
import type { ObjectScan } from "./jsonBody.js"
import {
  coolDown,
  coolsKey,
  isIdempotent,
  notSent,
  notStarted,
  pickKey,
  recovered,
  retryAfterMs,
  unavailability
} from "./keys.js"
import {
  filterModelList,
  injectUser,
  MODEL_LIST_MAX_BYTES,
  modelOfPath,
  type ModelScope,
  namedModel,
  requestModel,
  USER_FIELDS
} from "./modelScope.js"
import {
  Answers,
  bearerCredential,
  bodyOf,
  checkBodyParams,
  checkOrigin,
  corsHeaders,
  downstreamHeaders,
  duplicateAuthorization,
  errorShapeOf,
  hasQueryCredential,
  isJsonContentType,
  isSafePath,
  type LocalAnswer,
  preflight,
  requestIdOf,
  routeOf,
  routeRefusal,
  serverTiming,
  splitUrl,
  upstreamPath,
  upstreamRequestHeaders
} from "./policy.js"
import { type HookAnswer, ProxyHooks, ProxyRequestContext } from "./ProxyHooks.js"
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
  /** The project's provider, once the project stage passed. */
  target: UpstreamTarget | undefined
  /** What goes upstream as the body. */
  body: Buffer | IncomingMessage | Transform | undefined
  bodyLength: number | undefined
  bodyTooLarge: boolean
  /**
   * The request declared a body (a Content-Length above 0, or chunked) that no stage has taken on: an answer now
   * does not read it but closes the connection lingering.
   */
  unread: boolean
  grant: TokenGrant | undefined
  /** Keys this request has tried (bit = the key's slot), and when all its attempts must have their answer. */
  tried: number
  deadline: number
  abort: UpstreamAbort | undefined
  capture: UsageReader | undefined
  /** A scoped `GET /v1/models`: the answer's list is filtered to what the scope admits (never from the cache). */
  filterModels: ModelScope | undefined
  /** The proxy asked the upstream for usage the client did not ask for: its usage-only chunk is removed. */
  stripUsage: boolean
  /**
   * The last body scanned (jsonBody.ts) and its scan: the stages that read the top-level members of the same body
   * (asking for usage, the model scope, the price check of a USD budget) scan it once.
   */
  scannedBody: Buffer | undefined
  scan: ObjectScan | undefined
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

const ignore = () => {}

/** Drops an upstream body we will not send. undici's body emits an AbortError when destroyed: without a listener that
 * would be an uncaught exception. */
const discard = (body: Dispatcher.ResponseData["body"]) => {
  body.on("error", ignore)
  body.destroy()
}

const isPromise = <A>(v: A | Promise<A>): v is Promise<A> => typeof (v as { then?: unknown })?.then === "function"

const JSON_HEADERS = "application/json"

const anthropicKey = (v: string | ReadonlyArray<string> | undefined): string | undefined =>
  typeof v === "string" && v !== "" ? v : undefined

/** On answers no retry can change (SDKs read it before their own rules). */
const SHOULD_NOT_RETRY = { "x-should-retry": "false" } as const

/** The upstream's own id of an answer: `x-request-id` (OpenAI and most), else `request-id` (Anthropic). */
const upstreamRequestIdOf = (headers: Dispatcher.ResponseData["headers"]): string | undefined => {
  const v = headers["x-request-id"] ?? headers["request-id"]
  const id = Array.isArray(v) ? v[0] : v
  return id !== undefined && id.length <= 256 ? id : undefined
}

const usdBudget = (b: BudgetRow | undefined) => b !== undefined && b.maxCostUsd !== null

/** Paths whose streams generate text (a stream of one cut short is charged by counting it). */
const GENERATION = /\/(?:chat\/completions|completions|responses|messages)$/

/**
 * `source` to `res` through `capture`, with back-pressure: the source pauses while the response's buffer is full and
 * resumes on `drain`; its end ends the response (with what the capture held back). A client that goes away is
 * handled by the request's teardown (the upstream request is aborted), an upstream failure by `lost`.
 *
 * The chunks that come in one turn of the event loop (the events of one socket read: the HTTP parser hands each
 * chunk of a chunked body over on its own) go to the capture and to the client together, at the end of that turn:
 * the same bytes in the same order, with no wait (a microtask), read and written once instead of once per event.
 */
const relay = (source: Readable, res: ServerResponse, capture: UsageCapture, lost: () => void) => {
  let failed = false
  // The client sees the headers before the first event even when the upstream waits to send it, but not in a write of
  // their own when the first events came with the upstream's headers (as they do from a fast upstream): those go out
  // in one write with the headers (one system call per stream fewer, ~5 % of a short stream's CPU).
  let written = false
  setImmediate(() => {
    if (!written && !res.writableEnded && !res.destroyed) res.flushHeaders()
  })
  let pending: Array<Buffer> | undefined
  const flush = () => {
    const chunks = pending
    if (chunks === undefined) return
    pending = undefined
    // Nothing is written after the response ended or was torn down (a write after end is an 'error' on it).
    if (failed || res.writableEnded || res.destroyed) return
    const chunk = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks)
    let out: Buffer | undefined
    try {
      out = capture.pass(chunk)
    } catch {
      // Nothing a chunk holds should get here; if it does, the stream is cut, not the process.
      failed = true
      return lost()
    }
    if (out === undefined) return
    written = true
    if (!res.write(out)) source.pause()
  }
  source.on("data", (chunk: Buffer) => {
    if (pending === undefined) {
      pending = [chunk]
      queueMicrotask(flush)
    } else pending.push(chunk)
  })
  res.on("drain", () => source.resume())
  source.on("end", () => {
    flush()
    if (failed || res.writableEnded) return
    let rest: Buffer | undefined
    try {
      rest = capture.end()
    } catch {
      return lost()
    }
    if (rest !== undefined) res.end(rest)
    else res.end()
  })
}

/** Node's own test for a client waiting for `100 Continue` before it sends its body. */
const EXPECT_CONTINUE = /(?:^|\W)100-continue(?:$|\W)/i

export const make = Effect.gen(function*() {
  const providers = yield* Providers
  const config = yield* AppConfig
  const validator = yield* TokenValidator
  const usage = yield* UsageRecorder
  const limits = yield* RateLimits
  const upstream = yield* Upstream
  const keyStates = upstream.keys
  const retries = upstream.retries
  const hooks = yield* ProxyHooks
  const store = yield* Store
  // Layers that do not configure prices (tests of other features) price with the built-in table.
  const prices = Option.getOrElse(yield* Effect.serviceOption(Prices), () => makePrices([]))
  /** Models without a price already warned about (one warning per model; bounded). */
  const unpricedWarned = new Set<string>()
  // The tokenizer counts what a stream cut short had generated (loaded on first use).
  const countTokens = lazyTokenCounter()
  const budgets = Option.getOrUndefined(yield* Effect.serviceOption(Budgets))
  const allowUnpriced = config.unpricedModels === "allow"
  const runtime = yield* Effect.runtime<never>()
  const runCallback = Runtime.runCallback(runtime)
  const runFork = Runtime.runFork(runtime)
  const maxBody = config.maxRequestSize
  const allProviders = providers.all
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
    ctx.code = answer.code
    if (f.body instanceof Transform) {
      // A counted upload that will not go upstream: drain it so the connection can be reused.
      f.req.unpipe(f.body)
      f.req.resume()
    }
    // A body nobody read (a stranger's, or one over the limit) is not read now either.
    if (f.unread && !f.req.complete) closeLingering(f.req, res)
    const body = bodyOf(answer, errorShapeOf(ctx.path))
    const headers: OutgoingHttpHeaders = {
      "content-type": JSON_HEADERS,
      "content-length": Buffer.byteLength(body),
      "x-request-id": ctx.requestId,
      "server-timing": serverTiming(ctx.proxyMs ?? performance.now() - ctx.startedAt, ctx.upstreamMs, ctx.attemptCount),
      ...(answer.final ? SHOULD_NOT_RETRY : {}),
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

  // -- the runtime bridge ---------------------------------------------------------------------------------------

  /**
   * The one place where a stage runs an Effect (a token-cache miss, a quota update, the Redis rate limiter): its
   * value goes to `onSuccess`, its typed failure to `onFailure` (both guarded); a defect or an interruption is an
   * internal error (500). An Effect that completes synchronously (SQLite) calls back before `run` returns.
   */
  const run = <A, E>(
    f: Flow,
    effect: Effect.Effect<A, E>,
    onSuccess: (a: A) => unknown,
    onFailure: (e: E) => unknown
  ): void => {
    runCallback(effect, {
      onExit: (exit) => {
        if (Exit.isSuccess(exit)) return guard(f, () => onSuccess(exit.value))
        const failure = Cause.failureOption(exit.cause)
        if (Option.isSome(failure)) return guard(f, () => onFailure(failure.value))
        internal(f, Cause.squash(exit.cause))
      }
    })
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
      // An answer cut short (client gone, upstream broke off): what usage was read so far is its usage.
      if (!res.writableEnded) capture.settle()
      ctx.usage = capture.usage
      ctx.answer = capture
      if (hooks.captureResponseBytes > 0) {
        ctx.responseBody = capture.captured.subarray(0, hooks.captureResponseBytes)
        ctx.responseTruncated = capture.bytes > hooks.captureResponseBytes
      }
    }
    const grant = f.grant
    // What the answer is charged (a cache hit costs nothing: no upstream answer was read).
    let detail = grant !== undefined && ctx.forwarded ? capture?.detail : undefined
    if (grant !== undefined && ctx.forwarded && capture !== undefined && !res.writableEnded && !capture.usageFinal) {
      // A stream cut short before its final usage: charged what it reported, the input counted from the request
      // when it reported none, and the output counted from the text streamed.
      const streamed = capture.streamedText()
      if (streamed !== undefined && (detail !== undefined || streamed.text.length + streamed.overflowChars > 0)) {
        const model = capture.responseModel ?? namedModel(ctx.requestBody)
        detail = estimateCutShort(countTokens, model, detail, streamed, ctx.requestBody)
        const prompt = detail.cacheApart ? detail.prompt + detail.cacheRead + detail.cacheWrite : detail.prompt
        ctx.usage = {
          prompt_tokens: prompt,
          completion_tokens: detail.completion,
          total_tokens: prompt + detail.completion
        }
      }
    }
    if (detail !== undefined) {
      const charge = chargeOf(prices, detail, capture!.responseModel, ctx.requestBody)
      ctx.tokensUsed = charge.tokens
      ctx.costUsd = charge.costUsd
      if (charge.costUsd === undefined) {
        const model = charge.model ?? "unknown"
        ctx.unpriced = model
        if (!unpricedWarned.has(model) && unpricedWarned.size < 1_000) {
          unpricedWarned.add(model)
          log(
            "warn",
            "spend: a model without a price answered; its answers count 0 USD (add it to PRICES_PATH)",
            ctx,
            model
          )
        }
      }
    }
    // A budgeted token's answer is charged at once (every instance's next check sees it), not in the next batch.
    const charged = grant !== undefined && ctx.tokensUsed !== undefined && budgets !== undefined &&
      budgets.applies(grant.tokenBudget, grant.projectBudget)
    // Token-per-minute windows (`rate_limit.tokens`) are debited once the answer's tokens are known.
    if (grant !== undefined && ctx.tokensUsed !== undefined) {
      limits.debitTokens(grant.tokenId, grant.tokenRateLimit, grant.projectId, grant.projectRateLimit, ctx.tokensUsed)
    }
    if (charged) budgets!.charge(grant!.tokenId, grant!.projectId, ctx.costUsd ?? 0, ctx.tokensUsed!, ctx.receivedAt)
    if (grant !== undefined && (ctx.forwarded || ctx.cacheHit)) {
      // Every answered request counts (limited tokens already did, in their quota update); a hit also as a hit.
      const u = ctx.usage
      usage.record(grant.tokenId, {
        request: grant.maxRequests === null,
        ...(ctx.cacheHit ? { cacheHit: true } : {}),
        ...(u !== undefined ? { promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens } : {}),
        ...(ctx.tokensUsed !== undefined
          ? { spend: { costUsd: ctx.costUsd ?? 0, tokens: ctx.tokensUsed, written: charged } }
          : {}),
        at: ctx.receivedAt,
        rollup: { projectId: grant.projectId, status: ctx.status }
      })
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
    const cl = req.headers["content-length"]
    const f: Flow = {
      ctx,
      req,
      res,
      candidates: allProviders,
      target: undefined,
      body: undefined,
      bodyLength: undefined,
      bodyTooLarge: false,
      unread: req.headers["transfer-encoding"] !== undefined || (cl !== undefined && cl !== "0"),
      grant: undefined,
      tried: 0,
      deadline: 0,
      abort: undefined,
      capture: undefined,
      filterModels: undefined,
      stripUsage: false,
      scannedBody: undefined,
      scan: undefined,
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
        ...preflight(
          ctx.origin,
          req.headers["access-control-request-method"] as string | undefined,
          ctx.path,
          req.headers["access-control-request-headers"] as string | undefined,
          allProviders
        )
      })
      res.end()
      return
    }
    if (!isSafePath(ctx.path)) return reply(f, Answers.endpointNotFound)
    if (ctx.url.length !== ctx.path.length && hasQueryCredential(ctx.url.slice(ctx.path.length))) {
      return reply(f, Answers.credentialInQuery)
    }
    if (single !== undefined) {
      // One provider (the common case): the same rules without the candidate lists.
      const r = routeOf(ctx.method, ctx.path, single)
      if (r !== undefined) return reply(f, r)
      const o = checkOrigin(ctx.origin, single)
      if (o !== undefined) return reply(f, o)
      return authenticate(f)
    }
    // Known path, other method → 405 naming what any provider admits there; unknown path → 404.
    const candidates = allProviders.filter((p) => routeOf(ctx.method, ctx.path, p) === undefined)
    if (candidates.length === 0) return reply(f, routeRefusal(ctx.path, allProviders))
    let originAnswer: LocalAnswer | undefined
    const byOrigin = candidates.filter((p) => {
      const a = checkOrigin(ctx.origin, p)
      originAnswer ??= a
      return a === undefined
    })
    if (byOrigin.length === 0) return reply(f, originAnswer ?? Answers.originNotAllowed)
    f.candidates = byOrigin
    return authenticate(f)
  }

  // -- 4. authenticate ------------------------------------------------------------------------------------------

  const authenticate = (f: Flow) => {
    if (f.done) return
    if (duplicateAuthorization(f.req.rawHeaders)) return reply(f, Answers.duplicateAuthorization)
    const authorization = f.req.headers.authorization
    // On Anthropic's own paths the token may come in `x-api-key`, where Anthropic's SDKs send their `apiKey` (only
    // without an Authorization header; it is never forwarded). Elsewhere only `Authorization: Bearer` counts.
    const credential = authorization !== undefined
      ? bearerCredential(authorization)
      : errorShapeOf(f.ctx.path) === "anthropic"
      ? anthropicKey(f.req.headers["x-api-key"])
      : undefined
    if (credential === undefined) return reply(f, Answers.missingAuthorization)
    if (!isAcceptedTokenFormat(credential)) return reply(f, Answers.malformedToken)
    const hash = hashProxyToken(credential)
    const warm = validator.cached(hash, Date.now())
    if (warm !== undefined) return warm === null ? reply(f, Answers.tokenNotFound) : authorized(f, warm)
    return run(
      f,
      validator.load(hash),
      (grant) => (grant === undefined ? reply(f, Answers.tokenNotFound) : authorized(f, grant)),
      (e) => {
        log("error", "proxy: token lookup failed", f.ctx, e.cause.detail)
        f.ctx.error = "token lookup failed"
        reply(f, Answers.serviceUnavailable)
      }
    )
  }

  // -- 5. project -----------------------------------------------------------------------------------------------

  const authorized = (f: Flow, grant: TokenGrant) => {
    if (f.done) return
    const { ctx } = f
    ctx.tokenId = grant.tokenId
    ctx.projectId = grant.projectId
    ctx.provider = grant.provider
    ctx.tokenName = grant.name
    ctx.user = grant.user
    ctx.tokenMetadata = grant.metadata
    const refusal = judge(grant, Date.now())
    if (refusal === "token_inactive") return reply(f, Answers.tokenInactive)
    if (refusal === "token_expired") return reply(f, Answers.tokenExpired)
    if (refusal === "project_inactive") {
      ctx.denial = "project_inactive"
      return reply(f, Answers.projectInactive)
    }
    ctx.authenticated = true
    const target = upstream.target(grant.provider)
    if (target === undefined) return reply(f, Answers.providerNotConfigured)
    const p = target.provider
    // The project's own provider decides (the route stage admitted the request for some provider).
    if (f.candidates.length !== 1 || f.candidates[0] !== p) {
      const r = routeOf(ctx.method, ctx.path, p)
      if (r !== undefined) return reply(f, r)
      const o = checkOrigin(ctx.origin, p)
      if (o !== undefined) return reply(f, o)
    }
    if (grant.keys.length === 0) return reply(f, Answers.upstreamAuthError)
    f.grant = grant
    f.target = target
    return readBody(f)
  }

  // -- 6. body --------------------------------------------------------------------------------------------------

  const tooLarge = (f: Flow) => {
    f.bodyTooLarge = true
    // The rest of the body is not read: the connection closes (lingering) after the answer.
    f.unread = true
    reply(f, Answers.requestTooLarge, { connection: "close" })
  }

  const readBody = (f: Flow) => {
    const { req } = f
    if (!f.unread) return afterBody(f)
    const cl = req.headers["content-length"]
    const chunked = req.headers["transfer-encoding"] !== undefined
    const declared = cl === undefined ? undefined : Number(cl)
    if (declared !== undefined && declared > maxBody) return tooLarge(f)
    // A client that waits for `100 Continue` sends its body only now (src/http/Server.ts leaves it to us).
    const expect = req.headers.expect
    if (expect !== undefined && EXPECT_CONTINUE.test(expect)) f.res.writeContinue()
    f.unread = false
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
        // The limit can be crossed before undici reads the stream (during a quota update): keep that error from
        // being an uncaught one; undici then sees a destroyed body and failed() answers 413.
        counter.on("error", ignore)
        req.pipe(counter)
        f.body = counter
      }
      return afterBody(f)
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
    if (f.done) return
    const grant = f.grant!
    // Tokens and projects without `allowed_models` skip this entirely (no scan of the body).
    if (grant.models !== null) {
      const a = modelRefusal(f, grant.models)
      if (a !== undefined) {
        f.ctx.denial = "model_not_allowed"
        return reply(f, a)
      }
    }
    const provider = f.target!.provider
    const whitelist = provider.paramWhitelist
    if (whitelist.size > 0 && f.ctx.requestBody !== undefined) {
      // Only the whitelisted values are parsed (a body that is not a JSON object has nothing to check; the upstream
      // answers a syntax error).
      const a = checkBodyParams(f.ctx.requestBody, whitelist)
      if (a !== undefined) return reply(f, a)
    }
    if (provider.injectUser && grant.user !== null && f.ctx.requestBody !== undefined) withUser(f, grant.user)
    // A streamed OpenAI-style request always asks for usage: what it costs is read from the answer.
    if (f.ctx.requestBody !== undefined && f.body instanceof Buffer) {
      const asked = askForUsage(f.ctx.path, f.body, f)
      if (asked !== undefined) {
        f.body = asked.body
        f.bodyLength = asked.body.length
        f.stripUsage = asked.strip
      }
    }
    return admit(f)
  }

  /**
   * The model scope: a JSON body's one string `model`, or the id of `/v1/models/{id}`, must be admitted; a body the
   * proxy cannot read a model from (not JSON, no model, twice, not a string) is refused. Bodyless requests elsewhere
   * name no model; `GET /v1/models` is answered filtered.
   */
  const modelRefusal = (f: Flow, scope: ModelScope): LocalAnswer | undefined => {
    const { ctx } = f
    if (ctx.requestBody !== undefined) {
      const m = requestModel(ctx.requestBody, f)
      if (m._tag === "unchecked") return Answers.modelUnchecked(m.why)
      return scope.allows(m.model) ? undefined : Answers.modelNotAllowed(m.model)
    }
    if (f.body !== undefined) return Answers.modelUnchecked("its body is not JSON")
    const id = modelOfPath(ctx.path)
    if (id !== undefined) return scope.allows(id) ? undefined : Answers.modelNotAllowed(id)
    if (ctx.path === "/v1/models") f.filterModels = scope
    return undefined
  }

  /** `inject_user`: the token's end user as the request's `user` / `safety_identifier`, unless the client set one. */
  const withUser = (f: Flow, user: string) => {
    const field = USER_FIELDS.get(f.ctx.path)
    const body = f.ctx.requestBody
    if (field === undefined || body === undefined) return
    const edited = injectUser(body, field, user)
    if (edited === body) return
    f.ctx.requestBody = edited
    f.body = edited
    f.bodyLength = edited.length
  }

  // -- 7. admit -------------------------------------------------------------------------------------------------

  const admit = (f: Flow): void | Promise<void> => {
    if (f.done) return
    const g = f.grant!
    const verdict = limits.unsafeCheck(g.tokenId, g.tokenRateLimit, g.projectId, g.projectRateLimit)
    if (verdict === undefined) return checkBudget(f)
    if (Effect.isEffect(verdict)) {
      return run(f, verdict, (v) => (v === undefined ? checkBudget(f) : limitedBy(f, v)), absurd)
    }
    return limitedBy(f, verdict)
  }

  /** Budgets: only a token with one (or whose project has one) reads what it spent (one query per READ_TTL_MS). */
  const checkBudget = (f: Flow): void | Promise<void> => {
    const g = f.grant!
    if (budgets === undefined || !budgets.applies(g.tokenBudget, g.projectBudget)) return lookup(f)
    // A USD budget cannot count a model without a price: refused unless UNPRICED_MODELS=allow. The model is the one
    // the upstream reads (the top-level member; a `model` nested elsewhere is no decoy), and a body that names one the
    // proxy cannot tell (twice, not a string) is refused the same way.
    if (!allowUnpriced && (usdBudget(g.tokenBudget) || usdBudget(g.projectBudget))) {
      const asked = f.ctx.requestBody === undefined ? undefined : requestModel(f.ctx.requestBody, f)
      if (asked?._tag === "model" ? prices.lookup(asked.model) === undefined : asked?.named === true) {
        f.ctx.denial = "model_not_priced"
        return reply(f, Answers.modelNotPriced)
      }
    }
    // Synchronous while a read of what was spent is fresh (READ_TTL_MS); the read itself through `run`.
    const verdict = budgets.unsafeCheck(g.tokenId, g.tokenBudget, g.projectId, g.projectBudget, Date.now())
    if (!Effect.isEffect(verdict)) return verdict === undefined ? lookup(f) : overBudget(f, verdict)
    return run(
      f,
      verdict,
      (v) => (v === undefined ? lookup(f) : overBudget(f, v)),
      (e) => {
        // What was spent cannot be read: a budget that cannot be checked is not a budget, so the request waits.
        log("error", "proxy: budget check failed", f.ctx, e.message)
        f.ctx.error = "budget check failed"
        return reply(f, Answers.serviceUnavailable)
      }
    )
  }

  const overBudget = (f: Flow, v: BudgetExceeded) => {
    f.ctx.denial = "budget_exceeded"
    const b = v.budget
    const amount = v.limit === "max_cost_usd" ? `max_cost_usd ${b.maxCostUsd} USD` : `max_tokens ${b.maxTokens}`
    const per = b.period === "total" ? "in total" : `per ${b.period} (UTC)`
    return reply(f, Answers.budgetExceeded(`${v.scope} budget used up: ${amount} ${per}`))
  }

  const limitedBy = (f: Flow, v: Exceeded | typeof Unavailable) => {
    if (v !== Unavailable) {
      f.ctx.rejectedBy = v.scope === "token" ? "token_rate_limit" : "project_rate_limit"
      return reply(f, Answers.rateLimited(v.retryAfterSeconds, v.scope))
    }
    f.ctx.error = "rate limiter unavailable"
    return reply(f, Answers.serviceUnavailable)
  }

  // -- 8. hooks -------------------------------------------------------------------------------------------------

  // A filtered model list is neither served from nor stored in the response cache: the cache holds the project's
  // whole list, which another token of the project may be allowed to see.
  const lookup = (f: Flow): void | Promise<void> =>
    hooks.beforeUpstream.length > 0 && f.filterModels === undefined ? runHooks(f, 0) : forward(f)

  const runHooks = (f: Flow, i: number): void | Promise<void> => {
    for (; i < hooks.beforeUpstream.length; i++) {
      if (f.done) return
      const answer = hooks.beforeUpstream[i]!(f.ctx, f.req)
      if (isPromise(answer)) {
        const next = i + 1
        return answer.then((a) => guard(f, () => (a !== undefined ? fromHook(f, a) : runHooks(f, next))))
      }
      if (answer !== undefined) return fromHook(f, answer)
    }
    return forward(f)
  }

  /** A hook (the cache) answers: the quota is taken as for a forwarded request, then the hook writes the answer. */
  const fromHook = (f: Flow, answer: HookAnswer) =>
    quota(f, () => {
      f.done = true
      f.ctx.cacheHit = true
      answer(f.res)
    })

  // -- 9. forward -----------------------------------------------------------------------------------------------

  const forward = (f: Flow): void | Promise<void> => {
    if (f.done) return
    const g = f.grant!
    const key = pickKey(g.keys, g.provider, keyStates, Date.now(), 0, fallbackAdmits, f)
    if (key === undefined) return unavailable(f)
    // The quota after the key's breaker: a request no key takes uses none.
    return quota(f, () => attempt(f, key), () => key.state!.breaker.release())
  }

  /** No key can take the request now: 503, and when one will again. */
  const unavailable = (f: Flow) => {
    const u = unavailability(f.grant!.keys, keyStates, Date.now())
    f.ctx.error = u.breakersOpen ? "every key's circuit breaker is open" : "every key is cooling down"
    return reply(
      f,
      u.breakersOpen ? Answers.circuitOpen(u.retryAfterSeconds) : Answers.keysCoolingDown(u.retryAfterSeconds)
    )
  }

  /**
   * Whether a key of another provider may take this request (the project's own provider admitted it): that provider
   * admits the method and path, the origin and the body's whitelisted parameters.
   */
  const fallbackAdmits = (provider: string, f: Flow): boolean => {
    const p = providers.get(provider)
    const { ctx } = f
    if (p === undefined || routeOf(ctx.method, ctx.path, p) !== undefined || checkOrigin(ctx.origin, p) !== undefined) {
      return false
    }
    return p.paramWhitelist.size === 0 || ctx.requestBody === undefined ||
      checkBodyParams(ctx.requestBody, p.paramWhitelist) === undefined
  }

  /**
   * Takes one request of a limited token's quota (one atomic UPDATE), then `next()`; `undo()` when the request is
   * not going ahead after all (refused, or the client left meanwhile). Unlimited tokens go straight on.
   */
  const quota = (f: Flow, next: () => void, undo?: () => void): void => {
    const g = f.grant!
    if (g.maxRequests === null) return next()
    return run(f, store.consumeQuota(g.tokenId, new Date().toISOString()), (result) => {
      if (f.done) return undo?.()
      if (result === "ok") return next()
      undo?.()
      switch (result) {
        case "exhausted":
          f.ctx.rejectedBy = "quota"
          return reply(f, Answers.quotaExhausted)
        case "inactive":
          validator.unsafeInvalidate({ kind: "token", id: g.tokenId })
          f.ctx.authenticated = false
          return reply(f, Answers.tokenInactive)
        case "expired":
          f.ctx.authenticated = false
          return reply(f, Answers.tokenExpired)
        case "project_inactive":
          validator.unsafeInvalidate({ kind: "project", id: g.projectId })
          f.ctx.authenticated = false
          f.ctx.denial = "project_inactive"
          return reply(f, Answers.projectInactive)
        case "not_found":
          validator.unsafeInvalidate({ kind: "token", id: g.tokenId })
          f.ctx.authenticated = false
          return reply(f, Answers.tokenNotFound)
      }
    }, (e) => {
      undo?.()
      if (f.done) return
      log("error", "proxy: quota update failed", f.ctx, e.detail)
      f.ctx.error = "quota update failed"
      reply(f, Answers.serviceUnavailable)
    })
  }

  /**
   * May the attempt that just failed be sent again on another key? Only while nothing went to the client (the caller
   * checks), within UPSTREAM_RETRIES and the request's time bound, with a body that can be sent again (buffered JSON
   * or none: a streamed upload is sent once), and when the method is idempotent or the provider cannot have started
   * the work (`safe`).
   */
  const mayRetry = (f: Flow, safe: boolean): boolean =>
    f.ctx.attemptCount <= retries && performance.now() < f.deadline &&
    (f.body === undefined || f.body instanceof Buffer) && (safe || isIdempotent(f.ctx.method))

  /** The key for the next attempt, the failed one remembered; undefined when there is none. */
  const retryKey = (
    f: Flow,
    failed: GrantKey,
    sentAt: number,
    status: number | undefined,
    error: string | undefined,
    id?: string
  ) => {
    const g = f.grant!
    const next = pickKey(g.keys, g.provider, keyStates, Date.now(), f.tried, fallbackAdmits, f)
    if (next === undefined) return undefined
    ;(f.ctx.retried ??= []).push({
      keyIndex: failed.index,
      provider: failed.provider,
      status,
      error,
      startMs: sentAt,
      durationMs: performance.now() - sentAt,
      upstreamRequestId: id
    })
    return next
  }

  /** One upstream attempt with `key` (its breaker's admission taken). */
  const attempt = (f: Flow, key: GrantKey) => {
    const state = key.state!
    if (f.done) return state.breaker.release()
    const { ctx, req } = f
    const own = f.target!
    const target = key.provider === own.provider.name ? own : upstream.target(key.provider)
    if (target === undefined) {
      // A fallback key of a provider the configuration no longer has.
      state.breaker.release()
      return reply(f, Answers.providerNotConfigured)
    }
    ctx.forwarded = true
    const abort = new UpstreamAbort()
    f.abort = abort
    let headers: Record<string, string | string[]>
    try {
      headers = upstreamRequestHeaders(
        req.headers,
        target.provider,
        Redacted.value(key.apiKey),
        ctx.requestId,
        f.body instanceof Buffer ? f.bodyLength : f.body === req ? f.bodyLength : undefined
      )
      for (const hook of hooks.upstreamHeaders) {
        const extra = hook(ctx)
        if (extra !== undefined) Object.assign(headers, extra)
      }
    } catch (e) {
      // Admitted by the breaker but never sent: free a half-open probe slot.
      state.breaker.release()
      throw e
    }
    const sentAt = performance.now()
    if (ctx.attemptCount === 0) {
      ctx.proxyMs = sentAt - ctx.startedAt
      f.deadline = sentAt + own.totalTimeoutMs
    }
    ctx.attemptCount++
    ctx.lastAttemptAt = sentAt
    ctx.keyIndex = key.index
    ctx.upstreamProvider = key.provider
    f.tried |= 1 << key.slot
    target.pool.request({
      path: upstreamPath(target.provider, ctx.url, ctx.path),
      method: ctx.method as Dispatcher.HttpMethod,
      headers,
      body: f.body ?? null,
      signal: abort,
      headersTimeout: Math.max(1, Math.min(target.headersTimeoutMs, f.deadline - sentAt)),
      bodyTimeout: 0
    }).then(
      (r) => {
        try {
          respond(f, key, r, sentAt)
        } catch (e) {
          discard(r.body)
          internal(f, e)
        }
      },
      (e: NodeJS.ErrnoException) => failed(f, key, target, e, sentAt)
    )
  }

  const respond = (f: Flow, key: GrantKey, r: Dispatcher.ResponseData, sentAt: number) => {
    const { ctx, res } = f
    const status = r.statusCode
    const state = key.state!
    state.breaker.record(isFailureStatus(status))
    if (f.done || res.destroyed) {
      discard(r.body)
      return
    }
    // A project's only key never cools down: there is no other key to send its requests to, so the upstream's own
    // answer (and the key's breaker) tells the client more than a local 503 would.
    if (coolsKey(status) && f.grant!.keys.length > 1) {
      const now = Date.now()
      coolDown(state, now, retryAfterMs(r.headers, now), upstream.cooling, String(status))
      // Nothing was sent to the client yet: another key may answer instead.
      if (mayRetry(f, notStarted(status))) {
        const next = retryKey(f, key, sentAt, status, undefined, upstreamRequestIdOf(r.headers))
        if (next !== undefined) {
          discard(r.body)
          return attempt(f, next)
        }
      }
    } else recovered(state)
    const now = performance.now()
    ctx.upstreamMs = now - (ctx.startedAt + ctx.proxyMs!)
    ctx.lastAttemptMs = now - sentAt
    ctx.upstreamStatus = status
    ctx.upstreamHeaders = r.headers
    f.done = true
    for (const hook of hooks.interceptResponse) {
      if (hook(ctx, status, r.headers, r.body, res)) return
    }
    const out = downstreamHeaders(r.headers)
    const upstreamId = upstreamRequestIdOf(r.headers)
    if (upstreamId !== undefined) {
      ctx.upstreamRequestId = upstreamId
      out["x-upstream-request-id"] = upstreamId
    }
    out["x-request-id"] = ctx.requestId
    const timing = serverTiming(ctx.proxyMs!, ctx.upstreamMs, ctx.attemptCount)
    const theirs = r.headers["server-timing"]
    out["server-timing"] = theirs === undefined
      ? timing
      : `${timing}, ${Array.isArray(theirs) ? theirs.join(", ") : theirs}`
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
    for (const hook of hooks.decorateResponse) hook(ctx, status, out)
    if (f.filterModels !== undefined && status >= 200 && status < 300 && mode !== "sse") {
      return respondFiltered(f, f.filterModels, status, out, r.body)
    }
    res.writeHead(status, out)
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
      const t = hook(ctx, status, r.headers)
      if (t !== undefined) {
        t.on("error", lost)
        source = source.pipe(t)
      }
    }
    if (mode === "sse") {
      // Streams: every chunk through the UsageCapture to the client as it comes, those of one read together (a `data`
      // listener and the response's back-pressure, as `pipe` does, without a Transform's second hop per chunk).
      // Generated text is kept (until the final usage arrives) so that a stream cut short can be charged.
      const capture = new UsageCapture(mode, hooks.captureResponseBytes, GENERATION.test(ctx.path), f.stripUsage)
      f.capture = capture.reader
      relay(source, res, capture, lost)
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

  /** A scoped model list: read whole (bounded), the `data` entries the scope does not admit taken out, then sent. */
  const respondFiltered = (
    f: Flow,
    scope: ModelScope,
    status: number,
    out: OutgoingHttpHeaders,
    body: Dispatcher.ResponseData["body"]
  ) => {
    const { ctx, res } = f
    const parts: Array<Buffer> = []
    let size = 0
    let refused = false
    const refuse = (error: string) => {
      if (refused) return
      refused = true
      if (res.headersSent) return void res.destroy()
      f.done = false
      ctx.error = error
      reply(f, Answers.upstreamError)
    }
    body.on("error", () => refuse("upstream connection lost mid-response"))
    body.on("data", (chunk: Buffer) => {
      size += chunk.length
      if (size <= MODEL_LIST_MAX_BYTES) return void parts.push(chunk)
      discard(body)
      refuse(`model list larger than ${MODEL_LIST_MAX_BYTES} bytes: not filtered, not sent`)
    })
    body.on("end", () =>
      guard(f, () => {
        if (refused || res.destroyed) return
        const raw = Buffer.concat(parts, size)
        const answer = filterModelList(raw, scope) ?? raw
        if (answer !== raw) delete out["etag"]
        out["content-length"] = answer.length
        const reader = new UsageReader("json", hooks.captureResponseBytes)
        f.capture = reader
        reader.observe(answer)
        reader.finish()
        res.writeHead(status, out)
        res.end(answer)
      }))
  }

  const failed = (f: Flow, key: GrantKey, target: UpstreamTarget, e: NodeJS.ErrnoException, sentAt: number) => {
    const { ctx } = f
    const state = key.state!
    if (f.abort?.aborted || f.done) {
      state.breaker.release()
      return
    }
    if (f.bodyTooLarge) {
      state.breaker.release()
      ctx.forwarded = false
      return tooLarge(f)
    }
    state.breaker.record(true)
    const timeout = e.code === "UND_ERR_HEADERS_TIMEOUT"
    const reason = timeout ? "timeout" : e.code ?? e.name
    // A key that cannot be reached cools down; a slow answer is the provider's, not the key's (the breaker counts it).
    if (!timeout && f.grant!.keys.length > 1) coolDown(state, Date.now(), undefined, upstream.cooling, reason)
    if (mayRetry(f, notSent(e.code))) {
      const next = retryKey(f, key, sentAt, undefined, reason)
      if (next !== undefined) return attempt(f, next)
    }
    ctx.lastAttemptMs = performance.now() - sentAt
    ctx.upstreamErrorType = reason
    if (timeout) {
      ctx.error = "upstream response headers timed out"
      return reply(f, Answers.timeout)
    }
    ctx.error = `upstream request failed (${reason})`
    log("warn", "proxy: upstream request failed", ctx, `${target.provider.name} key ${key.index}: ${reason}`)
    return reply(f, Answers.upstreamError)
  }

  return handle
})

export const layer = Layer.effect(ProxyHandler, make)
