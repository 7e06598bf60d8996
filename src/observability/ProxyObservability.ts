/**
 * What the data plane tells operators about each /v1 request, from the proxy's completion seam (ProxyHooks):
 * - one `Metrics.request` observation (counters and histograms, synchronous);
 * - one access-log line (request id, project id, token id — never the token —, status, durations, model, usage,
 *   cache status), enqueued and written by a background fiber so the request never waits for the logger;
 * - when tracing is on, a `proxy.request` server span with a `proxy.upstream` client child, built after the fact
 *   from the request's timestamps (no Effect runs per request; nothing at all when tracing is off).
 *
 * These hooks must be combined LAST (src/Layers.ts) so `decorateResponse` sees the cache headers other hooks set.
 */
import { Effect, Exit, FiberRef, LogLevel, Option, Queue, type Tracer } from "effect"
import type { OutgoingHttpHeaders } from "node:http"
import { Providers } from "../config/Providers.js"
import type { ProxyHooksShape, ProxyRequestContext } from "../proxy/ProxyHooks.js"
import { endpointAllowed } from "../proxy/policy.js"
import { Metrics, type RequestObservation } from "./Metrics.js"
import { TracingEnabled } from "./Tracing.js"

/** Distinct label values kept per label before new ones are folded into `other` (bounded cardinality). */
export const MAX_MODELS = 200
const MAX_ROUTES_CACHED = 2_000
const MODEL_SCAN_BYTES = 8_192
const MODEL_PATTERN = /"model"\s*:\s*"([^"\\]{1,128})"/

/** The `model` of a JSON request body, read from its first 8 KiB without parsing the whole document. */
export const modelOf = (body: Buffer | undefined): string | undefined => {
  if (body === undefined || body.length === 0) return undefined
  const m = MODEL_PATTERN.exec(body.toString("latin1", 0, Math.min(body.length, MODEL_SCAN_BYTES)))
  return m?.[1]
}

const CACHE_STATUS = /llm-proxy;\s*([a-z-]+)/i
const CACHE_VALUES = new Set(["hit", "miss", "stored", "bypass", "conditional-hit"])

