/**
 * Plumbing for the chaos suite: input counters printed per endpoint, a raw-socket HTTP client (node:net) for bytes
 * no HTTP client library would send, the CI/full profile, and the built binary started as a child process with
 * everything it prints captured.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"

/** CHAOS_PROFILE=ci: the bounded form .ci/run uses. Anything else: the full form. */
export const ci = process.env["CHAOS_PROFILE"] === "ci"

/** Property-test runs: `n` in CI, 5·n in the full form. */
export const runs = (n: number) => (ci ? n : n * 5)

// ---------------------------------------------------------------------------------------------------------------
// Counting inputs

const tallies = new Map<string, Map<string, number>>()

/** Counts one input tried against `endpoint`, under a suite `title`. */
export const tally = (title: string, endpoint: string, n = 1) => {
  let t = tallies.get(title)
  if (t === undefined) tallies.set(title, t = new Map())
  t.set(endpoint, (t.get(endpoint) ?? 0) + n)
}

/** Prints the inputs tried per endpoint (and their total) for `title`. */
export const printTally = (title: string) => {
  const t = tallies.get(title)
  if (t === undefined) return
  const rows = [...t.entries()].sort((a, b) => a[0].localeCompare(b[0]))
  const width = Math.max(...rows.map(([k]) => k.length), 5)
  const total = rows.reduce((s, [, n]) => s + n, 0)
  const lines = rows.map(([k, n]) => `  ${k.padEnd(width)}  ${String(n).padStart(7)}`)
  console.log(
    `\n[chaos] ${title}: inputs per endpoint\n${lines.join("\n")}\n  ${"total".padEnd(width)}  ${
      String(total).padStart(7)
    }\n`
  )
}

// ---------------------------------------------------------------------------------------------------------------
// Raw sockets

export interface RawResult {
  /** Everything the server sent, as latin1 text. */
  readonly text: string
  /** Status codes of every response found in the bytes, in order. */
  readonly statuses: ReadonlyArray<number>
  /** The server closed (or reset) the connection. */
  readonly closed: boolean
  /** Our own deadline passed with the connection still open. */
  readonly timedOut: boolean
  readonly ms: number
}

export type RawPart = string | Buffer | { readonly delayMs: number }

/**
 * Writes `parts` to a fresh connection (a `{delayMs}` part waits), then waits until the server closes it, or until
 * `idleMs` passed without new bytes after at least one response, or `timeoutMs` overall.
 */
export const rawExchange = (
  port: number,
  parts: ReadonlyArray<RawPart>,
  options: { readonly timeoutMs?: number; readonly idleMs?: number; readonly endWrite?: boolean } = {}
): Promise<RawResult> =>
  new Promise((resolve) => {
    const timeoutMs = options.timeoutMs ?? 10_000
    const idleMs = options.idleMs ?? 300
    const started = Date.now()
    const socket = connect(port, "127.0.0.1")
    const chunks: Array<Buffer> = []
    let closed = false
    let finished = false
    let idle: NodeJS.Timeout | undefined
    const finish = (timedOut: boolean) => {
      if (finished) return
      finished = true
      clearTimeout(overall)
      clearTimeout(idle)
      socket.destroy()
      const text = Buffer.concat(chunks).toString("latin1")
      const statuses = [...text.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1]))
      resolve({ text, statuses, closed, timedOut, ms: Date.now() - started })
    }
    const overall = setTimeout(() => finish(true), timeoutMs)
    socket.on("data", (d: Buffer) => {
      chunks.push(d)
      clearTimeout(idle)
      idle = setTimeout(() => finish(false), idleMs)
    })
    socket.on("error", () => {
      closed = true
      finish(false)
    })
    socket.on("close", () => {
      closed = true
      finish(false)
    })
    socket.on("connect", async () => {
      for (const p of parts) {
        if (finished || socket.destroyed) return
        if (typeof p === "object" && !Buffer.isBuffer(p)) await new Promise((r) => setTimeout(r, p.delayMs))
        else socket.write(p)
      }
      if (options.endWrite) socket.end()
    })
  })

