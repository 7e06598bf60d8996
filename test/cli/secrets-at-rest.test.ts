/**
 * Secrets at rest, on the built binary: `serve` creates its data directory 0700 and the database (with -wal and
 * -shm), the management token, the audit log, the `--file-event-log` file and its dead-letter file 0600; files and
 * the directory left with looser modes by an earlier version are tightened at start-up with one warning naming each;
 * a MANAGEMENT_TOKEN under 32 characters stops it with one line; with neither METRICS_TOKEN nor METRICS_ADDR it says
 * once how the metrics are exposed.
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import {
  chmodSync,
  closeSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { newManagementToken } from "../support/managementToken.js"
import { stopProcess } from "../support/processes.js"

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

const mode = (path: string) => (statSync(path).mode & 0o777).toString(8).padStart(3, "0")

interface Running {
  readonly child: ChildProcess
  readonly url: string
  readonly output: () => string
}

const start = (cwd: string, env: Record<string, string>, args: ReadonlyArray<string> = []) =>
  new Promise<Running>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "serve", ...args], {
      cwd,
      env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", LISTEN_ADDR: "127.0.0.1:0", ...env }
    })
    let output = ""
    const onData = (d: Buffer) => {
      output += d.toString()
      const m = /listening on (http:\/\/[^"\s]+)/.exec(output)
      if (m?.[1]) resolve({ child, url: m[1], output: () => output })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`serve exited with ${code}: ${output}`)))
  })

const dirs: Array<string> = []
const children: Array<ChildProcess> = []
afterAll(async () => {
  await Promise.all(children.map((c) => stopProcess(c)))
  for (const d of dirs) rmSync(d, { recursive: true, force: true })
})

const workdir = () => {
  const d = mkdtempSync(join(tmpdir(), "llm-proxy-at-rest-"))
  dirs.push(d)
  return d
}

/** Some traffic so that every file has been written: a project (database, audit) and a refused /v1 call (event). */
const exercise = async (url: string, token: string) => {
  const auth = { authorization: `Bearer ${token}`, "content-type": "application/json" }
  const p = await fetch(`${url}/manage/projects`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ name: "at-rest", api_key: "sk-at-rest-key" })
  })
  expect(p.status).toBe(201)
  const v1 = await fetch(`${url}/v1/chat/completions`, {
    method: "POST",
    headers: { authorization: "Bearer sk-nope", "content-type": "application/json" },
    body: "{}"
  })
  expect(v1.status).toBe(401)
  await v1.arrayBuffer()
}

