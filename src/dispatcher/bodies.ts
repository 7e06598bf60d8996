/**
 * Body decoding for the event transformer: content-encoding, SSE reassembly, JSON / text / binary.
 * Pure functions (zlib's sync API is deterministic); captured bodies can be cut short, so every decoder
 * keeps what it could read instead of failing.
 */
import { brotliDecompressSync, constants, gunzipSync, inflateSync } from "node:zlib"

/**
 * The most a captured body may decompress to. A capture is bounded (`OBSERVABILITY_MAX_RESPONSE_BODY_BYTES`), but a
 * few KiB of gzip or brotli can expand to gigabytes: past this, decoding stops and the body is left out of the event
 * (docs/events.md). Typical JSON compresses 5–10×, so a full 256 KiB capture stays well below it.
 */
export const MAX_DECODED_BODY_BYTES = 8 * 1024 * 1024

export type Decoded =
  | { readonly bytes: Buffer; readonly decoded: true }
  | { readonly bytes: Buffer; readonly decoded: false; readonly tooLarge: boolean }

/**
 * Decompresses by `Content-Encoding`; a truncated stream yields the bytes decoded so far. More than `maxBytes` of
 * output (a zip bomb) is not decodable: zlib stops at the limit (`maxOutputLength`) instead of allocating the rest.
 */
export const decodeContent = (
  bytes: Buffer,
  encoding: string | undefined,
  maxBytes = MAX_DECODED_BODY_BYTES
): Decoded => {
  const e = (encoding ?? "").trim().toLowerCase()
  if (e === "" || e === "identity") return { bytes, decoded: true }
  try {
    switch (e) {
      case "gzip":
      case "x-gzip":
        return {
          bytes: gunzipSync(bytes, { finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: maxBytes }),
          decoded: true
        }
      case "deflate":
        return {
          bytes: inflateSync(bytes, { finishFlush: constants.Z_SYNC_FLUSH, maxOutputLength: maxBytes }),
          decoded: true
        }
      case "br":
        return {
          bytes: brotliDecompressSync(bytes, {
            finishFlush: constants.BROTLI_OPERATION_FLUSH,
            maxOutputLength: maxBytes
          }),
          decoded: true
        }
    }
  } catch (err) {
    // ERR_BUFFER_TOO_LARGE: the output would exceed maxBytes; anything else: not a valid stream of that encoding
    return { bytes, decoded: false, tooLarge: (err as { code?: unknown }).code === "ERR_BUFFER_TOO_LARGE" }
  }
  return { bytes, decoded: false, tooLarge: false }
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** UTF-8 text, tolerating a multi-byte character cut at the end by truncation; undefined for binary. */
export const asText = (bytes: Buffer, truncated: boolean): string | undefined => {
  for (let cut = 0; cut <= (truncated ? 3 : 0) && cut <= bytes.length; cut++) {
    try {
      const text = utf8.decode(cut === 0 ? bytes : bytes.subarray(0, bytes.length - cut))
      // NUL bytes mean binary even when they happen to be valid UTF-8
      return text.includes("\u0000") ? undefined : text
    } catch {
      // try one byte shorter
    }
  }
  return undefined
}

export interface SseMessage {
  readonly event: string | undefined
  readonly data: string
}

/** Parses a `text/event-stream` body into its messages (comments and ids dropped). */
export const parseSse = (text: string): Array<SseMessage> => {
  const out: Array<SseMessage> = []
  for (const block of text.split(/\r?\n\r?\n/)) {
    let event: string | undefined
    const data: Array<string> = []
    for (const line of block.split(/\r?\n/)) {
      if (line.startsWith(":") || line === "") continue
      const i = line.indexOf(":")
      const field = i < 0 ? line : line.slice(0, i)
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "")
      if (field === "data") data.push(value)
      else if (field === "event") event = value
    }
    if (data.length > 0) out.push({ event, data: data.join("\n") })
  }
  return out
}

export const looksLikeSse = (text: string, contentType: string | undefined) =>
  (contentType ?? "").toLowerCase().includes("text/event-stream") || /^(data|event):/.test(text.trimStart())

