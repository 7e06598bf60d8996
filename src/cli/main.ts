/** Entry point of the bundle (dist/cli/main.js); everything testable lives in Cli.ts. */
import { NodeRuntime } from "@effect/platform-node"
import { runCli } from "./Cli.js"

NodeRuntime.runMain(runCli(process.argv), { disableErrorReporting: true, disablePrettyLogger: true })
