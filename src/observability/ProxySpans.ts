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
  readonly record: (span: ProxySpanRecord) => void
  /** Spans dropped because the buffer was full or an export failed. */
  readonly dropped: () => number
}

/** None = tracing off: the data plane builds nothing. */
export class ProxySpans extends Context.Tag("llm-proxy/ProxySpans")<ProxySpans, Option.Option<ProxySpansShape>>() {}

export const MAX_BUFFERED = 20_000
export const MAX_BATCH = 1_000

const hex = (bytes: number) => {
  // randomUUID is the cheapest source of good randomness in Node (it batches entropy).
  const u = crypto.randomUUID().replaceAll("-", "")
  return bytes === 16 ? u : u.slice(0, bytes * 2)
}

/** Epoch ms (fractional) → ns as a decimal string, without losing precision past 2^53. */
const nanos = (ms: number) => {
  const whole = Math.floor(ms)
  return (BigInt(whole) * 1_000_000n + BigInt(Math.round((ms - whole) * 1_000_000))).toString()
}

const attributes = (attrs: Record<string, string | number | boolean | undefined>) => {
  const out: Array<{ key: string; value: Record<string, unknown> }> = []
  for (const key in attrs) {
    const v = attrs[key]
    if (v === undefined) continue
    out.push({
      key,
      value: typeof v === "number"
        ? Number.isInteger(v) ? { intValue: v } : { doubleValue: v }
        : typeof v === "boolean"
        ? { boolValue: v }
        : { stringValue: v }
    })
  }
  return out
}

/** OTLP JSON span objects for one record (root first). */
export const toOtlpSpans = (r: ProxySpanRecord) => {
  const traceId = hex(16)
  const spanId = hex(8)
  const root = {
    traceId,
    spanId,
    name: r.name,
    kind: 2, // SERVER
    startTimeUnixNano: nanos(r.startMs),
    endTimeUnixNano: nanos(r.endMs),
    attributes: attributes(r.attributes),
    status: { code: r.error ? 2 : 1 }
  }
  if (r.upstream === undefined) return [root]
  return [root, {
    traceId,
    spanId: hex(8),
    parentSpanId: spanId,
    name: "proxy.upstream",
    kind: 3, // CLIENT
    startTimeUnixNano: nanos(r.upstream.startMs),
    endTimeUnixNano: nanos(r.upstream.endMs),
    attributes: attributes(r.upstream.attributes),
    status: { code: r.upstream.error ? 2 : 1 }
  }]
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
          const body = JSON.stringify({ resourceSpans: [{ resource, scopeSpans: [{ scope, spans: batch.flatMap(toOtlpSpans) }] }] })
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

    const service: ProxySpansShape = {
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
