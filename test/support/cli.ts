/** Running the CLI in-process, as the CLI tests do. */
import { Effect, Exit } from "effect"
import { runCli } from "../../src/cli/Cli.js"

export interface Run {
  readonly ok: boolean
  readonly out: string
  readonly err: string
}

/** Runs `llm-proxy ARGS…` in-process (through `runCli`, counted in coverage) with stdout/stderr captured. */
export const cli = async (...args: Array<string>): Promise<Run> => {
  const out: Array<string> = []
  const err: Array<string> = []
  const capture = {
    ...globalThis.console,
    log: (...a: Array<unknown>) => void out.push(a.map(String).join(" ")),
    error: (...a: Array<unknown>) => void err.push(a.map(String).join(" "))
  }
  const exit = await Effect.runPromiseExit(
    runCli(["node", "llm-proxy", ...args]).pipe(
      Effect.withConsole({
        ...(await Effect.runPromise(Effect.console)),
        log: (...a: ReadonlyArray<unknown>) => Effect.sync(() => capture.log(...a)),
        error: (...a: ReadonlyArray<unknown>) => Effect.sync(() => capture.error(...a)),
        unsafe: capture
      } as never)
    )
  )
  return { ok: Exit.isSuccess(exit), out: out.join("\n"), err: err.join("\n") }
}
