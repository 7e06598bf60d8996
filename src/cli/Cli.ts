/** The `llm-proxy` command line (@effect/cli). Every failure ends as one line on stderr and a non-zero exit. */
import { Command, ValidationError } from "@effect/cli"
import { NodeContext, NodeHttpClient } from "@effect/platform-node"
import { Console, Effect, Layer } from "effect"
import { VERSION } from "../http/App.js"
import { benchmark } from "./benchmark.js"
import { chat } from "./chat.js"
import { dispatcher } from "./dispatcher.js"
import { describeError } from "./errors.js"
import { manage } from "./manage.js"
import { configProvider, migrate, serve, server, setup } from "./serve.js"

export const root = Command.make("llm-proxy").pipe(
  Command.withDescription("LLM API gateway: withering tokens, streaming proxy, usage, audit"),
  Command.withSubcommands([serve, server, dispatcher, manage, migrate, setup, chat, benchmark])
)

const cli = Command.run(root, { name: "llm-proxy", version: VERSION })

/** Runs the CLI on `argv` (as process.argv: node, script, ...args). Exposed for in-process tests. */
export const runCli = (argv: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const provider = yield* configProvider({}, ".env")
    return yield* Effect.withConfigProvider(cli(argv), provider)
  }).pipe(
    Effect.tapError((e) =>
      // @effect/cli has already printed its own usage errors.
      ValidationError.isValidationError(e) ? Effect.void : Console.error(`llm-proxy: ${describeError(e)}`)
    ),
    Effect.provide(Layer.mergeAll(NodeContext.layer, NodeHttpClient.layerUndici))
  )

