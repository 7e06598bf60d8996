import { join } from "node:path"
import { children, root, saturate, startJsonPort, startLlmProxy } from "./harness.js"
import { createServer } from "node:http"
const main = async () => {
  const sink = createServer((req, res) => { req.resume(); req.on("end", () => { res.writeHead(200); res.end("{}") }) })
  await new Promise<void>((r) => sink.listen(0, "127.0.0.1", r))
  const sinkUrl = `http://127.0.0.1:${(sink.address() as any).port}`
  const up = await startJsonPort(join(root, "test/bench/upstream.mjs"), {}, 0)
  const upstream = `http://127.0.0.1:${up.port}`
  const v = process.env["VARIANT"] ?? "metrics"
  const env: Record<string, string> = v === "metrics" ? { ENABLE_METRICS: "true", ACCESS_LOG: "false" }
    : v === "tracing" ? { ENABLE_METRICS: "false", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }
    : v === "on" ? { ENABLE_METRICS: "true", ACCESS_LOG: "false", OTEL_EXPORTER_OTLP_ENDPOINT: sinkUrl }
    : v === "log" ? { ENABLE_METRICS: "false", ACCESS_LOG: "true", LOG_LEVEL: "info" }
    : { ENABLE_METRICS: "false", ACCESS_LOG: "false" }
  const p = await startLlmProxy(upstream, env, process.env["PROF"] ? ["--cpu-prof", "--cpu-prof-dir=/tmp/obsprof/log"] : [])
  await saturate(p.url, { authorization: `Bearer ${p.token}` }, false, 2, 64)
  const r = await saturate(p.url, { authorization: `Bearer ${p.token}` }, false, Number(process.env["S"] ?? 8), 64)
  console.log(v, Math.round(r.rps))
  await p.stop()
}
main().then(() => { for (const c of children) c.kill(); process.exit(0) }, (e) => { console.error(e); for (const c of children) c.kill(); process.exit(1) })
