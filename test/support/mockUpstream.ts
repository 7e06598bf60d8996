/**
 * A scriptable mock OpenAI-style upstream, started in-process on 127.0.0.1 and an ephemeral port.
 *
 *   const mock = await startMockUpstream()
 *   mock.enqueue(sse(chatChunks(["Hel", "lo"]), { intervalMs: 200 }))   // the next request gets this
 *   mock.setDefault(json({ ok: true }))                                  // every request without a queued reply
 *   mock.route("/v1/models", json({ data: [] }))                         // by path (before the queue)
 *   ... mock.requests[0].headers.authorization ...
 *   await mock.close()
 *
 * Replies: `json` (any status, headers, delay), `sse` (timed chunks), `reset` (destroy the socket, optionally after
 * the headers or some chunks), `hang` (never answer), `handler` (anything else). Every request is recorded with
 * its headers, body and when the connection closed (`closedAt`, `aborted`), so tests can prove a disconnect reached
 * the upstream.
 */
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo, Socket } from "node:net"

export interface RecordedRequest {
  readonly method: string
  /** Path and query as received. */
  readonly url: string
  readonly path: string
  readonly headers: IncomingHttpHeaders
  /** Raw header pairs as sent (to check for duplicates and exact names). */
  readonly rawHeaders: ReadonlyArray<string>
  body: string
  readonly receivedAt: number
  /** When the response finished or the connection closed (ms since epoch). */
  closedAt?: number
  /** True when the connection closed before the mock finished its reply (the client went away). */
  aborted: boolean
  /** Resolves when the request's response is finished or its connection closed. */
  readonly closed: Promise<void>
}

export type Reply =
  | {
    readonly kind: "json"
    readonly status?: number
    readonly body?: unknown
    readonly headers?: Record<string, string | ReadonlyArray<string>>
    /** Wait this long before sending the headers. */
    readonly delayMs?: number
  }
  | {
    readonly kind: "sse"
    /** Each entry is written as one chunk, verbatim (use `chatChunks` for OpenAI frames). */
    readonly chunks: ReadonlyArray<string>
    readonly intervalMs?: number
    readonly status?: number
    readonly headers?: Record<string, string>
    readonly delayMs?: number
  }
  | {
    readonly kind: "reset"
    /** Before destroying: send the headers of a 200 SSE answer and this many chunks (default: nothing at all). */
    readonly afterChunks?: ReadonlyArray<string>
    readonly delayMs?: number
  }
  | { readonly kind: "hang" }
  | {
    readonly kind: "handler"
    readonly handle: (req: IncomingMessage, res: ServerResponse, recorded: RecordedRequest) => void
  }

export const json = (body: unknown, options: Omit<Extract<Reply, { kind: "json" }>, "kind" | "body"> = {}): Reply => ({
  kind: "json",
  body,
  ...options
})

export const sse = (
  chunks: ReadonlyArray<string>,
  options: Omit<Extract<Reply, { kind: "sse" }>, "kind" | "chunks"> = {}
): Reply => ({
  kind: "sse",
  chunks,
  ...options
})

export const reset = (afterChunks?: ReadonlyArray<string>, delayMs?: number): Reply => ({
  kind: "reset",
  ...(afterChunks ? { afterChunks } : {}),
  ...(delayMs !== undefined ? { delayMs } : {})
})

export const hang: Reply = { kind: "hang" }

export const handler = (handle: Extract<Reply, { kind: "handler" }>["handle"]): Reply => ({ kind: "handler", handle })

export const chatCompletion = (
  content = "Hello!",
  usage: { prompt_tokens: number; completion_tokens: number } | null = { prompt_tokens: 9, completion_tokens: 3 }
) => ({
  id: "chatcmpl-mock",
  object: "chat.completion",
  created: 1_700_000_000,
  model: "gpt-4o-mini",
  choices: [{ index: 0, message: { role: "assistant", content }, finish_reason: "stop" }],
  ...(usage ? { usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens } } : {})
})

/**
 * OpenAI chat.completion.chunk SSE frames for `deltas`, then (unless usage is null) a usage-only frame as
 * `stream_options.include_usage` produces, then `data: [DONE]`.
 */
export const chatChunks = (
  deltas: ReadonlyArray<string>,
  usage: { prompt_tokens: number; completion_tokens: number } | null = {
    prompt_tokens: 5,
    completion_tokens: deltas.length
  }
): Array<string> => {
  const frame = (o: unknown) => `data: ${JSON.stringify(o)}\n\n`
  const base = { id: "chatcmpl-mock", object: "chat.completion.chunk", created: 1_700_000_000, model: "gpt-4o-mini" }
  return [
    ...deltas.map((d, i) =>
      frame({
        ...base,
        choices: [{
          index: 0,
          delta: i === 0 ? { role: "assistant", content: d } : { content: d },
          finish_reason: null
        }]
      })
    ),
    frame({ ...base, choices: [{ index: 0, delta: {}, finish_reason: "stop" }] }),
    ...(usage
      ? [
        frame({
          ...base,
          choices: [],
          usage: { ...usage, total_tokens: usage.prompt_tokens + usage.completion_tokens }
        })
      ]
      : []),
    "data: [DONE]\n\n"
  ]
}

