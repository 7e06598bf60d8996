/**
 * Logs: real traffic (management API + proxy in front of the mock upstream, successes and every kind of failure)
 * at LOG_LEVEL=debug, in JSON and in pretty format, with ALL output of the process captured (console and raw
 * stdout/stderr writes). The output must contain none of the secrets the run used, and one access-log line per
 * proxied request with the fields operators need.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { LogFormat } from "../../src/config/AppConfig.js"
import { type BackendInstance, backends, Client, providerKey } from "../http/harness.js"
import { call, chatBody, createProject, createToken, startStack } from "../proxy/stack.js"
import { chatChunks, json, reset, sse } from "../support/mockUpstream.js"
import { withEncryptionKey } from "../support/server.js"

const sqlite = backends.find((b) => b.name === "sqlite")!
const ENCRYPTION_KEY = Buffer.alloc(32, 42).toString("base64")

interface Capture {
  readonly text: () => string
  readonly stop: () => void
}

/** Captures everything written through console.* and process.stdout/stderr from now on. */
const captureOutput = (): Capture => {
  const chunks: Array<string> = []
  const c = globalThis.console as unknown as Record<string, (...a: Array<unknown>) => void>
  const methods = ["log", "info", "warn", "error", "debug", "trace"] as const
  const saved = methods.map((m) => c[m]!)
  for (const m of methods) {
    c[m] = (...a: Array<unknown>) =>
      void chunks.push(a.map((x) => (typeof x === "string" ? x : JSON.stringify(x) ?? String(x))).join(" "))
  }
  const out = process.stdout.write.bind(process.stdout)
  const err = process.stderr.write.bind(process.stderr)
  const grab = (chunk: unknown) => {
    chunks.push(typeof chunk === "string" ? chunk : Buffer.from(chunk as Uint8Array).toString("utf8"))
    return true
  }
  process.stdout.write = grab as typeof process.stdout.write
  process.stderr.write = grab as typeof process.stderr.write
  return {
    text: () => chunks.join("\n"),
    stop: () => {
      methods.forEach((m, i) => (c[m] = saved[i]!))
      process.stdout.write = out
      process.stderr.write = err
    }
  }
}

interface Run {
  readonly output: string
  readonly secrets: ReadonlyArray<readonly [string, string]>
  readonly proxied: number
  readonly ids: { readonly projectId: string; readonly tokenId: string }
}

/** Every request kind we can produce, with the secrets each one carries. */
const traffic = async (format: LogFormat): Promise<Run> => {
  const backend: BackendInstance = await sqlite.create()
  const capture = captureOutput()
  const secrets: Array<readonly [string, string]> = [["ENCRYPTION_KEY", ENCRYPTION_KEY]]
  let proxied = 0
  let ids = { projectId: "", tokenId: "" }
  try {
    const stack = await startStack(backend, {
      ...withEncryptionKey(ENCRYPTION_KEY),
      logLevel: "debug",
      logFormat: format
    })
    const { manage, mock } = stack
    const url = stack.server.url
    const v1 = async (options: Parameters<typeof call>[2], expected: number) => {
      proxied++
      expect((await call(url, "/v1/chat/completions", options)).status).toBe(expected)
    }
    try {
      secrets.push(["management token", stack.server.token])
      // Management: a failed login, create, rotate the key, tokens.
      const wrong = "wrong-management-token-" + crypto.randomUUID()
      secrets.push(["wrong management token", wrong])
      expect((await new Client(url, wrong).get("/manage/projects")).status).toBe(401)
      const p = await createProject(manage)
      secrets.push(["provider key", p.apiKey])
      const rotated = providerKey()
      secrets.push(["rotated provider key", rotated])
      expect((await manage.patch(`/manage/projects/${p.projectId}`, { api_key: rotated })).status).toBe(200)
      const t = await createToken(manage, p.projectId)
      const limited = await createToken(manage, p.projectId, { max_requests: 1 })
      const revoked = await createToken(manage, p.projectId)
      secrets.push(["proxy token", t.token], ["limited proxy token", limited.token], [
        "revoked proxy token",
        revoked.token
      ])
      ids = { projectId: p.projectId, tokenId: t.tokenId }
      expect((await manage.get(`/manage/tokens?project_id=${p.projectId}`)).status).toBe(200)
      expect((await manage.get(`/manage/tokens/${t.tokenId}`)).status).toBe(200)
      expect((await manage.delete(`/manage/tokens/${revoked.tokenId}`)).status).toBe(204)
      // Proxy: success, stream, quota, revoked, unknown and malformed tokens, upstream 401, upstream reset.
      await v1({ token: t.token, body: chatBody() }, 200)
      mock.enqueue(sse(chatChunks(["x", "y"])))
      await v1({ token: t.token, body: chatBody({ stream: true }) }, 200)
      await v1({ token: limited.token, body: chatBody() }, 200)
      await v1({ token: limited.token, body: chatBody() }, 429)
      await v1({ token: revoked.token, body: chatBody() }, 401)
      const unknown = "sk-" + "Q".repeat(43)
      secrets.push(["unknown proxy token", unknown])
      await v1({ token: unknown, body: chatBody() }, 401)
      const garbage = "garbage-secret-" + crypto.randomUUID()
      secrets.push(["malformed credential", garbage])
      await v1({ token: garbage, body: chatBody() }, 401)
      mock.enqueue(json({ error: { message: "Incorrect API key provided" } }, { status: 401 }))
      await v1({ token: t.token, body: chatBody() }, 401)
      mock.enqueue(reset())
      await v1({ token: t.token, body: chatBody() }, 502)
      // The upstream saw the rotated key: the secret really went through the process.
      expect(mock.requests.some((r) => r.headers.authorization === `Bearer ${rotated}`)).toBe(true)
    } finally {
      await stack.close()
    }
  } finally {
    capture.stop()
    await backend.cleanup()
  }
  return { output: capture.text(), secrets, proxied, ids }
}

