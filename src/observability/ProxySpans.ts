/**
 * ProxySpans: the data plane's spans (`proxy.request` + `proxy.upstream`), exported over OTLP/HTTP (protobuf by
 * default, JSON with OTEL_EXPORTER_OTLP_PROTOCOL=http/json) to the same endpoint as the rest of the tracing
 * (src/observability/Tracing.ts).
 *
 * Why not `tracer.span(...)` from @effect/opentelemetry's OtlpTracer: measured (docs/performance.md), building two
 * Effect spans per request, converting them and serializing them cost ~10% of the proxy's CPU. Here a request costs
 * one small typed record pushed on an array; a batch of them (1,000, or whatever came in an export interval) is
 * encoded in one loop (src/observability/otlpProto.ts: no message objects) and sent by a background fiber. The
 * buffer is bounded: when the collector cannot keep up, spans are dropped and counted, the request path never waits.
 */
import * as OtlpResource from "@effect/opentelemetry/OtlpResource"
import { Context, Duration, Effect, Layer, Option, Redacted, Runtime } from "effect"
import { randomBytes } from "node:crypto"
import { request } from "undici"
import type { OtlpConfig } from "../config/AppConfig.js"
import * as Proto from "./otlpProto.js"

/** What the data plane records per traced request: a `proxy.request` span and, when forwarded, its `proxy.upstream`. */
export interface ProxySpanRecord {
  /** Epoch milliseconds (fractional). */
  readonly startMs: number
  readonly endMs: number
  /** Status ERROR (5xx). */
  readonly error: boolean
  readonly method: string
  /** Bounded route label (an allowed endpoint or `other`). */
  readonly route: string
  readonly status: number
  readonly requestId: string
  readonly provider: string
  readonly cache: string
  readonly model: string | undefined
  readonly projectId: string | undefined
  readonly tokenId: string | undefined
  readonly errorCode: string | undefined
  readonly inputTokens: number | undefined
  readonly outputTokens: number | undefined
  /** The upstream call, when the request was forwarded. */
  readonly upstream:
    | {
      readonly startMs: number
      readonly endMs: number
      readonly error: boolean
      readonly status: number | undefined
      /** Time to the upstream's response headers, ms. */
      readonly headersMs: number | undefined
    }
    | undefined
}

/** The attributes of the two spans as OTLP/JSON writes them, in semantic-convention names where one exists. */
const requestAttributes = (r: ProxySpanRecord): Attrs => ({
  "http.request.method": r.method,
  "http.route": r.route,
  "http.response.status_code": r.status,
  "llm_proxy.request_id": r.requestId,
  "llm_proxy.provider": r.provider,
  "llm_proxy.cache": r.cache,
  "gen_ai.request.model": r.model,
  "llm_proxy.project_id": r.projectId,
  "llm_proxy.token_id": r.tokenId,
  "llm_proxy.error_code": r.errorCode,
  "gen_ai.usage.input_tokens": r.inputTokens,
  "gen_ai.usage.output_tokens": r.outputTokens
})

const upstreamAttributes = (u: NonNullable<ProxySpanRecord["upstream"]>): Attrs => ({
  "http.response.status_code": u.status,
  "llm_proxy.upstream_headers_ms": u.headersMs
})

export interface ProxySpansShape {
  /** The sampling decision for one request (OTEL_TRACES_SAMPLER / _ARG); ask before building a record. */
  readonly sample: () => boolean
  readonly record: (span: ProxySpanRecord) => void
  /** Spans dropped because the buffer was full or an export failed. */
  readonly dropped: () => number
}

/** None = tracing off: the data plane builds nothing. */
export class ProxySpans extends Context.Tag("llm-proxy/ProxySpans")<ProxySpans, Option.Option<ProxySpansShape>>() {}

export const MAX_BUFFERED = 20_000
export const MAX_BATCH = 1_000
/** Distinct (method, route, status, provider, cache, model) combinations whose encoded attributes are kept. */
const MAX_COMBINATIONS = 4_096
/** Tokens whose encoded project/token id attributes are kept. */
const MAX_TOKENS = 10_000

// Ids come from a pool of random bytes refilled 4 KiB at a time (one getrandom call per ~170 requests).
const POOL_BYTES = 4096
let pool = randomBytes(POOL_BYTES)
let poolAt = 0
/** Reserves `bytes` random bytes; they are `pool[at, at + bytes)` (read `pool` after the call: it may be refilled). */
const takeRandom = (bytes: number): number => {
  if (poolAt + bytes > POOL_BYTES) {
    pool = randomBytes(POOL_BYTES)
    poolAt = 0
  }
  const at = poolAt
  poolAt += bytes
  return at
}
const hex = (bytes: number): string => {
  const at = takeRandom(bytes)
  return pool.toString("hex", at, at + bytes)
}

