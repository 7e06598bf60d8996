/** The `llm-proxy` command line (@effect/cli). Every failure ends as one line on stderr and a non-zero exit. */
import { Command, HelpDoc, ValidationError } from "@effect/cli"
import * as NodeContext from "@effect/platform-node/NodeContext"
import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Console, Context, Effect, Layer, Option } from "effect"
import { VERSION } from "../version.js"
import { benchmark } from "./benchmark.js"
import { chat } from "./chat.js"
import { dispatcher } from "./dispatcher.js"
import { CliFailure, describeError } from "./errors.js"
import { manage } from "./manage.js"
import { prices } from "./prices.js"
import { configProvider, migrate, serve, server, setup } from "./serve.js"
import { commandTree, missingOptions, walkArguments } from "./unknownArguments.js"

export const root = Command.make("llm-proxy").pipe(
  Command.withDescription("LLM API gateway: withering tokens, streaming proxy, usage, audit"),
  Command.withSubcommands([serve, server, dispatcher, manage, migrate, setup, chat, benchmark, prices])
)

const tree = commandTree(root)

/** The console the CLI was started with, given back to the commands themselves (see `runCli`). */
class CommandConsole extends Context.Tag("llm-proxy/CommandConsole")<CommandConsole, Console.Console>() {}

const cli = Command.run(
  Command.transformHandler(
    root,
    (handler) =>
      Effect.flatMap(
        Effect.serviceOption(CommandConsole),
        (console) => Option.isSome(console) ? Effect.withConsole(handler, console.value) : handler
      )
  ),
  { name: "llm-proxy", version: VERSION }
)

/** A usage error of @effect/cli (unknown option, missing value, unknown command …) as one line of plain text. */
export const usageMessage = (e: ValidationError.ValidationError): string =>
  HelpDoc.toAnsiText(e.error).replace(/\x1b\[[0-9;]*m/g, "").replace(/\s+/g, " ").trim() || e._tag

/**
 * Runs the CLI on `argv` (as process.argv: node, script, ...args). Exposed for in-process tests. Every failure —
 * usage errors too — ends as one line `llm-proxy: …` on stderr: @effect/cli prints its usage errors itself (several
 * lines with colours, through the console's `error`), so that is silenced while it parses and the line printed here;
 * the commands' own handlers get the real console back (their warnings on stderr are not silenced). An unknown flag
 * or subcommand is found before parsing (unknownArguments.ts), so that the line names it.
 */
export const runCli = (argv: ReadonlyArray<string>) => {
  const walked = walkArguments(tree, argv.slice(2))
  return Effect.gen(function*() {
    if (walked.problem !== undefined) return yield* new CliFailure({ message: walked.problem })
    const provider = yield* configProvider({}, ".env")
    const quiet = Effect.consoleWith((console) =>
      Effect.withConsole(cli(argv), { ...console, error: () => Effect.void }).pipe(
        Effect.provideService(CommandConsole, console)
      )
    )
    return yield* Effect.withConfigProvider(quiet, provider)
  }).pipe(
    Effect.tapError((e) =>
      Console.error(
        `llm-proxy: ${
          ValidationError.isValidationError(e) ? missingOptions(usageMessage(e), walked.path) : describeError(e)
        }`
      )
    ),
    Effect.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici))
  )
}
