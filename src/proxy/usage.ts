/**
 * Usage capture: what every answer's bytes pass through on their way to the client, untouched (same chunks, same
 * order, but for the usage-only event the proxy asked for itself; a stream chunk by chunk through `UsageCapture.pass`),
 * reading `usage` on the side — from the whole body for JSON, from `data:` lines for SSE (OpenAI's final usage
 * chunk, Anthropic's `message_start` / `message_delta`). It also keeps the first `captureLimit` bytes for
 * whoever wants the response body (instrumentation events), never more.
 *
 * In the same pass it notes what the answer says about itself (`AnswerFacts`: the model that answered, the answer's
 * id, why generation stopped, cached input tokens, when the first bytes came) for the GenAI span attributes and the
 * time-to-first-token metric. No extra parse for JSON (the same document); for SSE, besides the lines that carry
 * usage, the first `data:` line (id and model) and lines with a `finish_reason` value are kept and parsed only when
 * the facts are asked for (a traced request).
 */
import { StringDecoder } from "node:string_decoder"
import type { UsageDetail } from "../spend/cost.js"

export interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
}

/** JSON bodies larger than this are passed through without looking for usage. */
export const JSON_USAGE_LIMIT = 1024 * 1024
const MAX_SSE_LINE = 1024 * 1024
/**
 * Characters of a stream's `data:` lines kept until its final usage arrives, so that an answer cut short can be
 * counted (beyond: estimated from their length). Bounded: thousands of streams may be open at once.
 */
export const MAX_STREAMED_TEXT = 256 * 1024

const TEXT_KEYS = [
  "\"content\"",
  "\"text\"",
  "\"arguments\"",
  "\"partial_json\"",
  "\"thinking\"",
  "\"refusal\"",
  "\"reasoning_content\"",
  "\"delta\""
]

/** Index just past the JSON string starting at `s[i]` (a quote), or -1. */
const stringEndIn = (s: string, i: number): number => {
  for (let from = i + 1;;) {
    const q = s.indexOf("\"", from)
    if (q === -1) return -1
    let k = q - 1
    while (s.charCodeAt(k) === 0x5c) k--
    if ((q - 1 - k) % 2 === 0) return q + 1
    from = q + 1
  }
}

/** What an answer says about itself, read on the side with its usage (GenAI span attributes, metrics). */
export interface AnswerFacts {
  /** The model that answered (`model`; may name a dated version of the requested one). */
  readonly responseModel: string | undefined
  /** The answer's id (`id`: chatcmpl-…, msg_…, resp_…). */
  readonly responseId: string | undefined
  /** Why generation stopped, one entry per choice (OpenAI `finish_reason`, Anthropic `stop_reason`). */
  readonly finishReasons: ReadonlyArray<string> | undefined
  /** Input tokens served from the provider's prompt cache, and written to it (Anthropic), when reported. */
  readonly cacheReadTokens: number | undefined
  readonly cacheCreationTokens: number | undefined
  /** Input tokens with cached ones included (Anthropic counts them apart from `input_tokens`), when reported. */
  readonly inputTokens: number | undefined
  /** performance.now() when the first bytes of the answer's body arrived. */
  readonly firstChunkAt: number | undefined
}

interface Partial {
  prompt?: number
  completion?: number
  cacheRead?: number
  cacheCreation?: number
  /** Of `cacheCreation`, the tokens written for one hour (Anthropic `cache_creation.ephemeral_1h_input_tokens`). */
  cacheCreation1h?: number
  /** Anthropic: `input_tokens` excludes the cached input tokens. */
  cacheApart?: boolean
  /**
   * The usage read is the answer's last word: a JSON answer's, OpenAI's usage chunk, Anthropic's `message_delta`,
   * the Responses API's `response.completed`. Anthropic's `message_start` (input tokens, a first output token) is not.
   */
  final?: boolean
}

/** Facts read so far (ids and reasons are bounded: they come from the upstream). */
export interface Facts {
  model?: string | undefined
  id?: string | undefined
  finish?: Array<string>
}

const MAX_FACT_LENGTH = 256
const MAX_CHOICES = 16

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : undefined)

