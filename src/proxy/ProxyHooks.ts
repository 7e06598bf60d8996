/**
 * The seam for features that plug into the data plane (response cache, instrumentation events, audit, metrics).
 *
 * Every /v1 request gets one `ProxyRequestContext`; the handler (ProxyHandler.ts) fills it stage by stage and,
 * when the response is over (finished, failed, rejected or abandoned by the client), calls every `onComplete`
 * hook exactly once with it. Hooks run on the request path: keep them synchronous and cheap — enqueue, don't
 * write (docs/architecture.md "Two planes, one listener"). A hook that throws is logged and ignored.
 *
 *   beforeUpstream     after authentication, the project checks, the body checks and the window rate limits,
 *                      before the quota and the upstream call. Return a `HookAnswer` (or a Promise of one) when the
 *                      hook can answer the request itself — a cache hit: the handler takes the quota of a limited
 *                      token as for a forwarded request, then calls it (or refuses the request, 429, when the quota
 *                      is spent), sets `ctx.cacheHit` and counts the answer in the token's request_count and
 *                      cache_hit_count. Return undefined to let the request go on.
 *   upstreamHeaders    just before the upstream call: headers to add to the upstream request (the cache's
 *                      validators when it revalidates an entry).
 *   interceptResponse  upstream headers arrived: return true when the hook answered the client itself (the cache
 *                      turning the upstream's 304 to its validators into the cached 200); the hook owns `body`.
 *   decorateResponse   upstream headers arrived; may add/change the headers sent to the client (e.g. Cache-Status).
 *   bodyTransforms     a Transform to put between the upstream body and the client (the cache's tee), or none.
 *   onComplete         once per request, including rejected ones; `ctx.responseBody` holds at most
 *                      `captureResponseBytes` bytes (the largest value any provider of hooks asked for).
 */
import { Context, Layer } from "effect"
import type { IncomingHttpHeaders, IncomingMessage, OutgoingHttpHeaders, ServerResponse } from "node:http"
import type { Readable, Transform } from "node:stream"
import type { AnswerFacts, Usage } from "./usage.js"

export class ProxyRequestContext {
  /** Provider, token and project, once known. */
  provider: string | undefined = undefined
  tokenId: string | undefined = undefined
  projectId: string | undefined = undefined
  /** The token's labels, once it is known (never read from the request). */
  tokenName: string | null = null
  user: string | null = null
  tokenMetadata: Readonly<Record<string, string>> | null = null
  /** The buffered request body (JSON bodies only; others stream through and are not kept). */
  requestBody: Buffer | undefined = undefined
  /** Final status sent to the client; 499 when the client went away before an answer. */
  status = 0
  /** `code` of a locally produced error (`token_inactive`, `upstream_error`, …). */
  code: string | undefined = undefined
  /** Why the request was denied for policy reasons worth auditing (`project_inactive`, `model_not_allowed`). */
  denial: string | undefined = undefined
  /** Which limit refused the request, when one did (metrics tell rate limits and quotas apart). */
  rejectedBy: "token_rate_limit" | "project_rate_limit" | "quota" | undefined = undefined
  /** A hook answered from cache. */
  cacheHit = false
  /**
   * The request carries a valid token of an active project (set once the token and project checks passed). Nothing
   * read from a request that is not authenticated — its body, a model name — reaches events or metric labels.
   */
  authenticated = false
  /** The request passed every check and was (or was about to be) sent upstream. */
  forwarded = false
  /** The answer was an SSE stream. */
  stream = false
  /** ms from arrival until the (first) upstream request was sent. */
  proxyMs: number | undefined = undefined
  /** ms from sending the first attempt upstream until the answer's headers (every attempt included). */
  upstreamMs: number | undefined = undefined
  /** Upstream attempts made: 0 = none, 1 = sent once, more = retried on other keys (src/proxy/keys.ts). */
  attemptCount = 0
  /** performance.now() when the last attempt was sent, and ms until its headers or its failure. */
  lastAttemptAt: number | undefined = undefined
  lastAttemptMs: number | undefined = undefined
  /** The key of the last attempt: its index in the project's `api_keys`, and its provider. */
  keyIndex: number | undefined = undefined
  upstreamProvider: string | undefined = undefined
  /**
   * The attempts before the last one, when the request was retried (undefined on the usual one-attempt path; see
   * `attemptsOf` for all of them).
   */
  retried: Array<UpstreamAttempt> | undefined = undefined
  /** The upstream's own id of its answer (`x-request-id`, or Anthropic's `request-id`), sent on as X-Upstream-Request-ID. */
  upstreamRequestId: string | undefined = undefined
  /** ms from arrival until the response ended. */
  durationMs: number | undefined = undefined
  usage: Usage | undefined = undefined
  /**
   * What the answer cost (USD), from its usage and the model's price (src/spend); undefined when the answer reported
   * no usage or its model has no price (`unpriced` then names the model).
   */
  costUsd: number | undefined = undefined
  /** The model of an answer with usage that has no price. */
  unpriced: string | undefined = undefined
  /** LLM tokens the answer used (input, cached included, + output): what token budgets and TPM limits count. */
  tokensUsed: number | undefined = undefined
  /** What the upstream's answer said about itself (model, id, finish reasons, first bytes), read with its usage. */
  answer: AnswerFacts | undefined = undefined
  /** Why the upstream call failed without an answer: `timeout`, or the client library's code (`ECONNREFUSED`, …). */
  upstreamErrorType: string | undefined = undefined
  /** Upstream status and headers, when the upstream answered. */
  upstreamStatus: number | undefined = undefined
  upstreamHeaders: Record<string, string | string[] | undefined> | undefined = undefined
  /** First `captureResponseBytes` bytes of the upstream body, and whether more passed. */
  responseBody: Buffer | undefined = undefined
  responseTruncated = false
  /** What went wrong (safe text, never a secret), when something did. */
  error: string | undefined = undefined
  /**
   * When a forwarded answer's headers were written (performance.now()) and the cache status they carried; set by
   * the observability hooks' `decorateResponse` (fields rather than a side table: a WeakMap entry per request cost
   * more than everything else those hooks do).
   */
  headersWrittenAt: number | undefined = undefined
  responseCacheStatus: string | undefined = undefined
  /** The socket peer and request headers at arrival (the audit hook works out the client IP from them). */
  peer: string | undefined = undefined
  headers: IncomingHttpHeaders | undefined = undefined

