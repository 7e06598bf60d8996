/** Entry point of the bundle (dist/cli/main.js); everything testable lives in Cli.ts. */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { runCli } from "./Cli.js"
import { rewriteGoArguments } from "./goAliases.js"

const { argv, warnings } = rewriteGoArguments(process.argv)
for (const w of warnings) process.stderr.write(`llm-proxy: warning: ${w}\n`)
NodeRuntime.runMain(runCli(argv), { disableErrorReporting: true, disablePrettyLogger: true })