/** Reads OpenAI (`prompt_tokens`/`completion_tokens`) or Anthropic (`input_tokens`/`output_tokens`) usage into `acc`. */
export const mergeUsage = (acc: Partial, doc: unknown): void => {
  if (typeof doc !== "object" || doc === null) return
  const d = doc as { usage?: unknown; message?: { usage?: unknown }; response?: { usage?: unknown } }
  const places = [d.usage, d.message?.usage, d.response?.usage]
  for (let i = 0; i < places.length; i++) {
    const u = places[i]
    if (typeof u !== "object" || u === null) continue
    if (i !== 1) acc.final = true
    const x = u as Record<string, unknown>
    const prompt = num(x.prompt_tokens) ?? num(x.input_tokens)
    const completion = num(x.completion_tokens) ?? num(x.output_tokens)
    if (prompt !== undefined) acc.prompt = prompt
    if (completion !== undefined) acc.completion = completion
    // Cached input: OpenAI `prompt_tokens_details` / `input_tokens_details` (included in the prompt count);
    // Anthropic `cache_read_input_tokens` / `cache_creation_input_tokens` (not included in `input_tokens`).
    // From GPT-5.6 on OpenAI also reports the input tokens written to the cache (`cache_write_tokens`, included too).
    const details = (x.prompt_tokens_details ?? x.input_tokens_details) as
      | { cached_tokens?: unknown; cache_write_tokens?: unknown }
      | null
      | undefined
    const cached = typeof details === "object" && details !== null ? num(details.cached_tokens) : undefined
    if (cached !== undefined) acc.cacheRead = cached
    const written = typeof details === "object" && details !== null ? num(details.cache_write_tokens) : undefined
    if (written !== undefined) acc.cacheCreation = written
    const read = num(x.cache_read_input_tokens)
    const created = num(x.cache_creation_input_tokens)
    if (read !== undefined || created !== undefined) {
      acc.cacheApart = true
      if (read !== undefined) acc.cacheRead = read
      if (created !== undefined) acc.cacheCreation = created
      const lifetimes = x.cache_creation as { ephemeral_1h_input_tokens?: unknown } | null | undefined
      const hour = typeof lifetimes === "object" && lifetimes !== null
        ? num(lifetimes.ephemeral_1h_input_tokens)
        : undefined
      if (hour !== undefined) acc.cacheCreation1h = hour
    }
  }
}

const fact = (v: unknown): string | undefined =>
  typeof v === "string" && v !== "" ? (v.length > MAX_FACT_LENGTH ? v.slice(0, MAX_FACT_LENGTH) : v) : undefined

const addFinish = (f: Facts, index: unknown, reason: unknown) => {
  const r = fact(reason)
  if (r === undefined) return
  if (typeof index !== "number" || !Number.isInteger(index) || index < 0 || index >= MAX_CHOICES) return
  const i = index
  f.finish ??= []
  // Choices finish in any order (n > 1); each keeps its place, gaps are filled when their reason arrives.
  while (f.finish.length < i) f.finish.push("")
  f.finish[i] = r
}

/**
 * Reads the answer's id, model and finish reasons into `f`: OpenAI chat / completions (JSON and chunks), Anthropic
 * messages (JSON, `message_start`, `message_delta`), OpenAI responses (`response.*` events). The first id and model
 * seen are kept.
 */
export const mergeAnswer = (f: Facts, doc: unknown): void => {
  if (typeof doc !== "object" || doc === null) return
  const d = doc as {
    id?: unknown
    model?: unknown
    choices?: unknown
    stop_reason?: unknown
    message?: { id?: unknown; model?: unknown; stop_reason?: unknown } | null
    delta?: { stop_reason?: unknown } | null
    response?: { id?: unknown; model?: unknown } | null
  }
  const inner = typeof d.message === "object" && d.message !== null
    ? d.message
    : typeof d.response === "object" && d.response !== null
    ? d.response
    : undefined
  f.id ??= fact(d.id) ?? fact(inner?.id)
  f.model ??= fact(d.model) ?? fact(inner?.model)
  if (Array.isArray(d.choices)) {
    for (let i = 0; i < d.choices.length && i < MAX_CHOICES; i++) {
      const c = d.choices[i] as { index?: unknown; finish_reason?: unknown } | null
      if (typeof c === "object" && c !== null) addFinish(f, c.index ?? i, c.finish_reason)
    }
  }
  addFinish(f, 0, d.stop_reason)
  if (typeof d.delta === "object" && d.delta !== null) addFinish(f, 0, d.delta.stop_reason)
}

