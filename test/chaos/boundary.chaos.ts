/**
 * The proxy as a hard boundary, measured on the built binary (`npm run build` first):
 *
 *   bodies     50 connections without a token each start a 30 MB upload, in rounds: the server answers every one
 *              401 within 100 ms of its own time, the client has every answer within 500 ms of its headers and half
 *              of one round's within 100 ms (reading the bodies first would take seconds), serve's RSS grows by less
 *              than 20 MB beyond its young generation's growth (nothing is buffered), every connection is closed by
 *              the server within a few seconds (lingering close), and the proxy keeps serving meanwhile
 *   whitelist  1 MB hostile `model` values against a `*gpt*` whitelist, from a token holder and from strangers:
 *              400 / 401, and `/live` answers within 100 ms throughout (no backtracking, no stalled event loop)
 *   events     a flood of anonymous requests (no token, garbage, unknown, revoked, inactive project) publishes no
 *              event; the token holder's request right after does; nothing of the strangers' bodies is written,
 *              and nothing they sent leaves a stack trace in the log
 */
import { spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { jsonLines } from "../support/events.js"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { stopProcess } from "../support/processes.js"
import { built, printTally, type Serve, sleep, startServe, tally } from "./support.js"

const TITLE = "boundary"

/**
 * `n` connections that each send the headers of a `declared`-byte upload without a token, then keep sending its body
 * for as long as the socket takes bytes; prints, as JSON, each one's status, ms from headers to the first byte of the
 * answer, and ms until the server closed the connection.
 */
const UPLOADERS = `
const net = require("node:net")
const [port, n, declared] = process.argv.slice(1).map(Number)
const chunk = Buffer.alloc(64 * 1024, 0x61)
const one = () => new Promise((resolve) => {
  const socket = net.connect(port, "127.0.0.1")
  let text = "", sentAt = 0, answeredAt = 0, done = false
  const finish = () => {
    if (done) return
    done = true
    socket.destroy()
    resolve({ status: Number(/^HTTP\\/1\\.1 (\\d{3})/.exec(text)?.[1] ?? 0), ms: answeredAt - sentAt, closedMs: performance.now() - sentAt })
  }
  socket.on("data", (d) => { if (answeredAt === 0) answeredAt = performance.now(); text += d.toString("latin1") })
  socket.on("error", () => {})
  socket.on("close", finish)
  setTimeout(finish, 15000).unref()
  socket.on("connect", () => {
    socket.write("POST /v1/chat/completions HTTP/1.1\\r\\nHost: x\\r\\nContent-Type: application/json\\r\\nContent-Length: " + declared + "\\r\\n\\r\\n")
    sentAt = performance.now()
    let sent = 0
    const pump = () => {
      if (done || socket.destroyed || sent >= declared) return
      sent += chunk.length
      if (socket.write(chunk)) setImmediate(pump)
      else socket.once("drain", pump)
    }
    pump()
  })
})
Promise.all(Array.from({ length: n }, one)).then((r) => { process.stdout.write(JSON.stringify(r)); process.exit(0) })
`

/** Polls GET /live every 10 ms over its own keep-alive connection; prints each round trip in ms. */
const PROBE = `
const http = require("node:http")
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
const url = process.argv[1]
let stop = false
process.on("SIGTERM", () => (stop = true))
const once = () => new Promise((resolve) => {
  const t0 = performance.now()
  http.get(url + "/live", { agent }, (res) => { res.resume(); res.on("end", () => resolve(performance.now() - t0)) })
    .on("error", () => resolve(-1))
})
;(async () => {
  await once()
  console.log("ready")
  while (!stop) {
    console.log((await once()).toFixed(2))
    await new Promise((r) => setTimeout(r, 10))
  }
  process.exit(0)
})()
`

/** CPU time (user + system) the process used so far, ms. */
const cpuMs = (pid: number) => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
  return (Number(f[11]) + Number(f[12])) * 10
}

const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN) / 1024

const YAML = `
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions, /v1/models]
    allowed_methods: [GET, POST]
    param_whitelist:
      model: ["*gpt*", "gpt-4o"]
`

