/**
 * The scale suite's own world: a throwaway PostgreSQL and Redis (Debian binaries, free loopback ports, a temp
 * dir — never the shared servers on 5432/6379) that tests can stop and start again, and `serve` processes of the
 * built binary (bin/llm-proxy.js) on loopback ports.
 */
import { type ChildProcess, execFileSync, spawn, spawnSync } from "node:child_process"
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { stopProcess } from "../support/processes.js"
import { proxyError } from "../support/proxyErrors.js"

export const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
export const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

export const waitFor = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 20_000) => {
  const until = Date.now() + timeoutMs
  for (;;) {
    try {
      if (await check()) return
    } catch {
      // not yet
    }
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await sleep(100)
  }
}

const isRoot = process.getuid?.() === 0

const pgBin = () => {
  const versions = existsSync("/usr/lib/postgresql")
    ? readdirSync("/usr/lib/postgresql").sort((a, b) => Number(a) - Number(b))
    : []
  const v = versions.at(-1)
  return v === undefined ? undefined : `/usr/lib/postgresql/${v}/bin`
}

export const haveServers = () => pgBin() !== undefined && spawnSync("redis-server", ["--version"]).status === 0

/** Runs a PostgreSQL binary as the `postgres` OS user when we are root (postgres refuses to run as root). */
const asPg = (cmd: string, args: ReadonlyArray<string>) =>
  isRoot
    ? execFileSync("runuser", ["-u", "postgres", "--", cmd, ...args], { stdio: "pipe", cwd: "/" })
    : execFileSync(cmd, args, { stdio: "pipe" })

export interface Postgres {
  readonly url: string
  readonly port: number
  readonly stop: () => void
  readonly start: () => void
  readonly destroy: () => void
}

export const startPostgres = async (root: string): Promise<Postgres> => {
  const binDir = pgBin()!
  const dir = join(root, "pg")
  const data = join(dir, "data")
  const sock = join(dir, "sock")
  mkdirSync(sock, { recursive: true })
  chmodSync(root, 0o755)
  if (isRoot) execFileSync("chown", ["-R", "postgres:", dir])
  asPg(join(binDir, "initdb"), [
    "-D",
    data,
    "-U",
    "postgres",
    "--auth=trust",
    "--encoding=UTF8",
    "--locale=C",
    "--no-sync"
  ])
  const port = await freePort()
  const conf =
    `\nlisten_addresses = '127.0.0.1'\nport = ${port}\nunix_socket_directories = '${sock}'\nmax_connections = 200\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n`
  writeFileSync(join(dir, "extra.conf"), conf)
  asPg("sh", ["-c", `cat '${join(dir, "extra.conf")}' >> '${join(data, "postgresql.conf")}'`])
  const log = join(dir, "postgres.log")
  let running = false
  const start = () => {
    asPg(join(binDir, "pg_ctl"), ["-D", data, "-l", log, "-w", "-t", "30", "start"])
    running = true
  }
  const stop = () => {
    if (!running) return
    asPg(join(binDir, "pg_ctl"), ["-D", data, "-m", "fast", "-w", "stop"])
    running = false
  }
  start()
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    start,
    stop,
    destroy: () => {
      try {
        if (running) asPg(join(binDir, "pg_ctl"), ["-D", data, "-m", "immediate", "-w", "stop"])
      } catch {
        // already gone
      }
      running = false
    }
  }
}

export interface RedisServer {
  readonly url: string
  readonly port: number
  readonly stop: () => Promise<void>
  readonly start: () => Promise<void>
  readonly destroy: () => Promise<void>
  /** XLEN of a stream (0 when it does not exist or Redis does not answer). */
  readonly xlen: (key: string) => number
}

export const startRedis = async (root: string): Promise<RedisServer> => {
  const dir = join(root, "redis")
  mkdirSync(dir, { recursive: true })
  const port = await freePort()
  let child: ChildProcess | undefined
  const ping = () =>
    spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "ping"]).stdout?.toString().trim() === "PONG"
  const start = async () => {
    child = spawn("redis-server", [
      "--bind",
      "127.0.0.1",
      "--port",
      String(port),
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir
    ], {
      stdio: "ignore"
    })
    await waitFor(`redis on ${port}`, ping)
  }
  const stop = async () => {
    const c = child
    if (c === undefined || c.exitCode !== null) return
    const exited = new Promise<void>((r) => c.once("exit", () => r()))
    c.kill("SIGKILL")
    await exited
    child = undefined
  }
  await start()
  const xlen = (key: string) =>
    Number(spawnSync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "xlen", key]).stdout?.toString().trim() || 0)
  return { url: `redis://127.0.0.1:${port}`, port, start, stop, destroy: stop, xlen }
}

export interface Instance {
  readonly url: string
  readonly child: ChildProcess
  readonly output: () => string
  readonly stop: (signal?: NodeJS.Signals) => Promise<void>
}

export const startInstance = (env: Record<string, string>) =>
  new Promise<Instance>((resolve, reject) => {
    const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-scale-serve-"))
    const child = spawn(process.execPath, [bin, "serve"], {
      cwd,
      env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", LISTEN_ADDR: "127.0.0.1:0", ...env },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    let done = false
    const onData = (d: Buffer) => {
      output += d.toString()
      if (output.length > 1_000_000) output = output.slice(-500_000)
      const m = /listening on (http:\/\/[^"\s]+)/.exec(output)
      if (!done && m?.[1]) {
        done = true
        resolve({
          url: m[1],
          child,
          output: () => output,
          stop: async (signal = "SIGTERM") => {
            await stopProcess(child, { signal })
            rmSync(cwd, { recursive: true, force: true })
          }
        })
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.once("exit", (code) => {
      if (!done) reject(new Error(`serve exited with ${code}: ${output}`))
    })
  })

export const tempRoot = () => mkdtempSync(join(tmpdir(), "llm-proxy-scale-"))

/** A small client for the management API of one instance. */
export const management = (url: string, token: string) => {
  const call = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(`${url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {})
    })
    const text = await r.text()
    return { status: r.status, body: text === "" ? undefined : JSON.parse(text) as Record<string, unknown> }
  }
  return {
    call,
    project: async (name: string, extra: Record<string, unknown> = {}) => {
      const r = await call("POST", "/manage/projects", { name, api_key: "sk-upstream-" + name, ...extra })
      if (r.status !== 201 && r.status !== 200) throw new Error(`create project: ${r.status} ${JSON.stringify(r.body)}`)
      return r.body as { id: string }
    },
    token: async (projectId: string, extra: Record<string, unknown> = {}) => {
      const r = await call("POST", "/manage/tokens", { project_id: projectId, duration_minutes: 60, ...extra })
      if (r.status !== 201 && r.status !== 200) throw new Error(`create token: ${r.status} ${JSON.stringify(r.body)}`)
      return r.body as { id: string; token: string }
    }
  }
}

export const chat = async (url: string, token: string, body: Record<string, unknown> = {}) => {
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
    body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi" }], ...body })
  })
  const text = await r.text()
  let code: string | undefined
  try {
    code = proxyError(text).code
  } catch {
    code = undefined
  }
  return { status: r.status, code, text, headers: r.headers }
}
