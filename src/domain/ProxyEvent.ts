/**
 * Instrumentation events (docs/events.md). Two shapes:
 * - `ProxyEvent` is what the proxy publishes on the bus: cheap to build on the request path, bodies are the first
 *   bytes as they crossed the wire (base64; possibly gzip/br, possibly SSE), `usage` only when the proxy saw it.
 * - `DeliveredEvent` is what backends and the JSONL file receive: the same fields after the transformer decoded the
 *   bodies, reassembled SSE into the final message and filled `usage` (counted with a tokenizer when absent).
 */
import { Schema } from "effect"

export const Usage = Schema.Struct({
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  total_tokens: Schema.Number
}).annotations({ identifier: "Usage" })
export type Usage = typeof Usage.Type

/** A bounded body as captured: the first N bytes (base64) plus what is needed to decode them later. */
export const CapturedBody = Schema.Struct({
  base64: Schema.String,
  /** bytes seen on the wire, which can be more than were kept */
  size: Schema.Number,
  truncated: Schema.Boolean,
  content_type: Schema.optional(Schema.String),
  content_encoding: Schema.optional(Schema.String)
}).annotations({ identifier: "CapturedBody" })
export type CapturedBody = typeof CapturedBody.Type

/** One upstream attempt of a forwarded request. */
export const UpstreamAttempt = Schema.Struct({
  key_index: Schema.Number.annotations({ description: "the key's index in the project's api_keys" }),
  provider: Schema.String,
  status: Schema.NullOr(Schema.Number),
  error: Schema.NullOr(Schema.String).annotations({
    description: "why it failed without an answer (timeout, ECONNREFUSED, …)"
  }),
  duration_ms: Schema.Number
}).annotations({ identifier: "UpstreamAttempt" })

const common = {
  request_id: Schema.String,
  timestamp: Schema.String.annotations({ description: "RFC 3339 time the request arrived (UTC)" }),
  project_id: Schema.NullOr(Schema.String),
  token_id: Schema.NullOr(Schema.String),
  method: Schema.String,
  path: Schema.String.annotations({ description: "request path without the query string" }),
  status: Schema.Number,
  duration_ms: Schema.Number,
  upstream_ms: Schema.NullOr(Schema.Number).annotations({ description: "time to upstream response headers" }),
  first_chunk_ms: Schema.optional(Schema.NullOr(Schema.Number)).annotations({
    description:
      "a stream's time from arrival to the upstream's first body bytes (time to first token); absent from events of older versions"
  }),
  model: Schema.NullOr(Schema.String),
  stream: Schema.Boolean,
  error: Schema.NullOr(Schema.String),
  // The token's labels (absent when it has none, and on events of versions before them).
  token_name: Schema.optional(Schema.String.annotations({ description: "the token's name" })),
  user: Schema.optional(Schema.String.annotations({ description: "the end user the token was minted for" })),
  token_metadata: Schema.optional(
    Schema.Record({ key: Schema.String, value: Schema.String }).annotations({ description: "the token's metadata" })
  ),
  upstream_request_id: Schema.optional(Schema.String).annotations({
    description: "the upstream's own id of its answer (its x-request-id), as sent on in X-Upstream-Request-ID"
  }),
  attempts: Schema.optional(Schema.Array(UpstreamAttempt)).annotations({
    description: "every upstream attempt, in order (more than one when the request was retried on another key)"
  }),
  cost_usd: Schema.optional(Schema.NullOr(Schema.Number)).annotations({
    description: "What the answer cost in USD from its usage and the model's price (docs/spend.md); null when unknown"
  })
}

export const ProxyEvent = Schema.Struct({
  ...common,
  usage: Schema.NullOr(Usage),
  request_body: Schema.NullOr(CapturedBody),
  response_body: Schema.NullOr(CapturedBody)
}).annotations({ identifier: "ProxyEvent" })
export type ProxyEvent = typeof ProxyEvent.Type

export const UsageSource = Schema.Literal("response", "tokenizer")

export const DeliveredEvent = Schema.Struct({
  ...common,
  usage: Schema.NullOr(Usage),
  usage_source: Schema.NullOr(UsageSource),
  /** JSON value when the body is JSON (SSE streams become the final message), else a string; null when absent */
  request_body: Schema.Unknown,
  response_body: Schema.Unknown,
  request_body_truncated: Schema.Boolean,
  response_body_truncated: Schema.Boolean
}).annotations({ identifier: "DeliveredEvent" })
export type DeliveredEvent = typeof DeliveredEvent.Type

export const encodeProxyEvent = Schema.encodeSync(ProxyEvent)
export const decodeProxyEventJson = Schema.decodeUnknownEither(Schema.parseJson(ProxyEvent))