/** Cache status of a forwarded answer from the headers the cache hooks set (reference §6.6). */
export const cacheStatusOf = (headers: OutgoingHttpHeaders): string => {
  const x = headers["x-proxy-cache"]
  if (typeof x === "string" && CACHE_VALUES.has(x.toLowerCase())) return x.toLowerCase()
  const cs = headers["cache-status"]
  const m = typeof cs === "string" ? CACHE_STATUS.exec(cs) : null
  const v = m?.[1]?.toLowerCase().replace(/\s*\(.*$/, "")
  return v !== undefined && CACHE_VALUES.has(v) ? v : "none"
}

interface AfterHeaders {
  cache: string
  /** performance.now() when our response headers were written. */
  writtenAt: number
}

export interface AccessLogEntry {
  readonly [key: string]: string | number | boolean | undefined
}

const round = (ms: number | undefined) => (ms === undefined ? undefined : Math.round(ms * 1000) / 1000)

const toEpochNanos = (perfMs: number) => BigInt(Math.round((performance.timeOrigin + perfMs) * 1_000_000))

/** The hooks, and the fiber that writes access-log lines. Scoped: the fiber drains what is queued on shutdown. */
export const make = (options: { readonly accessLog: boolean; readonly accessLogBuffer?: number }) =>
  Effect.gen(function*() {
    const metrics = yield* Metrics
    const providers = yield* Providers
    const tracing = yield* TracingEnabled
    const tracer = yield* Effect.tracer
    const spanContext = yield* Effect.context<never>()
    const after = new WeakMap<ProxyRequestContext, AfterHeaders>()

    // Route label: the longest allowed endpoint prefix of any provider (a bounded set), else "other".
    const endpoints = [...new Set(providers.all.flatMap((p) => p.allowedEndpoints))].sort((a, b) => b.length - a.length)
    const routes = new Map<string, string>()
    const routeOf = (path: string): string => {
      const known = routes.get(path)
      if (known !== undefined) return known
      const route = endpoints.find((e) => endpointAllowed(path, [e])) ?? "other"
      if (routes.size < MAX_ROUTES_CACHED) routes.set(path, route)
      return route
    }
    const models = new Set<string>()
    const modelLabel = (model: string | undefined): string => {
      if (model === undefined) return "none"
      if (models.has(model)) return model
      if (models.size >= MAX_MODELS) return "other"
      models.add(model)
      return model
    }

    // Access log: a bounded queue drained by one fiber; a full queue drops lines (counted in a warning). Nothing is
    // queued when the minimum log level hides info lines.
    const minimumLevel = yield* FiberRef.get(FiberRef.currentMinimumLogLevel)
    const accessLog = options.accessLog && LogLevel.lessThanEqual(minimumLevel, LogLevel.Info)
    const queue = yield* Queue.dropping<AccessLogEntry>(options.accessLogBuffer ?? 10_000)
    let droppedLines = 0
    const writeLines = (batch: Iterable<AccessLogEntry>) =>
      Effect.gen(function*() {
        for (const entry of batch) yield* Effect.annotateLogs(Effect.logInfo("access"), entry)
        if (droppedLines > 0) {
          const n = droppedLines
          droppedLines = 0
          yield* Effect.logWarning(`access log: ${n} lines dropped (queue full)`)
        }
      })
    if (accessLog) {
      // A batch taken from the queue is written whole, even when shutdown interrupts the fiber.
      yield* Effect.forkScoped(Effect.forever(Effect.uninterruptibleMask((restore) =>
        Effect.flatMap(restore(Queue.takeBetween(queue, 1, 1_000)), writeLines)
      )))
      yield* Effect.addFinalizer(() => Effect.flatMap(Queue.takeAll(queue), writeLines))
    }

    const span = (ctx: ProxyRequestContext, o: RequestObservation, model: string | undefined) => {
      const end = ctx.startedAt + (ctx.durationMs ?? 0)
      const root = tracer.span("proxy.request", Option.none(), spanContext, [], toEpochNanos(ctx.startedAt), "server", {
        captureStackTrace: false
      } as Tracer.SpanOptions)
      root.attribute("http.request.method", ctx.method)
      root.attribute("http.route", o.route)
      root.attribute("http.response.status_code", ctx.status)
      root.attribute("llm_proxy.request_id", ctx.requestId)
      root.attribute("llm_proxy.provider", o.provider)
      root.attribute("llm_proxy.cache", o.cache)
      if (model !== undefined) root.attribute("gen_ai.request.model", model)
      if (ctx.projectId !== undefined) root.attribute("llm_proxy.project_id", ctx.projectId)
      if (ctx.tokenId !== undefined) root.attribute("llm_proxy.token_id", ctx.tokenId)
      if (ctx.code !== undefined) root.attribute("llm_proxy.error_code", ctx.code)
      if (ctx.usage !== undefined) {
        root.attribute("gen_ai.usage.input_tokens", ctx.usage.prompt_tokens)
        root.attribute("gen_ai.usage.output_tokens", ctx.usage.completion_tokens)
      }
      if (ctx.forwarded && ctx.proxyMs !== undefined) {
        const sentAt = ctx.startedAt + ctx.proxyMs
        const up = tracer.span("proxy.upstream", Option.some(root), spanContext, [], toEpochNanos(sentAt), "client", {
          captureStackTrace: false
        } as Tracer.SpanOptions)
        up.attribute("llm_proxy.provider", o.provider)
        up.attribute("http.request.method", ctx.method)
        up.attribute("http.route", o.route)
        if (ctx.upstreamStatus !== undefined) up.attribute("http.response.status_code", ctx.upstreamStatus)
        if (ctx.upstreamMs !== undefined) up.attribute("llm_proxy.upstream_headers_ms", round(ctx.upstreamMs))
        up.end(toEpochNanos(end), ctx.upstreamStatus !== undefined && ctx.upstreamStatus < 500 ? Exit.void : Exit.fail(ctx.error ?? "upstream failed"))
      }
      root.end(toEpochNanos(end), ctx.status < 500 ? Exit.void : Exit.fail(ctx.code ?? "error"))
    }

    const hooks: Partial<ProxyHooksShape> = {
      decorateResponse: [(ctx, _status, headers) => {
        after.set(ctx, { cache: cacheStatusOf(headers), writtenAt: performance.now() })
      }],
      onComplete: [(ctx) => {
        const a = after.get(ctx)
        const durationMs = ctx.durationMs ?? performance.now() - ctx.startedAt
        let overheadMs: number
        if (!ctx.forwarded || ctx.proxyMs === undefined) overheadMs = durationMs
        else if (a !== undefined && ctx.upstreamMs !== undefined) {
          overheadMs = ctx.proxyMs + Math.max(0, a.writtenAt - (ctx.startedAt + ctx.proxyMs + ctx.upstreamMs))
        } else overheadMs = ctx.proxyMs
        const model = modelOf(ctx.requestBody)
        const o: RequestObservation = {
          provider: ctx.provider ?? "none",
          route: routeOf(ctx.path),
          status: ctx.status,
          cache: ctx.cacheHit ? "hit" : a?.cache ?? "none",
          overheadSeconds: overheadMs / 1000,
          upstreamSeconds: ctx.upstreamMs === undefined ? undefined : ctx.upstreamMs / 1000,
          durationSeconds: durationMs / 1000,
          model: modelLabel(model),
          promptTokens: ctx.usage?.prompt_tokens,
          completionTokens: ctx.usage?.completion_tokens,
          rejectedBy: ctx.rejectedBy
        }
        metrics.request(o)
        if (accessLog) {
          const entry: AccessLogEntry = {
            request_id: ctx.requestId,
            method: ctx.method,
            path: ctx.path,
            status: ctx.status,
            duration_ms: round(durationMs),
            overhead_ms: round(overheadMs),
            upstream_ms: round(ctx.upstreamMs),
            provider: ctx.provider,
            project_id: ctx.projectId,
            token_id: ctx.tokenId,
            model,
            stream: ctx.stream,
            cache: o.cache,
            prompt_tokens: ctx.usage?.prompt_tokens,
            completion_tokens: ctx.usage?.completion_tokens,
            total_tokens: ctx.usage?.total_tokens,
            code: ctx.code,
            error: ctx.error
          }
          for (const k in entry) if (entry[k] === undefined) delete (entry as Record<string, unknown>)[k]
          if (!queue.unsafeOffer(entry)) droppedLines++
        }
        if (tracing) span(ctx, o, model)
      }]
    }
    return hooks
  })
