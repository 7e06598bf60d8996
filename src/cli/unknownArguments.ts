/**
 * Naming the mistake in a command line before @effect/cli parses it. Its parser reports an unknown flag only after
 * every required option was found (`manage project create --bogus-flag x` answered with two lines about `--name` and
 * `--api-key`), and an unknown subcommand of `manage` as one of the root. Here the words are walked down the command
 * tree first: the first flag that the command it follows does not have, or the first word that is none of a command
 * group's subcommands, is reported as one line naming it and the command, with the closest valid name when one is
 * close (docs/cli.md).
 *
 * The tree is read from the commands' descriptors (@effect/cli 0.77, pinned): `Subcommands` / `Map` / `Standard`
 * nodes, each Standard with its `options` and `args`. test/cli/unknownArguments.test.ts walks the real tree.
 */
import { Args, Options } from "@effect/cli"

interface Node {
  readonly name: string
  /** Lower-case flag name (`--name`, `-h`) → whether it takes a value. */
  readonly flags: ReadonlyMap<string, boolean>
  /** Positional arguments (`manage project get ID`). */
  readonly takesArgs: boolean
  readonly children: ReadonlyMap<string, Node>
}

// The descriptor and options instructions of @effect/cli, as far as they are read here.
type Descriptor =
  | {
    readonly _tag: "Standard"
    readonly name: string
    readonly options: Options.Options<unknown>
    readonly args: Args.Args<unknown>
  }
  | { readonly _tag: "GetUserInput"; readonly name: string }
  | { readonly _tag: "Map"; readonly command: Descriptor }
  | { readonly _tag: "Subcommands"; readonly parent: Descriptor; readonly children: ReadonlyArray<Descriptor> }

type OptionsNode =
  | { readonly _tag: "Single" }
  | { readonly _tag: "Map" | "WithDefault" | "WithFallback"; readonly options: OptionsNode }
  | { readonly _tag: "Both" | "OrElse"; readonly left: OptionsNode; readonly right: OptionsNode }
  | { readonly _tag: "KeyValueMap" | "Variadic"; readonly argumentOption: OptionsNode }
  | { readonly _tag: "Empty" }

const flagsOf = (options: OptionsNode, into: Map<string, boolean>): Map<string, boolean> => {
  switch (options._tag) {
    case "Single": {
      const single = options as unknown as Options.Options<unknown>
      const usage = Options.getUsage(single)
      const names = usage._tag === "Named" ? usage.names : []
      for (const name of names) into.set(name.toLowerCase(), !Options.isBool(single))
      return into
    }
    case "Map":
    case "WithDefault":
    case "WithFallback":
      return flagsOf(options.options, into)
    case "Both":
    case "OrElse":
      return flagsOf(options.right, flagsOf(options.left, into))
    case "KeyValueMap":
    case "Variadic":
      return flagsOf(options.argumentOption, into)
    case "Empty":
      return into
  }
}

const nodeOf = (d: Descriptor): Node => {
  switch (d._tag) {
    case "Standard":
      return {
        name: d.name,
        flags: flagsOf(d.options as unknown as OptionsNode, new Map()),
        takesArgs: Args.getMaxSize(d.args) > 0,
        children: new Map()
      }
    case "GetUserInput":
      return { name: d.name, flags: new Map(), takesArgs: false, children: new Map() }
    case "Map":
      return nodeOf(d.command)
    case "Subcommands": {
      const parent = nodeOf(d.parent)
      return { ...parent, children: new Map(d.children.map((c) => [nodeOf(c).name, nodeOf(c)])) }
    }
  }
}

/** The command tree of `command` (its descriptor read as described in the module comment). */
export const commandTree = (command: { readonly descriptor: unknown }): Node => nodeOf(command.descriptor as Descriptor)

/** Understood under every command (@effect/cli's built-ins); `true`: takes a value. */
const BUILT_IN_FLAGS: ReadonlyMap<string, boolean> = new Map([
  ["--log-level", true],
  ["--completions", true],
  ["--help", false],
  ["-h", false],
  ["--version", false],
  ["--wizard", false]
])
/**
 * With one of these the parser shows help, version or the wizard instead of running; an unknown subcommand is then
 * left to it (`manage project frobnicate --help` shows the help of `manage project`). An unknown flag is not: the
 * parser would refuse it anyway.
 */
const DEFERRED = new Set(["--help", "-h", "--version", "--wizard"])
// A boolean flag takes one of these as its value when it follows (`--json true`).
const BOOLEAN_VALUES = new Set(["true", "1", "y", "yes", "on", "false", "0", "n", "no", "off"])