/** Epoch ms (fractional) → ns as a decimal string, without floating-point loss past 2^53 and without BigInt. */
export const nanos = (ms: number): string => {
  let whole = Math.floor(ms)
  let frac = Math.round((ms - whole) * 1_000_000)
  if (frac >= 1_000_000) {
    whole += 1
    frac -= 1_000_000
  }
  return String(whole) + String(frac).padStart(6, "0")
}

type Attrs = Record<string, string | number | boolean | undefined>

const keyPrefixes = new Map<string, string>()
const keyPrefix = (key: string): string => {
  let p = keyPrefixes.get(key)
  if (p === undefined) {
    p = `{"key":${JSON.stringify(key)},"value":`
    if (keyPrefixes.size < 256) keyPrefixes.set(key, p)
  }
  return p
}

/** Appends the OTLP JSON `attributes` array to `out` (text parts, joined once per batch: no intermediate objects). */
const attributesJson = (out: Array<string>, attrs: Attrs): void => {
  out.push("[")
  let first = true
  for (const key in attrs) {
    const v = attrs[key]
    if (v === undefined) continue
    out.push(first ? keyPrefix(key) : "," + keyPrefix(key))
    first = false
    if (typeof v === "number") out.push(Number.isInteger(v) ? `{"intValue":${v}}}` : `{"doubleValue":${v}}}`)
    else if (typeof v === "boolean") out.push(`{"boolValue":${v}}}`)
    else out.push(`{"stringValue":${JSON.stringify(v)}}}`)
  }
  out.push("]")
}

const spanJson = (
  out: Array<string>,
  traceId: string,
  spanId: string,
  parentSpanId: string | undefined,
  name: string,
  kind: number,
  startMs: number,
  endMs: number,
  attrs: Attrs,
  error: boolean
): void => {
  out.push(
    `{"traceId":"${traceId}","spanId":"${spanId}"${parentSpanId === undefined ? "" : `,"parentSpanId":"${parentSpanId}"`},` +
      `"name":"${name}","kind":${kind},"startTimeUnixNano":"${nanos(startMs)}","endTimeUnixNano":"${nanos(endMs)}","attributes":`
  )
  attributesJson(out, attrs)
  out.push(`,"status":{"code":${error ? 2 : 1}}}`)
}

/** Appends the OTLP JSON of one record's spans (root first, comma-separated) to `out`. */
const appendSpans = (out: Array<string>, r: ProxySpanRecord): void => {
  const traceId = hex(16)
  const spanId = hex(8)
  // kind 2 = SERVER, 3 = CLIENT
  spanJson(out, traceId, spanId, undefined, "proxy.request", 2, r.startMs, r.endMs, requestAttributes(r), r.error)
  if (r.upstream === undefined) return
  const u = r.upstream
  out.push(",")
  spanJson(out, traceId, hex(8), spanId, "proxy.upstream", 3, u.startMs, u.endMs, upstreamAttributes(u), u.error)
}

// Attribute keys and span names, encoded once (ProtoWriter.attr takes the key field as bytes).
const K = {
  requestName: "proxy.request",
  upstreamName: "proxy.upstream",
  method: Proto.keyField("http.request.method"),
  route: Proto.keyField("http.route"),
  status: Proto.keyField("http.response.status_code"),
  requestId: Proto.keyField("llm_proxy.request_id"),
  provider: Proto.keyField("llm_proxy.provider"),
  cache: Proto.keyField("llm_proxy.cache"),
  model: Proto.keyField("gen_ai.request.model"),
  projectId: Proto.keyField("llm_proxy.project_id"),
  tokenId: Proto.keyField("llm_proxy.token_id"),
  errorCode: Proto.keyField("llm_proxy.error_code"),
  inputTokens: Proto.keyField("gen_ai.usage.input_tokens"),
  outputTokens: Proto.keyField("gen_ai.usage.output_tokens"),
  headersMs: Proto.keyField("llm_proxy.upstream_headers_ms")
} as const

/** Encodes records into the bytes of the current batch (only bytes are kept, no per-record objects). */
export interface Encoder {
  readonly contentType: string
  add(r: ProxySpanRecord): void
  /** Records in the current batch. */
  size(): number
  /** The export body of the current batch; starts a new one. */
  take(): Buffer
}

