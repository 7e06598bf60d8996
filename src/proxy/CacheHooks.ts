/**
 * The response cache plugged into the data plane through ProxyHooks (src/cache/CacheStage.ts does the work).
 * The lookup runs after authentication, the project and body checks and the window rate limits; a hit is served
 * only once the proxy took the token's quota, as for a forwarded request. A revoked, expired or unknown token, or
 * an inactive project, never gets a cached answer, and a rate or quota limit applies to hits too. A hit counts in
 * the token's `request_count` and `cache_hit_count` (ProxyHandler, from `ctx.cacheHit`).
 */
import { makeCacheStage } from "../cache/CacheStage.js"
import type { ResponseCacheShape } from "../cache/ResponseCache.js"
import { corsHeaders, serverTiming } from "./policy.js"
import type { ProxyHooksShape, ProxyRequestContext } from "./ProxyHooks.js"

export const cacheHooks = (cache: ResponseCacheShape): Partial<ProxyHooksShape> => {
  if (!cache.enabled) return {}
  const stage = makeCacheStage<ProxyRequestContext>(cache, {
    commonHeaders: (ctx) => ({
      "x-request-id": ctx.requestId,
      "server-timing": serverTiming(performance.now() - ctx.startedAt, ctx.upstreamMs),
      ...corsHeaders(ctx.origin)
    })
  })
  return {
    beforeUpstream: [(ctx, req) => stage.lookup(ctx, req.headers)],
    upstreamHeaders: [stage.upstreamHeaders],
    interceptResponse: [stage.intercept],
    decorateResponse: [(ctx, status, out) => stage.decorate(ctx, status, ctx.upstreamHeaders ?? {}, out)],
    bodyTransforms: [stage.tee]
  }
}