export interface MockUpstream {
  /** `http://127.0.0.1:<port>` */
  readonly url: string
  readonly port: number
  readonly requests: ReadonlyArray<RecordedRequest>
  /** Replies for the next requests, in order (after routes). */
  readonly enqueue: (...replies: ReadonlyArray<Reply>) => void
  /** The reply when neither a route nor the queue has one (initially a chat completion with usage). */
  readonly setDefault: (reply: Reply) => void
  /** A reply for every request whose path (without query) equals `path`; `undefined` removes it. */
  readonly route: (path: string, reply: Reply | undefined) => void
  /** Forgets recorded requests, the queue and routes, and restores the default reply. */
  readonly reset: () => void
  /** Resolves once `n` requests have been received. */
  readonly waitForRequests: (n: number, timeoutMs?: number) => Promise<void>
  /** Connections currently open to the mock. */
  readonly openConnections: () => number
  readonly close: () => Promise<void>
}

const DEFAULT_REPLY: Reply = { kind: "json", body: chatCompletion() }

export const startMockUpstream = async (): Promise<MockUpstream> => {
  const requests: Array<RecordedRequest> = []
  let queue: Array<Reply> = []
  let routes = new Map<string, Reply>()
  let fallback: Reply = DEFAULT_REPLY
  const sockets = new Set<Socket>()
  const timers = new Set<NodeJS.Timeout>()
  const waiters: Array<{ n: number; resolve: () => void }> = []

  const later = (ms: number, f: () => void) => {
    const t = setTimeout(() => {
      timers.delete(t)
      f()
    }, ms)
    timers.add(t)
    return t
  }

  const play = (reply: Reply, req: IncomingMessage, res: ServerResponse, rec: RecordedRequest) => {
    const alive = () => !res.destroyed && !res.writableEnded
    switch (reply.kind) {
      case "json": {
        const send = () => {
          if (!alive()) return
          const body = reply.body === undefined
            ? ""
            : typeof reply.body === "string"
            ? reply.body
            : JSON.stringify(reply.body)
          res.writeHead(reply.status ?? 200, {
            "content-type": "application/json",
            "content-length": Buffer.byteLength(body),
            ...reply.headers
          })
          res.end(body)
        }
        return reply.delayMs ? void later(reply.delayMs, send) : send()
      }
      case "sse": {
        const start = () => {
          if (!alive()) return
          res.writeHead(reply.status ?? 200, {
            "content-type": "text/event-stream",
            "cache-control": "no-cache",
            ...reply.headers
          })
          res.flushHeaders()
          let i = 0
          const next = () => {
            if (!alive()) return
            if (i >= reply.chunks.length) return void res.end()
            res.write(reply.chunks[i++])
            if (reply.intervalMs) later(reply.intervalMs, next)
            else next()
          }
          next()
        }
        return reply.delayMs ? void later(reply.delayMs, start) : start()
      }
      case "reset": {
        const go = () => {
          if (reply.afterChunks) {
            res.writeHead(200, { "content-type": "text/event-stream" })
            for (const c of reply.afterChunks) res.write(c)
            // Let the bytes leave before the reset.
            later(20, () => req.socket.destroy())
          } else {
            req.socket.destroy()
          }
        }
        return reply.delayMs ? void later(reply.delayMs, go) : go()
      }
      case "hang":
        return
      case "handler":
        return reply.handle(req, res, rec)
    }
  }

  const server = createServer((req, res) => {
    const url = req.url ?? "/"
    const path = url.split("?")[0] ?? "/"
    let markClosed!: () => void
    const closed = new Promise<void>((resolve) => (markClosed = resolve))
    const rec: RecordedRequest = {
      method: req.method ?? "GET",
      url,
      path,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      body: "",
      receivedAt: Date.now(),
      aborted: false,
      closed
    }
    requests.push(rec)
    for (const w of [...waiters]) {
      if (requests.length >= w.n) {
        waiters.splice(waiters.indexOf(w), 1)
        w.resolve()
      }
    }
    res.on("close", () => {
      rec.closedAt = Date.now()
      rec.aborted = !res.writableFinished
      markClosed()
    })
    const parts: Array<Buffer> = []
    req.on("data", (d: Buffer) => parts.push(d))
    req.on("end", () => {
      rec.body = Buffer.concat(parts).toString("utf8")
      const reply = routes.get(path) ?? queue.shift() ?? fallback
      play(reply, req, res, rec)
    })
  })
  server.keepAliveTimeout = 60_000
  server.on("connection", (s) => {
    sockets.add(s)
    s.on("close", () => sockets.delete(s))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port

  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    enqueue: (...replies) => void queue.push(...replies),
    setDefault: (reply) => void (fallback = reply),
    route: (path, reply) => void (reply === undefined ? routes.delete(path) : routes.set(path, reply)),
    reset: () => {
      requests.length = 0
      queue = []
      routes = new Map()
      fallback = DEFAULT_REPLY
    },
    waitForRequests: (n, timeoutMs = 10_000) =>
      requests.length >= n ? Promise.resolve() : new Promise<void>((resolve, reject) => {
        const t = setTimeout(
          () => reject(new Error(`mock upstream: ${requests.length} of ${n} requests after ${timeoutMs} ms`)),
          timeoutMs
        )
        waiters.push({
          n,
          resolve: () => {
            clearTimeout(t)
            resolve()
          }
        })
      }),
    openConnections: () => sockets.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of timers) clearTimeout(t)
        timers.clear()
        for (const s of sockets) s.destroy()
        server.close(() => resolve())
      })
  }
}
