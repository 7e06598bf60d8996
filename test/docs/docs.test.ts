/**
 * The docs/ pages checked against the code, where that is cheap (tables are parsed, never line numbers):
 * - configuration.md: every variable in its tables is read by the code, every variable the config reads is
 *   documented, every flag named in a `flag` column exists;
 * - proxy.md: every (status, code) of the error table is an answer the proxy has, and every answer the proxy uses
 *   is in the table;
 * - cli.md: every command it shows exists (its `--help` answers with that command's usage) with every flag shown,
 *   and a failure, usage errors included, is one line `llm-proxy: …`;
 * - every `llm_proxy_*` metric the docs name is one /metrics exposes; no "documented as those parts land" left.
 */
import { Effect } from "effect"
import { readdirSync, readFileSync, statSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { make as makeMetrics } from "../../src/observability/Metrics.js"
import { cli } from "../support/cli.js"

const root = join(import.meta.dirname, "../..")
const doc = (name: string) => readFileSync(join(root, "docs", name), "utf8")
const filesUnder = (dir: string): Array<string> =>
  readdirSync(dir).flatMap((f) => {
    const path = join(dir, f)
    return statSync(path).isDirectory() ? filesUnder(path) : path.endsWith(".ts") ? [path] : []
  })
const sources = new Map(filesUnder(join(root, "src")).map((f) => [f.slice(root.length + 1), readFileSync(f, "utf8")]))
const inSource = (literal: string) => [...sources.values()].some((text) => text.includes(literal))

/** Markdown tables: each a header (lower-cased cell texts) and its rows of cells (`\|` kept as `|` inside a cell). */
const tables = (markdown: string) => {
  const out: Array<{ header: Array<string>; rows: Array<Array<string>>; section: string }> = []
  let section = ""
  const lines = markdown.split("\n")
  const cells = (line: string) =>
    line.trim().replace(/^\||\|$/g, "").split(/(?<!\\)\|/).map((c) => c.trim().replace(/\\\|/g, "|"))
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.startsWith("#")) section = lines[i]!
    if (!lines[i]!.trim().startsWith("|") || !/^\s*\|[\s:|-]+\|\s*$/.test(lines[i + 1] ?? "")) continue
    const table = { header: cells(lines[i]!).map((c) => c.toLowerCase()), rows: [] as Array<Array<string>>, section }
    for (i += 2; i < lines.length && lines[i]!.trim().startsWith("|"); i++) table.rows.push(cells(lines[i]!))
    out.push(table)
  }
  return out
}

