/**
 * The response cache as a stage of the data plane. The proxy (src/proxy/ProxyHandler.ts) calls it at four points,
 * all synchronous Node code (no Effect per request):
 *
 *   lookup      after authentication, the project and body checks and the window rate limits, before the quota and
 *               the upstream: finds a hit (200 from cache, 304 to a satisfied conditional) and returns the function
 *               that serves it — the proxy calls it once the token's quota is taken — or notes a miss / revalidation.
 *   upstreamHeaders   validators to add to the upstream request when the client asked to revalidate (`no-cache`).
 *   intercept   the upstream answered 304 to our validators: refresh the entry and send the client the cached 200.
 *   decorate + tee    a miss: add `Cache-Status` & co and, when storable, tee the body into the cache while it
 *               streams to the client; it is stored only if it ends normally within HTTP_CACHE_MAX_OBJECT_BYTES.
 *
 * The per-request state lives in a WeakMap keyed by the proxy's request context.
 */
import type { IncomingHttpHeaders, OutgoingHttpHeaders, ServerResponse } from "node:http"
import type { Readable, Transform } from "node:stream"
import { BodyCapture } from "./capture.js"
import {
  type CachedResponse,
  cacheStatusHeaders,
  conditionalMatches,
  entrySize,
  hasClientConditional,
  type Headers,
  makeEntry,
  planRequest,
  planStore,
  refreshEntry,
  revalidationHeaders,
  servedHeaders,
  varyMatches
} from "./policy.js"
import type { ResponseCacheShape } from "./ResponseCache.js"

/** What the stage reads from (and writes to) the proxy's per-request context. */
export interface StageContext {
  readonly method: string
  /** Path and query as received. */
  readonly url: string
  readonly path: string
  readonly requestId: string
  projectId: string | undefined
  requestBody: Buffer | undefined
}

/** Writes a cached answer to the client; the proxy calls it once the request is admitted. */
export type ServeCached = (res: ServerResponse) => void

interface RequestState {
  readonly key: string
  readonly forcedTtl: number | undefined
  readonly headers: IncomingHttpHeaders
  /** The entry being revalidated and the validators we added (undefined: the client sent its own). */
  revalidating: CachedResponse | undefined
  validators: Record<string, string> | undefined
  store: { readonly ttlSeconds: number; readonly forced: boolean } | undefined
}

export interface CacheStageOptions<C extends StageContext> {
  /** Longest lifetime a client's opt-in may ask for, seconds (`HTTP_CACHE_CLIENT_MAX_TTL`; 0 = no opt-in). */
  readonly clientMaxTtlSeconds?: number
  /** Headers every proxy answer carries (X-Request-ID, Server-Timing, CORS), computed by the proxy. */
  readonly commonHeaders: (ctx: C) => OutgoingHttpHeaders
  readonly now?: () => number
}

const toOutgoing = (pairs: ReadonlyArray<readonly [string, string]>): OutgoingHttpHeaders => {
  const out: OutgoingHttpHeaders = {}
  for (const [name, value] of pairs) {
    const prev = out[name]
    if (prev === undefined) out[name] = value
    else out[name] = Array.isArray(prev) ? [...prev, value] : [String(prev), value]
  }
  return out
}

const EMPTY = new Uint8Array(0)

const queryOf = (url: string) => {
  const i = url.indexOf("?")
  return i < 0 ? "" : url.slice(i + 1)
}

