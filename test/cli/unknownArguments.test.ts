/**
 * A mistyped command line names the mistake in one line: the unknown flag or subcommand, the command it was given
 * to, and the closest valid name when one is close (src/cli/unknownArguments.ts). In-process through `runCli`, and
 * once through the built binary (after its Go-flag rewriting).
 */
import { execFile } from "node:child_process"
import { existsSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { root } from "../../src/cli/Cli.js"
import { closest, commandTree, walkArguments } from "../../src/cli/unknownArguments.js"
import { cli } from "../support/cli.js"

const oneLine = (err: string) => {
  expect(err.split("\n")).toHaveLength(1)
  return err
}

describe("unknown flags and subcommands", () => {
  it("an unknown flag is named, with the command it was given to, before any complaint about missing options", async () => {
    const r = await cli("manage", "project", "create", "--bogus-flag", "x")
    expect(r.ok).toBe(false)
    expect(oneLine(r.err)).toBe(
      "llm-proxy: unknown option --bogus-flag for \"manage project create\" " +
        "(its options: --manage-api-base-url, --management-token, --json, --name, --api-key, --provider, --allowed-model, --any-model, --max-token-minutes, --max-token-requests, --max-cost-usd, --max-tokens, --budget-period)"
    )
    expect(r.out).toBe("")
  })

  it("a flag close to a valid one is corrected (a typo, an abbreviation); a flag of another command is unknown", async () => {
    expect((await cli("manage", "project", "create", "--nmae", "a", "--api-key", "k")).err).toBe(
      "llm-proxy: unknown option --nmae for \"manage project create\" (did you mean --name?)"
    )
    expect((await cli("manage", "token", "update", "00000000-0000-4000-8000-000000000000", "--max", "5")).err).toBe(
      "llm-proxy: unknown option --max for \"manage token update\" (did you mean --max-requests?)"
    )
    expect((await cli("serve", "--hepl")).err).toBe(
      "llm-proxy: unknown option --hepl for \"serve\" (did you mean --help?)"
    )
    // Even when its value is given with `=`.
    expect((await cli("migrate", "up", "--from=dump.sql")).err).toBe(
      "llm-proxy: unknown option --from for \"migrate up\" (its options: --db, --database-url, --env)"
    )
  })

  it("an unknown subcommand is named at its own level, with the closest one or the list", async () => {
    expect(oneLine((await cli("manage", "projec", "list")).err)).toBe(
      "llm-proxy: unknown command \"projec\" for \"manage\" (did you mean project?)"
    )
    expect((await cli("manage", "token", "revok", "00000000-0000-4000-8000-000000000000")).err).toBe(
      "llm-proxy: unknown command \"revok\" for \"manage token\" (did you mean revoke?)"
    )
    expect((await cli("frobnicate")).err).toBe(
      "llm-proxy: unknown command \"frobnicate\" (one of: serve, server, dispatcher, manage, migrate, setup, chat, benchmark, prices)"
    )
  })

  it("values are not mistaken for flags or commands; positional ids are left to the command", () => {
    const tree = commandTree(root)
    const ok = (...args: Array<string>) => expect(walkArguments(tree, args).problem, args.join(" ")).toBeUndefined()
    ok("manage", "project", "create", "--name", "list", "--api-key", "--looks-like-a-flag")
    ok("manage", "project", "update", "00000000-0000-4000-8000-000000000000", "--NAME", "x", "--active")
    ok("manage", "token", "list", "--active-only", "true", "--json")
    ok("manage", "token", "update", "id", "--max-requests", "-1")
    ok("benchmark", "-r", "5", "-c", "2", "--url=http://127.0.0.1:9")
    ok("serve", "--log-level", "debug")
    expect(walkArguments(tree, ["manage", "project", "create", "--name", "x", "--json", "maybe"]).problem)
      .toBeUndefined()
    expect(walkArguments(tree, ["migrate", "up", "--db"]).problem).toBe("option --db for \"migrate up\" needs a value")
  })

  it("missing required options are one sentence naming the command", async () => {
    expect((await cli("manage", "project", "create")).err).toBe(
      "llm-proxy: missing options --name and --api-key for \"manage project create\""
    )
    expect((await cli("manage", "project", "create", "--name", "n")).err).toBe(
      "llm-proxy: missing option --api-key for \"manage project create\""
    )
  })

  it("--help, --version and a command group without its subcommand work as before", async () => {
    const help = await cli("manage", "project", "create", "--help")
    expect(help.ok).toBe(true)
    expect(help.out).toContain("--api-key")
    // An unknown subcommand with --help shows its parent's help; an unknown flag is still named.
    const parent = await cli("manage", "project", "frobnicate", "--help")
    expect(parent.ok).toBe(true)
    expect(parent.out).toContain("revoke-tokens")
    expect((await cli("manage", "project", "list", "--bogus", "--help")).err).toMatch(
      /^llm-proxy: unknown option --bogus for "manage project list"/
    )
    expect((await cli("--version")).out).toMatch(/^\d+\.\d+\.\d+/)
    const group = await cli("manage")
    expect(group.ok).toBe(true)
    expect(group.out).toContain("project")
  })

  it("knows exactly the flags each command's --help shows (the tree is read from the real commands)", async () => {
    type Node = ReturnType<typeof commandTree>
    const leaves = (n: Node, path: Array<string>): Array<[Array<string>, Node]> =>
      n.children.size === 0 ? [[path, n]] : [...n.children].flatMap(([name, c]) => leaves(c, [...path, name]))
    const all = leaves(commandTree(root), [])
    expect(all.length).toBeGreaterThan(20)
    const wrong: Array<string> = []
    for (const [path, node] of all) {
      const usage = /^\$ (.*)$/m.exec((await cli(...path, "--help")).out.replace(/\x1b\[[0-9;]*m/g, ""))?.[1] ?? ""
      const shown = new Set([...usage.matchAll(/(?<![\w-])(--?[a-z][a-z-]*)/g)].map((m) => m[1]!))
      const known = new Set([...node.flags.keys()])
      if ([...shown].sort().join(" ") !== [...known].sort().join(" ")) {
        wrong.push(
          `${path.join(" ")}: --help shows ${[...shown].sort().join(" ")}, the walker knows ${
            [...known].sort().join(" ")
          }`
        )
      }
    }
    expect(wrong).toEqual([])
  })

  it("suggests only what is close", () => {
    expect(closest("--bogus-flag", ["--name", "--api-key"])).toBeUndefined()
    expect(closest("--api-kye", ["--name", "--api-key"])).toBe("--api-key")
    expect(closest("lst", ["list", "get"])).toBe("list")
    expect(closest("x", ["list", "get"])).toBeUndefined()
  })
})

const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")

describe.skipIf(!existsSync(join(import.meta.dirname, "../../dist/cli/main.js")))("the built binary", () => {
  const run = (args: Array<string>) =>
    new Promise<{ code: number; stderr: string }>((resolve) => {
      execFile(process.execPath, [bin, ...args], {
        cwd: tmpdir(),
        env: { PATH: process.env.PATH ?? "" },
        timeout: 20_000
      }, (error, _out, stderr) => {
        resolve({ code: error ? (typeof error.code === "number" ? error.code : 1) : 0, stderr })
      })
    })

  it("names the unknown flag in one line and exits 1; a Go flag it rewrites is not one", async () => {
    const r = await run(["manage", "project", "create", "--bogus-flag", "x"])
    expect(r.code).toBe(1)
    expect(r.stderr).toBe(
      "llm-proxy: unknown option --bogus-flag for \"manage project create\" " +
        "(its options: --manage-api-base-url, --management-token, --json, --name, --api-key, --provider, --allowed-model, --any-model, --max-token-minutes, --max-token-requests, --max-cost-usd, --max-tokens, --budget-period)\n"
    )
    const go = await run([
      "manage",
      "project",
      "create",
      "--name",
      "n",
      "--openai-key",
      "sk-x",
      "--manage-api-base-url",
      "http://127.0.0.1:9",
      "--management-token",
      "t"
    ])
    expect(go.code).toBe(1)
    expect(go.stderr.split("\n")).toEqual([
      "llm-proxy: warning: --openai-key is the Go llm-proxy's flag; use --api-key",
      expect.stringMatching(/^llm-proxy: cannot reach the management API at http:\/\/127\.0\.0\.1:9/),
      ""
    ])
  })
})