describe.skipIf(!built)("the proxy as a boundary (built binary)", () => {
  let mock: MockUpstream
  let serve: Serve
  const managementToken = `mt-${randomBytes(24).toString("base64url")}`
  let token = ""
  let revoked = ""
  let inactive = ""
  let eventsPath = ""

  const manage = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(serve.url + path, {
      method,
      headers: { authorization: `Bearer ${managementToken}`, "content-type": "application/json" },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {})
    })
    const text = await r.text()
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`)
    return text === "" ? undefined : JSON.parse(text)
  }
  const newToken = async (projectId: string) =>
    (await manage("POST", "/manage/tokens", { project_id: projectId, duration_minutes: 60 })).token as string
  const chat = (auth: string | undefined, body: string) =>
    fetch(`${serve.url}/v1/chat/completions`, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(auth !== undefined ? { authorization: `Bearer ${auth}` } : {})
      },
      body
    })

  beforeAll(async () => {
    mock = await startMockUpstream()
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-boundary-"))
    const yaml = join(dir, "providers.yaml")
    writeFileSync(yaml, YAML.replaceAll("{{MOCK}}", mock.url))
    eventsPath = join(dir, "events.jsonl")
    serve = await startServe({
      MANAGEMENT_TOKEN: managementToken,
      API_CONFIG_PATH: yaml,
      FILE_EVENT_LOG: eventsPath,
      LOG_LEVEL: "info",
      MAX_REQUEST_SIZE: String(32 * 1024 * 1024),
      USAGE_FLUSH_INTERVAL: "200ms"
    })
    const p = await manage("POST", "/manage/projects", {
      name: "boundary",
      api_key: `sk-${randomBytes(24).toString("hex")}`
    })
    token = await newToken(p.id)
    const r = await manage("POST", "/manage/tokens", { project_id: p.id, duration_minutes: 60 })
    await manage("DELETE", `/manage/tokens/${r.id}`)
    revoked = r.token
    const q = await manage("POST", "/manage/projects", {
      name: "inactive",
      api_key: `sk-${randomBytes(24).toString("hex")}`
    })
    inactive = await newToken(q.id)
    await manage("PATCH", `/manage/projects/${q.id}`, { is_active: false })
    // Warm up: the first requests compile code and fill pools, which would look like growth.
    for (let i = 0; i < 20; i++) {
      expect((await chat(token, JSON.stringify({ model: "gpt-4o", messages: [] }))).status).toBe(200)
      expect((await chat(undefined, JSON.stringify({ model: "gpt-4o" }))).status).toBe(401)
    }
  })
  afterAll(async () => {
    printTally(TITLE)
    if (serve !== undefined) await stopProcess(serve.child)
    await mock?.close()
  })

  it("50 anonymous 30 MB uploads (three rounds): each a 401 the server answers within 100 ms and the client has within 500 ms, RSS grows < 20 MB, every connection closed by the server", async () => {
    const pid = serve.child.pid!
    const declared = 30 * 1024 * 1024
    const upload = async (n: number) => {
      // The uploaders run in their own process, so what is measured is not this process's event loop.
      const uploaders = spawn(process.execPath, ["-e", UPLOADERS, String(serve.port), String(n), String(declared)], {
        stdio: ["ignore", "pipe", "inherit"]
      })
      let out = ""
      uploaders.stdout.on("data", (d: Buffer) => (out += d.toString()))
      await new Promise((resolve) => uploaders.once("exit", resolve))
      return JSON.parse(out) as Array<{ status: number; ms: number; closedMs: number }>
    }
    /** The server's own time for each anonymous 401 from here on, from its access log (request read → answer). */
    const logged = serve.output().length
    const serverMs = () =>
      serve.output().slice(logged).split("\n").flatMap((line) => {
        if (!line.includes("\"access\"")) return []
        const a = JSON.parse(line).annotations as { status: number; code?: string; duration_ms: number }
        return a.status === 401 && a.code === "invalid_token" ? [a.duration_ms] : []
      })
    /** 50 anonymous uploads while a token holder makes 20 requests; the uploads' results. */
    const round = async () => {
      const uploaded = upload(50)
      const served = (async () => {
        let ok = 0
        for (let i = 0; i < 20; i++) {
          if ((await chat(token, JSON.stringify({ model: "gpt-4o", messages: [] }))).status === 200) ok++
        }
        return ok
      })()
      const results = await uploaded
      expect(await served).toBe(20)
      return results
    }
    /** The size of V8's young generation (new space) in `serve`, MB, from its /metrics. */
    const newSpaceMb = async () => {
      const text = await (await fetch(`${serve.url}/metrics`)).text()
      return Number(/nodejs_heap_space_size_total_bytes\{space="new"\} (\d+)/.exec(text)?.[1] ?? NaN) / 1048576
    }
    // A first round, the same as the measured ones, compiles the refusal path (and its lingering close). The next two
    // rounds are measured, RSS from their start. V8's young generation, held small while `serve` starts, grows under
    // load by up to ~30 MB, in the warm-up or in the measured rounds depending on the run: its growth (read from
    // /metrics) is V8 sizing its heap, not memory held for the uploads, and is not counted.
    expect((await round()).every((r) => r.status === 401)).toBe(true)
    await sleep(500)
    const newBefore = await newSpaceMb()
    const before = rssMb(pid)
    let peak = before
    const sampler = setInterval(() => (peak = Math.max(peak, rssMb(pid))), 20)
    const cpuBefore = cpuMs(pid)
    const rounds: Array<Array<{ status: number; ms: number; closedMs: number }>> = []
    for (let i = 0; i < 2; i++) {
      rounds.push(await round())
      tally(TITLE, "anonymous 30 MB uploads", 50)
    }
    await sleep(500)
    clearInterval(sampler)
    const youngGrowth = Math.max(0, (await newSpaceMb()) - newBefore)
    const results = rounds.flat()
    const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!
    const server = serverMs()
    console.log(
      `[chaos] 2 × 50 × 30 MB anonymous: serve CPU ${cpuMs(pid) - cpuBefore} ms (with 40 token requests); RSS ${
        before.toFixed(1)
      } → peak ${peak.toFixed(1)} MB (young generation +${youngGrowth.toFixed(1)} MB); server ms max ${
        Math.max(...server).toFixed(1)
      }; client ms median ${rounds.map((r) => median(r.map((x) => x.ms)).toFixed(1)).join(" / ")}, max ${
        Math.max(...results.map((r) => r.ms)).toFixed(1)
      }; closed by the server after ms max ${Math.max(...results.map((r) => r.closedMs)).toFixed(0)}`
    )
    expect(results.map((r) => r.status)).toEqual(Array(100).fill(401))
    // The server answers each one without waiting for its body: a few milliseconds of its own time at most (3–18 ms
    // seen under the uploads). One that read the body first would take seconds.
    expect(server.length).toBeGreaterThanOrEqual(100)
    expect(server.filter((ms) => ms >= 100)).toEqual([])
    // What the client sees adds the uploaders pushing hundreds of MB at the server from the same 2 cores, which
    // varies with the machine (medians 15–25 ms alone, 104 ms in one CI run): every answer within 500 ms, and the
    // median of one round of the two within 100 ms.
    const slow = results.filter((r) => r.ms > 500)
    expect(slow, JSON.stringify(slow)).toEqual([])
    expect(Math.min(...rounds.map((r) => median(r.map((x) => x.ms))))).toBeLessThan(100)
    expect(Number.isFinite(youngGrowth)).toBe(true)
    expect(peak - before - youngGrowth).toBeLessThan(20)
    // Closed by the server (lingering close: 2 s at most), not by our 15 s deadline.
    expect(Math.max(...results.map((r) => r.closedMs))).toBeLessThan(5_000)
    expect(mock.requests.filter((r) => r.headers["content-length"] === String(declared))).toEqual([])
  })

  it("1 MB hostile model values against a `*gpt*` whitelist: 400 / 401, and /live answers within 100 ms throughout", async () => {
    const hostile = [
      JSON.stringify({ model: "gp".repeat(512 * 1024), messages: [] }),
      JSON.stringify({ model: "g" + "p".repeat(1024 * 1024) + "g", messages: [] }),
      // 4,095 characters of a near-miss for `*gpt*`: matched (the longest value that is), and refused
      JSON.stringify({ model: "gp".repeat(2047) + "g", messages: [] }),
      `{"model":${"[".repeat(100_000)}${"]".repeat(100_000)}}`,
      JSON.stringify({ model: Array.from({ length: 50_000 }, (_, i) => `gp-${i}`) })
    ]
    // Warm-up: the first refusals compile the scanner and the refusal path.
    for (const body of hostile) {
      for (const r of await Promise.all([chat(token, body), chat(undefined, body)])) await r.text()
    }
    // The probe runs in its own process: this one is busy sending megabytes, and its event loop would add its own
    // delays to what is measured.
    const probe = spawn(process.execPath, ["-e", PROBE, serve.url], { stdio: ["ignore", "pipe", "inherit"] })
    let probeOut = ""
    probe.stdout.on("data", (d: Buffer) => (probeOut += d.toString()))
    const probeDone = new Promise<void>((resolve) => probe.once("exit", () => resolve()))
    while (!probeOut.includes("ready")) await sleep(10)
    const statuses: Array<number> = []
    for (let round = 0; round < 6; round++) {
      for (const body of hostile) {
        // The token holder's body is read (and refused), the stranger's is not read at all.
        const replies = await Promise.all([chat(token, body), chat(undefined, body)])
        for (const r of replies) {
          statuses.push(r.status)
          await r.text()
        }
        tally(TITLE, "hostile whitelist values", replies.length)
      }
    }
    probe.kill("SIGTERM")
    await probeDone
    const lags = probeOut.split("\n").filter((l) => /^\d/.test(l)).map(Number).sort((a, b) => a - b)
    console.log(
      `[chaos] /live during hostile whitelist values: ${lags.length} probes, p50 ${
        lags[lags.length >> 1]!.toFixed(1)
      } ms, slowest ${lags.slice(-5).map((l) => l.toFixed(1)).join(", ")} ms`
    )
    expect(new Set(statuses)).toEqual(new Set([400, 401]))
    expect(statuses.filter((s) => s === 400)).toHaveLength(6 * hostile.length)
    expect(lags.length).toBeGreaterThan(10)
    // A backtracking pattern stalled the loop for seconds; 100 ms leaves room for a busy 2-core machine.
    expect(lags.at(-1)!).toBeLessThan(100)
    expect(serve.output()).not.toMatch(/RangeError|Maximum call stack|\n\s+at /)
  })

  it("an anonymous flood publishes no event; the token holder's next request does", async () => {
    const credentials = [undefined, "not-a-token", `sk-${"A".repeat(42)}E`, revoked, inactive]
    const marker = `stranger-${randomBytes(6).toString("hex")}`
    const ids = new Set<string>()
    for (let i = 0; i < 40; i++) {
      const replies = await Promise.all(
        credentials.map((c) =>
          chat(c, JSON.stringify({ model: marker, messages: [{ role: "user", content: marker }] }))
        )
      )
      for (const r of replies) {
        expect([401, 403]).toContain(r.status)
        ids.add(r.headers.get("x-request-id")!)
        await r.text()
      }
    }
    tally(TITLE, "anonymous flood requests", ids.size)
    const mine = await chat(token, JSON.stringify({ model: "gpt-4o", messages: [] }))
    expect(mine.status).toBe(200)
    const id = mine.headers.get("x-request-id")!
    const lines = () => jsonLines<{ request_id: string }>(eventsPath)
    for (let i = 0; i < 200 && !lines().some((l) => l.request_id === id); i++) await sleep(50)
    expect(lines().some((l) => l.request_id === id)).toBe(true)
    expect(lines().filter((l) => ids.has(l.request_id))).toEqual([])
    expect(readFileSync(eventsPath, "utf8")).not.toContain(marker)
  })
})
