/** The command line, run (src/cli/main.ts loads this module once the young generation is held). */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { runCli } from "./Cli.js"
import { rewriteGoArguments } from "./goAliases.js"

/** `release` lets the young generation grow again: `serve` does it itself once it listens (src/Layers.ts). */
export const run = (processArgv: ReadonlyArray<string>, release: () => void) => {
  const { argv, warnings } = rewriteGoArguments(processArgv)
  for (const w of warnings) process.stderr.write(`llm-proxy: warning: ${w}\n`)
  const command = argv[2]
  if (command !== "serve" && command !== "server") release()
  NodeRuntime.runMain(runCli(argv), { disableErrorReporting: true, disablePrettyLogger: true })
}