describe.skipIf(!built)("secrets at rest (built binary)", () => {
  it("a fresh start: data directory 0700; database, -wal, -shm, token, audit log, event log and dead letters 0600", async () => {
    const cwd = workdir()
    const s = await start(cwd, { USAGE_FLUSH_INTERVAL: "100ms" }, ["--file-event-log", "data/events.jsonl"])
    children.push(s.child)
    const token = readFileSync(join(cwd, "data/management-token"), "utf8").trim()
    await exercise(s.url, token)
    // The refused request's event reaches the file through the in-process dispatcher (flushed every second).
    for (let i = 0; i < 100 && !existsSync(join(cwd, "data/events.jsonl")); i++) {
      await new Promise((r) => setTimeout(r, 50))
    }
    const data = join(cwd, "data")
    expect(mode(data)).toBe("700")
    for (
      const file of [
        "llm-proxy.db",
        "llm-proxy.db-wal",
        "llm-proxy.db-shm",
        "management-token",
        "audit.log",
        "events.jsonl",
        "events.jsonl.dead-letter.jsonl"
      ]
    ) {
      expect(existsSync(join(data, file)), file).toBe(true)
      expect(mode(join(data, file)), file).toBe("600")
    }
    expect(s.output()).not.toMatch(/tightened/)
    expect((await stopProcess(s.child)).code).toBe(0)
  })

  it("files and the directory left world-readable are tightened at start-up, one warning naming each", async () => {
    const cwd = workdir()
    const data = join(cwd, "data")
    mkdirSync(data)
    chmodSync(data, 0o755)
    const token = newManagementToken()
    writeFileSync(join(data, "management-token"), token + "\n", { mode: 0o644 })
    const loose = ["llm-proxy.db", "audit.log", "events.jsonl", "events.jsonl.dead-letter.jsonl"]
    for (const file of loose) closeSync(openSync(join(data, file), "w", 0o644))
    for (const file of [...loose, "management-token"]) chmodSync(join(data, file), 0o644)
    const s = await start(cwd, {}, ["--file-event-log", "data/events.jsonl"])
    children.push(s.child)
    await exercise(s.url, token)
    expect(mode(data)).toBe("700")
    for (const file of [...loose, "management-token", "llm-proxy.db-wal"]) {
      expect(mode(join(data, file)), file).toBe("600")
    }
    const warnings = s.output().split("\n").filter((l) => l.includes("tightened the permissions"))
    expect(warnings.map((l) => JSON.parse(l).logLevel)).toEqual(Array(warnings.length).fill("WARN"))
    const named = (path: string) =>
      warnings.filter((l) => l.includes(`tightened the permissions of ${path} from 0`)).length
    expect(named("./data")).toBe(1)
    expect(warnings).toHaveLength(6)
    for (
      const file of [
        "data/llm-proxy.db",
        "data/management-token",
        "data/audit.log",
        "data/events.jsonl",
        "data/events.jsonl.dead-letter.jsonl"
      ]
    ) {
      expect(warnings.filter((l) => l.includes(`${file} from 0644 to 0600`)), file).toHaveLength(1)
    }
    // Nothing is said about what was already private, and a second start says nothing at all.
    expect((await stopProcess(s.child)).code).toBe(0)
    const again = await start(cwd, {}, ["--file-event-log", "data/events.jsonl"])
    children.push(again.child)
    expect(again.output()).not.toMatch(/tightened/)
    expect((await stopProcess(again.child)).code).toBe(0)
  })

  it("a MANAGEMENT_TOKEN under 32 characters stops serve with one line naming the variable and the minimum", async () => {
    const cwd = workdir()
    const r = await new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile(process.execPath, [bin, "serve"], {
        cwd,
        env: {
          PATH: process.env.PATH ?? "",
          LISTEN_ADDR: "127.0.0.1:0",
          MANAGEMENT_TOKEN: "hunter2-hunter2-hunter2",
          LOG_LEVEL: "error"
        },
        timeout: 20_000
      }, (error, _stdout, stderr) => resolve({ code: error ? 1 : 0, stderr }))
    )
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim()).toBe(
      "llm-proxy: MANAGEMENT_TOKEN must be at least 32 characters (it has 23); run `llm-proxy setup` for a generated one, " +
        "or leave it unset to have one generated"
    )
    expect(r.stderr).not.toContain("hunter2")
  })

  it("says once at start-up that the metrics answer loopback clients only, and how to expose them", async () => {
    const cwd = workdir()
    const s = await start(cwd, { MANAGEMENT_TOKEN: newManagementToken() })
    children.push(s.child)
    const lines = s.output().split("\n").filter((l) => l.includes("/metrics"))
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/loopback clients only; set METRICS_TOKEN .* or METRICS_ADDR/)
    expect((await stopProcess(s.child)).code).toBe(0)
    const withToken = await start(cwd, {
      MANAGEMENT_TOKEN: newManagementToken(),
      METRICS_TOKEN: newManagementToken("metrics")
    })
    children.push(withToken.child)
    expect(withToken.output()).not.toMatch(/loopback clients only/)
    expect(withToken.output()).not.toContain("metrics-management-token")
    expect((await stopProcess(withToken.child)).code).toBe(0)
  })
})
