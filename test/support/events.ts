/** Fixtures for instrumentation-event tests: events, SSE bodies, a local HTTP receiver, in-process layers. */
import { Context, Effect, Exit, Layer, Scope } from "effect"
import { existsSync, readFileSync } from "node:fs"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import type { CapturedBody, ProxyEvent } from "../../src/domain/ProxyEvent.js"

export const body = (data: string | Buffer, extra: Partial<CapturedBody> = {}): CapturedBody => {
  const buf = typeof data === "string" ? Buffer.from(data) : data
  return { base64: buf.toString("base64"), size: buf.length, truncated: false, ...extra }
}

let n = 0
export const makeEvent = (overrides: Partial<ProxyEvent> = {}): ProxyEvent => ({
  request_id: `req-${process.pid}-${++n}`,
  timestamp: "2026-12-01T12:00:00.000Z",
  project_id: "11111111-1111-4111-8111-111111111111",
  token_id: "22222222-2222-4222-8222-222222222222",
  method: "POST",
  path: "/v1/chat/completions",
  status: 200,
  duration_ms: 120,
  upstream_ms: 100,
  model: "gpt-4o-mini",
  stream: false,
  usage: null,
  request_body: body(JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello there" }] }), {
    content_type: "application/json"
  }),
  response_body: body(
    JSON.stringify({
      id: "chatcmpl-1",
      object: "chat.completion",
      model: "gpt-4o-mini",
      choices: [{ index: 0, message: { role: "assistant", content: "Hi!" }, finish_reason: "stop" }],
      usage: { prompt_tokens: 9, completion_tokens: 2, total_tokens: 11 }
    }),
    { content_type: "application/json" }
  ),
  error: null,
  ...overrides
})

export const sse = (chunks: ReadonlyArray<unknown>, done = true) =>
  chunks.map((c) => `data: ${JSON.stringify(c)}\n\n`).join("") + (done ? "data: [DONE]\n\n" : "")

export interface Received {
  readonly method: string
  readonly url: string
  readonly headers: IncomingMessage["headers"]
  readonly body: unknown
}

export interface Receiver {
  readonly url: string
  readonly received: Array<Received>
  close(): Promise<void>
}

/** A local HTTP server; `answer` decides each response's status (and may hang by returning undefined). */
export const startReceiver = async (answer: (r: Received, index: number) => number | undefined): Promise<Receiver> => {
  const received: Array<Received> = []
  const hanging: Array<ServerResponse> = []
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on("end", () => {
      const text = Buffer.concat(chunks).toString("utf8")
      let parsed: unknown = text
      try {
        parsed = JSON.parse(text)
      } catch {
        // keep the text
      }
      const r: Received = { method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: parsed }
      const index = received.push(r) - 1
      const status = answer(r, index)
      if (status === undefined) {
        hanging.push(res)
        return
      }
      res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify({ ok: status < 300 }))
    })
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  return {
    url: `http://127.0.0.1:${port}`,
    received,
    close: () =>
      new Promise<void>((resolve) => {
        for (const res of hanging) res.destroy()
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

/** Builds a layer in its own scope; `close` releases it (runs finalizers, e.g. the dispatcher's drain). */
export const buildLayer = async <A, E>(layer: Layer.Layer<A, E>) => {
  const scope = Effect.runSync(Scope.make())
  const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  return {
    get: <I, S>(tag: Context.Tag<I, S>) => Context.get(ctx as unknown as Context.Context<I>, tag),
    close: () => Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

export const waitFor = async (check: () => boolean | Promise<boolean>, timeoutMs = 20_000, what = "condition") => {
  const end = Date.now() + timeoutMs
  while (Date.now() < end) {
    if (await check()) return
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

/**
 * The complete lines of a JSON Lines file another process is appending to: a line still being written (no newline
 * yet) is left for the next read, so a poll never parses half a line.
 */
export const completeLines = (path: string): Array<string> => {
  if (!existsSync(path)) return []
  const text = readFileSync(path, "utf8")
  return text.slice(0, text.lastIndexOf("\n") + 1).split("\n").filter((l) => l.trim() !== "")
}

/** The complete lines of a JSON Lines file, parsed. */
export const jsonLines = <A = Record<string, any>>(path: string): Array<A> =>
  completeLines(path).map((l) => JSON.parse(l) as A)