const tryJson = (s: string): { ok: true; value: unknown } | { ok: false } => {
  try {
    return { ok: true, value: JSON.parse(s) }
  } catch {
    return { ok: false }
  }
}

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

interface ToolCallAcc {
  index: number
  id?: string
  type?: string
  function: { name: string; arguments: string }
}

interface ChoiceAcc {
  index: number
  role: string
  content: string
  refusal: string | undefined
  toolCalls: Map<number, ToolCallAcc>
  finishReason: unknown
  text: string
}

/**
 * Merges OpenAI streaming chunks (`chat.completion.chunk` or `text_completion`) into the message a non-streaming
 * call would have returned. Returns undefined when the chunks are not of that kind.
 */
export const mergeOpenAiChunks = (chunks: ReadonlyArray<unknown>): Json | undefined => {
  const objects = chunks.filter(isObject)
  if (objects.length === 0 || !objects.every((c) => Array.isArray(c["choices"]) || isObject(c["usage"]))) {
    return undefined
  }
  const first = objects.find((c) => Array.isArray(c["choices"])) ?? objects[0]!
  const isChat = first["object"] === "chat.completion.chunk" ||
    objects.some((c) =>
      (c["choices"] as Array<unknown> | undefined)?.some((ch) => isObject(ch) && isObject(ch["delta"]))
    )
  const choices = new Map<number, ChoiceAcc>()
  let usage: unknown
  let systemFingerprint: unknown
  for (const chunk of objects) {
    if (isObject(chunk["usage"])) usage = chunk["usage"]
    if (chunk["system_fingerprint"] !== undefined) systemFingerprint = chunk["system_fingerprint"]
    for (const raw of (chunk["choices"] as Array<unknown> | undefined) ?? []) {
      if (!isObject(raw)) continue
      const index = typeof raw["index"] === "number" ? raw["index"] : 0
      let acc = choices.get(index)
      if (acc === undefined) {
        acc = {
          index,
          role: "assistant",
          content: "",
          refusal: undefined,
          toolCalls: new Map(),
          finishReason: null,
          text: ""
        }
        choices.set(index, acc)
      }
      if (raw["finish_reason"] !== undefined && raw["finish_reason"] !== null) acc.finishReason = raw["finish_reason"]
      if (typeof raw["text"] === "string") acc.text += raw["text"]
      const delta = raw["delta"]
      if (!isObject(delta)) continue
      if (typeof delta["role"] === "string") acc.role = delta["role"]
      if (typeof delta["content"] === "string") acc.content += delta["content"]
      if (typeof delta["refusal"] === "string") acc.refusal = (acc.refusal ?? "") + delta["refusal"]
      for (const tc of (delta["tool_calls"] as Array<unknown> | undefined) ?? []) {
        if (!isObject(tc)) continue
        const ti = typeof tc["index"] === "number" ? tc["index"] : acc.toolCalls.size
        const call = acc.toolCalls.get(ti) ?? { index: ti, function: { name: "", arguments: "" } }
        if (typeof tc["id"] === "string") call.id = tc["id"]
        if (typeof tc["type"] === "string") call.type = tc["type"]
        const fn = tc["function"]
        if (isObject(fn)) {
          if (typeof fn["name"] === "string") call.function.name += fn["name"]
          if (typeof fn["arguments"] === "string") call.function.arguments += fn["arguments"]
        }
        acc.toolCalls.set(ti, call)
      }
    }
  }
  const merged: Json = {
    id: first["id"],
    object: isChat ? "chat.completion" : "text_completion",
    created: first["created"],
    model: first["model"]
  }
  if (systemFingerprint !== undefined) merged["system_fingerprint"] = systemFingerprint
  merged["choices"] = [...choices.values()].sort((a, b) => a.index - b.index).map((c) => {
    if (!isChat) return { index: c.index, text: c.text, finish_reason: c.finishReason }
    const message: Json = { role: c.role, content: c.content === "" && c.toolCalls.size > 0 ? null : c.content }
    if (c.refusal !== undefined) message["refusal"] = c.refusal
    if (c.toolCalls.size > 0) {
      message["tool_calls"] = [...c.toolCalls.values()].sort((a, b) => a.index - b.index).map((t) => ({
        id: t.id,
        type: t.type ?? "function",
        function: t.function
      }))
    }
    return { index: c.index, message, finish_reason: c.finishReason }
  })
  if (usage !== undefined) merged["usage"] = usage
  return merged
}

