/**
 * The Go llm-proxy's environment names and command-line flags that have a counterpart here: they work, and each
 * use prints a warning naming the new one.
 */
import { NodeContext } from "@effect/platform-node"
import { Effect } from "effect"
import { execFile } from "node:child_process"
import { existsSync, mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { rewriteGoArguments } from "../../src/cli/goAliases.js"
import { configProvider } from "../../src/cli/serve.js"
import { dispatcherConfig, GO_ENV_ALIASES, resolveGoEnvAliases } from "../../src/config/AppConfig.js"
import { cli } from "../support/cli.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
const built = existsSync(join(import.meta.dirname, "../../dist/cli/main.js"))

/** Sets environment variables for the duration of `f` (the CLI reads process.env), then restores them. */
const withEnv = async <A>(vars: Record<string, string>, f: () => Promise<A>): Promise<A> => {
  const before = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]))
  Object.assign(process.env, vars)
  try {
    return await f()
  } finally {
    for (const [k, v] of Object.entries(before)) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  }
}

describe("Go environment names", () => {
  it("a Go name supplies the value of the name here when that is unset, with a warning naming it", () => {
    const env: Record<string, string> = {
      REDIS_STREAM_CLAIM_TIME: "45s",
      PROXY_TOKEN: "sk-x",
      LLM_PROXY_TOKEN: "sk-y",
      REDIS_CONSUMER_GROUP: " "
    }
    const r = resolveGoEnvAliases((n) => env[n])
    expect(Object.fromEntries(r.values)).toEqual({ REDIS_STREAM_CLAIM_IDLE: "45s" })
    expect(r.warnings).toEqual([
      "REDIS_STREAM_CLAIM_TIME is the Go llm-proxy's name; use REDIS_STREAM_CLAIM_IDLE",
      "PROXY_TOKEN (the Go llm-proxy's name) is ignored: LLM_PROXY_TOKEN is set"
    ])
    expect(GO_ENV_ALIASES.every(([goName, name]) => goName !== name)).toBe(true)
  })

  it("the dispatcher reads REDIS_STREAM_CLAIM_TIME and REDIS_CONSUMER_GROUP; its own names win", async () => {
    const load = () =>
      Effect.runPromise(
        Effect.flatMap(configProvider({}, "/nonexistent/.env"), (p) => Effect.withConfigProvider(dispatcherConfig, p))
          .pipe(
            Effect.provide(NodeContext.layer)
          )
      )
    const c = await withEnv(
      {
        LLM_PROXY_EVENT_BUS: "redis-streams",
        REDIS_STREAM_CLAIM_TIME: "45s",
        REDIS_CONSUMER_GROUP: "llm-proxy-dispatchers"
      },
      load
    )
    expect([c.events.claimIdleMs, c.group]).toEqual([45_000, "llm-proxy-dispatchers"])
    const own = await withEnv(
      { LLM_PROXY_EVENT_BUS: "redis-streams", REDIS_STREAM_CLAIM_TIME: "45s", REDIS_STREAM_CLAIM_IDLE: "10s" },
      load
    )
    expect(own.events.claimIdleMs).toBe(10_000)
  })

  describe("through the CLI", () => {
    let server: TestServer
    beforeAll(async () => {
      server = await startServer(
        testConfig({ _tag: "sqlite", path: join(mkdtempSync(join(tmpdir(), "llm-proxy-alias-")), "a.db") })
      )
    })
    afterAll(() => server.close())

    it("MANAGEMENT_API_BASE_URL points `manage` at the API, with a warning on stderr", async () => {
      const r = await withEnv(
        { MANAGEMENT_API_BASE_URL: server.url, MANAGEMENT_TOKEN: server.token },
        () => cli("manage", "project", "list", "--json")
      )
      expect(r.ok).toBe(true)
      expect(JSON.parse(r.out)).toEqual([])
      expect(r.err).toContain(
        "llm-proxy: warning: MANAGEMENT_API_BASE_URL is the Go llm-proxy's name; use MANAGE_API_BASE_URL"
      )
    })
  })
})

describe("Go command lines", () => {
  const argv = (...a: Array<string>) => ["node", "llm-proxy", ...a]

  it.each([
    [
      ["manage", "project", "create", "--name", "a", "--openai-key", "sk-k"],
      ["manage", "project", "create", "--name", "a", "--api-key", "sk-k"],
      ["--openai-key is the Go llm-proxy's flag; use --api-key"]
    ],
    [
      ["manage", "project", "update", "p1", "--openai-key=sk-k=1"],
      ["manage", "project", "update", "p1", "--api-key=sk-k=1"],
      ["--openai-key is the Go llm-proxy's flag; use --api-key"]
    ],
    [
      ["openai", "chat", "--proxy", "http://h:1", "--token", "sk-t"],
      ["chat", "--base-url", "http://h:1", "--token", "sk-t"],
      ["`openai chat` is the Go llm-proxy's command; use `chat`", "--proxy is the Go llm-proxy's flag; use --base-url"]
    ],
    [["manage", "cache", "purge", "--api-base-url", "http://h"], [
      "manage",
      "cache",
      "purge",
      "--manage-api-base-url",
      "http://h"
    ], [
      "--api-base-url is the Go llm-proxy's flag; use --manage-api-base-url"
    ]],
    [["setup", "--config", "x.env"], ["setup", "--file", "x.env"], ["--config is the Go llm-proxy's flag; use --file"]],
    // Only under the command that has the flag.
    [["manage", "token", "generate", "--openai-key", "x"], ["manage", "token", "generate", "--openai-key", "x"], []],
    [["serve", "--addr", ":1"], ["serve", "--addr", ":1"], []]
  ])("%j → %j", (given, expected, warnings) => {
    expect(rewriteGoArguments(argv(...given))).toEqual({ argv: argv(...expected), warnings })
  })

  describe.skipIf(!built)("the built binary", () => {
    let server: TestServer
    beforeAll(async () => {
      server = await startServer(
        testConfig({ _tag: "sqlite", path: join(mkdtempSync(join(tmpdir(), "llm-proxy-alias-bin-")), "a.db") })
      )
    })
    afterAll(() => server.close())

    it("`manage project create --openai-key` creates the project with that key and warns on stderr", async () => {
      const { stdout, stderr } = await new Promise<{ stdout: string; stderr: string }>((resolve, reject) =>
        execFile(
          process.execPath,
          [
            bin,
            "manage",
            "project",
            "create",
            "--name",
            "from-go",
            "--openai-key",
            "sk-from-go-cli-123456",
            "--json",
            "--manage-api-base-url",
            server.url,
            "--management-token",
            server.token
          ],
          { env: { PATH: process.env.PATH ?? "" }, cwd: tmpdir() },
          (e, stdout, stderr) => (e ? reject(new Error(`${e.message}: ${stderr}`)) : resolve({ stdout, stderr }))
        )
      )
      expect(JSON.parse(stdout)).toMatchObject({ name: "from-go", api_key: "sk-from-...3456" })
      expect(stderr).toBe("llm-proxy: warning: --openai-key is the Go llm-proxy's flag; use --api-key\n")
    })
  })
})
