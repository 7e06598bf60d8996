/**
 * ProxySpans: the data plane's spans, exported over OTLP/HTTP (protobuf by default, JSON with
 * OTEL_EXPORTER_OTLP_PROTOCOL=http/json; gzip with OTEL_EXPORTER_OTLP_COMPRESSION=gzip) to the same endpoint as the
 * rest of the tracing (src/observability/Tracing.ts). Per /v1 request a server span named by the HTTP conventions
 * (`POST /v1/chat/completions`) and, when it was forwarded, a client child: on GenAI routes the span of the
 * OpenTelemetry GenAI conventions (`chat gpt-4o-mini`: `gen_ai.*` with the model, id, finish reasons and usage the
 * answer reported, and the HTTP client attributes), else a plain HTTP client span (`GET`). The GenAI attributes are
 * on the client span only, so a backend that counts GenAI calls and their tokens counts each once.
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
import { gzip } from "node:zlib"
import { request } from "undici"
import type { OtlpConfig } from "../config/AppConfig.js"
import * as Proto from "./otlpProto.js"

/** The upstream call of a traced request: the GenAI client span when the route is a GenAI operation. */
export interface UpstreamSpanRecord {
  readonly startMs: number
  readonly endMs: number
  /** Status ERROR: the upstream answered 5xx, failed without an answer, or broke off mid-answer. */
  readonly error: boolean
  /** `error.type` when `error`: the status code (`502`), `timeout`, or the client library's code (`ECONNRESET`). */
  readonly errorType: string | undefined
  readonly status: number | undefined
  /** Time to the upstream's response headers, ms. */
  readonly headersMs: number | undefined
  /** `gen_ai.operation.name` (chat, text_completion, embeddings); undefined on routes that are not one. */
  readonly operation: string | undefined
  /** `gen_ai.provider.name` (openai, anthropic, …, or the configured provider name). */
  readonly genAiProvider: string
  readonly serverAddress: string
  readonly serverPort: number
  /** The upstream URL, query values redacted. */
  readonly urlFull: string
  readonly requestModel: string | undefined
  readonly responseModel: string | undefined
  readonly responseId: string | undefined
  readonly finishReasons: ReadonlyArray<string> | undefined
  readonly inputTokens: number | undefined
  readonly outputTokens: number | undefined
  readonly cacheReadTokens: number | undefined
  readonly cacheCreationTokens: number | undefined
  /** Streamed answers: seconds from sending the request upstream to the first chunk. */
  readonly firstChunkSeconds: number | undefined
  /** Upstream attempts (more than 1 when the request was retried on another key). */
  readonly attempts: number
  /** The index in the project's `api_keys` of the key the answer came from. */
  readonly keyIndex: number | undefined
  /** The upstream's own id of its answer (X-Upstream-Request-ID). */
  readonly upstreamRequestId: string | undefined
  /** The attempts before the last one, each `key <index> (<provider>): <status or error> in <ms> ms`. */
  readonly retried: ReadonlyArray<string> | undefined
}

/**
 * What the data plane records per traced request: a server span (`POST /v1/chat/completions`) and, when the request
 * was forwarded, its client child — the GenAI span (`chat gpt-4o-mini`) on GenAI routes, a plain HTTP client span
 * (`POST`) on others.
 */
export interface ProxySpanRecord {
  /** Epoch milliseconds (fractional). */
  readonly startMs: number
  readonly endMs: number
  /** Status ERROR (5xx). */
  readonly error: boolean
  readonly method: string
  /** Bounded route label (an allowed endpoint or `other`). */
  readonly route: string
  /** The request's path, without the query. */
  readonly path: string
  readonly status: number
  readonly requestId: string
  readonly provider: string
  readonly cache: string
  readonly projectId: string | undefined
  readonly tokenId: string | undefined
  readonly errorCode: string | undefined
  /** A trusted incoming trace this request continues (lower-case hex ids), or none: the spans start a new trace. */
  readonly parent: { readonly traceId: string; readonly spanId: string } | undefined
  readonly upstream: UpstreamSpanRecord | undefined
}

