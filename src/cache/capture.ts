/**
 * Teeing a response body into the cache while it streams to the client: chunks pass through unchanged and are
 * copied until `maxBytes`; the copy is handed over only when the body ended normally within the bound. An
 * aborted, failed or oversized body is never stored (docs/behaviour.md #100; the Go llm-proxy stored truncated
 * captures, docs/cache.md).
 */
import { Transform, type TransformCallback } from "node:stream"

export class BodyCapture extends Transform {
  private readonly parts: Array<Buffer> = []
  private bytes = 0
  private overflowed = false

  constructor(
    private readonly maxBytes: number,
    private readonly onComplete: (body: Buffer) => void
  ) {
    super()
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, callback: TransformCallback): void {
    if (!this.overflowed) {
      this.bytes += chunk.length
      if (this.bytes > this.maxBytes) {
        this.overflowed = true
        this.parts.length = 0
      } else {
        this.parts.push(chunk)
      }
    }
    callback(null, chunk)
  }

  override _flush(callback: TransformCallback): void {
    if (!this.overflowed) {
      const body = Buffer.concat(this.parts, this.bytes)
      this.parts.length = 0
      try {
        this.onComplete(body)
      } catch {
        // Storing is best effort: it must never break the response.
      }
    }
    callback()
  }

  /** True when the body grew past the bound (nothing will be stored). */
  get truncated(): boolean {
    return this.overflowed
  }
}
