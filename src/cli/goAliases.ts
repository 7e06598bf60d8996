/**
 * Command lines of the Go llm-proxy that have a counterpart here: rewritten before parsing (bin → main.ts), with one
 * warning per rewrite naming the form to use (docs/migrating-from-go.md). Flags are renamed only under the command
 * that has them, so a value that happens to look like a flag elsewhere is left alone.
 */

const COMMAND_ALIASES: ReadonlyArray<{ readonly from: ReadonlyArray<string>; readonly to: ReadonlyArray<string> }> = [
  { from: ["openai", "chat"], to: ["chat"] }
]

const FLAG_ALIASES: ReadonlyArray<{ readonly command: string; readonly from: string; readonly to: string }> = [
  { command: "manage project create", from: "--openai-key", to: "--api-key" },
  { command: "manage project update", from: "--openai-key", to: "--api-key" },
  { command: "manage cache purge", from: "--api-base-url", to: "--manage-api-base-url" },
  { command: "chat", from: "--proxy", to: "--base-url" },
  { command: "setup", from: "--config", to: "--file" }
]

export interface Rewritten {
  readonly argv: ReadonlyArray<string>
  readonly warnings: ReadonlyArray<string>
}

/** `argv` as process.argv (node, script, ...args). */
export const rewriteGoArguments = (argv: ReadonlyArray<string>): Rewritten => {
  const head = argv.slice(0, 2)
  let args = argv.slice(2)
  const warnings: Array<string> = []
  for (const alias of COMMAND_ALIASES) {
    if (alias.from.every((word, i) => args[i] === word)) {
      warnings.push(`\`${alias.from.join(" ")}\` is the Go llm-proxy's command; use \`${alias.to.join(" ")}\``)
      args = [...alias.to, ...args.slice(alias.from.length)]
    }
  }
  // The words before the first flag: the command, then its positional arguments (`manage project update ID`).
  const words = args.findIndex((a) => a.startsWith("-"))
  const leading = `${(words === -1 ? args : args.slice(0, words)).join(" ")} `
  const flags = FLAG_ALIASES.filter((f) => leading.startsWith(`${f.command} `))
  if (flags.length > 0) {
    args = args.map((a, i) => {
      if (i < words) return a
      const [name, ...value] = a.split("=")
      const alias = flags.find((f) => f.from === name)
      if (alias === undefined) return a
      warnings.push(`${alias.from} is the Go llm-proxy's flag; use ${alias.to}`)
      return value.length > 0 ? `${alias.to}=${value.join("=")}` : alias.to
    })
  }
  return { argv: [...head, ...args], warnings }
}
