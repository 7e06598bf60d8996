/**
 * ProxySpans: the data plane's spans (`proxy.request` + `proxy.upstream`), exported over OTLP/HTTP JSON to the same
 * endpoint as the rest of the tracing (src/observability/Tracing.ts).
 *
 * Why not `tracer.span(...)` from @effect/opentelemetry's OtlpTracer: measured under saturation
 * (docs/performance.md), building two Effect spans per request, converting them and serializing them cost ~10% of
 * the proxy's CPU. Here a request costs one small object pushed on an array; the OTLP JSON is built and sent by a
 * background fiber every export interval (or every 1,000 spans). The buffer is bounded: when the collector cannot keep
 * up, spans are dropped and counted, the request path never waits.
 */
import * as OtlpResource from "@effect/opentelemetry/OtlpResource"
import { Context, Duration, Effect, Layer, Option, Redacted, Runtime } from "effect"
import { randomBytes } from "node:crypto"
import { request } from "undici"
import type { OtlpConfig } from "../config/AppConfig.js"

/** What the data plane records per request; turned into OTLP spans off the request path. */
export interface ProxySpanRecord {
  readonly name: "proxy.request"
  /** Epoch milliseconds (fractional). */
  readonly startMs: number
  readonly endMs: number
  readonly attributes: Record<string, string | number | boolean | undefined>
  readonly error: boolean
  /** The upstream call, when the request was forwarded. */
  readonly upstream:
    | {
      readonly startMs: number
      readonly endMs: number
      readonly attributes: Record<string, string | number | boolean | undefined>
      readonly error: boolean
    }
    | undefined
}

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

// Ids come from a pool of random bytes refilled 4 KiB at a time (one getrandom call per ~170 requests).
const POOL_BYTES = 4096
let pool = randomBytes(POOL_BYTES)
let poolAt = 0
const hex = (bytes: number): string => {
  if (poolAt + bytes > POOL_BYTES) {
    pool = randomBytes(POOL_BYTES)
    poolAt = 0
  }
  const s = pool.toString("hex", poolAt, poolAt + bytes)
  poolAt += bytes
  return s
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
  spanJson(out, traceId, spanId, undefined, r.name, 2, r.startMs, r.endMs, r.attributes, r.error)
  if (r.upstream === undefined) return
  const u = r.upstream
  out.push(",")
  spanJson(out, traceId, hex(8), spanId, "proxy.upstream", 3, u.startMs, u.endMs, u.attributes, u.error)
}

/** The OTLP JSON of one record's spans (root first), comma-separated. */
export const toOtlpSpansJson = (r: ProxySpanRecord): string => {
  const out: Array<string> = []
  appendSpans(out, r)
  return out.join("")
}

/** The export body for a batch of records. */
export const exportBody = (resource: unknown, scope: unknown, batch: ReadonlyArray<ProxySpanRecord>): string => {
  const out: Array<string> = [`{"resourceSpans":[{"resource":${JSON.stringify(resource)},"scopeSpans":[{"scope":${JSON.stringify(scope)},"spans":[`]
  for (let i = 0; i < batch.length; i++) {
    if (i > 0) out.push(",")
    appendSpans(out, batch[i]!)
  }
  out.push("]}]}]}")
  return out.join("")
}

export const make = (otlp: OtlpConfig, serviceVersion: string) =>
  Effect.gen(function*() {
    const resource = OtlpResource.make({ serviceName: otlp.serviceName, serviceVersion })
    const scope = { name: "llm-proxy/proxy", version: serviceVersion }
    const headers = { "content-type": "application/json", ...Redacted.value(otlp.headers) }
    let buffer: Array<ProxySpanRecord> = []
    let dropped = 0
    let exporting = false

    const send = (batch: ReadonlyArray<ProxySpanRecord>) =>
      Effect.tryPromise({
        try: async (signal) => {
          const body = exportBody(resource, scope, batch)
          const r = await request(otlp.tracesUrl, { method: "POST", headers, body, signal, headersTimeout: 10_000, bodyTimeout: 10_000 })
          await r.body.dump()
          if (r.statusCode >= 300) throw new Error(`collector answered ${r.statusCode}`)
        },
        catch: (e) => e
      }).pipe(
        Effect.timeout(Duration.seconds(15)),
        Effect.catchAll((e) =>
          Effect.sync(() => (dropped += batch.length)).pipe(
            Effect.zipRight(Effect.logDebug(`proxy spans: export of ${batch.length} spans failed`, String((e as Error)?.message ?? e)))
          )
        )
      )

    const flush: Effect.Effect<void> = Effect.suspend(() => {
      if (buffer.length === 0 || exporting) return Effect.void
      const batch = buffer.splice(0, MAX_BATCH)
      exporting = true
      return send(batch).pipe(
        Effect.ensuring(Effect.sync(() => (exporting = false))),
        Effect.zipRight(Effect.suspend(() => (buffer.length >= MAX_BATCH ? flush : Effect.void)))
      )
    })

    const runFork = Runtime.runFork(yield* Effect.runtime<never>())
    yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Effect.sleep(Duration.millis(otlp.exportIntervalMs)), flush)))
    yield* Effect.addFinalizer(() =>
      Effect.suspend(() => {
        const rest = buffer
        buffer = []
        const batches: Array<Array<ProxySpanRecord>> = []
        for (let i = 0; i < rest.length; i += MAX_BATCH) batches.push(rest.slice(i, i + MAX_BATCH))
        return Effect.forEach(batches, send, { discard: true })
      }).pipe(Effect.timeout(Duration.seconds(5)), Effect.ignore)
    )

    const ratio = otlp.sampleRatio
    const service: ProxySpansShape = {
      sample: ratio >= 1 ? () => true : ratio <= 0 ? () => false : () => Math.random() < ratio,
      record: (span) => {
        if (buffer.length >= MAX_BUFFERED) {
          dropped++
          return
        }
        buffer.push(span)
        if (buffer.length === MAX_BATCH && !exporting) runFork(flush)
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
