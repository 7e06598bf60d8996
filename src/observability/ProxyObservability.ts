/**
 * What the data plane tells operators about each /v1 request, from the proxy's completion seam (ProxyHooks):
 * - one `Metrics.request` observation (counters and histograms, synchronous);
 * - one access-log line (request id, project id, token id — never the token — and the token's name, end user and
 *   metadata, status, durations, model, usage, cache status), buffered and written in batches off the request path;
 * - when tracing is on, a server span with a client child for the upstream call (the GenAI span on GenAI routes),
 *   recorded as one small object from the request's timestamps and what the answer said about itself (model, id,
 *   finish reasons, usage) and exported by src/observability/ProxySpans.ts (nothing at all when tracing is off).
 *
 * These hooks must be combined LAST (src/Layers.ts) so `decorateResponse` sees the cache headers other hooks set.
 */
import { Effect, FiberRef, LogLevel, Option, Queue, Runtime } from "effect"
import type { OutgoingHttpHeaders } from "node:http"
import type { LogFormat } from "../config/AppConfig.js"
import { type ProviderConfig, Providers } from "../config/Providers.js"
import { endpointMatches } from "../proxy/policy.js"
import type { ProxyHooksShape, ProxyRequestContext, UpstreamAttempt } from "../proxy/ProxyHooks.js"
import { Metrics, type RequestObservation } from "./Metrics.js"
import { ProtoWriter } from "./otlpProto.js"
import { ProxySpans, type ProxySpansShape, type UpstreamSpanRecord } from "./ProxySpans.js"

/** Distinct label values kept per label before new ones are folded into `other` (bounded cardinality). */
export const MAX_MODELS = 200
const MAX_ROUTES_CACHED = 2_000
const MODEL_SCAN_BYTES = 8_192
const ACCESS_LOG_FLUSH_MS = 50
/** Epoch ms of performance.now() = 0; read once (the getter is a call into the runtime each time). */
const TIME_ORIGIN = performance.timeOrigin
const MODEL_KEY = Buffer.from("\"model\"")

const isSpace = (c: number) => c === 0x20 || (c >= 0x09 && c <= 0x0d) || c === 0xa0

/** Position of `"model"` in body[from, to), by a byte loop (cheaper than a native call for the first few hundred bytes). */
const findModelKey = (b: Buffer, from: number, to: number): number => {
  for (let i = from; i + 7 <= to; i++) {
    if (
      b[i] === 0x22 && b[i + 1] === 0x6d && b[i + 2] === 0x6f && b[i + 3] === 0x64 && b[i + 4] === 0x65 &&
      b[i + 5] === 0x6c &&
      b[i + 6] === 0x22
    ) return i
  }
  return -1
}

const MODEL_LOOP_BYTES = 512

/**
 * The `model` of a JSON request body: the first `"model"` key in its first 8 KiB followed by `: "value"` (1–128
 * characters, no quote or backslash, read as latin1) — no JSON parse. Same answers as matching
 * `/^"model"\s*:\s*"([^"\\]{1,128})"/` at that key (test/observability/units.test.ts compares them).
 */
export const modelOf = (body: Buffer | undefined): string | undefined => {
  if (body === undefined || body.length === 0) return undefined
  const end = Math.min(body.length, MODEL_SCAN_BYTES)
  let at = findModelKey(body, 0, Math.min(end, MODEL_LOOP_BYTES))
  if (at === -1 && end > MODEL_LOOP_BYTES) {
    const rest = body.subarray(MODEL_LOOP_BYTES - 6, end).indexOf(MODEL_KEY)
    if (rest !== -1) at = MODEL_LOOP_BYTES - 6 + rest
  }
  if (at === -1) return undefined
  let i = at + 7
  // The value must end within 160 bytes of the key.
  const n = Math.min(body.length, at + 160)
  while (i < n && isSpace(body[i]!)) i++
  if (body[i] !== 0x3a) return undefined
  i++
  while (i < n && isSpace(body[i]!)) i++
  if (body[i] !== 0x22) return undefined
  const start = ++i
  const limit = Math.min(n, start + 129)
  while (i < limit && body[i] !== 0x22 && body[i] !== 0x5c) i++
  const length = i - start
  if (i >= n || body[i] !== 0x22 || length === 0 || length > 128) return undefined
  return body.toString("latin1", start, i)
}