// ---------------------------------------------------------------------------------------------------------------
// The built binary

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
export const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

export interface Serve {
  readonly child: ChildProcess
  readonly url: string
  readonly port: number
  readonly cwd: string
  /** Everything the process wrote to stdout and stderr so far. */
  readonly output: () => string
  /** SIGTERM, then the exit code. */
  readonly stop: () => Promise<number | null>
}

/** `llm-proxy serve` in a fresh working directory (so ./data is its own), listening on 127.0.0.1:0. */
export const startServe = (env: Record<string, string>, nodeOptions: ReadonlyArray<string> = []): Promise<Serve> => {
  const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-chaos-"))
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeOptions, bin, "serve"], {
      cwd,
      env: { PATH: process.env["PATH"] ?? "", LOG_FORMAT: "json", LISTEN_ADDR: "127.0.0.1:0", ...env }
    })
    let output = ""
    let up = false
    const onData = (d: Buffer) => {
      output += d.toString()
      const m = /listening on http:\/\/[^:"\s]+:(\d+)/.exec(output)
      if (!up && m?.[1]) {
        up = true
        const port = Number(m[1])
        resolve({
          child,
          url: `http://127.0.0.1:${port}`,
          port,
          cwd,
          output: () => output,
          stop: () =>
            new Promise((res) => {
              if (child.exitCode !== null) return res(child.exitCode)
              child.removeAllListeners("exit")
              child.on("exit", (code) => res(code))
              child.kill("SIGTERM")
            })
        })
      }
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => {
      if (!up) reject(new Error(`serve exited with ${code}: ${output}`))
    })
  })
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------------------------
// One request over a raw socket

export interface RawReply {
  readonly status: number
  readonly headers: Record<string, string>
  readonly body: string
  readonly json: any
  /** The connection was closed without any response. */
  readonly dropped: boolean
  readonly timedOut: boolean
}

/**
 * One HTTP/1.1 request written byte for byte: header names and values exactly as given (duplicates, CR/LF, bytes
 * fetch or node:http refuse), `Connection: close` appended, `Content-Length` only when given.
 */
export const rawHttp = async (
  port: number,
  method: string,
  target: string,
  headers: ReadonlyArray<readonly [string, string]>,
  body?: Buffer | string,
  timeoutMs = 10_000
): Promise<RawReply> => {
  const head = [
    `${method} ${target} HTTP/1.1`,
    "Host: 127.0.0.1",
    ...headers.map(([k, v]) => `${k}: ${v}`),
    "Connection: close",
    "",
    ""
  ]
    .join("\r\n")
  const parts: Array<RawPart> = [Buffer.from(head, "latin1")]
  if (body !== undefined) parts.push(typeof body === "string" ? Buffer.from(body, "utf8") : body)
  const r = await rawExchange(port, parts, { timeoutMs, idleMs: timeoutMs })
  const sep = r.text.indexOf("\r\n\r\n")
  if (r.statuses.length === 0 || sep === -1) {
    return { status: 0, headers: {}, body: "", json: undefined, dropped: !r.timedOut, timedOut: r.timedOut }
  }
  const lines = r.text.slice(0, sep).split("\r\n")
  const h: Record<string, string> = {}
  for (const line of lines.slice(1)) {
    const i = line.indexOf(":")
    if (i > 0) h[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim()
  }
  let text = r.text.slice(sep + 4)
  if (h["transfer-encoding"] === "chunked") text = dechunk(text)
  const utf8 = Buffer.from(text, "latin1").toString("utf8")
  let json: unknown
  try {
    json = JSON.parse(utf8)
  } catch {
    json = undefined
  }
  return { status: r.statuses[0]!, headers: h, body: utf8, json, dropped: false, timedOut: r.timedOut }
}

const dechunk = (s: string): string => {
  let out = ""
  let i = 0
  for (;;) {
    const nl = s.indexOf("\r\n", i)
    if (nl === -1) return out
    const size = parseInt(s.slice(i, nl), 16)
    if (!Number.isFinite(size) || size === 0) return out
    out += s.slice(nl + 2, nl + 2 + size)
    i = nl + 2 + size + 2
  }
}
