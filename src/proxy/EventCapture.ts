/**
 * Instrumentation events from the data plane: an `onComplete` hook (ProxyHooks.ts) that turns each finished /v1
 * request of an authenticated caller — refused ones included, cache hits excluded — into a `ProxyEvent` and hands
 * it to the EventBus. A request without a valid token (missing, malformed, unknown, revoked, expired, inactive
 * project) publishes nothing: strangers feed nothing into the operator's pipelines. A refused request's event
 * carries no request body.
 * It runs after the response has ended, does no I/O and never waits: bodies are cut to their bounds (no copy),
 * base64-encoded, and `publish` only enqueues (a full buffer drops the event and counts it). Nothing is built while
 * the bus has no one to deliver to (`EventBus.listened`: an in-memory bus without an in-process dispatcher).
 */
import { Effect } from "effect"
import type { EventsConfig } from "../config/AppConfig.js"
import type { CapturedBody, ProxyEvent } from "../domain/ProxyEvent.js"
import { EventBus } from "../eventbus/EventBus.js"
import { attemptsOf, type ProxyHooksShape, type ProxyRequestContext } from "./ProxyHooks.js"

const header = (headers: ProxyRequestContext["upstreamHeaders"], name: string): string | undefined => {
  const v = headers?.[name]
  return Array.isArray(v) ? v[0] : v
}

/** The first `limit` bytes of a body, as the event carries them. */
export const captureBody = (
  bytes: Buffer | undefined,
  limit: number,
  moreBeyond: boolean,
  contentType?: string,
  contentEncoding?: string
): CapturedBody | null => {
  if (bytes === undefined || bytes.length === 0 || limit === 0) return null
  const kept = bytes.length > limit ? bytes.subarray(0, limit) : bytes
  const body: { -readonly [K in keyof CapturedBody]: CapturedBody[K] } = {
    base64: kept.toString("base64"),
    size: bytes.length,
    truncated: moreBeyond || bytes.length > limit
  }
  if (contentType !== undefined) body.content_type = contentType
  if (contentEncoding !== undefined) body.content_encoding = contentEncoding
  return body
}

const MODEL = /"model"\s*:\s*"((?:[^"\\]|\\.){1,256})"/

/** The `model` of a JSON request, read with a regular expression over at most the first 64 KiB (no JSON parse). */
export const modelOf = (body: Buffer | undefined): string | null => {
  if (body === undefined) return null
  const m = MODEL.exec(body.subarray(0, 65_536).toString("latin1"))
  if (m === null) return null
  try {
    return JSON.parse(`"${m[1]}"`) as string
  } catch {
    return null
  }
}

const ms = (v: number | undefined) => (v === undefined ? null : Math.round(v * 1000) / 1000)

export const toEvent = (
  ctx: ProxyRequestContext,
  config: Pick<EventsConfig, "maxRequestBodyBytes" | "maxResponseBodyBytes">
): ProxyEvent => ({
  request_id: ctx.requestId,
  timestamp: new Date(ctx.receivedAt).toISOString(),
  project_id: ctx.projectId ?? null,
  token_id: ctx.tokenId ?? null,
  method: ctx.method,
  path: ctx.path,
  status: ctx.status,
  duration_ms: ms(ctx.durationMs) ?? 0,
  upstream_ms: ms(ctx.upstreamMs),
  first_chunk_ms: ctx.stream && ctx.answer?.firstChunkAt !== undefined
    ? ms(ctx.answer.firstChunkAt - ctx.startedAt)
    : null,
  model: modelOf(ctx.requestBody),
  stream: ctx.stream,
  usage: ctx.usage ?? null,
  cost_usd: ctx.costUsd ?? null,
  // Only a request that went upstream carries its body (a refused one is not the operator's traffic to record).
  request_body: ctx.forwarded
    ? captureBody(ctx.requestBody, config.maxRequestBodyBytes, false, "application/json")
    : null,
  response_body: captureBody(
    ctx.responseBody,
    config.maxResponseBodyBytes,
    ctx.responseTruncated,
    header(ctx.upstreamHeaders, "content-type"),
    header(ctx.upstreamHeaders, "content-encoding")
  ),
  error: ctx.error ?? ctx.code ?? null,
  ...(ctx.tokenName !== null ? { token_name: ctx.tokenName } : {}),
  ...(ctx.user !== null ? { user: ctx.user } : {}),
  ...(ctx.tokenMetadata !== null ? { token_metadata: ctx.tokenMetadata } : {}),
  ...(ctx.upstreamRequestId !== undefined ? { upstream_request_id: ctx.upstreamRequestId } : {}),
  ...(ctx.attemptCount > 0
    ? {
      attempts: attemptsOf(ctx).map((a) => ({
        key_index: a.keyIndex,
        provider: a.provider,
        status: a.status ?? null,
        error: a.error ?? null,
        duration_ms: ms(a.durationMs) ?? 0
      }))
    }
    : {})
})

/** The hooks that publish one event per request. */
export const eventHooks = (config: EventsConfig) =>
  Effect.map(EventBus, (bus): Partial<ProxyHooksShape> => ({
    captureResponseBytes: config.maxResponseBodyBytes,
    onComplete: [
      (ctx) => {
        // An in-memory bus without a subscriber (no in-process dispatcher) would throw the event away: none is built.
        if (ctx.cacheHit || !ctx.authenticated || !bus.listened()) return
        bus.publish(toEvent(ctx, config))
      }
    ]
  }))
