/**
 * The built binary's data plane: `serve` proxies /v1 to OPENAI_API_URL with a real token, writes batched usage on
 * SIGTERM, and refuses to start on a providers file that does not validate (one line naming it).
 */
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { existsSync, mkdtempSync, writeFileSync } from "node:fs"
import { createRequire } from "node:module"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { newManagementToken } from "../support/managementToken.js"
import { type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

const start = (cwd: string, env: Record<string, string>) =>
  new Promise<{ child: ChildProcess; url: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "serve"], {
      cwd,
      env: { PATH: process.env.PATH ?? "", LOG_FORMAT: "json", ...env }
    })
    let output = ""
    const onData = (d: Buffer) => {
      output += d.toString()
      const m = /listening on (http:\/\/[^"\s]+)/.exec(output)
      if (m?.[1]) resolve({ child, url: m[1] })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`serve exited with ${code}: ${output}`)))
  })

interface Db {
  prepare(sql: string): { get(...p: ReadonlyArray<unknown>): Record<string, unknown> }
  close(): void
}
const Sqlite = createRequire(import.meta.url)("better-sqlite3") as new(path: string, o: { readonly: boolean }) => Db

describe.skipIf(!built)("the built binary's proxy", () => {
  let mock: MockUpstream
  beforeAll(async () => {
    mock = await startMockUpstream()
  })
  afterAll(() => mock.close())

  it("proxies /v1 to OPENAI_API_URL with the project key and writes usage at shutdown", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-bin-proxy-"))
    const mt = newManagementToken("binary-proxy")
    // A long flush interval: only the shutdown flush can write the counters.
    const { child, url } = await start(cwd, {
      LISTEN_ADDR: "127.0.0.1:0",
      MANAGEMENT_TOKEN: mt,
      OPENAI_API_URL: mock.url,
      USAGE_FLUSH_INTERVAL: "10m"
    })
    const auth = { authorization: `Bearer ${mt}`, "content-type": "application/json" }
    const project = await (await fetch(`${url}/manage/projects`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ name: "bin", api_key: "sk-binary-upstream-key-1" })
    })).json() as { id: string }
    const token = await (await fetch(`${url}/manage/tokens`, {
      method: "POST",
      headers: auth,
      body: JSON.stringify({ project_id: project.id, duration_minutes: 5 })
    })).json() as { id: string; token: string }
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${token.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [] })
      })
      expect(r.status).toBe(200)
      expect(r.headers.get("server-timing")).toMatch(/^proxy;dur=/)
    }
    expect(mock.requests.at(-1)!.headers.authorization).toBe("Bearer sk-binary-upstream-key-1")
    const code = await new Promise<number | null>((resolve) => {
      child.removeAllListeners("exit")
      child.on("exit", resolve)
      child.kill("SIGTERM")
    })
    expect(code).toBe(0)
    const db = new Sqlite(join(cwd, "data/llm-proxy.db"), { readonly: true })
    try {
      expect(
        db.prepare("SELECT request_count, prompt_tokens, completion_tokens FROM tokens WHERE id = ?").get(token.id)
      ).toEqual({
        request_count: 3,
        prompt_tokens: 27,
        completion_tokens: 9
      })
    } finally {
      db.close()
    }
  })

  it("a providers file that does not validate stops serve with one line naming it", async () => {
    const cwd = mkdtempSync(join(tmpdir(), "llm-proxy-bin-yaml-"))
    writeFileSync(
      join(cwd, "providers.yaml"),
      "apis:\n  openai:\n    base_url: https://api.openai.com\n    allowed_methods: [GET]\n"
    )
    const r = await new Promise<{ code: number; stderr: string }>((resolve) =>
      execFile(process.execPath, [bin, "serve"], {
        cwd,
        env: {
          PATH: process.env.PATH ?? "",
          LISTEN_ADDR: "127.0.0.1:0",
          MANAGEMENT_TOKEN: newManagementToken(),
          API_CONFIG_PATH: "providers.yaml",
          LOG_LEVEL: "error"
        },
        timeout: 20_000
      }, (error, _stdout, stderr) => resolve({ code: error ? 1 : 0, stderr }))
    )
    expect(r.code).not.toBe(0)
    expect(r.stderr.trim()).toBe(
      "llm-proxy: API_CONFIG_PATH (providers.yaml): apis.openai.allowed_endpoints: is missing"
    )
  })
})
