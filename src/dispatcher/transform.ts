/**
 * The event transformer: a `ProxyEvent` as published by the proxy → the `DeliveredEvent` backends receive.
 * Pure (the token counter is passed in): decodes bodies, reassembles SSE, fills `usage` from the response or, when
 * the response has none, by counting the prompt and completion text with the model's tokenizer.
 */
import type { CapturedBody, DeliveredEvent, ProxyEvent, Usage } from "../domain/ProxyEvent.js"
import { interpretBody } from "./bodies.js"
import { type CountTokens, encodingForModel } from "./tokens.js"

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

const decodeCaptured = (body: CapturedBody | null): { readonly value: unknown; readonly tooLarge: boolean } => {
  if (body === null) return { value: null, tooLarge: false }
  const raw = Buffer.from(body.base64, "base64")
  if (raw.length === 0) return { value: null, tooLarge: false }
  const interpreted = interpretBody(raw, {
    contentType: body.content_type,
    contentEncoding: body.content_encoding,
    truncated: body.truncated
  })
  return { value: interpreted.value, tooLarge: interpreted.tooLarge === true }
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) ? v : undefined)

/** `usage` as OpenAI (prompt/completion), the Responses API (input/output) or Anthropic (input/output) report it. */
export const usageFromResponse = (body: unknown): Usage | null => {
  if (!isObject(body) || !isObject(body["usage"])) return null
  const u = body["usage"]
  const prompt = num(u["prompt_tokens"]) ?? num(u["input_tokens"])
  const completion = num(u["completion_tokens"]) ?? num(u["output_tokens"]) ?? (prompt !== undefined ? 0 : undefined)
  if (prompt === undefined || completion === undefined) return null
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: num(u["total_tokens"]) ?? prompt + completion
  }
}

const textOf = (content: unknown): string => {
  if (typeof content === "string") return content
  if (Array.isArray(content)) {
    return content.map((part) =>
      typeof part === "string"
        ? part
        : isObject(part) && typeof part["text"] === "string"
        ? part["text"]
        : isObject(part) && typeof part["input_text"] === "string"
        ? part["input_text"]
        : ""
    ).join("")
  }
  return ""
}

/** The text a model reads from a request body (chat messages, completions prompt, Responses input). */
export const promptText = (body: unknown): string => {
  if (!isObject(body)) return typeof body === "string" ? body : ""
  const parts: Array<string> = []
  if (typeof body["instructions"] === "string") parts.push(body["instructions"])
  if (typeof body["system"] === "string") parts.push(body["system"])
  for (const key of ["messages", "input"]) {
    const v = body[key]
    if (typeof v === "string") parts.push(v)
    else if (Array.isArray(v)) {
      for (const m of v) parts.push(isObject(m) ? textOf(m["content"]) : textOf(m))
    }
  }
  const prompt = body["prompt"]
  if (typeof prompt === "string") parts.push(prompt)
  else if (Array.isArray(prompt)) parts.push(prompt.filter((p) => typeof p === "string").join("\n"))
  return parts.join("\n")
}

/** The text a model generated, from a (reassembled) response body. */
export const completionText = (body: unknown): string => {
  if (!isObject(body)) return ""
  const parts: Array<string> = []
  for (const c of (body["choices"] as Array<unknown> | undefined) ?? []) {
    if (!isObject(c)) continue
    if (typeof c["text"] === "string") parts.push(c["text"])
    const m = c["message"]
    if (isObject(m)) {
      parts.push(textOf(m["content"]))
      for (const tc of (m["tool_calls"] as Array<unknown> | undefined) ?? []) {
        if (isObject(tc) && isObject(tc["function"])) {
          parts.push(String(tc["function"]["name"] ?? ""), String(tc["function"]["arguments"] ?? ""))
        }
      }
    }
  }
  if (typeof body["output_text"] === "string") parts.push(body["output_text"])
  else if (Array.isArray(body["output"])) {
    for (const o of body["output"]) if (isObject(o)) parts.push(textOf(o["content"]))
  }
  if (Array.isArray(body["content"])) parts.push(textOf(body["content"]))
  return parts.filter((p) => p !== "").join("\n")
}

const modelIn = (body: unknown): string | null =>
  isObject(body) && typeof body["model"] === "string" ? body["model"] : null

const isGenerationPath = (path: string) => /\/(chat\/completions|completions|responses|messages)$/.test(path)

/**
 * `onBodyTooLarge` is told of each body left out because it decompressed to more than `MAX_DECODED_BODY_BYTES`
 * (the event is delivered without it).
 */
export const transformEvent = (event: ProxyEvent, count: CountTokens, onBodyTooLarge?: () => void): DeliveredEvent => {
  const decodedRequest = decodeCaptured(event.request_body)
  const decodedResponse = decodeCaptured(event.response_body)
  for (const d of [decodedRequest, decodedResponse]) if (d.tooLarge) onBodyTooLarge?.()
  const request = decodedRequest.value
  const response = decodedResponse.value
  let usage: Usage | null = usageFromResponse(response) ?? event.usage
  let source: DeliveredEvent["usage_source"] = usage === null ? null : "response"
  // an answer left out is not an answer of zero tokens: without it nothing is counted
  if (
    usage === null && event.status >= 200 && event.status < 300 && isGenerationPath(event.path) &&
    !decodedResponse.tooLarge
  ) {
    const model = event.model ??
      (isObject(response) && typeof response["model"] === "string" ? response["model"] : null)
    const encoding = encodingForModel(model)
    const prompt = count(encoding, promptText(request))
    const completion = count(encoding, completionText(response))
    if (prompt > 0 || completion > 0) {
      usage = { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion }
      source = "tokenizer"
    }
  }
  return {
    request_id: event.request_id,
    timestamp: event.timestamp,
    project_id: event.project_id,
    token_id: event.token_id,
    method: event.method,
    path: event.path,
    status: event.status,
    duration_ms: event.duration_ms,
    upstream_ms: event.upstream_ms,
    first_chunk_ms: event.first_chunk_ms ?? null,
    model: event.model ?? modelIn(response) ?? modelIn(request),
    stream: event.stream,
    error: event.error,
    ...(event.upstream_request_id !== undefined ? { upstream_request_id: event.upstream_request_id } : {}),
    ...(event.attempts !== undefined ? { attempts: event.attempts } : {}),
    ...(event.cost_usd !== undefined ? { cost_usd: event.cost_usd } : {}),
    usage,
    usage_source: source,
    request_body: request,
    response_body: response,
    request_body_truncated: event.request_body?.truncated ?? false,
    response_body_truncated: event.response_body?.truncated ?? false,
    ...(event.token_name !== undefined ? { token_name: event.token_name } : {}),
    ...(event.user !== undefined ? { user: event.user } : {}),
    ...(event.token_metadata !== undefined ? { token_metadata: event.token_metadata } : {})
  }
}