/** `gen_ai.operation.name` of the paths that are GenAI operations; other forwarded calls get a plain HTTP client span. */
const OPERATIONS: ReadonlyMap<string, string> = new Map([
  ["/v1/chat/completions", "chat"],
  ["/v1/messages", "chat"],
  ["/v1/responses", "chat"],
  ["/v1/completions", "text_completion"],
  ["/v1/embeddings", "embeddings"]
])

/** The well-known `gen_ai.provider.name` values (GenAI semantic conventions). */
const GEN_AI_PROVIDERS = new Set([
  "openai",
  "anthropic",
  "aws.bedrock",
  "azure.ai.inference",
  "azure.ai.openai",
  "cohere",
  "deepseek",
  "gcp.gemini",
  "gcp.gen_ai",
  "gcp.vertex_ai",
  "groq",
  "ibm.watsonx.ai",
  "mistral_ai",
  "perplexity",
  "x_ai"
])
const PROVIDER_NAMES: ReadonlyArray<readonly [RegExp, string]> = [
  [/^(azure|azure[-_]openai)$/, "azure.ai.openai"],
  [/^(mistral|mistralai)$/, "mistral_ai"],
  [/^(xai|grok)$/, "x_ai"],
  [/^gemini$/, "gcp.gemini"],
  [/^(vertex|vertexai|vertex_ai)$/, "gcp.vertex_ai"],
  [/^bedrock$/, "aws.bedrock"]
]
const PROVIDER_HOSTS: ReadonlyArray<readonly [RegExp, string]> = [
  [/(^|\.)openai\.com$/, "openai"],
  [/(^|\.)anthropic\.com$/, "anthropic"],
  [/\.openai\.azure\.com$/, "azure.ai.openai"],
  [/\.(services|inference)\.ai\.azure\.com$/, "azure.ai.inference"],
  [/^generativelanguage\.googleapis\.com$/, "gcp.gemini"],
  [/aiplatform\.googleapis\.com$/, "gcp.vertex_ai"],
  [/^bedrock-runtime\..*\.amazonaws\.com$/, "aws.bedrock"],
  [/(^|\.)mistral\.ai$/, "mistral_ai"],
  [/(^|\.)groq\.com$/, "groq"],
  [/(^|\.)deepseek\.com$/, "deepseek"],
  [/(^|\.)x\.ai$/, "x_ai"],
  [/(^|\.)perplexity\.ai$/, "perplexity"],
  [/(^|\.)cohere\.(com|ai)$/, "cohere"]
]

/**
 * `gen_ai.provider.name` of a configured provider: its name when that is a well-known value (or a common spelling
 * of one), else the well-known value of its upstream host, else its configured name.
 */
export const genAiProviderOf = (p: Pick<ProviderConfig, "name" | "origin">): string => {
  const name = p.name.toLowerCase()
  if (GEN_AI_PROVIDERS.has(name)) return name
  for (const [re, v] of PROVIDER_NAMES) if (re.test(name)) return v
  const host = new URL(p.origin).hostname.toLowerCase()
  for (const [re, v] of PROVIDER_HOSTS) if (re.test(host)) return v
  return p.name
}

const HEX = /^[0-9a-f]+$/

/**
 * A W3C `traceparent` header's trace id, parent span id and sampled flag; undefined when it is absent, repeated or
 * malformed (all-zero ids, version ff, upper-case hex), as the Trace Context specification asks.
 */
export const parseTraceparent = (
  h: string | ReadonlyArray<string> | undefined
): { readonly traceId: string; readonly spanId: string; readonly sampled: boolean } | undefined => {
  if (typeof h !== "string") return undefined
  const v = h.trim()
  if (v.length < 55 || v[2] !== "-" || v[35] !== "-" || v[52] !== "-") return undefined
  const version = v.slice(0, 2)
  if (!HEX.test(version) || version === "ff" || (version === "00" ? v.length !== 55 : v.length > 55 && v[55] !== "-")) {
    return undefined
  }
  const traceId = v.slice(3, 35)
  const spanId = v.slice(36, 52)
  const flags = v.slice(53, 55)
  if (!HEX.test(traceId) || !HEX.test(spanId) || !HEX.test(flags)) return undefined
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined
  return { traceId, spanId, sampled: (parseInt(flags, 16) & 1) === 1 }
}