/** `{method} {route}`, or the method alone when the route is not a known one (HTTP semantic conventions). */
export const serverSpanName = (
  method: string,
  route: string
): string => (route === "other" ? method : `${method} ${route}`)

/** `{operation} {model}` for GenAI calls (GenAI semantic conventions), the method alone for other HTTP calls. */
export const clientSpanName = (u: UpstreamSpanRecord, method: string): string =>
  u.operation === undefined ? method : u.requestModel === undefined ? u.operation : `${u.operation} ${u.requestModel}`

/**
 * The attributes of the two spans as OTLP/JSON writes them (semantic-convention names where one exists), in two
 * parts: those that repeat from request to request (encoded once per combination, see `Repeats`) and each request's
 * own. The protobuf encoder writes the same attributes field by field (test/observability/units.test.ts compares).
 */
const serverRepeatedAttributes = (r: ProxySpanRecord): Attrs => ({
  "http.request.method": r.method,
  "url.scheme": "http",
  "http.route": r.route === "other" ? undefined : r.route,
  "url.path": r.path === r.route ? r.route : undefined,
  "http.response.status_code": r.status,
  "error.type": r.status >= 500 ? String(r.status) : undefined,
  "llm_proxy.provider": r.provider,
  "llm_proxy.cache": r.cache
})

const serverOwnAttributes = (r: ProxySpanRecord): Attrs => ({
  "llm_proxy.request_id": r.requestId,
  "url.path": r.path === r.route ? undefined : r.path,
  "llm_proxy.project_id": r.projectId,
  "llm_proxy.token_id": r.tokenId,
  "llm_proxy.error_code": r.errorCode
})

const clientRepeatedAttributes = (u: UpstreamSpanRecord, method: string): Attrs => ({
  "http.request.method": method,
  "server.address": u.serverAddress,
  "server.port": u.serverPort,
  "url.full": u.urlFull,
  "gen_ai.operation.name": u.operation,
  "gen_ai.provider.name": u.operation === undefined ? undefined : u.genAiProvider,
  "gen_ai.request.model": u.requestModel,
  "gen_ai.response.model": u.responseModel,
  "http.response.status_code": u.status,
  "error.type": u.error ? u.errorType ?? "_OTHER" : undefined,
  "gen_ai.response.finish_reasons": u.finishReasons
})

const clientOwnAttributes = (u: UpstreamSpanRecord): Attrs => ({
  "gen_ai.response.id": u.responseId,
  "gen_ai.usage.input_tokens": u.inputTokens,
  "gen_ai.usage.output_tokens": u.outputTokens,
  "gen_ai.usage.cache_read.input_tokens": u.cacheReadTokens,
  "gen_ai.usage.cache_creation.input_tokens": u.cacheCreationTokens,
  "gen_ai.response.time_to_first_chunk": u.firstChunkSeconds,
  "llm_proxy.upstream_headers_ms": u.headersMs,
  "llm_proxy.upstream_attempts": u.attempts,
  "llm_proxy.key_index": u.keyIndex,
  "llm_proxy.upstream_request_id": u.upstreamRequestId,
  "llm_proxy.retried_attempts": u.retried
})

