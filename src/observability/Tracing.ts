/**
 * Tracing: @effect/opentelemetry's OTLP/HTTP span exporter (protobuf by default, JSON with
 * `OTEL_EXPORTER_OTLP_PROTOCOL=http/json`) when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
 * `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not; otherwise nothing is exported, the
 * data plane builds no spans at all (`ProxySpans` = none) and the control plane's `Effect.fn` / `sql.execute` spans
 * stay in Effect's in-process tracer as they would without this module.
 *
 * What is traced: the management API (`HttpMiddleware.tracer` in src/http/App.ts), every store query (@effect/sql's
 * `sql.execute` spans: statement text with placeholders, never the values), /v1 requests (a server span with the
 * upstream call's client span — the GenAI span on GenAI routes —, exported by the lean src/observability/ProxySpans.ts)
 * and whatever else runs `Effect.fn` spans (dispatcher batches). Trace context is never sent to providers: the data
 * plane calls undici directly and strips `traceparent`/`tracestate`/`b3` from what it forwards (src/proxy/policy.ts)
 * and adds none of its own. A caller's trace context is only followed with TRUST_INCOMING_TRACE_CONTEXT
 * (src/http/Server.ts drops it from management requests otherwise; the data plane reads `traceparent` only then).
 */
import * as OtlpSerialization from "@effect/opentelemetry/OtlpSerialization"
import * as OtlpTracer from "@effect/opentelemetry/OtlpTracer"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { ConfigProvider, Effect, Layer, Option, Redacted } from "effect"
import { promisify } from "node:util"
import { gzip } from "node:zlib"
import { Agent } from "undici"
import type { OtlpConfig } from "../config/AppConfig.js"
import * as ProxySpans from "./ProxySpans.js"

const gzipAsync = promisify(gzip)

/**
 * The HTTP client of Effect's exporter: each export request bounded by OTEL_EXPORTER_OTLP_TIMEOUT (connect, headers,
 * body) and, with OTEL_EXPORTER_OTLP_COMPRESSION=gzip, its body compressed (in libuv's thread pool, off the main
 * thread) and sent with `Content-Encoding: gzip`.
 */
const exportClient = (o: OtlpConfig): Layer.Layer<HttpClient.HttpClient> =>
  Layer.scoped(
    HttpClient.HttpClient,
    Effect.map(
      Effect.acquireRelease(
        Effect.sync(() =>
          new Agent({ connectTimeout: o.timeoutMs, headersTimeout: o.timeoutMs, bodyTimeout: o.timeoutMs })
        ),
        (agent) => Effect.promise(() => agent.close().catch(() => undefined))
      ),
      (agent) => {
        const client = NodeHttpClient.makeUndici(agent)
        if (o.compression !== "gzip") return client
        return HttpClient.mapRequestEffect(client, (request) => {
          const body = request.body
          if (body._tag !== "Uint8Array") return Effect.succeed(request)
          return Effect.map(
            Effect.promise(() => gzipAsync(body.body)),
            (zipped) =>
              request.pipe(
                HttpClientRequest.bodyUint8Array(zipped, body.contentType),
                HttpClientRequest.setHeader("content-encoding", "gzip")
              )
          )
        })
      }
    )
  )

/** Effect's tracer over OTLP (management API, store queries, dispatcher batches), or nothing when not configured. */
export const layerTracer = (otlp: Option.Option<OtlpConfig>, serviceVersion: string): Layer.Layer<never> =>
  Option.match(otlp, {
    // Effect's own in-process tracer stays (it exports nothing; tests count store queries through it).
    onNone: () => Layer.empty,
    onSome: (o) =>
      Layer.unwrapScoped(Effect.map(
        OtlpTracer.make({
          url: o.tracesUrl,
          resource: { serviceName: o.serviceName, serviceVersion, attributes: o.resourceAttributes },
          headers: Redacted.value(o.headers),
          exportInterval: o.exportIntervalMs,
          maxBatchSize: o.maxExportBatchSize,
          shutdownTimeout: "3 seconds"
        }).pipe(
          // The resource comes from our configuration alone: the exporter would otherwise read OTEL_RESOURCE_ATTRIBUTES
          // again with a parser of its own (no URL-decoding, a second `service.name`).
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map()))
        ),
        Layer.setTracer
      )).pipe(
        Layer.provide([
          o.protocol === "http/json" ? OtlpSerialization.layerJson : OtlpSerialization.layerProtobuf,
          exportClient(o)
        ])
      )
  })

/** serve: the Effect tracer plus the data plane's lean span exporter. */
export const layer = (otlp: Option.Option<OtlpConfig>, serviceVersion: string): Layer.Layer<ProxySpans.ProxySpans> =>
  Layer.merge(layerTracer(otlp, serviceVersion), ProxySpans.layer(otlp, serviceVersion))