const distance = (a: string, b: string): number => {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j)
  for (let i = 1; i <= a.length; i++) {
    const row = [i]
    for (let j = 1; j <= b.length; j++) {
      row[j] = Math.min(row[j - 1]! + 1, previous[j]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1))
    }
    previous = row
  }
  return previous[b.length]!
}

/**
 * The valid name closest to `word`: at most 2 edits away (as @effect/cli's own correction), or one it begins
 * (`--max` → `--max-requests`); undefined when none is close.
 */
export const closest = (word: string, names: Iterable<string>): string | undefined => {
  const bare = (s: string) => s.replace(/^-+/, "").toLowerCase()
  const w = bare(word)
  let best: { readonly name: string; readonly score: number } | undefined
  for (const name of names) {
    const n = bare(name)
    const score = n.startsWith(w) && w.length >= 3 ? 0.5 : distance(w, n)
    if (score <= 2 && score < (best?.score ?? Infinity)) best = { name, score }
  }
  return best?.name
}

const quotedPath = (path: ReadonlyArray<string>) => (path.length === 0 ? "" : ` for "${path.join(" ")}"`)

export interface Walked {
  /** The subcommands named, e.g. ["manage", "project", "create"]. */
  readonly path: ReadonlyArray<string>
  /** The one line for the first unknown flag or subcommand (or a value-taking flag left without its value). */
  readonly problem?: string
}

/**
 * Walks `args` (the words after `llm-proxy`) down the tree. No `problem` when every flag and word is known (or a
 * word is unknown and `--help`, `--version` or `--wizard` asks for something else than running: see DEFERRED).
 */
export const walkArguments = (tree: Node, args: ReadonlyArray<string>): Walked => {
  const path: Array<string> = []
  const done = (problem?: string): Walked => (problem === undefined ? { path } : { path, problem })
  const deferred = args.some((a) => DEFERRED.has(a.toLowerCase()))
  let node = tree
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if (arg === "--") return done()
    if (arg.startsWith("-") && arg.length > 1) {
      const [name, inlineValue] = arg.startsWith("--") && arg.includes("=")
        ? [arg.slice(0, arg.indexOf("=")), true]
        : [arg, false]
      const key = name.toLowerCase()
      const takesValue = node.flags.get(key) ?? BUILT_IN_FLAGS.get(key)
      if (takesValue === undefined) {
        const near = closest(name, [...node.flags.keys(), "--help"])
        const hint = near !== undefined
          ? ` (did you mean ${near}?)`
          : node.flags.size > 0
          ? ` (its options: ${[...node.flags.keys()].filter((f) => f.startsWith("--")).join(", ")})`
          : ""
        return done(`unknown option ${name}${quotedPath(path)}${hint}`)
      }
      const next = args[i + 1]
      if (takesValue && !inlineValue && next === undefined && !deferred && node.flags.has(key)) {
        return done(`option ${name}${quotedPath(path)} needs a value`)
      }
      if (!inlineValue && next !== undefined && (takesValue || BOOLEAN_VALUES.has(next.toLowerCase()))) i++
      continue
    }
    const child = node.children.get(arg)
    if (child !== undefined) {
      node = child
      path.push(arg)
      continue
    }
    // A word that is no subcommand: a positional argument where the command takes them, else a mistake.
    if (node.children.size === 0 || node.takesArgs) continue
    if (deferred) return done()
    const names = [...node.children.keys()]
    const near = closest(arg, names)
    return done(
      `unknown command "${arg}"${quotedPath(path)}${
        near !== undefined ? ` (did you mean ${near}?)` : ` (one of: ${names.join(", ")})`
      }`
    )
  }
  return done()
}

/**
 * @effect/cli's report of missing required options ("Expected to find option: '--name' Expected to find option:
 * '--api-key'") as one sentence naming the command; other messages unchanged.
 */
export const missingOptions = (message: string, path: ReadonlyArray<string>): string => {
  const missing = [...message.matchAll(/Expected to find option: '([^']+)'/g)].map((m) => m[1]!)
  if (missing.length === 0 || message.replace(/Expected to find option: '[^']+'/g, "").trim() !== "") return message
  const list = missing.length === 1 ? missing[0]! : `${missing.slice(0, -1).join(", ")} and ${missing.at(-1)!}`
  return `missing ${missing.length === 1 ? "option" : "options"} ${list}${quotedPath(path)}`
}