const code = (cell: string | undefined) => /^`([^`]+)`/.exec(cell ?? "")?.[1]

describe("docs/configuration.md", () => {
  const variables = tables(doc("configuration.md")).flatMap((t) =>
    t.header[0] === "variable" ? t.rows.map((r) => ({ name: code(r[0]), row: r, header: t.header })) : []
  )

  it("documents the variables in tables (sanity: the parser found them)", () => {
    expect(variables.length).toBeGreaterThan(60)
    for (const v of variables) expect(v.name, v.row.join(" | ")).toMatch(/^[A-Z][A-Z0-9_]+$/)
  })

  it("every variable it documents is read by the code", () => {
    const unread = variables.filter((v) => !inSource(`"${v.name}"`)).map((v) => v.name)
    expect(unread).toEqual([])
  })

  it("every variable the configuration reads is documented", () => {
    const text = doc("configuration.md")
    const read = [...sources].filter(([f]) => f.startsWith("src/config/")).flatMap(([, t]) =>
      [...t.matchAll(/Config\.\w+\("([A-Z][A-Z0-9]*_[A-Z0-9_]+)"|\w+\("([A-Z][A-Z0-9]*_[A-Z0-9_]+)"/g)].map((m) =>
        m[1] ?? m[2]!
      )
    )
    expect(read.length).toBeGreaterThan(60)
    expect([...new Set(read)].filter((name) => !new RegExp(`\\b${name}\\b`).test(text))).toEqual([])
  })

  it("every flag of a `flag` column exists in the CLI", () => {
    const flags = variables.flatMap((v) => {
      const column = v.header.indexOf("flag")
      return column < 0 ? [] : [...(v.row[column] ?? "").matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]!)
    })
    expect(flags.length).toBeGreaterThan(15)
    const cliSources = [...sources].filter(([f]) => f.startsWith("src/cli/")).map(([, t]) => t).join("\n")
    expect(flags.filter((f) => !cliSources.includes(`"${f}"`))).toEqual([])
  })
})

describe("docs/proxy.md error table", () => {
  const table = tables(doc("proxy.md")).find((t) => t.header.join(",") === "status,code,error,when")
  const rows = (table?.rows ?? []).map((r) => ({ status: Number(r[0]), code: code(r[1]) }))
  const policy = sources.get("src/proxy/policy.ts") ?? ""

  /** The proxy's own answers (`Answers` in policy.ts): status and code of every `answer(…)` call, however wrapped. */
  const answers = (() => {
    const start = policy.indexOf("export const Answers")
    const block = policy.slice(start, policy.indexOf("} as const", start)).replace(/\s+/g, " ")
    const entry = /(\w+): (?:\([^)]*\)(?:: \w+)? => (?:\(\{ \.\.\.)?)?answer\( ?(\d{3}),.*?"([a-z_]+)"/g
    return [...block.matchAll(entry)].map((m) => ({ key: m[1]!, status: Number(m[2]), code: m[3]! }))
  })()

  it("parses (sanity)", () => {
    expect(rows.length).toBeGreaterThan(15)
    expect(answers.length).toBeGreaterThan(15)
  })

  it("every status and code in the table is an answer the proxy has", () => {
    const known = (s: number, c: string) =>
      answers.some((a) => a.status === s && a.code === c) ||
      [...sources.values()].some((t) => t.split("\n").some((l) => l.includes(String(s)) && l.includes(`"${c}"`)))
    expect(rows.filter((r) => !known(r.status, r.code ?? ""))).toEqual([])
  })

  it("every answer the proxy uses is in the table", () => {
    const others = [...sources].filter(([f]) => f !== "src/proxy/policy.ts").map(([, t]) => t).join("\n") +
      policy.slice(policy.indexOf("} as const"))
    const used = answers.filter((a) => new RegExp(`Answers\\.${a.key}\\b`).test(others))
    expect(used.length).toBeGreaterThan(15)
    expect(used.filter((a) => !rows.some((r) => r.status === a.status && r.code === a.code))).toEqual([])
  })
})

describe("docs/cli.md", () => {
  const text = doc("cli.md")

  /** Every command the page shows (headings, code blocks, tables), with the flags shown for it. */
  const commands = (() => {
    const found = new Map<string, Set<string>>()
    const add = (words: Array<string>, flags: Iterable<string>) => {
      const key = words.join(" ")
      const set = found.get(key) ?? new Set<string>()
      for (const f of flags) set.add(f)
      found.set(key, set)
    }
    const flagsOf = (s: string) => [...s.matchAll(/--([a-z][a-z-]*)/g)].map((m) => m[1]!)
    /** `manage token get ID [--x]` → [["manage", "token", "get"]]; `migrate up|status` → two commands */
    const pathsOf = (s: string): Array<Array<string>> => {
      let paths: Array<Array<string>> = [[]]
      for (const token of s.trim().split(/\s+/)) {
        if (!/^[a-z][a-z-]*(\|[a-z][a-z-]*)*$/.test(token)) break
        paths = paths.flatMap((p) => token.split("|").map((alt) => [...p, alt]))
      }
      return paths.filter((p) => p.length > 0)
    }
    let section: Array<Array<string>> = []
    let inCode = false
    let last: Array<Array<string>> = []
    for (const line of text.split("\n")) {
      const heading = /^## `([^`]+)`(?: \(alias `([^`]+)`\))?/.exec(line)
      if (heading) {
        section = [...pathsOf(heading[1]!), ...(heading[2] ? pathsOf(heading[2]) : [])]
        for (const p of section) add(p, [])
        continue
      }
      if (line.startsWith("## ")) section = []
      if (line.startsWith("```")) {
        inCode = !inCode
        continue
      }
      if (inCode) {
        const invocation = /(?:^|\|\s*)(?:npx )?llm-proxy (.*)$/.exec(line)
        if (invocation) {
          last = pathsOf(invocation[1]!)
          for (const p of last) add(p, flagsOf(invocation[1]!))
        } else if (/^\s+\[/.test(line)) { for (const p of last) add(p, flagsOf(line)) }
        continue
      }
      const first = code(line.startsWith("|") ? line.slice(1).trim() : undefined)
      if (first?.startsWith("manage ")) { for (const p of pathsOf(first)) add(p, flagsOf(first.replace(/\\\|/g, "|"))) }
      // an option table of the section's command: | `--flag` | …
      else if (first?.startsWith("--")) { for (const p of section) add(p, flagsOf(first)) }
    }
    return found
  })()

  const help = async (path: string) => {
    const r = await cli(...path.split(" "), "--help")
    return r.out.replace(/\x1b\[[0-9;]*m/g, "")
  }

  it("shows the commands (sanity: the parser found them)", () => {
    for (
      const c of [
        "serve",
        "server",
        "dispatcher",
        "migrate up",
        "migrate status",
        "setup",
        "chat",
        "manage project create",
        "manage audit show"
      ]
    ) {
      expect(commands.has(c), c).toBe(true)
    }
    expect(commands.get("dispatcher")).toContain("metrics-addr")
    expect(commands.get("manage project update")).toContain("inactive")
  })

  it("every command it shows exists, with every flag it shows", async () => {
    const problems: Array<string> = []
    for (const [path, flags] of commands) {
      const out = await help(path)
      const usage = /^\$ (.*)$/m.exec(out)?.[1] ?? ""
      // --help of a command that does not exist prints its parent's usage instead
      if (!usage.startsWith(`${path.split(" ").at(-1)!} `) && usage !== path.split(" ").at(-1)) {
        problems.push(`${path}: no such command (usage: ${usage})`)
        continue
      }
      for (const f of flags) if (!new RegExp(`--${f}(?![a-z-])`).test(out)) problems.push(`${path}: no --${f}`)
    }
    expect(problems).toEqual([])
  }, 60_000)

  it("the check can fail: a command or a flag that does not exist is found out", async () => {
    expect(/^\$ (.*)$/m.exec(await help("manage project frobnicate"))?.[1]).toMatch(/^project\b/)
    expect(await help("setup")).not.toMatch(/--frobnicate(?![a-z-])/)
  })

  it("every failure prints one line `llm-proxy: …`, usage errors included, and fails", async () => {
    expect(text).toMatch(/every failure prints one line to stderr\s+\(`llm-proxy: <what went wrong>`\)/)
    for (
      const args of [["serve", "--bogus"], ["frobnicate"], ["dispatcher", "--service", "nope"], [
        "manage",
        "project",
        "create"
      ]]
    ) {
      const r = await cli(...args)
      expect(r.ok, args.join(" ")).toBe(false)
      expect(r.err.split("\n"), args.join(" ")).toHaveLength(1)
      expect(r.err, args.join(" ")).toMatch(/^llm-proxy: \S/)
      expect(r.err).not.toMatch(/\x1b/)
    }
    expect((await cli("serve", "--bogus")).err).toMatch(
      /^llm-proxy: unknown option --bogus for "serve" \(its options: --addr, /
    )
  })
})

