/**
 * Shared helpers for benchmarks that drive the built `llm-proxy serve` (the same steps as proxy.bench.ts):
 * free ports, child processes pinned with taskset, the llm-proxy target with a project and token, and a closed-loop
 * saturation run with autocannon.
 */
import autocannon from "autocannon"
import { type ChildProcess, spawn, spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { request } from "undici"

export const root = process.cwd()
export const hasTaskset = spawnSync("taskset", ["--version"]).status === 0

/**
 * Pins the calling benchmark process (its load generator, sinks, every thread) to core 0, next to the upstream, so
 * it never competes with the llm-proxy under test on core 1. Without it, a busy load generator or sink scheduled on
 * core 1 slows the proxy and inflates its CPU per request (fewer requests per event-loop turn, more syscalls each).
 */
export const pinSelfToCore0 = (): boolean =>
  hasTaskset && spawnSync("taskset", ["-a", "-p", "-c", "0", String(process.pid)]).status === 0
export const children: Array<ChildProcess> = []

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

/** Starts `node script` (optionally pinned to a core) and resolves once it printed `{"port":N}`. */
export const startJsonPort = (script: string, env: Record<string, string>, core?: number) =>
  new Promise<{ port: number; pid: number }>((resolve, reject) => {
    const argv = core !== undefined && hasTaskset
      ? ["taskset", "-c", String(core), process.execPath, script]
      : [process.execPath, script]
    const child = spawn(argv[0]!, argv.slice(1), {
      env: { ...process.env, ...env },
      stdio: ["ignore", "pipe", "inherit"]
    })
    children.push(child)
    child.once("exit", (code) => reject(new Error(`${script} exited with ${code}`)))
    child.stdout!.once(
      "data",
      (d: Buffer) => resolve({ port: JSON.parse(d.toString().split("\n")[0]!).port, pid: child.pid! })
    )
  })

export const waitFor = async (url: string, ms = 20_000) => {
  const until = Date.now() + ms
  while (Date.now() < until) {
    try {
      const r = await request(url)
      await r.body.dump()
      if (r.statusCode === 200) return
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`${url} did not come up`)
}

export interface LlmProxy {
  readonly url: string
  readonly pid: number
  readonly token: string
  /** A token of a second project with three provider keys (`api_keys`): requests spread over them. */
  readonly threeKeysToken: string
  readonly tokenId: string
  /** A management API call (POST, or `method`) with the instance's management token; the JSON answer. */
  readonly manage: (path: string, body: unknown, method?: string) => Promise<Record<string, unknown>>
  readonly stop: () => Promise<void>
}

/**
 * The built `serve` on core 1 with a project and a token; `env` is added to the benchmark defaults.
 * For diagnosis, BENCH_NODE_ARGS (space-separated, e.g. `--trace-gc`) is added to `nodeArgs`, and BENCH_LLM_STDOUT
 * names a file that receives the process's standard output (otherwise discarded).
 */
export const startLlmProxy = async (
  upstream: string,
  env: Record<string, string> = {},
  nodeArgs: ReadonlyArray<string> = [],
  bin = join(root, "bin/llm-proxy.js")
): Promise<LlmProxy> => {
  if (!existsSync(join(root, "dist/cli/main.js"))) throw new Error("dist/ is missing: run `npm run build` first")
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-"))
  const port = await freePort()
  const managementToken = "bench-management-token-" + crypto.randomUUID()
  const extraArgs = (process.env["BENCH_NODE_ARGS"] ?? "").split(" ").filter((a) => a !== "")
  const node = [process.execPath, ...nodeArgs, ...extraArgs, bin, "serve"]
  const stdoutFile = process.env["BENCH_LLM_STDOUT"]
  const argv = hasTaskset ? ["taskset", "-c", "1", ...node] : node
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
      // Every benchmark client connects from 127.0.0.1, thousands of streams at once: no connection limits.
      MAX_CONNECTIONS: "0",
      MAX_CONNECTIONS_PER_IP: "0",
      ...env
    },
    // Logs go to /dev/null: the benchmark measures producing them, not a terminal drawing them.
    stdio: ["ignore", stdoutFile !== undefined && stdoutFile !== "" ? openSync(stdoutFile, "a") : "ignore", "inherit"]
  })
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/live`)
  const manage = async (path: string, body: unknown, method = "POST") => {
    const r = await request(`${url}${path}`, {
      method: method as "POST",
      headers: { authorization: `Bearer ${managementToken}`, "content-type": "application/json" },
      body: JSON.stringify(body)
    })
    const json = (await r.body.json()) as Record<string, unknown>
    if (r.statusCode >= 300) throw new Error(`${path}: ${r.statusCode} ${JSON.stringify(json)}`)
    return json
  }
  const project = await manage("/manage/projects", { name: "bench", api_key: "sk-upstream-key" })
  const token = await manage("/manage/tokens", { project_id: project["id"], duration_minutes: 600 })
  const three = await manage("/manage/projects", {
    name: "bench-three-keys",
    api_keys: [{ key: "sk-upstream-key" }, { key: "sk-upstream-key-2" }, { key: "sk-upstream-key-3" }]
  })
  const threeToken = await manage("/manage/tokens", { project_id: three["id"], duration_minutes: 600 })
  return {
    url,
    pid: child.pid!,
    token: String(token["token"]),
    threeKeysToken: String(threeToken["token"]),
    tokenId: String(token["id"]),
    manage,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => {
          rmSync(dir, { recursive: true, force: true })
          resolve()
        })
        child.kill("SIGTERM")
      })
  }
}

export const chatBody = (stream: boolean) =>
  JSON.stringify({ model: "gpt-4o-mini", stream, messages: [{ role: "user", content: "Say hello." }] })

const CLOCK_TICK_MS = 1000 / Number(spawnSync("getconf", ["CLK_TCK"]).stdout?.toString().trim() || 100)

/** CPU time (user + system) a process has used so far, ms (Linux /proc). */
export const cpuMsOf = (pid: number): number => {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8")
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
  return (Number(fields[11]) + Number(fields[12])) * CLOCK_TICK_MS
}

export interface Saturation {
  /** Requests completed in the run. */
  readonly total: number
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly errors: number
}

export const saturate = async (
  url: string,
  headers: Record<string, string>,
  stream: boolean,
  seconds: number,
  connections: number,
  /** More of the upstream's query for a stream (test/bench/upstream.mjs), e.g. `&interval=1`. */
  streamQuery = ""
): Promise<Saturation> => {
  const result = await autocannon({
    url: `${url}/v1/chat/completions${stream ? `?chunks=20${streamQuery}` : ""}`,
    method: "POST",
    headers: { ...headers, "content-type": "application/json" },
    body: chatBody(stream),
    connections,
    duration: seconds
  })
  return {
    total: result.requests.total,
    rps: result.requests.average,
    p50: result.latency.p50,
    p99: result.latency.p99,
    errors: result.errors + result.non2xx + result.timeouts
  }
}

export const fmt = (n: number, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : "—")

/** Runs a benchmark's `main`, then stops every child process it started and exits (1 with the error on failure). */
export const runBench = (main: () => Promise<void>): void =>
  void main().then(
    () => {
      for (const c of children) c.kill("SIGTERM")
      process.exit(0)
    },
    (e) => {
      console.error(e)
      for (const c of children) c.kill("SIGKILL")
      process.exit(1)
    }
  )
