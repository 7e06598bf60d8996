/**
 * The response cache plugged into the data plane through ProxyHooks (src/cache/CacheStage.ts does the work).
 * Hits are answered after authentication and the project checks, before rate limits, the quota and the upstream:
 * a revoked, expired or unknown token, or an inactive project, never gets a cached answer, and a hit counts in
 * the token's `cache_hit_count` (ProxyHandler sets it from `ctx.cacheHit`), not in `request_count`.
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
    beforeUpstream: [(ctx, req, res) => stage.lookup(ctx, req.headers, res)],
    upstreamHeaders: [stage.upstreamHeaders],
    interceptResponse: [stage.intercept],
    decorateResponse: [(ctx, status, out) => stage.decorate(ctx, status, ctx.upstreamHeaders ?? {}, out)],
    bodyTransforms: [stage.tee]
  }
}