const isBlank = (c: number) => c === 0x20 || c === 0x09

/**
 * The position just after `"key"` and its colon at or after `from` (before `to`), or -1. JSON whitespace around the
 * colon is allowed.
 */
const afterKey = (line: string, key: string, from: number, to: number): number => {
  const at = line.indexOf(key, from)
  if (at === -1 || at >= to) return -1
  let i = at + key.length
  while (i < to && isBlank(line.charCodeAt(i))) i++
  if (line.charCodeAt(i) !== 0x3a) return -1
  i++
  while (i < to && isBlank(line.charCodeAt(i))) i++
  return i
}

/** A JSON string value starting at `i` (its quote): the text, or undefined when it is not one without escapes. */
const plainString = (line: string, i: number): string | undefined => {
  if (line.charCodeAt(i) !== 0x22) return undefined
  const end = line.indexOf("\"", i + 1)
  if (end === -1) return undefined
  const v = line.slice(i + 1, end)
  return v.includes("\\") ? undefined : v
}

/**
 * The facts of an OpenAI chunk line (`data: {"id":…,"model":…,"choices":[{"index":0,…,"finish_reason":"stop"}]}`)
 * read without parsing it: `id` and `model` before `"choices"` (top level), then each choice's `finish_reason` string
 * with the `index` before it. Returns false — the caller parses the line — for anything else: no `"choices"`, a
 * value with escapes, a key whose value is not what is expected (test/proxy/usage.test.ts compares with JSON.parse).
 */
export const chunkFacts = (f: Facts, line: string): boolean => {
  const choices = line.indexOf("\"choices\"")
  if (choices === -1) return false
  let id: string | undefined
  let model: string | undefined
  const idAt = afterKey(line, "\"id\"", 0, choices)
  if (idAt !== -1) {
    id = plainString(line, idAt)
    if (id === undefined) return false
  }
  const modelAt = afterKey(line, "\"model\"", 0, choices)
  if (modelAt !== -1) {
    model = plainString(line, modelAt)
    if (model === undefined) return false
  }
  const reasons: Array<readonly [number, string]> = []
  // A reason after an array inside the choices (tool calls, logprobs: indexes of their own) is left to the parser.
  const nested = line.indexOf("[", line.indexOf("[", choices) + 1)
  let from = choices
  for (;;) {
    const at = afterKey(line, "\"finish_reason\"", from, line.length)
    if (at === -1) break
    from = at
    if (line.startsWith("null", at)) continue
    const reason = plainString(line, at)
    // The choice's index: the last `"index": N` between the start of the choices and this reason.
    const indexKey = line.lastIndexOf("\"index\"", at)
    if (reason === undefined || indexKey < choices || (nested !== -1 && nested < at)) return false
    const n = afterKey(line, "\"index\"", indexKey, at)
    let end = n
    while (end < at && line.charCodeAt(end) >= 0x30 && line.charCodeAt(end) <= 0x39) end++
    if (n === -1 || end === n) return false
    reasons.push([Number(line.slice(n, end)), reason])
  }
  f.id ??= fact(id)
  f.model ??= fact(model)
  for (const [i, r] of reasons) addFinish(f, i, r)
  return true
}

/** An SSE line without its trailing CR when it is a `data:` line; undefined for any other line. */
const dataLine = (raw: string): string | undefined => {
  const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw
  return line.startsWith("data:") ? line : undefined
}

/**
 * Where the first `finish_reason` with a value (not `null`: a compact or spaced JSON key) is in `text` from `from`;
 * -1: none. `text` is a line, or a chunk's bytes as latin1 (one character per byte: the offset is the byte's).
 */
const finishReasonAt = (text: string, from: number): number => {
  for (;;) {
    const at = text.indexOf("finish_reason\"", from)
    if (at === -1) return -1
    let i = at + 14
    while (i < text.length && (text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x3a)) i++
    if (text.charCodeAt(i) === 0x22) return at
    from = i
  }
}