const sameReasons = (a: ReadonlyArray<string> | undefined, b: ReadonlyArray<string> | undefined): boolean => {
  if (a === b) return true
  if (a === undefined || b === undefined || a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}

const sameServer = (a: ProxySpanRecord, b: ProxySpanRecord): boolean =>
  a.status === b.status && a.route === b.route && a.cache === b.cache && a.provider === b.provider &&
  a.method === b.method &&
  (a.path === a.route) === (b.path === b.route)

const serverKey = (r: ProxySpanRecord): string =>
  `${r.method}\n${r.route}\n${r.status}\n${r.provider}\n${r.cache}\n${r.path === r.route}`

/** Compares the upstream spans of two records that have one. */
const sameClient = (a: ProxySpanRecord, b: ProxySpanRecord): boolean => {
  const u = a.upstream!
  const l = b.upstream!
  return u.status === l.status && u.urlFull === l.urlFull && u.requestModel === l.requestModel &&
    u.responseModel === l.responseModel && u.error === l.error && u.errorType === l.errorType &&
    u.operation === l.operation && u.genAiProvider === l.genAiProvider && a.method === b.method &&
    sameReasons(u.finishReasons, l.finishReasons)
}

const clientKey = (r: ProxySpanRecord): string => {
  const u = r.upstream!
  return `${r.method}\n${u.urlFull}\n${u.status}\n${u.error}\n${u.errorType}\n${u.operation}\n${u.genAiProvider}\n` +
    `${u.requestModel === undefined ? "\u0000" : u.requestModel}\n${
      u.responseModel === undefined ? "\u0000" : u.responseModel
    }\n` +
    `${u.finishReasons === undefined ? "\u0000" : u.finishReasons.join("\u0001")}`
}

/**
 * The encoded attributes that repeat from request to request, once per combination (at most MAX_COMBINATIONS kept):
 * consecutive requests usually share theirs, which a field-by-field comparison finds without building a key.
 */
class Repeats<A> {
  private last: ProxySpanRecord | undefined = undefined
  private lastValue: A | undefined = undefined
  private readonly known = new Map<string, A>()

  constructor(
    private readonly same: (a: ProxySpanRecord, b: ProxySpanRecord) => boolean,
    private readonly key: (r: ProxySpanRecord) => string,
    private readonly build: (r: ProxySpanRecord) => A
  ) {}

  get(r: ProxySpanRecord): A {
    if (this.last !== undefined && this.same(r, this.last)) return this.lastValue!
    const key = this.key(r)
    let value = this.known.get(key)
    if (value === undefined) {
      value = this.build(r)
      if (this.known.size < MAX_COMBINATIONS) this.known.set(key, value)
    }
    this.last = r
    this.lastValue = value
    return value
  }
}

/** Attributes whose values are always doubles (an integral value must not turn into an intValue). */
const DOUBLE_KEYS = new Set(["gen_ai.response.time_to_first_chunk", "llm_proxy.upstream_headers_ms"])

export interface ProxySpansShape {
  /**
   * The sampling decision for one request (OTEL_TRACES_SAMPLER / _ARG); ask before building a record. `parentSampled`
   * is the sampled flag of a trusted incoming trace: a `parentbased_*` sampler follows it instead of the ratio.
   */
  readonly sample: (parentSampled?: boolean) => boolean
  readonly record: (span: ProxySpanRecord) => void
  /** Spans dropped because the buffer was full or an export failed. */
  readonly dropped: () => number
}

/** None = tracing off: the data plane builds nothing. */
export class ProxySpans extends Context.Tag("llm-proxy/ProxySpans")<ProxySpans, Option.Option<ProxySpansShape>>() {}

/** Defaults of OTEL_BSP_MAX_QUEUE_SIZE and OTEL_BSP_MAX_EXPORT_BATCH_SIZE for the data plane's spans. */
export const MAX_BUFFERED = 20_000
export const MAX_BATCH = 1_000
/** Distinct combinations of repeated attributes whose encoded bytes are kept (per span kind). */
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

type Attrs = Record<string, string | number | boolean | ReadonlyArray<string> | undefined>

const keyPrefixes = new Map<string, string>()
const keyPrefix = (key: string): string => {
  let p = keyPrefixes.get(key)
  if (p === undefined) {
    p = `{"key":${JSON.stringify(key)},"value":`
    if (keyPrefixes.size < 256) keyPrefixes.set(key, p)
  }
  return p
}

/** Appends the OTLP JSON of `attrs` to `out` (entries only, each after a comma unless `first`); true if any. */
const attributesJson = (out: Array<string>, attrs: Attrs, first: boolean): boolean => {
  for (const key in attrs) {
    const v = attrs[key]
    if (v === undefined) continue
    out.push(first ? keyPrefix(key) : "," + keyPrefix(key))
    first = false
    if (typeof v === "number") {
      out.push(Number.isInteger(v) && !DOUBLE_KEYS.has(key) ? `{"intValue":${v}}}` : `{"doubleValue":${v}}}`)
    } else if (typeof v === "boolean") out.push(`{"boolValue":${v}}}`)
    else if (typeof v === "string") out.push(`{"stringValue":${JSON.stringify(v)}}}`)
    else out.push(`{"arrayValue":{"values":[${v.map((x) => `{"stringValue":${JSON.stringify(x)}}`).join(",")}]}}}`)
  }
  return !first
}

/** Repeated attributes as OTLP/JSON text, with the (JSON-escaped) name of the span they go with. */
interface RepeatedJson {
  readonly nameJson: string
  readonly text: string
}

const repeatedJson = (name: string, attrs: Attrs): RepeatedJson => {
  const out: Array<string> = []
  attributesJson(out, attrs, true)
  return { nameJson: JSON.stringify(name), text: out.join("") }
}

const spanJson = (
  out: Array<string>,
  traceId: string,
  spanId: string,
  parentSpanId: string | undefined,
  repeated: RepeatedJson,
  kind: number,
  startMs: number,
  endMs: number,
  own: Attrs,
  error: boolean
): void => {
  out.push(
    `{"traceId":"${traceId}","spanId":"${spanId}"${
      parentSpanId === undefined ? "" : `,"parentSpanId":"${parentSpanId}"`
    },` +
      `"name":${repeated.nameJson},"kind":${kind},"startTimeUnixNano":"${nanos(startMs)}","endTimeUnixNano":"${
        nanos(endMs)
      }","attributes":[`,
    repeated.text
  )
  attributesJson(out, own, repeated.text === "")
  out.push(`],"status":{"code":${error ? 2 : 1}}}`)
}

// Attribute keys and span names, encoded once (ProtoWriter.attr takes the key field as bytes).
const K = {
  method: Proto.keyField("http.request.method"),
  scheme: Proto.keyField("url.scheme"),
  route: Proto.keyField("http.route"),
  status: Proto.keyField("http.response.status_code"),
  errorType: Proto.keyField("error.type"),
  provider: Proto.keyField("llm_proxy.provider"),
  cache: Proto.keyField("llm_proxy.cache"),
  requestId: Proto.keyField("llm_proxy.request_id"),
  path: Proto.keyField("url.path"),
  projectId: Proto.keyField("llm_proxy.project_id"),
  tokenId: Proto.keyField("llm_proxy.token_id"),
  errorCode: Proto.keyField("llm_proxy.error_code"),
  serverAddress: Proto.keyField("server.address"),
  serverPort: Proto.keyField("server.port"),
  urlFull: Proto.keyField("url.full"),
  operation: Proto.keyField("gen_ai.operation.name"),
  genAiProvider: Proto.keyField("gen_ai.provider.name"),
  requestModel: Proto.keyField("gen_ai.request.model"),
  responseModel: Proto.keyField("gen_ai.response.model"),
  finishReasons: Proto.keyField("gen_ai.response.finish_reasons"),
  responseId: Proto.keyField("gen_ai.response.id"),
  inputTokens: Proto.keyField("gen_ai.usage.input_tokens"),
  outputTokens: Proto.keyField("gen_ai.usage.output_tokens"),
  cacheRead: Proto.keyField("gen_ai.usage.cache_read.input_tokens"),
  cacheCreation: Proto.keyField("gen_ai.usage.cache_creation.input_tokens"),
  firstChunk: Proto.keyField("gen_ai.response.time_to_first_chunk"),
  headersMs: Proto.keyField("llm_proxy.upstream_headers_ms"),
  attempts: Proto.keyField("llm_proxy.upstream_attempts"),
  keyIndex: Proto.keyField("llm_proxy.key_index"),
  upstreamRequestId: Proto.keyField("llm_proxy.upstream_request_id"),
  retried: Proto.keyField("llm_proxy.retried_attempts")
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

type Resource = ReturnType<typeof OtlpResource.make>

const jsonEncoder = (resource: Resource, scope: unknown): Encoder => {
  // Each record's JSON is written as UTF-8 into the batch's bytes at once: retained strings cost more in garbage
  // collection than building them.
  const head = Buffer.from(
    `{"resourceSpans":[{"resource":${JSON.stringify(resource)},"scopeSpans":[{"scope":${
      JSON.stringify(scope)
    },"spans":[`
  )
  const tail = Buffer.from("]}]}]}")
  const w = new Proto.ProtoWriter(256 * 1024)
  const server = new Repeats(
    sameServer,
    serverKey,
    (r) => repeatedJson(serverSpanName(r.method, r.route), serverRepeatedAttributes(r))
  )
  const client = new Repeats(
    sameClient,
    clientKey,
    (r) => repeatedJson(clientSpanName(r.upstream!, r.method), clientRepeatedAttributes(r.upstream!, r.method))
  )
  let n = 0
  return {
    contentType: "application/json",
    add: (r) => {
      const out: Array<string> = n === 0 ? [] : [","]
      const traceId = r.parent?.traceId ?? hex(16)
      const spanId = hex(8)
      // kind 2 = SERVER, 3 = CLIENT
      spanJson(
        out,
        traceId,
        spanId,
        r.parent?.spanId,
        server.get(r),
        2,
        r.startMs,
        r.endMs,
        serverOwnAttributes(r),
        r.error
      )
      const u = r.upstream
      if (u !== undefined) {
        out.push(",")
        spanJson(out, traceId, hex(8), spanId, client.get(r), 3, u.startMs, u.endMs, clientOwnAttributes(u), u.error)
      }
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

/** Encoded attributes that repeat from request to request, with the span name they go with. */
interface Repeated {
  readonly name: string
  readonly bytes: Buffer
}

const protobufEncoder = (resource: Resource, scope: { name: string; version: string }): Encoder => {
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
  const seal = (name: string): Repeated => ({ name, bytes: Buffer.from(scratch.view()) })
  const tokenAttributes = new Map<string, { readonly projectId: string | undefined; readonly bytes: Buffer }>()
  let ids: Buffer | undefined
  let n = 0

  // `url.path` is usually the route itself (`/v1/chat/completions`): then it is one of the repeated attributes.
  const server = new Repeats<Repeated>(sameServer, serverKey, (r) => {
    scratch.pos = 0
    scratch.attr(K.method, r.method)
    scratch.attr(K.scheme, "http")
    if (r.route !== "other") scratch.attr(K.route, r.route)
    if (r.path === r.route) scratch.attr(K.path, r.route)
    scratch.attr(K.status, r.status)
    if (r.status >= 500) scratch.attr(K.errorType, String(r.status))
    scratch.attr(K.provider, r.provider)
    scratch.attr(K.cache, r.cache)
    return seal(serverSpanName(r.method, r.route))
  })

  const client = new Repeats<Repeated>(sameClient, clientKey, (r) => {
    const u = r.upstream!
    scratch.pos = 0
    scratch.attr(K.method, r.method)
    scratch.attr(K.serverAddress, u.serverAddress)
    scratch.attr(K.serverPort, u.serverPort)
    scratch.attr(K.urlFull, u.urlFull)
    if (u.operation !== undefined) {
      scratch.attr(K.operation, u.operation)
      scratch.attr(K.genAiProvider, u.genAiProvider)
    }
    scratch.attr(K.requestModel, u.requestModel)
    scratch.attr(K.responseModel, u.responseModel)
    scratch.attr(K.status, u.status)
    if (u.error) scratch.attr(K.errorType, u.errorType ?? "_OTHER")
    if (u.finishReasons !== undefined) scratch.attrStrings(K.finishReasons, u.finishReasons)
    return seal(clientSpanName(u, r.method))
  })

  return {
    contentType: "application/x-protobuf",
    add: (r) => {
      // trace id (16 bytes), the request's span id, the upstream's span id (8 each)
      const at = takeRandom(32)
      let traceIds: Uint8Array = pool
      let traceAt = at
      let parentIds: Uint8Array | undefined
      if (r.parent !== undefined) {
        // A continued trace: its trace id and the caller's span id (16 + 8 bytes).
        ids = Buffer.from(r.parent.traceId + r.parent.spanId, "hex")
        traceIds = ids
        traceAt = 0
        parentIds = ids
      }
      const repeated = server.get(r)
      // kind 2 = SERVER, 3 = CLIENT
      const root = Proto.beginSpan(
        w,
        traceIds,
        traceAt,
        pool,
        at + 16,
        parentIds,
        16,
        repeated.name,
        2,
        r.startMs,
        r.endMs
      )
      w.raw(repeated.bytes)
      w.attr(K.requestId, r.requestId)
      if (r.path !== r.route) w.attr(K.path, r.path)
      // A token's project and token ids, encoded once per token.
      if (r.tokenId !== undefined) {
        let t = tokenAttributes.get(r.tokenId)
        if (t === undefined || t.projectId !== r.projectId) {
          scratch.pos = 0
          scratch.attr(K.projectId, r.projectId)
          scratch.attr(K.tokenId, r.tokenId)
          t = { projectId: r.projectId, bytes: Buffer.from(scratch.view()) }
          if (tokenAttributes.size < MAX_TOKENS) tokenAttributes.set(r.tokenId, t)
        }
        w.raw(t.bytes)
      } else w.attr(K.projectId, r.projectId)
      w.attr(K.errorCode, r.errorCode)
      Proto.endSpan(w, root, r.error)
      const u = r.upstream
      if (u !== undefined) {
        const rep = client.get(r)
        const child = Proto.beginSpan(
          w,
          traceIds,
          traceAt,
          pool,
          at + 24,
          pool,
          at + 16,
          rep.name,
          3,
          u.startMs,
          u.endMs
        )
        w.raw(rep.bytes)
        w.attr(K.responseId, u.responseId)
        w.attr(K.inputTokens, u.inputTokens)
        w.attr(K.outputTokens, u.outputTokens)
        w.attr(K.cacheRead, u.cacheReadTokens)
        w.attr(K.cacheCreation, u.cacheCreationTokens)
        w.attrDouble(K.firstChunk, u.firstChunkSeconds)
        w.attrDouble(K.headersMs, u.headersMs)
        w.attr(K.attempts, u.attempts)
        w.attr(K.keyIndex, u.keyIndex)
        w.attr(K.upstreamRequestId, u.upstreamRequestId)
        if (u.retried !== undefined) w.attrStrings(K.retried, u.retried)
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

/** The batch encoder for `protocol`, for this service's resource (`OTEL_RESOURCE_ATTRIBUTES` included). */
export const makeEncoder = (
  protocol: OtlpConfig["protocol"],
  serviceName: string,
  serviceVersion: string,
  attributes: Readonly<Record<string, string>> = {}
): Encoder => {
  const resource = OtlpResource.make({ serviceName, serviceVersion, attributes })
  const scope = { name: "llm-proxy/proxy", version: serviceVersion }
  return protocol === "http/json" ? jsonEncoder(resource, scope) : protobufEncoder(resource, scope)
}

/** Compresses an export body off the main thread (zlib runs in libuv's thread pool). */
const gzipBody = (body: Buffer): Promise<Buffer> =>
  new Promise((resolve, reject) => gzip(body, (e, out) => (e === null ? resolve(out) : reject(e))))

export const make = (otlp: OtlpConfig, serviceVersion: string) =>
  Effect.gen(function*() {
    const encoder = makeEncoder(otlp.protocol, otlp.serviceName, serviceVersion, otlp.resourceAttributes)
    const compress = otlp.compression === "gzip"
    const headers: Record<string, string> = {
      "content-type": encoder.contentType,
      ...(compress ? { "content-encoding": "gzip" } : {}),
      ...Redacted.value(otlp.headers)
    }
    const maxBuffered = otlp.maxQueueSize
    const maxBatch = otlp.maxExportBatchSize
    const timeoutMs = otlp.timeoutMs
    type Batch = { readonly body: Buffer; readonly count: number }
    // Full batches waiting for the exporter (each maxBatch records), oldest first.
    const ready: Array<Batch> = []
    let queued = 0
    let dropped = 0
    let exporting = false

    /**
     * One export request, as a plain Promise that settles within the timeout and never rejects (the reason of a
     * failure, else undefined): it is not tied to a fiber, so the export under way at shutdown is awaited by the
     * finalizer instead of being cut off.
     */
    const post = async (batch: Batch): Promise<string | undefined> => {
      try {
        const body = compress ? await gzipBody(batch.body) : batch.body
        // OTEL_EXPORTER_OTLP_TIMEOUT bounds the whole export request.
        const signal = AbortSignal.timeout(timeoutMs)
        const r = await request(otlp.tracesUrl, {
          method: "POST",
          headers,
          body,
          signal,
          headersTimeout: timeoutMs,
          bodyTimeout: timeoutMs
        })
        await r.body.dump()
        return r.statusCode >= 300 ? `collector answered ${r.statusCode}` : undefined
      } catch (e) {
        return String((e as Error)?.message ?? e)
      }
    }
    const send = (batch: Batch) =>
      Effect.flatMap(Effect.promise(() => post(batch)), (failure) =>
        failure === undefined ? Effect.void : Effect.sync(() => (dropped += batch.count)).pipe(
          Effect.zipRight(Effect.logDebug(`proxy spans: export of ${batch.count} spans failed`, failure))
        ))

    // Records wait as they are and are encoded together when a batch is sealed: one tight loop over 1,000 records
    // runs hot (JIT, caches) and costs much less per record than encoding each in the middle of its request.
    let pending: Array<ProxySpanRecord> = []
    const seal = () => {
      if (pending.length === 0) {
        return
      }
      const batch = pending
      pending = []
      for (let i = 0; i < batch.length; i++) {
        encoder.add(batch[i]!)
      }
      ready.push({ body: encoder.take(), count: batch.length })
    }

    const runtime = yield* Effect.runtime<never>()
    const runPromise = Runtime.runPromise(runtime)
    const runFork = Runtime.runFork(runtime)
    let inFlight: Promise<unknown> | undefined
    const flush: Effect.Effect<void> = Effect.suspend(() => {
      if (exporting) {
        return Effect.void
      }
      const batch = ready.shift()
      if (batch === undefined) {
        return Effect.void
      }
      exporting = true
      const sent = runPromise(send(batch)).finally(() => {
        exporting = false
        inFlight = undefined
        queued -= batch.count
      })
      inFlight = sent
      return Effect.zipRight(
        Effect.promise(() =>
          sent
        ),
        flush
      )
    })

    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(
      Effect.sleep(Duration.millis(otlp.exportIntervalMs)),
      Effect.suspend(() => {
        seal()
        return flush
      })
    )))
    // At shutdown: the export under way, then everything still buffered (5 s in all).
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        seal()
        const rest = ready.splice(0)
        return Effect.zipRight(
          Effect.promise(() => inFlight ?? Promise.resolve()),
          Effect.forEach(rest, send, { discard: true })
        )
      }).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
    )

    const ratio = otlp.sampleRatio
    const byRatio = ratio >= 1 ? () => true : ratio <= 0 ? () => false : () => Math.random() < ratio
    const service: ProxySpansShape = {
      sample: otlp.parentBased ? (parentSampled) => (parentSampled === undefined ? byRatio() : parentSampled) : byRatio,
      record: (span) => {
        if (queued >= maxBuffered) {
          dropped++
          return
        }
        queued++
        pending.push(span)
        if (pending.length >= maxBatch) {
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