/** `?a=REDACTED&b=REDACTED`: the query's parameter names, never its values (they may carry keys or signatures). */
export const redactedQuery = (url: string): string => {
  const q = url.indexOf("?")
  if (q === -1) return ""
  const parts = url.slice(q + 1).split("&").filter((p) => p !== "")
  return parts.length === 0 ? "" : "?" + parts.map((p) => {
    const eq = p.indexOf("=")
    return eq === -1 ? p : `${p.slice(0, eq)}=REDACTED`
  }).join("&")
}

const CACHE_STATUS = /llm-proxy;\s*([a-z-]+)/i
const CACHE_VALUES = new Set(["hit", "miss", "stored", "bypass", "conditional-hit"])

/** Cache status of a forwarded answer from the headers the cache hooks set (docs/cache.md "Headers reported"). */
export const cacheStatusOf = (headers: OutgoingHttpHeaders): string => {
  const x = headers["x-proxy-cache"]
  if (typeof x === "string" && CACHE_VALUES.has(x.toLowerCase())) return x.toLowerCase()
  const cs = headers["cache-status"]
  const m = typeof cs === "string" ? CACHE_STATUS.exec(cs) : null
  const v = m?.[1]?.toLowerCase().replace(/\s*\(.*$/, "")
  return v !== undefined && CACHE_VALUES.has(v) ? v : "none"
}

export interface AccessLogEntry {
  readonly [key: string]: string | number | boolean | Readonly<Record<string, string>> | undefined
}

/** What one access line says, besides the request context. */
interface AccessFacts {
  readonly durationMs: number
  readonly overheadMs: number
  readonly model: string | undefined
  readonly cache: string
}

/** The access-log fields of a request, in line order; undefined ones are left out. */
export const accessEntry = (ctx: ProxyRequestContext, f: AccessFacts): AccessLogEntry => ({
  request_id: ctx.requestId,
  method: ctx.method,
  path: ctx.path,
  status: ctx.status,
  duration_ms: round(f.durationMs),
  overhead_ms: round(f.overheadMs),
  upstream_ms: round(ctx.upstreamMs),
  provider: ctx.provider,
  project_id: ctx.projectId,
  token_id: ctx.tokenId,
  token_name: ctx.tokenName ?? undefined,
  user: ctx.user ?? undefined,
  token_metadata: ctx.tokenMetadata ?? undefined,
  model: f.model,
  stream: ctx.stream,
  cache: f.cache,
  prompt_tokens: ctx.usage?.prompt_tokens,
  completion_tokens: ctx.usage?.completion_tokens,
  total_tokens: ctx.usage?.total_tokens,
  code: ctx.code,
  error: ctx.error,
  attempts: ctx.attemptCount === 0 ? undefined : ctx.attemptCount,
  key_index: ctx.keyIndex,
  upstream_request_id: ctx.upstreamRequestId,
  retried: ctx.retried === undefined ? undefined : ctx.retried.map(describeAttempt).join("; ")
})

/** One earlier attempt of a retried request, as the access log and traces show it. */
export const describeAttempt = (a: UpstreamAttempt): string =>
  `key ${a.keyIndex} (${a.provider}): ${a.status ?? a.error ?? "failed"} in ${
    Math.round(a.durationMs * 1000) / 1000
  } ms`

const str = (key: string, v: string | undefined): string => (v === undefined ? "" : `,"${key}":${JSON.stringify(v)}`)
const num = (key: string, v: number | undefined): string => (v === undefined ? "" : `,"${key}":${v}`)

/**
 * The `annotations` JSON of `accessEntry(ctx, f)`, built as one string: the same text `JSON.stringify` gives for the
 * entry (test/observability/units.test.ts compares them), at about half its cost, with no entry object.
 */
export const accessJson = (ctx: ProxyRequestContext, f: AccessFacts): string => {
  const u = ctx.usage
  return `{"request_id":${JSON.stringify(ctx.requestId)},"method":${JSON.stringify(ctx.method)},"path":${
    JSON.stringify(ctx.path)
  }` +
    `,"status":${ctx.status},"duration_ms":${round(f.durationMs)},"overhead_ms":${round(f.overheadMs)}` +
    num("upstream_ms", round(ctx.upstreamMs)) + str("provider", ctx.provider) + str("project_id", ctx.projectId) +
    str("token_id", ctx.tokenId) + str("token_name", ctx.tokenName ?? undefined) + str("user", ctx.user ?? undefined) +
    (ctx.tokenMetadata === null ? "" : `,"token_metadata":${JSON.stringify(ctx.tokenMetadata)}`) +
    str("model", f.model) + `,"stream":${ctx.stream},"cache":${JSON.stringify(f.cache)}` +
    num("prompt_tokens", u?.prompt_tokens) + num("completion_tokens", u?.completion_tokens) +
    num("total_tokens", u?.total_tokens) +
    str("code", ctx.code) + str("error", ctx.error) +
    (ctx.attemptCount === 0 ? "" : num("attempts", ctx.attemptCount)) +
    num("key_index", ctx.keyIndex) + str("upstream_request_id", ctx.upstreamRequestId) +
    str("retried", ctx.retried === undefined ? undefined : ctx.retried.map(describeAttempt).join("; ")) + "}"
}

const round = (ms: number | undefined) => (ms === undefined ? undefined : Math.round(ms * 1000) / 1000)

/** A successful forwarded answer: the only ones whose timings say something about generation. */
const answered = (ctx: ProxyRequestContext) =>
  ctx.forwarded && ctx.status >= 200 && ctx.status < 300 && ctx.proxyMs !== undefined

/**
 * Time to first token (metrics), streamed (SSE) answers only: the request's arrival until the first chunk of the
 * upstream's body arrived. A JSON answer has no first token apart from its end, so it is not observed.
 */
export const firstTokenSeconds = (ctx: ProxyRequestContext): number | undefined => {
  const first = ctx.answer?.firstChunkAt
  return ctx.stream && first !== undefined && answered(ctx) ? Math.max(0, first - ctx.startedAt) / 1000 : undefined
}

/**
 * Output tokens per second (metrics), answers that report completion tokens: for streams, the tokens over the time
 * from the first chunk to the end (the generation, without the wait for the first token); for JSON answers, over the
 * time from sending the request upstream to the end (the whole wait: when generation began is not visible). Answers
 * whose tokens all came within 1 ms (one chunk) are not counted.
 */
export const outputTokensPerSecond = (ctx: ProxyRequestContext, durationMs: number): number | undefined => {
  const tokens = ctx.usage?.completion_tokens ?? 0
  if (tokens <= 0 || !answered(ctx)) return undefined
  const first = ctx.answer?.firstChunkAt
  const generationMs = ctx.stream
    ? (first === undefined ? 0 : ctx.startedAt + durationMs - first)
    : durationMs - ctx.proxyMs!
  return generationMs >= 1 ? tokens / (generationMs / 1000) : undefined
}

/** The hooks, and the fiber that writes access-log lines. Scoped: the fiber drains what is queued on shutdown. */
export const make = (options: {
  /** Record Metrics observations (ENABLE_METRICS). */
  readonly metrics: boolean
  readonly accessLog: boolean
  /** LOG_FORMAT: JSON access lines are written directly, pretty ones through the Effect logger. */
  readonly format: LogFormat
  readonly accessLogBuffer?: number
  /** Where JSON access lines go, a batch of whole lines at a time (default process.stdout). */
  readonly write?: (chunk: Buffer) => void
  /** TRUST_INCOMING_TRACE_CONTEXT: a client's `traceparent` continues its trace (else our spans start their own). */
  readonly trustIncomingTrace?: boolean
}) =>
  Effect.gen(function*() {
    const metrics = yield* Metrics
    const providers = yield* Providers
    const spans = Option.getOrUndefined(yield* ProxySpans)

    // Route label: the path of the longest allowed endpoint of any provider that matches (a bounded set, e.g.
    // `/v1/models/{id}`), else "other".
    const endpoints = providers.all.flatMap((p) => p.allowedEndpoints).sort((a, b) => b.path.length - a.path.length)
    const routes = new Map<string, string>()
    const routeOf = (path: string): string => {
      const known = routes.get(path)
      if (known !== undefined) return known
      const route = endpoints.find((e) => endpointMatches(path, e))?.path ?? "other"
      if (routes.size < MAX_ROUTES_CACHED) routes.set(path, route)
      return route
    }
    // What the client span says about each upstream (computed once per provider).
    const upstreams = new Map(providers.all.map((p) => {
      const u = new URL(p.origin)
      const port = u.port !== "" ? Number(u.port) : u.protocol === "https:" ? 443 : 80
      // A base_url with a path: the upstream URL's path is that path + the request path after `/v1`.
      const origin = p.basePath === "" ? p.origin : p.origin + p.basePath
      return [p.name, {
        origin,
        strip: p.basePath === "" ? 0 : 3,
        genAiProvider: genAiProviderOf(p),
        address: u.hostname,
        port
      }] as const
    }))
    const trustIncomingTrace = options.trustIncomingTrace === true
    // The upstream URL of a path without a query, one string per origin and path (bounded like the routes): the
    // span encoder compares it with the previous request's, which is cheapest on the same string.
    const urls = new Map<string, Map<string, string>>()
    const urlOf = (origin: string, path: string): string => {
      let byPath = urls.get(origin)
      if (byPath === undefined) {
        byPath = new Map()
        urls.set(origin, byPath)
      }
      let url = byPath.get(path)
      if (url === undefined) {
        url = origin + path
        if (byPath.size < MAX_ROUTES_CACHED) byPath.set(path, url)
      }
      return url
    }
    const models = new Set<string>()
    const modelLabel = (model: string | undefined): string => {
      if (model === undefined) return "none"
      if (models.has(model)) return model
      if (models.size >= MAX_MODELS) return "other"
      models.add(model)
      return model
    }

    // Access log. Nothing is queued when the minimum log level hides info lines. JSON lines (LOG_FORMAT=json, the
    // production format) are written straight to stdout in batches, in the same shape as the JSON logger's lines:
    // through the Effect logger each line cost ~15% of the proxy's CPU under saturation (docs/performance.md).
    // Pretty lines (a developer's terminal) go through the Effect logger. Both are bounded; overflow is dropped
    // and reported in one warning.
    const minimumLevel = yield* FiberRef.get(FiberRef.currentMinimumLogLevel)
    const accessLog = options.accessLog && LogLevel.lessThanEqual(minimumLevel, LogLevel.Info)
    const maxPending = options.accessLogBuffer ?? 10_000
    let droppedLines = 0
    const reportDropped = Effect.suspend(() => {
      if (droppedLines === 0) return Effect.void
      const n = droppedLines
      droppedLines = 0
      return Effect.logWarning(`access log: ${n} lines dropped (buffer full)`)
    })
    let enqueue: (ctx: ProxyRequestContext, f: AccessFacts) => void = () => {}
    if (accessLog && options.format === "json") {
      // Each line is built as one string and written at once as UTF-8 into the pending bytes, so nothing of it
      // outlives the request (retained line strings cost more in garbage collection than building them); a
      // timestamp string is made once per millisecond.
      const LINES_BUFFER = 256 * 1024
      let pending = new ProtoWriter(LINES_BUFFER)
      let lines = 0
      let lastMs = 0
      let lastTimestamp = ""
      const write = options.write ?? ((chunk: Buffer) => void process.stdout.write(chunk))
      const flushLines = () => {
        if (lines === 0) return
        const chunk = pending.view()
        pending = new ProtoWriter(LINES_BUFFER)
        lines = 0
        write(chunk)
      }
      const runFork = Runtime.runFork(yield* Effect.runtime<never>())
      let scheduled: ReturnType<typeof setTimeout> | undefined
      enqueue = (ctx, f) => {
        if (lines >= maxPending) {
          droppedLines++
          return
        }
        const now = Date.now()
        if (now !== lastMs) {
          lastMs = now
          lastTimestamp = new Date(now).toISOString()
        }
        lines++
        pending.text(
          `{"message":"access","logLevel":"INFO","timestamp":"${lastTimestamp}","annotations":${accessJson(ctx, f)}}\n`
        )
        scheduled ??= setTimeout(() => {
          scheduled = undefined
          flushLines()
          if (droppedLines > 0) runFork(reportDropped)
        }, ACCESS_LOG_FLUSH_MS)
      }
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          if (scheduled !== undefined) clearTimeout(scheduled)
          flushLines()
        }).pipe(Effect.zipRight(reportDropped))
      )
    } else if (accessLog) {
      const queue = yield* Queue.dropping<AccessLogEntry>(maxPending)
      const defined = (entry: AccessLogEntry) => {
        const out: Record<string, string | number | boolean | Readonly<Record<string, string>>> = {}
        for (const k in entry) if (entry[k] !== undefined) out[k] = entry[k]!
        return out
      }
      const writeLines = (batch: Iterable<AccessLogEntry>) =>
        Effect.forEach(batch, (entry) => Effect.annotateLogs(Effect.logInfo("access"), defined(entry)), {
          discard: true
        }).pipe(
          Effect.zipRight(reportDropped)
        )
      // A batch taken from the queue is written whole, even when shutdown interrupts the fiber.
      yield* Effect.forkScoped(
        Effect.forever(
          Effect.uninterruptibleMask((restore) =>
            Effect.flatMap(restore(Queue.takeBetween(queue, 1, 1_000)), writeLines)
          )
        )
      )
      yield* Effect.addFinalizer(() => Effect.flatMap(Queue.takeAll(queue), writeLines))
      enqueue = (ctx, f) => {
        if (!queue.unsafeOffer(accessEntry(ctx, f))) droppedLines++
      }
    }

    /** The upstream call's client span: GenAI attributes from the request and what the answer said. */
    const upstreamSpan = (
      ctx: ProxyRequestContext,
      sentAt: number,
      endMs: number,
      model: string | undefined
    ): UpstreamSpanRecord => {
      const target = upstreams.get(ctx.upstreamProvider ?? ctx.provider ?? "")
      const path = target === undefined || target.strip === 0 ? ctx.path : ctx.path.slice(target.strip)
      const a = ctx.answer
      const status = ctx.upstreamStatus
      // Failed: a 5xx, no answer at all (timeout, connection refused or reset), or an answer that broke off.
      const errorType = status !== undefined && status >= 500
        ? String(status)
        : status === undefined
        ? ctx.upstreamErrorType ?? (ctx.status === 499 ? "cancelled" : undefined)
        : ctx.error === "upstream connection lost mid-response"
        ? "response_incomplete"
        : undefined
      return {
        startMs: sentAt,
        endMs,
        error: errorType !== undefined || status === undefined,
        errorType,
        status,
        headersMs: round(ctx.upstreamMs),
        operation: OPERATIONS.get(ctx.path),
        genAiProvider: target?.genAiProvider ?? ctx.provider ?? "unknown",
        serverAddress: target?.address ?? "",
        serverPort: target?.port ?? 0,
        urlFull: ctx.url.length > ctx.path.length
          ? (target?.origin ?? "") + path + redactedQuery(ctx.url)
          : urlOf(target?.origin ?? "", path),
        requestModel: model,
        responseModel: a?.responseModel,
        responseId: a?.responseId,
        finishReasons: a?.finishReasons,
        inputTokens: a?.inputTokens ?? ctx.usage?.prompt_tokens,
        outputTokens: ctx.usage?.completion_tokens,
        cacheReadTokens: a?.cacheReadTokens,
        cacheCreationTokens: a?.cacheCreationTokens,
        firstChunkSeconds: ctx.stream && a?.firstChunkAt !== undefined
          ? Math.max(0, a.firstChunkAt - (ctx.startedAt + (ctx.proxyMs ?? 0))) / 1000
          : undefined,
        attempts: ctx.attemptCount,
        keyIndex: ctx.keyIndex,
        upstreamRequestId: ctx.upstreamRequestId,
        retried: ctx.retried?.map(describeAttempt)
      }
    }

    const span = (
      exporter: ProxySpansShape,
      ctx: ProxyRequestContext,
      o: RequestObservation,
      model: string | undefined,
      parent: ReturnType<typeof parseTraceparent>
    ) => {
      const origin = TIME_ORIGIN
      const endMs = origin + ctx.startedAt + (ctx.durationMs ?? 0)
      const sentAt = ctx.proxyMs === undefined ? undefined : origin + ctx.startedAt + ctx.proxyMs
      exporter.record({
        startMs: origin + ctx.startedAt,
        endMs,
        error: ctx.status >= 500,
        method: ctx.method,
        route: o.route,
        path: ctx.path,
        status: ctx.status,
        requestId: ctx.requestId,
        provider: o.provider,
        cache: o.cache,
        projectId: ctx.projectId,
        tokenId: ctx.tokenId,
        errorCode: ctx.code,
        parent,
        upstream: ctx.forwarded && sentAt !== undefined ? upstreamSpan(ctx, sentAt, endMs, model) : undefined
      })
    }

    /** A trusted caller's trace this request continues, if any (only asked when tracing is on). */
    const parentOf = (ctx: ProxyRequestContext): ReturnType<typeof parseTraceparent> =>
      trustIncomingTrace ? parseTraceparent(ctx.headers?.["traceparent"]) : undefined

    // Nothing to observe: no hooks at all, so the data plane does not even call them.
    if (!options.metrics && !accessLog && spans === undefined) return {} satisfies Partial<ProxyHooksShape>

    const hooks: Partial<ProxyHooksShape> = {
      decorateResponse: [(ctx, _status, headers) => {
        ctx.responseCacheStatus = cacheStatusOf(headers)
        ctx.headersWrittenAt = performance.now()
      }],
      onComplete: [(ctx) => {
        const writtenAt = ctx.headersWrittenAt
        const durationMs = ctx.durationMs ?? performance.now() - ctx.startedAt
        let overheadMs: number
        if (!ctx.forwarded || ctx.proxyMs === undefined) overheadMs = durationMs
        else if (writtenAt !== undefined && ctx.upstreamMs !== undefined) {
          overheadMs = ctx.proxyMs + Math.max(0, writtenAt - (ctx.startedAt + ctx.proxyMs + ctx.upstreamMs))
        } else overheadMs = ctx.proxyMs
        // Label values read from a body come only from authenticated traffic: a stranger cannot fill the label set.
        const model = ctx.authenticated ? modelOf(ctx.requestBody) : undefined
        const o: RequestObservation = {
          provider: ctx.provider ?? "none",
          route: routeOf(ctx.path),
          status: ctx.status,
          cache: ctx.cacheHit ? "hit" : ctx.responseCacheStatus ?? "none",
          overheadSeconds: overheadMs / 1000,
          upstreamSeconds: ctx.upstreamMs === undefined ? undefined : ctx.upstreamMs / 1000,
          durationSeconds: durationMs / 1000,
          model: modelLabel(model),
          promptTokens: ctx.usage?.prompt_tokens,
          completionTokens: ctx.usage?.completion_tokens,
          rejectedBy: ctx.rejectedBy,
          stream: ctx.stream,
          firstTokenSeconds: firstTokenSeconds(ctx),
          outputTokensPerSecond: outputTokensPerSecond(ctx, durationMs),
          costUsd: ctx.costUsd,
          unpriced: ctx.unpriced !== undefined
        }
        if (options.metrics) metrics.request(o)
        if (accessLog) enqueue(ctx, { durationMs, overheadMs, model, cache: o.cache })
        if (spans !== undefined) {
          const parent = parentOf(ctx)
          if (spans.sample(parent?.sampled)) span(spans, ctx, o, model, parent)
        }
      }]
    }
    return hooks
  })