export const finishUsage = (acc: Partial): Usage | undefined =>
  acc.prompt === undefined && acc.completion === undefined ? undefined : {
    prompt_tokens: acc.prompt ?? 0,
    completion_tokens: acc.completion ?? 0,
    total_tokens: (acc.prompt ?? 0) + (acc.completion ?? 0)
  }

/**
 * The side reader: sees every chunk, keeps the first bytes, finds usage. Used by UsageCapture (SSE, as a Transform)
 * and directly as a `data` listener for JSON answers (one stream hop less per request).
 */
export class UsageReader implements AnswerFacts {
  /** Set by finish() (undefined when the answer carried none). */
  usage: Usage | undefined
  /** Bytes seen. */
  bytes = 0
  firstChunkAt: number | undefined = undefined
  /**
   * The captured bytes: the first chunk as it came (a JSON answer is usually one chunk: no copy), then copied into
   * one buffer that grows by doubling up to the limit. Held chunks would each keep a Buffer, an ArrayBuffer and the
   * socket read it came in, several times the bytes of a small SSE event, for as long as the stream is open.
   */
  private first: Buffer | undefined = undefined
  private buf: Buffer | undefined = undefined
  private kept = 0
  private readonly acc: Partial = {}
  private readonly facts: Facts = {}
  private sawData = false
  /** SSE lines kept for their facts only (the first event, ends of choices): parsed when a fact is asked for. */
  private deferred: Array<string> | undefined = undefined
  private readonly decoder: StringDecoder | undefined
  private readonly limit: number
  private line = ""
  private lineTooLong = false
  /**
   * What the stream generated so far (content, tool arguments, thinking), kept until its final usage arrives: an
   * answer cut short is charged by counting it. Undefined when not collected or no longer needed.
   */
  private pieces: Array<string> | undefined
  private textChars = 0
  private textOverflow = 0
  /**
   * The `data:` lines that end in the first `coveredUpTo` bytes are not kept in `pieces`: everything streamed up to
   * there is captured, and the text is read back from the capture when it is needed (a stream cut short) instead of
   * being held twice. Only when no line in the capture can have been skipped as too long (limit ≤ MAX_SSE_LINE).
   */
  private coveredUpTo = 0
  private readonly coverable: boolean
  /** The last line read for usage and its document, for `parsedLine` (the stripping of the usage-only event). */
  private usageLine: string | undefined = undefined
  private usageDoc: unknown = undefined
  /** See `takeChunkText`. */
  private chunkText: string | undefined = undefined
  /** The last chunk ended a line (so the decoder holds no part of a character, and no line is unfinished). */
  private atLineStart = true

  /** `collectText`: SSE only, keep the generated text until the final usage is read (generation endpoints). */
  constructor(readonly mode: "json" | "sse" | "none", readonly captureLimit: number, collectText = false) {
    this.decoder = mode === "sse" ? new StringDecoder("utf8") : undefined
    this.limit = mode === "json" ? Math.max(captureLimit, JSON_USAGE_LIMIT) : captureLimit
    this.pieces = collectText && mode === "sse" ? [] : undefined
    this.coverable = this.limit > 0 && this.limit <= MAX_SSE_LINE
  }

  /** True once the answer's final usage was read (see `Partial.final`); a JSON answer's usage is always final. */
  get usageFinal(): boolean {
    return this.acc.final === true || (this.mode === "json" && this.usage !== undefined)
  }

  /** The usage read so far in the detail the cost needs (cache reads and writes); undefined when none was read. */
  get detail(): UsageDetail | undefined {
    const a = this.acc
    if (a.prompt === undefined && a.completion === undefined) return undefined
    return {
      prompt: a.prompt ?? 0,
      completion: a.completion ?? 0,
      cacheRead: a.cacheRead ?? 0,
      cacheWrite: a.cacheCreation ?? 0,
      cacheWrite1h: a.cacheCreation1h ?? 0,
      cacheApart: a.cacheApart === true
    }
  }