export const makeCacheStage = <C extends StageContext>(cache: ResponseCacheShape, options: CacheStageOptions<C>) => {
  const now = options.now ?? Date.now
  const states = new WeakMap<StageContext, RequestState>()
  const policy = cache.config
  const clientMaxTtl = options.clientMaxTtlSeconds ?? cache.config.clientMaxTtlSeconds

  const serve = (
    ctx: C,
    res: ServerResponse,
    state: RequestState,
    entry: CachedResponse,
    outcome: "hit" | "conditional-hit" | "revalidated"
  ) => {
    if (res.headersSent || res.destroyed) return
    cache.count("hit")
    const status = outcome === "conditional-hit" ? 304 : entry.status
    const headers = toOutgoing(servedHeaders(entry, outcome, state.key, now()))
    Object.assign(headers, options.commonHeaders(ctx))
    // A CORS answer depends on the Origin: say so, as the proxy does on forwarded answers.
    if (headers["access-control-allow-origin"] !== undefined) {
      const vary = headers["vary"]
      const names = vary === undefined ? "" : Array.isArray(vary) ? vary.join(", ") : String(vary)
      if (!/(^|,)\s*origin\s*(,|$)/i.test(names)) headers["vary"] = names === "" ? "Origin" : `${names}, Origin`
    }
    const withBody = status !== 304 && ctx.method !== "HEAD"
    if (withBody) headers["content-length"] = entry.body.byteLength
    res.writeHead(status, headers)
    if (withBody) res.end(entry.body)
    else res.end()
  }

  const decide = (
    ctx: C,
    state: RequestState,
    entry: CachedResponse | undefined,
    revalidate: boolean
  ): ServeCached | undefined => {
    if (entry === undefined || !varyMatches(entry, state.headers)) {
      cache.count("miss")
      return undefined
    }
    if (conditionalMatches(entry, ctx.method, state.headers)) {
      return (res) => serve(ctx, res, state, entry, "conditional-hit")
    }
    if (revalidate) {
      state.revalidating = entry
      const validators = revalidationHeaders(entry)
      // A client conditional of its own goes upstream unchanged, and the upstream's 304 is its answer.
      if (!hasClientConditional(state.headers) && Object.keys(validators).length > 0) state.validators = validators
      return undefined
    }
    return (res) => serve(ctx, res, state, entry, "hit")
  }

  /**
   * The proxy's cache stage: the function serving a hit (the proxy calls it once the request is admitted, and
   * counts the request as a cache hit), or undefined to go upstream.
   */
  const lookup = (ctx: C, headers: IncomingHttpHeaders): ServeCached | undefined | Promise<ServeCached | undefined> => {
    if (!cache.enabled || ctx.projectId === undefined) return undefined
    const plan = planRequest({
      method: ctx.method,
      path: ctx.path,
      query: queryOf(ctx.url),
      headers,
      projectId: ctx.projectId,
      body: ctx.requestBody
    }, clientMaxTtl)
    if (plan._tag === "Bypass") {
      cache.count("bypass")
      return undefined
    }
    const state: RequestState = {
      key: plan.key,
      forcedTtl: plan.forcedTtl,
      headers,
      revalidating: undefined,
      validators: undefined,
      store: undefined
    }
    states.set(ctx, state)
    const found = cache.lookup(plan.key, now())
    if (found instanceof Promise) return found.then((entry) => decide(ctx, state, entry, plan.revalidate))
    return decide(ctx, state, found, plan.revalidate)
  }

  /** Validators to add to the upstream request, when this request revalidates an entry. */
  const upstreamHeaders = (ctx: C): Record<string, string> | undefined => states.get(ctx)?.validators

  /**
   * The upstream answered: true when the stage answered the client itself (our revalidation got a 304: the
   * entry is refreshed and the client gets the cached 200). The upstream body is then discarded.
   */
  const intercept = (ctx: C, status: number, upstream: Headers, body: Readable, res: ServerResponse): boolean => {
    const state = states.get(ctx)
    if (state === undefined || status !== 304 || state.validators === undefined || state.revalidating === undefined) {
      if (state?.revalidating !== undefined) cache.count("miss")
      return false
    }
    // A 304 has no body; whatever arrives is discarded, and a late error on it must not go unhandled.
    body.on("error", () => {})
    body.destroy()
    const at = now()
    const refreshed = refreshEntry(state.revalidating, upstream, at)
    if (refreshed !== undefined) cache.store(state.key, refreshed, at)
    else cache.remove(state.key)
    serve(ctx, res, state, refreshed ?? state.revalidating, "revalidated")
    return true
  }

  /** Adds the cache headers to a forwarded answer and decides whether its body is stored. */
  const decorate = (ctx: C, status: number, upstream: Headers, out: OutgoingHttpHeaders): void => {
    const state = states.get(ctx)
    if (state === undefined) return
    const plan = planStore(ctx.method, state.forcedTtl, { status, headers: upstream }, policy)
    let pairs: Array<readonly [string, string]>
    if (plan._tag === "Store") {
      state.store = plan
      pairs = cacheStatusHeaders(plan.forced ? "stored (forced)" : "stored", state.key)
    } else {
      pairs = [...cacheStatusHeaders("miss", state.key), ["x-cache-debug", plan.debug]]
    }
    for (const [name, value] of pairs) out[name] = value
  }

  /** A Transform to put between the upstream body and the client when the answer is to be stored. */
  const tee = (ctx: C, status: number, upstream: Headers): Transform | undefined => {
    const state = states.get(ctx)
    const plan = state?.store
    if (state === undefined || plan === undefined) return undefined
    const build = (body: Uint8Array, at: number) =>
      makeEntry({ method: ctx.method, headers: state.headers }, { status, headers: upstream }, body, plan, at)
    // The bound is on the whole entry: what the headers take leaves less room for the body.
    const room = policy.maxObjectBytes - entrySize(build(EMPTY, 0))
    return new BodyCapture(Math.max(0, room), (body) => {
      const at = now()
      cache.store(state.key, build(body, at), at)
    })
  }

  return { lookup, upstreamHeaders, intercept, decorate, tee }
}

export type CacheStage<C extends StageContext> = ReturnType<typeof makeCacheStage<C>>
