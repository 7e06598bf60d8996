/**
 * The cost of instrumentation events on the request path, with the proxy benchmark's harness (proxy.bench.ts): the
 * built `llm-proxy serve` pinned to core 1 (taskset, when present), the fast stand-in upstream (upstream.mjs) and
 * autocannon on core 0. One server per setting, all started up front, measured in interleaved rounds:
 *   off                       OBSERVABILITY_ENABLED=false
 *   in-memory                 the in-memory bus with nobody to read it: no event is built (since 2026-12-03)
 *   in-memory + file log      serve --file-event-log: the whole pipeline (transform, JSONL, fsync) in the server
 *   redis-streams             events XADDed to Redis (skipped when REDIS_URL does not answer)
 * Run: `npm run build && npm run bench -- events-proxy`. Environment: BENCH_SECONDS (8), BENCH_CONNECTIONS (64),
 * BENCH_ROUNDS (2), REDIS_URL (redis://127.0.0.1:6379).
 */
import autocannon from "autocannon"
import { Redis } from "ioredis"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"

const root = process.cwd()
const seconds = Number(process.env["BENCH_SECONDS"] ?? 8)
const connections = Number(process.env["BENCH_CONNECTIONS"] ?? 64)
const rounds = Number(process.env["BENCH_ROUNDS"] ?? 2)
const redisUrl = process.env["REDIS_URL"] || "redis://127.0.0.1:6379"
const hasTaskset = spawnSync("taskset", ["--version"]).status === 0
const children: Array<ChildProcess> = []
const streamKey = `llm-proxy-bench:events-proxy:${process.pid}`

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const pinned = (core: number, args: Array<string>) => (hasTaskset ? ["taskset", "-c", String(core), ...args] : args)

const startUpstream = () =>
  new Promise<string>((resolve, reject) => {
    const argv = pinned(0, [process.execPath, join(root, "test/bench/upstream.mjs")])
    const child = spawn(argv[0]!, argv.slice(1), { stdio: ["ignore", "pipe", "inherit"] })
    children.push(child)
    child.once("exit", (code) => reject(new Error(`upstream exited with ${code}`)))
    child.stdout!.once("data", (d: Buffer) =>
      resolve(`http://127.0.0.1:${JSON.parse(d.toString().split("\n")[0]!).port}`))
  })

const waitLive = async (url: string) => {
  for (const until = Date.now() + 20_000; Date.now() < until;) {
    try {
      const r = await request(`${url}/live`)
      await r.body.dump()
      if (r.statusCode === 200) return
    } catch {
      // not yet
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${url} did not start`)
}

const startServe = async (name: string, upstream: string, env: Record<string, string>, args: Array<string> = []) => {
  const bin = join(root, "bin/llm-proxy.js")
  if (!existsSync(join(root, "dist/cli/main.js"))) throw new Error("dist/ is missing: run `npm run build` first")
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-events-"))
  const port = await freePort()
  const managementToken = "bench-management-token-" + crypto.randomUUID()
  const argv = pinned(1, [process.execPath, bin, "serve", ...args.map((a) => a.replace("{dir}", dir))])
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    env: {
      PATH: process.env["PATH"] ?? "",
      LISTEN_ADDR: `127.0.0.1:${port}`,
      MANAGEMENT_TOKEN: managementToken,
      OPENAI_API_URL: upstream,
      DATABASE_PATH: join(dir, "bench.db"),
      LOG_LEVEL: "warn",
      LOG_FORMAT: "json",
      HTTP_CACHE_ENABLED: "false",
      AUDIT_LOG_FILE: "",
      ...env
    },
    stdio: ["ignore", "inherit", "inherit"]
  })
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  await waitLive(url)
  const manage = async (path: string, body: unknown) => {
    const r = await request(`${url}${path}`, {
      method: "POST",
      headers: { authorization: `Bearer ${managementToken}`, "content-type": "application/json" },
      body: JSON.stringify(body)
    })
    const json = (await r.body.json()) as Record<string, unknown>
    if (r.statusCode >= 300) throw new Error(`${path}: ${r.statusCode} ${JSON.stringify(json)}`)
    return json
  }
  const project = await manage("/manage/projects", { name: "bench", api_key: "sk-upstream-key" })
  const token = await manage("/manage/tokens", { project_id: project["id"], duration_minutes: 600 })
  return { name, url, token: String(token["token"]), cleanup: () => rmSync(dir, { recursive: true, force: true }) }
}

type Serve = Awaited<ReturnType<typeof startServe>>

const saturate = async (s: Serve, stream: boolean, secs = seconds) => {
  const result = await autocannon({
    url: `${s.url}/v1/chat/completions${stream ? "?chunks=20" : ""}`,
    method: "POST",
    headers: { authorization: `Bearer ${s.token}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", stream, messages: [{ role: "user", content: "Say hello." }] }),
    connections,
    duration: secs
  })
  return { rps: result.requests.average, errors: result.errors + result.non2xx + result.timeouts }
}

const redisAnswers = async () => {
  const r = new Redis(redisUrl, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null })
  r.on("error", () => {})
  try {
    await r.connect()
    await r.ping()
    return true
  } catch {
    return false
  } finally {
    r.disconnect()
  }
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

const main = async () => {
  console.log(
    `events on vs off — ${
      hasTaskset ? "serve pinned to core 1" : "no taskset: not pinned"
    }, ${seconds} s per run, ${connections} connections, ${rounds} rounds`
  )
  const upstream = await startUpstream()
  const redis = await redisAnswers()
  const servers: Array<Serve> = [
    await startServe("off", upstream, { OBSERVABILITY_ENABLED: "false" }),
    await startServe("in-memory", upstream, {}),
    await startServe("in-memory + file log", upstream, {}, ["--file-event-log", "{dir}/events.jsonl"]),
    ...(redis
      ? [
        await startServe("redis-streams", upstream, {
          LLM_PROXY_EVENT_BUS: "redis-streams",
          REDIS_URL: redisUrl,
          REDIS_STREAM_KEY: streamKey
        })
      ]
      : [])
  ]
  if (!redis) console.log(`Redis at ${redisUrl} does not answer: redis-streams skipped`)
  try {
    for (const s of servers) await saturate(s, false, 2) // warm-up
    for (const stream of [false, true]) {
      const rps = servers.map(() => [] as Array<number>)
      let errors = 0
      for (let round = 0; round < rounds; round++) {
        for (let i = 0; i < servers.length; i++) {
          const r = await saturate(servers[i]!, stream)
          rps[i]!.push(r.rps)
          errors += r.errors
        }
      }
      const off = median(rps[0]!)
      console.log(
        `\n${stream ? "SSE (20 chunks)" : "JSON"} — median RPS, ratio to off${errors > 0 ? ` (${errors} errors!)` : ""}`
      )
      for (let i = 0; i < servers.length; i++) {
        const m = median(rps[i]!)
        console.log(
          `  ${servers[i]!.name.padEnd(22)} ${Math.round(m).toString().padStart(6)}  ${(m / off).toFixed(3)}  (runs ${
            rps[i]!.map((x) => Math.round(x)).join(", ")
          })`
        )
      }
    }
  } finally {
    // servers first (they drain), the upstream last
    for (const c of [...children].reverse()) c.kill("SIGTERM")
    await new Promise((r) => setTimeout(r, 1500))
    for (const s of servers) s.cleanup()
    if (redis) {
      const r = new Redis(redisUrl)
      await r.del(streamKey)
      await r.quit()
    }
  }
}

await main()