describe("docs/*.md", () => {
  const all = readdirSync(join(root, "docs")).filter((f) => f.endsWith(".md")).map((f) => [f, doc(f)] as const)

  it("every llm_proxy_* metric they name is one /metrics exposes", async () => {
    const metrics = await Effect.runPromise(makeMetrics({ processMetrics: false }))
    const exposed = new Set(
      [...(await Effect.runPromise(metrics.prometheus)).matchAll(/^# TYPE (\S+)/gm)].map((m) => m[1]!)
    )
    expect(exposed.size).toBeGreaterThan(20)
    // whole names only (`llm_proxy_dispatcher_*` is a family); the admin session cookie and the PostgreSQL
    // invalidation channel share the prefix
    const notMetrics = new Set([
      "llm_proxy_session",
      "llm_proxy_token_invalidations",
      "llm_proxy_token_invalidation_acks"
    ])
    const named = new Set(all.flatMap(([, t]) => [...t.matchAll(/\bllm_proxy_[a-z0-9_]+\b(?!\*)/g)].map((m) => m[0])))
    const missing = [...named].filter((n) =>
      !notMetrics.has(n) && !exposed.has(n) && !exposed.has(n.replace(/_(bucket|sum|count)$/, ""))
    )
    expect(named.size).toBeGreaterThan(20)
    expect(missing).toEqual([])
  })

  it("no section is left \"documented as those parts land\"", () => {
    expect(all.filter(([, t]) => /as those parts land/i.test(t)).map(([f]) => f)).toEqual([])
  })
})