  /**
   * The text streamed so far, when it was collected and no final usage made it useless: `overflowChars` were
   * generated past the bound of what is kept (MAX_STREAMED_TEXT) and not kept.
   */
  streamedText(): { readonly text: string; readonly overflowChars: number } | undefined {
    if (this.pieces === undefined) return undefined
    const texts: Array<string> = []
    let coveredChars = 0
    if (this.coveredUpTo > 0) {
      // The lines that ended while everything was captured: none was too long (coverable), so every one is there.
      const captured = this.captured.toString("utf8", 0, this.coveredUpTo)
      for (let start = 0;;) {
        const nl = captured.indexOf("\n", start)
        if (nl === -1) break
        const line = dataLine(captured.slice(start, nl))
        start = nl + 1
        if (line === undefined) continue
        coveredChars += line.length
        UsageReader.textOf(line, texts)
      }
    }
    for (const line of this.pieces) UsageReader.textOf(line, texts)
    const text = texts.join("")
    // Lines not kept hold text in the proportion of those read (JSON around it is most of a chunk).
    const overflowChars = this.textOverflow === 0
      ? 0
      : Math.ceil(this.textOverflow * (text.length / Math.max(1, this.textChars + coveredChars)))
    return { text, overflowChars }
  }

  /** The JSON document of a `data:` line: the one read for usage last, if it is that line, without parsing it again. */
  parsedLine(line: string): unknown {
    return line === this.usageLine ? this.usageDoc : JSON.parse(line.slice(5))
  }

  /** An answer that ended early (the client went away, the upstream broke off): what was read so far is its usage. */
  settle(): void {
    this.usage ??= finishUsage(this.acc)
  }

  /** The first `captureLimit` bytes (JSON: up to JSON_USAGE_LIMIT when larger). */
  get captured(): Buffer {
    return this.buf !== undefined ? this.buf.subarray(0, this.kept) : this.first ?? EMPTY
  }

  /** True when more bytes passed than were kept. */
  get truncated(): boolean {
    return this.bytes > this.kept
  }

  get responseModel(): string | undefined {
    return this.resolved().model
  }
  get responseId(): string | undefined {
    return this.resolved().id
  }
  get finishReasons(): ReadonlyArray<string> | undefined {
    return this.resolved().finish
  }

  /** The facts, with the deferred SSE lines parsed (once, and only when someone asks: a traced request). */
  private resolved(): Facts {
    const lines = this.deferred
    if (lines !== undefined) {
      this.deferred = undefined
      for (const line of lines) {
        if (chunkFacts(this.facts, line)) continue
        try {
          mergeAnswer(this.facts, JSON.parse(line.slice(5)))
        } catch {
          // A malformed event: no facts from it.
        }
      }
    }
    return this.facts
  }
  get cacheReadTokens(): number | undefined {
    return this.acc.cacheRead
  }
  get cacheCreationTokens(): number | undefined {
    return this.acc.cacheCreation
  }
  get inputTokens(): number | undefined {
    const a = this.acc
    if (a.prompt === undefined) return undefined
    return a.cacheApart === true ? a.prompt + (a.cacheRead ?? 0) + (a.cacheCreation ?? 0) : a.prompt
  }

  observe(chunk: Buffer): void {
    if (this.bytes === 0 && chunk.length > 0) this.firstChunkAt = performance.now()
    this.bytes += chunk.length
    if (this.kept < this.limit) this.capture(chunk, Math.min(chunk.length, this.limit - this.kept))
    if (this.decoder !== undefined) {
      const whole = chunk.length > 0 && chunk[chunk.length - 1] === NL
      // Everything streamed so far is captured: its lines are read back from the capture if the text is needed.
      const covered = this.pieces !== undefined && this.coverable && this.kept === this.bytes
      if (whole && this.atLineStart && (this.pieces === undefined || covered)) {
        this.chunkText = chunk.toString("latin1")
        this.skim(chunk, this.chunkText)
      } else this.scan(this.decoder.write(chunk))
      this.atLineStart = whole || (this.atLineStart && chunk.length === 0)
      if (covered) this.coveredUpTo = this.bytes
    }
  }

