/**
 * Usage capture: a Node Transform that passes every byte through untouched (same chunks, same order) and, on the
 * side, reads `usage` from the answer — from the whole body for JSON, from `data:` lines for SSE (OpenAI's final
 * usage chunk, Anthropic's `message_start` / `message_delta`). It also keeps the first `captureLimit` bytes for
 * whoever wants the response body (instrumentation events), never more.
 */
import { StringDecoder } from "node:string_decoder"
import { Transform, type TransformCallback } from "node:stream"

export interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
}

/** JSON bodies larger than this are passed through without looking for usage. */
export const JSON_USAGE_LIMIT = 1024 * 1024
const MAX_SSE_LINE = 1024 * 1024

interface Partial {
  prompt?: number
  completion?: number
}

const num = (v: unknown): number | undefined => (typeof v === "number" && Number.isFinite(v) && v >= 0 ? v : undefined)

/** Reads OpenAI (`prompt_tokens`/`completion_tokens`) or Anthropic (`input_tokens`/`output_tokens`) usage into `acc`. */
export const mergeUsage = (acc: Partial, doc: unknown): void => {
  if (typeof doc !== "object" || doc === null) return
  const d = doc as { usage?: unknown; message?: { usage?: unknown }; response?: { usage?: unknown } }
  for (const u of [d.usage, d.message?.usage, d.response?.usage]) {
    if (typeof u !== "object" || u === null) continue
    const x = u as Record<string, unknown>
    const prompt = num(x.prompt_tokens) ?? num(x.input_tokens)
    const completion = num(x.completion_tokens) ?? num(x.output_tokens)
    if (prompt !== undefined) acc.prompt = prompt
    if (completion !== undefined) acc.completion = completion
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
export class UsageReader {
  /** Set by finish() (undefined when the answer carried none). */
  usage: Usage | undefined
  /** Bytes seen. */
  bytes = 0
  private readonly parts: Array<Buffer> = []
  private kept = 0
  private readonly acc: Partial = {}
  private readonly decoder: StringDecoder | undefined
  private readonly limit: number
  private line = ""
  private lineTooLong = false

  constructor(readonly mode: "json" | "sse" | "none", readonly captureLimit: number) {
    this.decoder = mode === "sse" ? new StringDecoder("utf8") : undefined
    this.limit = mode === "json" ? Math.max(captureLimit, JSON_USAGE_LIMIT) : captureLimit
  }

  /** The first `captureLimit` bytes (JSON: up to JSON_USAGE_LIMIT when larger). */
  get captured(): Buffer {
    return this.parts.length === 1 ? this.parts[0]! : Buffer.concat(this.parts)
  }

  /** True when more bytes passed than were kept. */
  get truncated(): boolean {
    return this.bytes > this.kept
  }

  observe(chunk: Buffer): void {
    this.bytes += chunk.length
    if (this.kept < this.limit) {
      const take = Math.min(chunk.length, this.limit - this.kept)
      this.parts.push(take === chunk.length ? chunk : chunk.subarray(0, take))
      this.kept += take
    }
    if (this.decoder !== undefined) this.scan(this.decoder.write(chunk))
  }

  finish(): void {
    if (this.decoder !== undefined) {
      this.scan(this.decoder.end() + "\n")
    } else if (this.mode === "json" && this.bytes > 0 && this.bytes <= JSON_USAGE_LIMIT) {
      try {
        mergeUsage(this.acc, JSON.parse(this.captured.toString("utf8")))
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

  private onLine(raw: string): void {
    const line = raw.endsWith("\r") ? raw.slice(0, -1) : raw
    // Only lines that can carry usage are parsed: most chunks are content deltas.
    if (!line.startsWith("data:") || !line.includes("_tokens")) return
    try {
      mergeUsage(this.acc, JSON.parse(line.slice(5)))
    } catch {
      // A malformed event: ignore it, keep streaming.
    }
  }
}

/** A Transform that passes every chunk through unchanged and feeds it to a UsageReader. */
export class UsageCapture extends Transform {
  readonly reader: UsageReader

  constructor(mode: "json" | "sse" | "none", captureLimit: number) {
    super()
    this.reader = new UsageReader(mode, captureLimit)
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

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    this.reader.observe(chunk)
    callback(null, chunk)
  }

  override _flush(callback: TransformCallback): void {
    this.reader.finish()
    callback()
  }
}