/** A reassembled SSE body: the final message when the stream is one we know, else the list of data payloads. */
export const reassembleSse = (text: string): unknown => {
  const messages = parseSse(text)
  const payloads: Array<unknown> = []
  for (const m of messages) {
    if (m.data.trim() === "[DONE]") continue
    const parsed = tryJson(m.data)
    payloads.push(parsed.ok ? parsed.value : m.data)
  }
  // Responses API: the `response.completed` (or failed/incomplete) event carries the whole final response.
  for (let i = messages.length - 1; i >= 0; i--) {
    const ev = messages[i]!.event ?? ""
    if (/^response\.(completed|failed|incomplete)$/.test(ev)) {
      const parsed = tryJson(messages[i]!.data)
      if (parsed.ok && isObject(parsed.value) && isObject(parsed.value["response"])) return parsed.value["response"]
    }
  }
  // Anthropic messages: message_start + content_block_delta text + message_delta usage.
  const start = payloads.find((p) => isObject(p) && p["type"] === "message_start")
  if (isObject(start) && isObject(start["message"])) {
    const message: Json = { ...start["message"] }
    let text = ""
    let usage: Json = isObject(message["usage"]) ? { ...message["usage"] } : {}
    for (const p of payloads) {
      if (!isObject(p)) continue
      if (p["type"] === "content_block_delta" && isObject(p["delta"]) && typeof p["delta"]["text"] === "string") {
        text += p["delta"]["text"]
      }
      if (p["type"] === "message_delta") {
        if (isObject(p["delta"])) Object.assign(message, p["delta"])
        if (isObject(p["usage"])) usage = { ...usage, ...p["usage"] }
      }
    }
    message["content"] = [{ type: "text", text }]
    message["usage"] = usage
    return message
  }
  return mergeOpenAiChunks(payloads) ?? payloads
}

export interface InterpretedBody {
  readonly value: unknown
  readonly sse: boolean
  /** left out because it decompressed to more than `MAX_DECODED_BODY_BYTES` */
  readonly tooLarge?: true
}

/** Bytes → the most useful JSON value: parsed JSON, the reassembled stream, a string, or a placeholder. */
export const interpretBody = (
  raw: Buffer,
  options: {
    readonly contentType?: string | undefined
    readonly contentEncoding?: string | undefined
    readonly truncated: boolean
  }
): InterpretedBody => {
  const ct = (options.contentType ?? "").toLowerCase()
  if (ct.startsWith("multipart/")) return { value: `<multipart body omitted, ${raw.length} bytes>`, sse: false }
  const content = decodeContent(raw, options.contentEncoding)
  if (!content.decoded) {
    return content.tooLarge
      ? {
        value: `<${options.contentEncoding} body omitted: decompresses to more than ${MAX_DECODED_BODY_BYTES} bytes>`,
        sse: false,
        tooLarge: true
      }
      : { value: `<undecodable ${options.contentEncoding} body omitted, ${raw.length} bytes>`, sse: false }
  }
  const bytes = content.bytes
  if (/^(image|audio|video)\/|octet-stream/.test(ct)) {
    return { value: `<binary body omitted, ${bytes.length} bytes>`, sse: false }
  }
  const text = asText(bytes, options.truncated)
  if (text === undefined) return { value: `<binary body omitted, ${bytes.length} bytes>`, sse: false }
  if (looksLikeSse(text, ct)) return { value: reassembleSse(text), sse: true }
  const parsed = tryJson(text)
  return { value: parsed.ok ? parsed.value : text, sse: false }
}
