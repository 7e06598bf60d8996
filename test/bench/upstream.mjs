// A fast stand-in for an OpenAI-compatible provider, run as its own process by proxy.bench.ts so it does not share
// an event loop with the load generator. PORT (0 = any; the bound port is printed as JSON on stdout). The answer's
// shape comes from the query string (which every proxy passes through): latency (ms before the headers), chunks and
// interval (SSE chunk count and ms between chunks), first (ms between the SSE headers and the first chunk).
// A request body with "stream": true gets SSE, anything else one JSON completion with usage.
import { createServer } from "node:http"

const completion = JSON.stringify({
  id: "chatcmpl-bench",
  object: "chat.completion",
  created: 1,
  model: "gpt-4o-mini",
  choices: [{
    index: 0,
    message: { role: "assistant", content: "Hello from the bench upstream." },
    finish_reason: "stop"
  }],
  usage: { prompt_tokens: 12, completion_tokens: 7, total_tokens: 19 }
})
const chunk = (i) =>
  `data: ${
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion.chunk",
      model: "gpt-4o-mini",
      choices: [{ index: 0, delta: { content: `tok${i} ` } }]
    })
  }\n\n`
const tail = (chunks) =>
  `data: ${
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion.chunk",
      model: "gpt-4o-mini",
      choices: [],
      usage: { prompt_tokens: 12, completion_tokens: chunks, total_tokens: 12 + chunks }
    })
  }\n\ndata: [DONE]\n\n`

const later = (ms, f) => (ms > 0 ? setTimeout(f, ms) : f())

// Requests answered so far, by kind: `GET /__stats` (not a proxy path) reports them for tests that compare counts.
const stats = { json: 0, sse: 0 }

const server = createServer((req, res) => {
  if (req.url === "/__stats") {
    res.writeHead(200, { "content-type": "application/json" })
    res.end(JSON.stringify(stats))
    return
  }
  const body = []
  req.on("data", (c) => body.push(c))
  req.on("end", () => {
    const q = new URL(req.url, "http://x").searchParams
    const latency = Number(q.get("latency") ?? 0)
    const chunks = Number(q.get("chunks") ?? 20)
    const interval = Number(q.get("interval") ?? 0)
    const firstChunk = Number(q.get("first") ?? 0)
    const text = Buffer.concat(body).toString()
    const stream = text.includes("\"stream\":true") || text.includes("\"stream\": true")
    if (stream) stats.sse++
    else stats.json++
    later(latency, () => {
      if (!stream) {
        res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(completion) })
        res.end(completion)
        return
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
      res.flushHeaders()
      let i = 0
      const next = () => {
        if (res.destroyed) return
        if (i === chunks) {
          res.end(tail(chunks))
          return
        }
        res.write(chunk(i++))
        later(interval, next)
      }
      later(firstChunk, next)
    })
  })
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n")
})
process.on("SIGTERM", () => process.exit(0))