  /**
   * The last chunk's bytes as latin1, when `observe` made them (a skimmed chunk), and forgets them: `UsageCapture`
   * searches the same chunk for the usage-only event.
   */
  takeChunkText(): string | undefined {
    const text = this.chunkText
    this.chunkText = undefined
    return text
  }

  /**
   * A chunk of whole lines (it starts and ends a line) whose other lines need not be kept: the stream's first
   * `data:` line (kept for its id and model) and the lines that carry usage (`_tokens`) or a finish reason are
   * decoded and read, in order; no other. They are found in `text`, the chunk as latin1: one character per byte, so
   * offsets are the bytes' (String#indexOf on an event's ~150 bytes takes a third of Buffer#indexOf's time, which
   * calls into C++). Most chunks of a stream are content deltas, and a fast upstream's many events in one chunk are
   * not decoded or split either.
   */
  private skim(chunk: Buffer, text: string): void {
    let from = 0
    if (!this.sawData) {
      // Lines before the first `data:` line (`event:` fields, comments) carry nothing read here.
      let start = 0
      if (!text.startsWith("data:")) {
        start = text.indexOf("\ndata:") + 1
        if (start === 0) return
      }
      from = text.indexOf("\n", start)
      this.onLine(chunk.toString("utf8", start, from))
    }
    let tokens = text.indexOf("_tokens", from)
    let finish = finishReasonAt(text, from)
    while (tokens !== -1 || finish !== -1) {
      const at = tokens === -1 ? finish : finish === -1 ? tokens : Math.min(tokens, finish)
      const start = text.lastIndexOf("\n", at) + 1
      // The chunk ends with a newline: every line in it has one.
      const end = text.indexOf("\n", at)
      this.onLine(chunk.toString("utf8", start, end))
      if (tokens !== -1 && tokens < end) tokens = text.indexOf("_tokens", end)
      if (finish !== -1 && finish < end) finish = finishReasonAt(text, end)
    }
  }

  private capture(chunk: Buffer, take: number): void {
    if (this.kept === 0) {
      this.first = take === chunk.length ? chunk : chunk.subarray(0, take)
      this.kept = take
      return
    }
    const need = this.kept + take
    let buf = this.buf
    if (buf === undefined || buf.length < need) {
      // At least 4 KiB at once: a short answer's ~20 events fit in one allocation instead of three (each
      // allocUnsafeSlow is a backing store of its own, ~0.6 µs; `npm run bench -- usage-reader`: 7.8 → 6.1 µs per
      // stream). An open stream of that length holds 4 KiB either way.
      const size = Math.min(this.limit, Math.max(need, 2 * (buf?.length ?? need), 4096))
      const grown = Buffer.allocUnsafeSlow(size)
      // TypedArray#set: an event's ~150 bytes copied without Buffer#copy's call into C++.
      grown.set(buf !== undefined ? buf.subarray(0, this.kept) : this.first!, 0)
      this.first = undefined
      this.buf = buf = grown
    }
    buf.set(take === chunk.length ? chunk : chunk.subarray(0, take), this.kept)
    this.kept = need
  }

  finish(): void {
    if (this.decoder !== undefined) {
      this.scan(this.decoder.end() + "\n")
    } else if (this.mode === "json" && this.bytes > 0 && this.bytes <= JSON_USAGE_LIMIT) {
      try {
        const doc: unknown = JSON.parse(this.captured.toString("utf8"))
        mergeUsage(this.acc, doc)
        mergeAnswer(this.facts, doc)
      } catch {
        // Not JSON after all: no usage.
      }
    }
    this.usage = finishUsage(this.acc)
  }

  private scan(text: string): void {
    let start = 0
    for (;;) {
      const nl = text.indexOf("\n", start)
      if (nl === -1) {
        const rest = text.slice(start)
        if (this.line.length + rest.length > MAX_SSE_LINE) {
          this.line = ""
          this.lineTooLong = true
        } else this.line += rest
        return
      }
      const piece = text.slice(start, nl)
      const full = this.line === "" ? piece : this.line + piece
      this.line = ""
      start = nl + 1
      if (this.lineTooLong) {
        this.lineTooLong = false
        continue
      }
      this.onLine(full)
    }
  }

