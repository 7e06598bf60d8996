// The baseline llm-proxy is measured against: the least a Node reverse proxy can do — node:http in, undici out,
// the client's Authorization swapped for a fixed upstream key, hop-by-hop headers dropped, bodies streamed both
// ways. No authentication, no checks, no accounting. Environment: UPSTREAM (base URL), PORT (0 = any; printed).
import { createServer } from "node:http"
import { Agent, request } from "undici"

const upstream = process.env.UPSTREAM
// Enough upstream connections for the benchmark's 8,000 concurrent streams (llm-proxy's pools are unbounded by default).
const agent = new Agent({ keepAliveTimeout: 60_000, connections: 16_384, pipelining: 1 })
const hop = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "transfer-encoding",
  "te",
  "trailer",
  "upgrade",
  "host"
])

const server = createServer((req, res) => {
  const headers = {}
  for (const [k, v] of Object.entries(req.headers)) if (!hop.has(k)) headers[k] = v
  headers.authorization = "Bearer sk-upstream-key"
  // A client that goes away ends the upstream body (the cheapest way; no AbortController per request).
  let upstreamBody
  res.on("close", () => {
    if (upstreamBody !== undefined && !upstreamBody.destroyed) upstreamBody.destroy()
  })
  request(upstream + req.url, {
    method: req.method,
    headers,
    body: req.method === "GET" || req.method === "HEAD" ? null : req,
    dispatcher: agent
  }).then(
    ({ statusCode, headers: h, body }) => {
      upstreamBody = body
      const out = {}
      for (const [k, v] of Object.entries(h)) if (!hop.has(k)) out[k] = v
      res.writeHead(statusCode, out)
      body.pipe(res)
      body.on("error", () => res.destroy())
    },
    () => {
      if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" })
      res.end("{\"error\":\"upstream error\"}")
    }
  )
})
server.keepAliveTimeout = 65_000
server.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ port: server.address().port }) + "\n")
})
process.on("SIGTERM", () => process.exit(0))