describe("logs under real traffic (LOG_LEVEL=debug)", () => {
  let jsonRun: Run
  let prettyRun: Run

  beforeAll(async () => {
    jsonRun = await traffic("json")
    prettyRun = await traffic("pretty")
  }, 60_000)
  afterAll(() => undefined)

  it("contain none of the secrets used, in JSON or pretty format", () => {
    for (const run of [jsonRun, prettyRun]) {
      expect(run.output.length).toBeGreaterThan(1000)
      for (const [name, secret] of run.secrets) expect(run.output.includes(secret), name).toBe(false)
    }
  })

  it("write one JSON access-log line per proxied request with ids, status, durations, model, usage and cache", () => {
    const lines = jsonRun.output.split("\n").flatMap((l) => {
      try {
        const o = JSON.parse(l)
        return o && o.message === "access" ? [o as { annotations: Record<string, unknown>; logLevel: string }] : []
      } catch {
        return []
      }
    })
    expect(lines).toHaveLength(jsonRun.proxied)
    expect(lines.every((l) => l.logLevel === "INFO")).toBe(true)
    const ok = lines.map((l) => l.annotations).filter((a) =>
      a["token_id"] === jsonRun.ids.tokenId && a["status"] === 200
    )
    expect(ok).toHaveLength(2)
    for (const a of ok) {
      expect(a).toMatchObject({
        method: "POST",
        path: "/v1/chat/completions",
        project_id: jsonRun.ids.projectId,
        provider: "openai",
        model: "gpt-4o-mini",
        cache: "none",
        attempts: 1,
        key_index: 0
      })
      expect(a["retried"]).toBeUndefined()
      expect(typeof a["request_id"]).toBe("string")
      expect(typeof a["duration_ms"]).toBe("number")
      expect(typeof a["overhead_ms"]).toBe("number")
      expect(typeof a["upstream_ms"]).toBe("number")
      expect(a["prompt_tokens"]).toBeGreaterThan(0)
      expect(a["completion_tokens"]).toBeGreaterThan(0)
    }
    expect(ok.map((a) => a["stream"]).sort()).toEqual([false, true])
    const statuses = lines.map((l) => l.annotations["status"]).sort()
    expect(statuses).toEqual([200, 200, 200, 401, 401, 401, 401, 429, 502])
    const quota = lines.find((l) => l.annotations["status"] === 429)!.annotations
    expect(quota["code"]).toBe("rate_limit_exceeded")
    const bad = lines.find((l) => l.annotations["status"] === 502)!.annotations
    expect(bad).toMatchObject({ code: "upstream_error" })
  })
})