  constructor(
    readonly requestId: string,
    readonly method: string,
    /** Path and query as received. */
    readonly url: string,
    readonly path: string,
    readonly origin: string | undefined,
    /** performance.now() at arrival. */
    readonly startedAt: number,
    /** Date.now() at arrival. */
    readonly receivedAt: number
  ) {}
}

/** One upstream attempt: the key it used, what came of it, and how long it took (ms). */
export interface UpstreamAttempt {
  readonly keyIndex: number
  readonly provider: string
  /** The upstream's status, when it answered. */
  readonly status: number | undefined
  /** Why it failed without an answer (`timeout`, `ECONNREFUSED`, …). */
  readonly error: string | undefined
  /** performance.now() when it was sent. */
  readonly startMs: number
  /** Until its answer's headers, or its failure. */
  readonly durationMs: number
  readonly upstreamRequestId: string | undefined
}

/**
 * Every attempt of a forwarded request, the last one from the context's own fields (status, timings); empty when
 * the request did not go upstream. Builds the list: call it off the request path (events, logs, spans).
 */
export const attemptsOf = (ctx: ProxyRequestContext): ReadonlyArray<UpstreamAttempt> => {
  if (ctx.attemptCount === 0 || ctx.lastAttemptAt === undefined) return []
  const last: UpstreamAttempt = {
    keyIndex: ctx.keyIndex ?? 0,
    provider: ctx.upstreamProvider ?? ctx.provider ?? "",
    status: ctx.upstreamStatus,
    error: ctx.upstreamStatus === undefined
      ? ctx.upstreamErrorType ?? (ctx.status === 499 ? "cancelled" : undefined)
      : undefined,
    startMs: ctx.lastAttemptAt,
    durationMs: ctx.lastAttemptMs ?? Math.max(0, ctx.startedAt + (ctx.durationMs ?? 0) - ctx.lastAttemptAt),
    upstreamRequestId: ctx.upstreamRequestId
  }
  return ctx.retried === undefined ? [last] : [...ctx.retried, last]
}

export type UpstreamHeaders = Record<string, string | string[] | undefined>

/** A hook's own answer to a request (a cache hit), written when the handler calls it. */
export type HookAnswer = (res: ServerResponse) => void

export interface ProxyHooksShape {
  readonly beforeUpstream: ReadonlyArray<
    (ctx: ProxyRequestContext, req: IncomingMessage) => HookAnswer | undefined | Promise<HookAnswer | undefined>
  >
  readonly upstreamHeaders: ReadonlyArray<(ctx: ProxyRequestContext) => Record<string, string> | undefined>
  readonly interceptResponse: ReadonlyArray<
    (ctx: ProxyRequestContext, status: number, headers: UpstreamHeaders, body: Readable, res: ServerResponse) => boolean
  >
  readonly decorateResponse: ReadonlyArray<
    (ctx: ProxyRequestContext, status: number, headers: OutgoingHttpHeaders) => void
  >
  readonly bodyTransforms: ReadonlyArray<
    (ctx: ProxyRequestContext, status: number, headers: UpstreamHeaders) => Transform | undefined
  >
  readonly onComplete: ReadonlyArray<(ctx: ProxyRequestContext) => void>
  readonly captureResponseBytes: number
}

export class ProxyHooks extends Context.Tag("llm-proxy/ProxyHooks")<ProxyHooks, ProxyHooksShape>() {
  static readonly none: Layer.Layer<ProxyHooks> = Layer.succeed(ProxyHooks, {
    beforeUpstream: [],
    upstreamHeaders: [],
    interceptResponse: [],
    decorateResponse: [],
    bodyTransforms: [],
    onComplete: [],
    captureResponseBytes: 0
  })

  /** Several providers of hooks as one (they run in the order given). */
  static readonly combine = (...parts: ReadonlyArray<Partial<ProxyHooksShape>>): ProxyHooksShape => ({
    beforeUpstream: parts.flatMap((p) => p.beforeUpstream ?? []),
    upstreamHeaders: parts.flatMap((p) => p.upstreamHeaders ?? []),
    interceptResponse: parts.flatMap((p) => p.interceptResponse ?? []),
    decorateResponse: parts.flatMap((p) => p.decorateResponse ?? []),
    bodyTransforms: parts.flatMap((p) => p.bodyTransforms ?? []),
    onComplete: parts.flatMap((p) => p.onComplete ?? []),
    captureResponseBytes: Math.max(0, ...parts.map((p) => p.captureResponseBytes ?? 0))
  })
}