const jsonEncoder = (resource: unknown, scope: unknown): Encoder => {
  // Each record's JSON is written as UTF-8 into the batch's bytes at once: retained strings cost more in garbage
  // collection than building them.
  const head = Buffer.from(`{"resourceSpans":[{"resource":${JSON.stringify(resource)},"scopeSpans":[{"scope":${JSON.stringify(scope)},"spans":[`)
  const tail = Buffer.from("]}]}]}")
  const w = new Proto.ProtoWriter(256 * 1024)
  let n = 0
  return {
    contentType: "application/json",
    add: (r) => {
      const out: Array<string> = n === 0 ? [] : [","]
      appendSpans(out, r)
      w.text(out.join(""))
      n++
    },
    size: () => n,
    take: () => {
      const body = Buffer.concat([head, w.view(), tail])
      w.pos = 0
      n = 0
      return body
    }
  }
}

const protobufEncoder = (resource: { readonly attributes: ReadonlyArray<{ key: string; value: { stringValue?: string | null } }> }, scope: { name: string; version: string }): Encoder => {
  const resourceBytes = Proto.encodeResource(resource.attributes)
  const scopeBytes = Proto.encodeScope(scope.name, scope.version)
  // The batch's spans are written after room for the export's header, which is put in front of them when the batch
  // is sealed: the body is sent from this buffer as it is (no copy), and the next batch gets a new one.
  const room = Proto.exportHeaderRoom(resourceBytes, scopeBytes)
  const fresh = (size: number) => {
    const writer = new Proto.ProtoWriter(size)
    writer.pos = room
    return writer
  }
  let w = fresh(256 * 1024)
  const scratch = new Proto.ProtoWriter(1024)
  const repeatedAttributes = new Map<string, Buffer>()
  const tokenAttributes = new Map<string, { readonly projectId: string | undefined; readonly bytes: Buffer }>()
  let last: ProxySpanRecord | undefined
  let lastBytes: Buffer | undefined
  let n = 0
  return {
    contentType: "application/x-protobuf",
    add: (r) => {
      // trace id (16 bytes), the request's span id, the upstream's span id (8 each)
      const at = takeRandom(32)
      // kind 2 = SERVER, 3 = CLIENT
      const root = Proto.beginSpan(w, pool, at, pool, at + 16, undefined, 0, K.requestName, 2, r.startMs, r.endMs)
      // The attributes that repeat from request to request, encoded once per combination; consecutive requests
      // usually share theirs, which a field-by-field comparison finds without building a key.
      let repeated: Buffer | undefined
      if (
        last !== undefined && r.status === last.status && r.route === last.route && r.model === last.model &&
        r.cache === last.cache && r.provider === last.provider && r.method === last.method
      ) repeated = lastBytes
      else {
        const combination = `${r.method}\n${r.route}\n${r.status}\n${r.provider}\n${r.cache}\n${r.model ?? ""}\n${r.model === undefined}`
        repeated = repeatedAttributes.get(combination)
        if (repeated === undefined) {
          scratch.pos = 0
          scratch.attr(K.method, r.method)
          scratch.attr(K.route, r.route)
          scratch.attr(K.status, r.status)
          scratch.attr(K.provider, r.provider)
          scratch.attr(K.cache, r.cache)
          scratch.attr(K.model, r.model)
          repeated = Buffer.from(scratch.view())
          if (repeatedAttributes.size < MAX_COMBINATIONS) repeatedAttributes.set(combination, repeated)
        }
        last = r
        lastBytes = repeated
      }
      w.raw(repeated!)
      w.attr(K.requestId, r.requestId)
      // A token's project and token ids, encoded once per token.
      if (r.tokenId !== undefined) {
        let ids = tokenAttributes.get(r.tokenId)
        if (ids === undefined || ids.projectId !== r.projectId) {
          scratch.pos = 0
          scratch.attr(K.projectId, r.projectId)
          scratch.attr(K.tokenId, r.tokenId)
          ids = { projectId: r.projectId, bytes: Buffer.from(scratch.view()) }
          if (tokenAttributes.size < MAX_TOKENS) tokenAttributes.set(r.tokenId, ids)
        }
        w.raw(ids.bytes)
      } else w.attr(K.projectId, r.projectId)
      w.attr(K.errorCode, r.errorCode)
      w.attr(K.inputTokens, r.inputTokens)
      w.attr(K.outputTokens, r.outputTokens)
      Proto.endSpan(w, root, r.error)
      const u = r.upstream
      if (u !== undefined) {
        const child = Proto.beginSpan(w, pool, at, pool, at + 24, pool, at + 16, K.upstreamName, 3, u.startMs, u.endMs)
        w.attr(K.status, u.status)
        w.attr(K.headersMs, u.headersMs)
        Proto.endSpan(w, child, u.error)
      }
      n++
    },
    size: () => n,
    take: () => {
      const header = Proto.exportHeader(resourceBytes, scopeBytes, w.pos - room)
      const start = room - header.length
      w.buf.set(header, start)
      const body = w.buf.subarray(start, w.pos)
      w = fresh(Math.max(256 * 1024, w.buf.length))
      n = 0
      return body
    }
  }
}