  /**
   * The generated text of one event, found without parsing it: the string values of the keys that carry generated
   * text in OpenAI chunks (`content`, `text`, `arguments`, `refusal`, `reasoning_content`), Anthropic's
   * `content_block_delta` (`text`, `partial_json`, `thinking`) and the Responses API's `*.delta` events (`delta`).
   * The Responses API's other events repeat the whole text (`*.done`) and are skipped. Run only for an answer cut
   * short: while streaming, lines are only kept.
   */
  private static textOf(line: string, out: Array<string>): void {
    if (line.includes("\"response.") && !line.includes(".delta\"")) return
    for (const key of TEXT_KEYS) {
      let from = 5
      for (;;) {
        const at = line.indexOf(key, from)
        if (at === -1) break
        from = at + key.length
        const v = afterKey(line, key, at, line.length)
        if (v === -1 || line.charCodeAt(v) !== 0x22) continue
        const end = stringEndIn(line, v)
        if (end === -1) break
        from = end
        const raw = line.slice(v + 1, end - 1)
        let text = raw
        if (raw.includes("\\")) {
          try {
            text = JSON.parse(line.slice(v, end)) as string
          } catch {
            continue
          }
        }
        if (text !== "") out.push(text)
      }
    }
  }

  /** Keeps a `data:` line (up to MAX_STREAMED_TEXT characters; beyond, only its length). */
  private keep(line: string): void {
    if (this.textChars + line.length > MAX_STREAMED_TEXT) this.textOverflow += line.length
    else {
      this.textChars += line.length
      this.pieces!.push(line)
    }
  }

  private onLine(raw: string): void {
    const line = dataLine(raw)
    if (line === undefined) return
    // Only lines that can carry usage are parsed: most chunks are content deltas. The first event (id, model) and the
    // ends of choices (finish reasons) are kept as they are and parsed only if a span asks for them.
    const first = !this.sawData
    this.sawData = true
    // Unless everything streamed so far is captured (the chunk this line ended in included): read back when needed.
    if (this.pieces !== undefined && !(this.coverable && this.kept === this.bytes)) this.keep(line)
    if (line.includes("_tokens")) {
      try {
        const doc: unknown = JSON.parse(line.slice(5))
        this.usageLine = line
        this.usageDoc = doc
        mergeUsage(this.acc, doc)
        mergeAnswer(this.facts, doc)
        // The final usage is in: the text will not be counted.
        if (this.acc.final === true) this.pieces = undefined
      } catch {
        // A malformed event: ignore it, keep streaming.
      }
    } else if (first || finishReasonAt(line, 0) !== -1) {
      const kept = (this.deferred ??= [])
      if (kept.length <= MAX_CHOICES) kept.push(line)
    }
  }
}

const EMPTY = Buffer.alloc(0)
const NL = 0x0a

/**
 * Where the usage-only event of an OpenAI stream (`data: {…, "choices": [], "usage": {…}}` — what
 * `stream_options.include_usage` adds) is in `out` (whole lines), as [start, end) including the blank line after it
 * when that is in `out`; `blankPending` when the blank line is still to come. Undefined when `out` has none.
 */
export const usageEventIn = (
  out: Buffer,
  parse: (line: string) => unknown = (line) => JSON.parse(line.slice(5)),
  text: string = out.toString("latin1")
): { readonly start: number; readonly end: number; readonly blankPending: boolean } | undefined => {
  // `text` is `out` as latin1: one character per byte, so every offset below is the byte's.
  for (let from = 0;;) {
    // `usage"`, then its opening quote: a search for a needle that starts with `"` stops at every quote of the JSON.
    const u = text.indexOf("usage\"", from)
    if (u === -1) return undefined
    from = u + 6
    if (u === 0 || text.charCodeAt(u - 1) !== 0x22) continue
    const at = u - 1
    let i = from
    while (text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x09) i++
    if (text.charCodeAt(i) !== 0x3a) continue
    i++
    while (text.charCodeAt(i) === 0x20 || text.charCodeAt(i) === 0x09) i++
    if (text.charCodeAt(i) !== 0x7b) continue // `"usage": null` on every other chunk
    const start = text.lastIndexOf("\n", at) + 1
    const lineEnd = text.indexOf("\n", at)
    if (lineEnd === -1) return undefined
    const line = out.toString("utf8", start, out[lineEnd - 1] === 0x0d ? lineEnd - 1 : lineEnd)
    if (!line.startsWith("data:")) continue
    let doc: { choices?: unknown; usage?: unknown } | null
    try {
      doc = parse(line) as typeof doc
    } catch {
      continue
    }
    // Only an event that carries nothing but usage can go: a chunk with content keeps its usage field.
    if (doc === null || !Array.isArray(doc.choices) || doc.choices.length > 0 || typeof doc.usage !== "object") continue
    let end = lineEnd + 1
    if (out[end] === NL) end++
    else if (out[end] === 0x0d && out[end + 1] === NL) end += 2
    return { start, end, blankPending: end === out.length && end === lineEnd + 1 }
  }
}

