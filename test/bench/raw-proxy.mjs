// The baseline llm-proxy is measured against: the least a Node reverse proxy can do — node:http in, undici out,
// the client's Authorization swapped for a fixed upstream key, hop-by-hop headers dropped, bodies streamed both
// ways. No authentication, no checks, no accounting. Environment: UPSTREAM (base URL), PORT (0 = any; printed).
import { createServer } from "node:http"
import { Agent, request } from "undici"

const upstream = process.env.UPSTREAM
const agent = new Agent({ keepAliveTimeout: 60_000, connections: 512, pipelining: 1 })
const hop = new Set(["connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade", "host"])

const server = createServer((req, res) => {
  const headers = {}
  for (const [k, v] of Object.entries(req.headers)) if (!hop.has(k)) headers[k] = v
  headers.authorization = "Bearer sk-upstream-key"
  const ac = new AbortController()
  res.on("close", () => {
    if (!res.writableFinished) ac.abort()
  })
  request(upstream + req.url, {
    method: req.method,
    headers,
    body: req.method === "GET" || req.method === "HEAD" ? null : req,
    dispatcher: agent,
    signal: ac.signal
  }).then(
    ({ statusCode, headers: h, body }) => {
      const out = {}
      for (const [k, v] of Object.entries(h)) if (!hop.has(k)) out[k] = v
      res.writeHead(statusCode, out)
      body.on("data", (c) => res.write(c))
      body.on("end", () => res.end())
      body.on("error", () => res.destroy())
    },
    () => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" })
      res.end('{"error":"upstream error"}')
    }
  )
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n")
})
process.on("SIGTERM", () => process.exit(0))