/** The batch encoder for `protocol`, for this service's resource. */
export const makeEncoder = (protocol: OtlpConfig["protocol"], serviceName: string, serviceVersion: string): Encoder => {
  const resource = OtlpResource.make({ serviceName, serviceVersion })
  const scope = { name: "llm-proxy/proxy", version: serviceVersion }
  return protocol === "http/json" ? jsonEncoder(resource, scope) : protobufEncoder(resource, scope)
}

export const make = (otlp: OtlpConfig, serviceVersion: string) =>
  Effect.gen(function*() {
    const encoder = makeEncoder(otlp.protocol, otlp.serviceName, serviceVersion)
    const headers = { "content-type": encoder.contentType, ...Redacted.value(otlp.headers) }
    // Full batches waiting for the exporter (each MAX_BATCH records), oldest first.
    const ready: Array<{ readonly body: Buffer; readonly count: number }> = []
    let queued = 0
    let dropped = 0
    let exporting = false

    const send = (batch: { readonly body: Buffer; readonly count: number }) =>
      Effect.tryPromise({
        try: async (signal) => {
          const r = await request(otlp.tracesUrl, { method: "POST", headers, body: batch.body, signal, headersTimeout: 10_000, bodyTimeout: 10_000 })
          await r.body.dump()
          if (r.statusCode >= 300) throw new Error(`collector answered ${r.statusCode}`)
        },
        catch: (e) => e
      }).pipe(
        Effect.timeout(Duration.seconds(15)),
        Effect.catchAll((e) =>
          Effect.sync(() => (dropped += batch.count)).pipe(
            Effect.zipRight(Effect.logDebug(`proxy spans: export of ${batch.count} spans failed`, String((e as Error)?.message ?? e)))
          )
        )
      )

    // Records wait as they are and are encoded together when a batch is sealed: one tight loop over 1,000 records
    // runs hot (JIT, caches) and costs much less per record than encoding each in the middle of its request.
    let pending: Array<ProxySpanRecord> = []
    const seal = () => {
      if (pending.length === 0) return
      const batch = pending
      pending = []
      for (let i = 0; i < batch.length; i++) encoder.add(batch[i]!)
      ready.push({ body: encoder.take(), count: batch.length })
    }

    const flush: Effect.Effect<void> = Effect.suspend(() => {
      if (exporting) return Effect.void
      const batch = ready.shift()
      if (batch === undefined) return Effect.void
      exporting = true
      return send(batch).pipe(
        Effect.ensuring(Effect.sync(() => {
          exporting = false
          queued -= batch.count
        })),
        Effect.zipRight(flush)
      )
    })

    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
      Effect.sleep(Duration.millis(otlp.exportIntervalMs)),
      Effect.suspend(() => {
        seal()
        return flush
      })
    )))
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        seal()
        const rest = ready.splice(0)
        return Effect.forEach(rest, send, { discard: true })
      }).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
    )

    const ratio = otlp.sampleRatio
    const service: ProxySpansShape = {
      sample: ratio >= 1 ? () => true : ratio <= 0 ? () => false : () => Math.random() < ratio,
      record: (span) => {
        if (queued >= MAX_BUFFERED) {
          dropped++
          return
        }
        queued++
        pending.push(span)
        if (pending.length >= MAX_BATCH) {
          seal()
          if (!exporting) runFork(flush)
        }
      },
      dropped: () => dropped
    }
    return service
  })

export const layer = (otlp: Option.Option<OtlpConfig>, serviceVersion: string): Layer.Layer<ProxySpans> =>
  Option.match(otlp, {
    onNone: () => Layer.succeed(ProxySpans, Option.none()),
    onSome: (o) => Layer.scoped(ProxySpans, Effect.map(make(o, serviceVersion), Option.some))
  })
