/**
 * Ingestion formats of the observability backends (pure; reference-system.md §7.5, with its defects fixed:
 * usage is reported, request ids are kept, errors are reported as errors).
 */
import { createHash } from "node:crypto"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

/** A UUID derived from the request id: a redelivered event maps to the same run, not a new one. */
export const runIdFor = (requestId: string): string => {
  const h = createHash("sha1").update(`llm-proxy:${requestId}`).digest()
  h[6] = (h[6]! & 0x0f) | 0x50
  h[8] = (h[8]! & 0x3f) | 0x80
  const x = h.subarray(0, 16).toString("hex")
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`
}

const endTime = (e: DeliveredEvent) => {
  const start = Date.parse(e.timestamp)
  return new Date((Number.isNaN(start) ? Date.now() : start) + Math.max(0, Math.round(e.duration_ms))).toISOString()
}

const metadata = (e: DeliveredEvent) => ({
  request_id: e.request_id,
  project_id: e.project_id,
  token_id: e.token_id,
  method: e.method,
  path: e.path,
  status: e.status,
  duration_ms: e.duration_ms,
  upstream_ms: e.upstream_ms,
  stream: e.stream
})

const PARAMS = ["temperature", "max_tokens", "max_completion_tokens", "top_p", "frequency_penalty", "presence_penalty", "stop", "tools"]

/** Lunary `POST /v1/runs/ingest` body: a `start` and an `end` (or `error`) event per request, same runId. */
export const lunaryEvents = (e: DeliveredEvent): Array<Json> => {
  const runId = runIdFor(e.request_id)
  const req = e.request_body
  const input = isObject(req) ? (req["messages"] ?? req["input"] ?? req["prompt"] ?? req) : req
  const params: Json = {}
  if (isObject(req)) for (const p of PARAMS) if (req[p] !== undefined) params[p] = req[p]
  const res = e.response_body
  const choice = isObject(res) && Array.isArray(res["choices"]) ? res["choices"][0] : undefined
  const output = isObject(choice) ? (choice["message"] ?? choice["text"] ?? res) : res
  const failed = e.status >= 400 || e.error !== null
  const start: Json = {
    type: "llm",
    event: "start",
    runId,
    name: e.model ?? e.path,
    timestamp: e.timestamp,
    input,
    params,
    metadata: metadata(e),
    tags: ["llm-proxy"]
  }
  if (e.project_id !== null) start["userId"] = e.project_id
  const end: Json = {
    type: "llm",
    event: failed ? "error" : "end",
    runId,
    name: e.model ?? e.path,
    timestamp: endTime(e),
    output: failed ? undefined : output,
    metadata: metadata(e)
  }
  if (failed) end["error"] = { message: e.error ?? `HTTP ${e.status}`, stack: isObject(res) ? JSON.stringify(res) : undefined }
  if (e.usage !== null) end["tokensUsage"] = { prompt: e.usage.prompt_tokens, completion: e.usage.completion_tokens }
  return [start, end]
}

export const lunaryBody = (batch: ReadonlyArray<DeliveredEvent>) => ({ events: batch.flatMap(lunaryEvents) })

const timing = (iso: string) => {
  const ms = Date.parse(iso)
  const t = Number.isNaN(ms) ? Date.now() : ms
  return { seconds: Math.floor(t / 1000), milliseconds: t % 1000 }
}

/** Helicone custom-model logging (`POST /custom/v1/log`), one request per event. */
export const heliconeLog = (e: DeliveredEvent): Json => {
  const req = e.request_body
  const res = e.response_body
  let json: Json = isObject(res) ? { ...res } : {}
  const providerResponse: Json = { status: e.status, headers: {}, json }
  if (!isObject(res) && res !== null && res !== undefined) providerResponse["textBody"] = typeof res === "string" ? res : JSON.stringify(res)
  if (e.usage !== null) json = Object.assign(json, { usage: { ...(isObject(json["usage"]) ? json["usage"] : {}), ...e.usage } })
  const meta: Record<string, string> = {
    request_id: e.request_id,
    "Helicone-Provider": "openai",
    method: e.method,
    path: e.path,
    stream: String(e.stream)
  }
  if (e.project_id !== null) meta["project_id"] = e.project_id
  if (e.token_id !== null) meta["token_id"] = e.token_id
  if (e.error !== null) meta["error"] = e.error
  return {
    providerRequest: {
      url: e.path,
      json: isObject(req) ? req : { body: req ?? null },
      meta
    },
    providerResponse,
    timing: { startTime: timing(e.timestamp), endTime: timing(endTime(e)) }
  }
}
