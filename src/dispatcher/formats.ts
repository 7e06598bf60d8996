/**
 * What the observability backends receive, by their own rules (pure). Each rule names the file of the service's
 * public source it follows; docs/events.md shows a request as each service then displays it.
 */
import { createHash } from "node:crypto"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"
import { accepted, type Outcome, retry, unauthorized } from "./Backend.js"
import { chatInput, chatOutput } from "./chat.js"

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)
const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined)

/** A name-based UUID (the version 5 layout: SHA-1 of the name). */
const uuidOf = (name: string): string => {
  const h = createHash("sha1").update(name).digest()
  h[6] = (h[6]! & 0x0f) | 0x50
  h[8] = (h[8]! & 0x3f) | 0x80
  const x = h.subarray(0, 16).toString("hex")
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`
}

/**
 * The event's id at the backends (Lunary `runId`, `Helicone-Request-Id`): a UUID derived from what tells requests
 * apart — not the request id alone, which is the client's `X-Request-ID` when it sent one and can repeat — and from
 * nothing that changes when the event is delivered again, so a redelivery names the same run / request.
 */
export const eventId = (
  e: Pick<
    DeliveredEvent,
    | "request_id"
    | "timestamp"
    | "project_id"
    | "token_id"
    | "method"
    | "path"
    | "status"
    | "duration_ms"
    | "upstream_ms"
  >
): string =>
  uuidOf(
    JSON.stringify([
      "llm-proxy",
      e.request_id,
      e.timestamp,
      e.project_id,
      e.token_id,
      e.method,
      e.path,
      e.status,
      e.duration_ms,
      e.upstream_ms
    ])
  )

const endTime = (e: DeliveredEvent) => {
  const start = Date.parse(e.timestamp)
  return new Date((Number.isNaN(start) ? Date.now() : start) + Math.max(0, Math.round(e.duration_ms))).toISOString()
}

const failed = (e: DeliveredEvent) => e.status >= 400 || e.error !== null

/** `HTTP 429 rate_limit_exceeded: Rate limit exceeded` — the status, our code, and the message of the answer. */
export const errorMessage = (e: DeliveredEvent): string => {
  const res = e.response_body
  const error = isObject(res) ? res["error"] : undefined
  const message = isObject(error) && typeof error["message"] === "string"
    ? error["message"]
    : typeof error === "string"
    ? error
    : typeof res === "string" && res !== ""
    ? res.slice(0, 1000)
    : undefined
  const head = `HTTP ${e.status}${e.error !== null && e.error !== message ? ` ${e.error}` : ""}`
  return message === undefined ? head : `${head}: ${message}`
}

// ---------------------------------------------------------------------------------------------------------------
// Lunary: POST /v1/runs/ingest {"events": [...]} (lunary-ai/lunary packages/backend/src/api/v1/runs/ingest.ts)

/**
 * Lunary's body limit: koa-bodyparser `jsonLimit: "20mb"` (lunary-ai/lunary packages/backend/src/index.ts); a
 * larger body is refused with 413 before any event is read. Batches are split to stay at or under it.
 */
export const LUNARY_MAX_BODY_BYTES = 20 * 1024 * 1024

/**
 * An event Lunary refused on its own (its `results` entry says `success: false`) is sent again this many times in
 * all, then dead-lettered: the service answered, so what keeps failing is the event.
 */
export const LUNARY_EVENT_ATTEMPTS = 5

/** The request parameters Lunary shows (lunary-js PARAMS_TO_CAPTURE of src/openai.ts and src/anthropic.ts). */
const PARAMS = [
  "temperature",
  "top_p",
  "top_k",
  "stop",
  "stop_sequences",
  "max_tokens",
  "max_completion_tokens",
  "max_output_tokens",
  "presence_penalty",
  "frequency_penalty",
  "seed",
  "n",
  "tools",
  "tool_choice",
  "parallel_tool_calls",
  "response_format",
  "reasoning_effort",
  "reasoning",
  "service_tier"
]

/** First-level primitives only: Lunary keeps nothing else of `metadata` (cleanMetadata, packages/backend/src/utils/ingest.ts). */
const metadata = (e: DeliveredEvent) => {
  const m: Record<string, string | number | boolean> = {
    request_id: e.request_id,
    method: e.method,
    path: e.path,
    status: e.status,
    duration_ms: e.duration_ms,
    stream: e.stream
  }
  if (e.project_id !== null) m["project_id"] = e.project_id
  if (e.token_id !== null) m["token_id"] = e.token_id
  if (e.token_name !== undefined) m["token_name"] = e.token_name
  if (e.user !== undefined) m["user"] = e.user
  if (e.upstream_ms !== null) m["upstream_ms"] = e.upstream_ms
  if (e.usage_source !== null) m["usage_source"] = e.usage_source
  if (e.cost_usd !== undefined && e.cost_usd !== null) m["cost_usd"] = e.cost_usd
  return m
}

/**
 * `tokensUsage` as Lunary costs it (calcRunCost, packages/backend/src/utils/cost.ts): `prompt` every prompt token,
 * `promptCached` those read from the provider's prompt cache (OpenAI `prompt_tokens_details.cached_tokens`, Responses
 * `input_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`). Anthropic's `input_tokens` leaves out
 * the tokens read from or written to its cache, so they are added to `prompt`.
 */
export const lunaryTokens = (e: DeliveredEvent): Json | undefined => {
  if (e.usage === null) return undefined
  const u = isObject(e.response_body) && isObject(e.response_body["usage"]) ? e.response_body["usage"] : {}
  const read = num(u["cache_read_input_tokens"])
  const written = num(u["cache_creation_input_tokens"])
  const details = isObject(u["prompt_tokens_details"])
    ? u["prompt_tokens_details"]
    : isObject(u["input_tokens_details"])
    ? u["input_tokens_details"]
    : {}
  const anthropic = read !== undefined || written !== undefined
  const fromAnthropicInput = anthropic && e.usage_source === "response" &&
    num(u["input_tokens"]) === e.usage.prompt_tokens
  const tokens: Json = {
    prompt: e.usage.prompt_tokens + (fromAnthropicInput ? (read ?? 0) + (written ?? 0) : 0),
    completion: e.usage.completion_tokens
  }
  const cached = anthropic ? read : num(details["cached_tokens"])
  if (cached !== undefined && cached > 0) tokens["promptCached"] = cached
  return tokens
}

/**
 * A `start` and an `end` (or `error`) event per request, with the same `runId` (`eventId`): `input` and `output` as
 * chat messages (chat.ts), `userId` the token's end user, else the project (Lunary's "user"), `name` the model (what
 * Lunary prices).
 */
export const lunaryEvents = (e: DeliveredEvent): [Json, Json] => {
  const runId = eventId(e)
  const req = e.request_body
  const params: Json = {}
  if (isObject(req)) { for (const p of PARAMS) if (req[p] !== undefined && req[p] !== null) params[p] = req[p] }
  const name = e.model ?? e.path
  const start: Json = {
    type: "llm",
    event: "start",
    runId,
    name,
    timestamp: e.timestamp,
    input: chatInput(e.path, req),
    params,
    metadata: metadata(e),
    tags: ["llm-proxy"]
  }
  const userId = e.user ?? e.project_id
  if (userId !== null) start["userId"] = userId
  const end: Json = {
    type: "llm",
    event: failed(e) ? "error" : "end",
    runId,
    name,
    timestamp: endTime(e),
    metadata: metadata(e)
  }
  if (failed(e)) {
    end["error"] = {
      message: errorMessage(e),
      stack: isObject(e.response_body) ? JSON.stringify(e.response_body) : undefined
    }
  } else {
    end["output"] = chatOutput(e.response_body)
    const tokens = lunaryTokens(e)
    if (tokens !== undefined) end["tokensUsage"] = tokens
  }
  return [start, end]
}

export const lunaryBody = (batch: ReadonlyArray<DeliveredEvent>) => ({ events: batch.flatMap(lunaryEvents) })

const ENVELOPE = Buffer.byteLength(JSON.stringify({ events: [] }))

/** One POST: the events it carries (by index in the batch) and its serialized body. */
export interface LunaryRequest {
  readonly indexes: ReadonlyArray<number>
  readonly events: ReadonlyArray<Json>
  readonly body: string
}

/** An event pair too large for one body on its own: its input, output and error detail give way to a note. */
const shrunk = ([start, end]: [Json, Json], bytes: number): [Json, Json] => {
  const note =
    `<omitted: this request's event is ${bytes} bytes, over Lunary's ${LUNARY_MAX_BODY_BYTES}-byte body limit>`
  const error = isObject(end["error"]) ? { message: end["error"]["message"] } : undefined
  return [{ ...start, input: note, params: {} }, {
    ...end,
    ...(end["output"] === undefined ? {} : { output: note }),
    ...(error ? { error } : {})
  }]
}

/** The batch in as few POSTs as fit `maxBytes` each, in order (an event's start and end always travel together). */
export const lunaryRequests = (
  batch: ReadonlyArray<DeliveredEvent>,
  maxBytes = LUNARY_MAX_BODY_BYTES
): Array<LunaryRequest> => {
  const out: Array<LunaryRequest> = []
  let indexes: Array<number> = []
  let events: Array<Json> = []
  let parts: Array<string> = []
  let size = ENVELOPE
  const flush = () => {
    if (indexes.length === 0) return
    out.push({ indexes, events, body: `{"events":[${parts.join(",")}]}` })
    indexes = []
    events = []
    parts = []
    size = ENVELOPE
  }
  batch.forEach((e, i) => {
    let pair = lunaryEvents(e)
    let text = pair.map((p) => JSON.stringify(p)).join(",")
    let bytes = Buffer.byteLength(text)
    if (ENVELOPE + bytes > maxBytes) {
      pair = shrunk(pair, bytes)
      text = pair.map((p) => JSON.stringify(p)).join(",")
      bytes = Buffer.byteLength(text)
    }
    if (size + bytes + (parts.length > 0 ? 1 : 0) > maxBytes) flush()
    indexes.push(i)
    events.push(...pair)
    parts.push(text)
    size += bytes + (parts.length > 1 ? 1 : 0)
  })
  flush()
  return out
}

/**
 * Lunary's answer → one outcome per request of the POST. Lunary processes the events sorted by timestamp and
 * answers `{"results": [{"id": runId, "success", "error"?}]}` in that order (processEventsIngestion, ingest.ts);
 * a `start` whose run exists already fails with "Run with this ID already exists in the database." — on a redelivery
 * that is the run this dispatcher sent before, so it counts as accepted. An answer without `results` (older Lunary)
 * accepts everything.
 */
export const lunaryOutcomes = (request: LunaryRequest, answer: unknown): Array<Outcome> => {
  const results = isObject(answer) ? answer["results"] : undefined
  if (!Array.isArray(results)) return request.indexes.map(() => accepted)
  const events = request.events
  // Array.prototype.sort is stable: equal timestamps keep their order, as Lunary's own sort does
  const order = events.map((_, i) => i).sort((a, b) =>
    Date.parse(String(events[a]!["timestamp"])) - Date.parse(String(events[b]!["timestamp"]))
  )
  const resultOf = new Array<unknown>(events.length)
  if (results.length === events.length) order.forEach((eventIndex, k) => (resultOf[eventIndex] = results[k]))
  else {
    // a different count: match by run id, in Lunary's order
    const byId = new Map<unknown, Array<unknown>>()
    for (const r of results) {
      const id = isObject(r) ? r["id"] : undefined
      byId.set(id, [...(byId.get(id) ?? []), r])
    }
    for (const eventIndex of order) resultOf[eventIndex] = byId.get(events[eventIndex]!["runId"])?.shift()
  }
  return request.indexes.map((_, k) => {
    const problems: Array<string> = []
    for (const i of [2 * k, 2 * k + 1]) {
      const r = resultOf[i]
      const event = events[i]!
      if (!isObject(r)) problems.push(`no result for its ${String(event["event"])} event`)
      else if (r["success"] === true) continue
      else {
        const error = typeof r["error"] === "string" ? r["error"] : "failed"
        if (event["event"] === "start" && /already exists/i.test(error)) continue
        problems.push(`${String(event["event"])}: ${error}`)
      }
    }
    return problems.length === 0
      ? accepted
      : retry(`Lunary refused the event (${problems.join("; ")})`, LUNARY_EVENT_ATTEMPTS)
  })
}

// ---------------------------------------------------------------------------------------------------------------
// Helicone: POST <base>/oai/v1/log or /anthropic/v1/log (Helicone/helicone worker/src/routers/api/apiRouter.ts)

/** Helicone refuses a log larger than this (JSON characters) with 400 (worker/src/lib/managers/AsyncLogManager.ts). */
export const HELICONE_MAX_BODY_CHARS = 10 * 1024 * 1024

export type HeliconeProvider = "openai" | "anthropic"

/**
 * Each provider's log route (apiRouter.ts: `logAsync(…, "OPENAI" | "ANTHROPIC")`): Helicone parses and prices the
 * log as that provider's; `/custom/v1/log` has no provider, hence no cost. Helicone's own loggers post by provider
 * the same way (Helicone/helicone helicone-python/helicone/async_logger/async_logger.py).
 */
export const HELICONE_ROUTES: Record<HeliconeProvider, string> = {
  openai: "/oai/v1/log",
  anthropic: "/anthropic/v1/log"
}

/** Anthropic's Messages API (`/v1/messages`, or an answer of `type: "message"`); everything else is OpenAI-style. */
export const heliconeProvider = (e: DeliveredEvent): HeliconeProvider =>
  /^\/v1\/messages(\/|$)/.test(e.path) || (isObject(e.response_body) && e.response_body["type"] === "message")
    ? "anthropic"
    : "openai"

/**
 * Helicone reads `providerRequest.meta` as request headers (`new Headers(meta)`, AsyncLogManager.ts), so a value
 * must be a header value: characters outside printable ASCII are percent-encoded, the length is bounded.
 */
export const headerValue = (v: string): string =>
  v.replace(/[^\x20-\x7e]+/g, (run) => encodeURIComponent(run)).trim().slice(0, 1000)

/** What Helicone shows about the request besides the bodies (worker/src/lib/models/HeliconeHeaders.ts). */
export const heliconeMeta = (e: DeliveredEvent): Record<string, string> => {
  const meta: Record<string, string> = { "Helicone-Request-Id": eventId(e) }
  const userId = e.user ?? e.project_id
  if (userId !== null) meta["Helicone-User-Id"] = headerValue(userId)
  const property = (name: string, value: string | null) => {
    if (value !== null && value !== "") meta[`Helicone-Property-${name}`] = headerValue(value)
  }
  property("Project", e.project_id)
  property("Token", e.token_id)
  property("Token-Name", e.token_name ?? null)
  property("Path", e.path)
  property("Request-Id", e.request_id)
  if (e.stream) property("Stream", "true")
  property("Error", e.error)
  if (e.usage_source === "tokenizer") property("Usage-Source", "tokenizer")
  return meta
}

const timing = (ms: number) => ({ seconds: Math.floor(ms / 1000), milliseconds: ms % 1000 })

/** `usage` in the provider's own words, for an answer that carried none (a stream without its usage chunk). */
const usageFor = (provider: HeliconeProvider, e: DeliveredEvent): Json | undefined =>
  e.usage === null
    ? undefined
    : provider === "anthropic"
    ? { input_tokens: e.usage.prompt_tokens, output_tokens: e.usage.completion_tokens }
    : { ...e.usage }

/**
 * The answer as a JSON object Helicone parses (DBLoggable.ts: `JSON.parse` of the body unless the request says
 * `stream`): the (reassembled) answer, with `usage` added when only we counted it; an error without a body gets one
 * with its message; other payloads are wrapped.
 */
const heliconeResponse = (provider: HeliconeProvider, e: DeliveredEvent): Json => {
  const res = e.response_body
  let json: Json
  if (isObject(res)) json = { ...res }
  else if (failed(e)) {
    json = { error: { message: errorMessage(e), type: "llm_proxy", code: e.error ?? `http_${e.status}` } }
  } else if (Array.isArray(res)) json = { stream_events: res }
  else json = res === null || res === undefined ? {} : { body: res }
  const usage = usageFor(provider, e)
  if (!failed(e) && usage !== undefined && !isObject(json["usage"])) json["usage"] = usage
  return json
}

/**
 * The request copy: the body as sent, without `stream` / `stream_options`. The answer logged is always one JSON
 * object (a stream reassembled), and Helicone picks its parser by the request's `stream` flag (DBLoggable.ts
 * `isStream`): a copy that kept `stream: true` would have its JSON answer read as SSE — no tokens, no cost.
 */
const heliconeRequestCopy = (e: DeliveredEvent): Json => {
  const req = e.request_body
  if (!isObject(req)) return req === null || req === undefined ? {} : { body: req }
  const { stream: _stream, stream_options: _options, ...rest } = req
  return rest
}

export interface HeliconeLog {
  readonly route: string
  readonly body: Json
}

/** One log per event, on its provider's route (AsyncLog.ts: providerRequest, providerResponse, timing). */
export const heliconeLog = (e: DeliveredEvent): HeliconeLog => {
  const provider = heliconeProvider(e)
  const parsed = Date.parse(e.timestamp)
  const start = Number.isNaN(parsed) ? Date.now() : parsed
  const body: Json = {
    providerRequest: { url: e.path, json: heliconeRequestCopy(e), meta: heliconeMeta(e) },
    providerResponse: { status: e.status, headers: {}, json: heliconeResponse(provider, e) },
    timing: {
      startTime: timing(start),
      endTime: timing(start + Math.max(0, Math.round(e.duration_ms))),
      // time to the upstream's response headers: for a stream, when its first bytes arrived
      ...(e.stream && (e.first_chunk_ms ?? e.upstream_ms) !== null
        ? { timeToFirstToken: Math.round((e.first_chunk_ms ?? e.upstream_ms)!) }
        : {})
    }
  }
  const chars = JSON.stringify(body).length
  if (chars > HELICONE_MAX_BODY_CHARS) {
    const note =
      `<omitted: this log is ${chars} characters, over Helicone's ${HELICONE_MAX_BODY_CHARS}-character limit>`
    const request = body["providerRequest"] as Json
    const response = body["providerResponse"] as Json
    const res = response["json"] as Json
    body["providerRequest"] = { ...request, json: { model: e.model, llm_proxy_note: note } }
    body["providerResponse"] = {
      ...response,
      json: {
        model: res["model"] ?? e.model,
        ...(res["usage"] !== undefined ? { usage: res["usage"] } : {}),
        llm_proxy_note: note
      }
    }
  }
  return { route: HELICONE_ROUTES[provider], body }
}

/**
 * Helicone answers 200 `{"error": …}` when it could not store the log (AsyncLogManager.ts `logError`): that is a
 * failure, retried — as a refused key when it says so (`Auth failed!`, DBLoggable.ts `log`); 200 with anything else
 * (`ok`) is stored.
 */
export const heliconeOutcome = (text: string): Outcome => {
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    return accepted
  }
  if (!isObject(parsed) || parsed["error"] === undefined || parsed["error"] === null) return accepted
  const error = typeof parsed["error"] === "string" ? parsed["error"] : JSON.stringify(parsed["error"])
  const reason = `Helicone could not store the log: ${error}`.slice(0, 500)
  return /^auth failed/i.test(error) ? unauthorized(reason) : retry(reason)
}

/** Where the logs go: the worker's base URL (a configured `…/custom/v1/log`-style URL counts as its base). */
export const heliconeBase = (endpoint: string): string =>
  endpoint.replace(/\/+$/, "").replace(/\/(custom|oai|anthropic)\/v1\/log$/, "")