/**
 * What a streamed answer passes through on its way to the client: every chunk, unchanged, is fed to a UsageReader
 * and handed back (`pass`). With `stripUsage` (the proxy asked an OpenAI upstream for usage the client did not ask
 * for) it removes the usage-only event from what the client gets and hands every other byte back as it came; it then
 * holds back the bytes of an unfinished line until its end arrives (upstreams send whole events, so this is rarely
 * anything), and `end` gives what is left. Not a stream: the proxy writes what `pass` returns to the client itself
 * (src/proxy/ProxyHandler.ts `relay`), one hop per chunk instead of a Transform's two.
 */
export class UsageCapture {
  readonly reader: UsageReader
  private held: Buffer | undefined = undefined
  private dropBlank = false
  private stripped = false

  constructor(mode: "json" | "sse" | "none", captureLimit: number, collectText = false, readonly stripUsage = false) {
    this.reader = new UsageReader(mode, captureLimit, collectText)
  }

  get usage(): Usage | undefined {
    return this.reader.usage
  }
  get bytes(): number {
    return this.reader.bytes
  }
  get captured(): Buffer {
    return this.reader.captured
  }
  get truncated(): boolean {
    return this.reader.truncated
  }

  /** The bytes of `chunk` for the client (undefined: none yet). */
  pass(chunk: Buffer): Buffer | undefined {
    this.reader.observe(chunk)
    const text = this.reader.takeChunkText()
    if (!this.stripUsage || (this.stripped && !this.dropBlank && this.held === undefined)) return chunk
    if (text !== undefined && this.held === undefined) {
      // A skimmed chunk: whole lines, already in latin1 for the search.
      const out = this.withoutUsage(chunk, text)
      return out.length > 0 ? out : undefined
    }
    const buf = this.held === undefined ? chunk : Buffer.concat([this.held, chunk])
    const last = buf.lastIndexOf(NL)
    if (last === -1) {
      this.held = buf
      return undefined
    }
    this.held = last + 1 < buf.length ? Buffer.from(buf.subarray(last + 1)) : undefined
    const out = this.withoutUsage(last + 1 === buf.length ? buf : buf.subarray(0, last + 1))
    return out.length > 0 ? out : undefined
  }

  /** The answer ended: the usage is read; what was held back for the client, if anything. */
  end(): Buffer | undefined {
    this.reader.finish()
    const rest = this.held
    this.held = undefined
    return rest !== undefined && rest.length > 0 ? rest : undefined
  }

  /** `out` without the usage-only event; `text`: `out` as latin1, when it is at hand. */
  private withoutUsage(out: Buffer, text?: string): Buffer {
    if (this.dropBlank) {
      this.dropBlank = false
      const skip = out[0] === NL ? 1 : out[0] === 0x0d && out[1] === NL ? 2 : 0
      out = out.subarray(skip)
      text = text?.slice(skip)
    }
    if (this.stripped) return out
    // The usage-only event was read for usage a moment ago (`observe` sees every chunk first): not parsed twice.
    const found = usageEventIn(out, (line) => this.reader.parsedLine(line), text)
    if (found === undefined) return out
    this.stripped = true
    this.dropBlank = found.blankPending
    if (found.start === 0) return out.subarray(found.end)
    if (found.end === out.length) return out.subarray(0, found.start)
    return Buffer.concat([out.subarray(0, found.start), out.subarray(found.end)])
  }
}
