/**
 * Usage that cannot be dodged (pure, no I/O).
 *
 * `askForUsage`: an OpenAI-style streamed request (chat completions, completions) gets `stream_options.include_usage`
 * set to true, by splicing the body (src/proxy/jsonBody.ts): every other byte reaches the upstream as it came. When
 * the client had not asked for usage itself, the usage-only chunk the upstream then adds is removed from what the
 * client sees (src/proxy/usage.ts `UsageCapture`).
 *
 * `estimateCutShort`: a stream that ended before its final usage (the client went away, the upstream broke off) is
 * charged the usage it reported so far, with the input tokens counted from the request when none was reported and
 * the output tokens counted (with the tokenizer) from the text that was streamed.
 */
import { type CountTokens, encodingForModel } from "../dispatcher/tokens.js"
import { promptText } from "../dispatcher/transform.js"
import { insertMember, membersNamed, parseMember, type ScanMemo, scanOnce, splice } from "../proxy/jsonBody.js"
import type { UsageDetail } from "./cost.js"

/** Paths whose streamed answers carry usage only when asked (`stream_options.include_usage`). */
const OPENAI_STREAMING = /\/(?:chat\/completions|completions)$/

const STREAM_KEY = Buffer.from("\"stream\"")

export interface AskedForUsage {
  /** The body to send upstream. */
  readonly body: Buffer
  /** The client did not ask for usage: the usage-only chunk is to be removed from its stream. */
  readonly strip: boolean
}

/**
 * The body with `stream_options.include_usage: true` when it is a streamed OpenAI-style request that lacks it;
 * undefined when nothing is to change (not streamed, usage already asked for, not a JSON object, or ambiguous: a key
 * named twice is left for the upstream to refuse).
 */
export const askForUsage = (path: string, body: Buffer, memo?: ScanMemo): AskedForUsage | undefined => {
  if (!OPENAI_STREAMING.test(path) || !body.includes(STREAM_KEY)) return undefined
  const scan = scanOnce(body, memo)
  if (scan === undefined || scan.close === -1) return undefined
  const stream = membersNamed(scan, "stream")
  if (stream.length !== 1 || parseMember(body, stream[0]!, 16, 0) !== true) return undefined
  const options = membersNamed(scan, "stream_options")
  if (options.length === 0) {
    return { body: insertMember(body, scan, "stream_options", "{\"include_usage\":true}"), strip: true }
  }
  if (options.length > 1) return undefined
  const m = options[0]!
  const value = parseMember(body, m, 64 * 1024, 8)
  if (value === null) return { body: splice(body, m.valueStart, m.valueEnd, "{\"include_usage\":true}"), strip: true }
  if (typeof value !== "object" || Array.isArray(value)) return undefined
  const o = value as Record<string, unknown>
  if (o["include_usage"] === true) return undefined
  return { body: splice(body, m.valueStart, m.valueEnd, JSON.stringify({ ...o, include_usage: true })), strip: true }
}

/** Request bodies larger than this are not parsed to count their input tokens (estimated from their size). */
const MAX_PARSED_REQUEST = 1024 * 1024
/** Characters per token when text is not counted with the tokenizer. */
const CHARS_PER_TOKEN = 4

/** The input tokens of a request, counted from its messages / prompt / input with the tokenizer. */
export const requestTokens = (count: CountTokens, model: string | undefined, body: Buffer | undefined): number => {
  if (body === undefined || body.length === 0) return 0
  if (body.length > MAX_PARSED_REQUEST) return Math.ceil(body.length / CHARS_PER_TOKEN)
  let doc: unknown
  try {
    doc = JSON.parse(body.toString("utf8"))
  } catch {
    return Math.ceil(body.length / CHARS_PER_TOKEN)
  }
  return count(encodingForModel(model), promptText(doc))
}

/**
 * The usage of a stream cut short: what it reported (input tokens, a first output token), the input counted from
 * the request when it reported none, and at least the output tokens of the text streamed.
 */
export const estimateCutShort = (
  count: CountTokens,
  model: string | undefined,
  reported: UsageDetail | undefined,
  streamed: { readonly text: string; readonly overflowChars: number },
  requestBody: Buffer | undefined
): UsageDetail => {
  const completion = count(encodingForModel(model), streamed.text) + Math.ceil(streamed.overflowChars / CHARS_PER_TOKEN)
  const base = reported ?? {
    prompt: requestTokens(count, model, requestBody),
    completion: 0,
    cacheRead: 0,
    cacheWrite: 0,
    cacheWrite1h: 0,
    cacheApart: false
  }
  return { ...base, completion: Math.max(base.completion, completion) }
}
