/** `llm-proxy dispatcher` and `serve --file-event-log` as users run them (in-process through runCli). */
import { Effect, Exit } from "effect"
import { afterEach, describe, expect, it } from "vitest"
import { runCli } from "../../src/cli/Cli.js"

const cli = async (...args: Array<string>) => {
  const out: Array<string> = []
  const err: Array<string> = []
  const capture = {
    ...globalThis.console,
    log: (...a: Array<unknown>) => void out.push(a.map(String).join(" ")),
    error: (...a: Array<unknown>) => void err.push(a.map(String).join(" "))
  }
  const exit = await Effect.runPromiseExit(
    runCli(["node", "llm-proxy", ...args]).pipe(
      Effect.withConsole({
        ...(await Effect.runPromise(Effect.console)),
        log: (...a: ReadonlyArray<unknown>) => Effect.sync(() => capture.log(...a)),
        error: (...a: ReadonlyArray<unknown>) => Effect.sync(() => capture.error(...a)),
        unsafe: capture
      } as never)
    )
  )
  return { ok: Exit.isSuccess(exit), out: out.join("\n"), err: err.join("\n") }
}

const saved = { ...process.env }
afterEach(() => {
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k]
  Object.assign(process.env, saved)
})

describe("llm-proxy dispatcher", () => {
  it("--help lists its options", async () => {
    const r = await cli("dispatcher", "--help")
    for (const o of ["--service", "--endpoint", "--api-key", "--batch-size", "--flush-interval", "--buffer", "--consumer-group", "--dead-letter", "--claim-idle"]) {
      expect(r.out).toContain(o)
    }
  })

  it.each([
    [[], {}, "LLM_PROXY_EVENT_BUS: the dispatcher runs as its own process and needs redis-streams"],
    [["--service", "lunary"], { LLM_PROXY_EVENT_BUS: "redis-streams" }, "LLM_PROXY_API_KEY: required for the lunary backend"],
    [["--batch-size", "0"], { LLM_PROXY_EVENT_BUS: "redis-streams" }, "DISPATCHER_BATCH_SIZE: expected a positive integer"],
    [["--flush-interval", "soon"], { LLM_PROXY_EVENT_BUS: "redis-streams" }, "DISPATCHER_FLUSH_INTERVAL"],
    [["--service", "helicone", "--api-key", "k", "--endpoint", "not a url"], { LLM_PROXY_EVENT_BUS: "redis-streams" }, "DISPATCHER_ENDPOINT: expected an http(s) URL"],
    [[], { LLM_PROXY_EVENT_BUS: "kafka" }, "LLM_PROXY_EVENT_BUS: expected in-memory or redis-streams"]
  ])("%j %j → one line naming the setting", async (args, env, message) => {
    Object.assign(process.env, env)
    const r = await cli("dispatcher", ...args)
    expect(r.ok).toBe(false)
    expect(r.err).toContain(message)
    expect(r.err.split("\n")).toHaveLength(1)
    expect(r.err).not.toContain("secret")
  })

  it("serve --help shows --file-event-log", async () => {
    expect((await cli("serve", "--help")).out).toContain("--file-event-log")
  })
})
