/**
 * Stopping child processes so that a suite leaves nothing running: a signal, a bounded wait for the exit, then
 * SIGKILL. A process that ignores SIGTERM (or hangs in its shutdown, e.g. a dispatcher whose Redis is already gone)
 * is killed instead of outliving the test run.
 */
import type { ChildProcess } from "node:child_process"

export interface Exit {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  /** True when the process had to be killed with SIGKILL after the grace period. */
  readonly killed: boolean
}

const exitOf = (child: ChildProcess): Promise<Exit> =>
  child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve({ code: child.exitCode, signal: child.signalCode, killed: false })
    : new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal, killed: false })))

/** Sends `signal` (SIGTERM), waits up to `graceMs` for the exit, then SIGKILLs and waits for that exit. */
export const stopProcess = async (
  child: ChildProcess,
  options: { readonly signal?: NodeJS.Signals; readonly graceMs?: number } = {}
): Promise<Exit> => {
  const exited = exitOf(child)
  if (child.exitCode !== null || child.signalCode !== null) return exited
  child.kill(options.signal ?? "SIGTERM")
  let timer: NodeJS.Timeout | undefined
  const late = new Promise<"late">((resolve) => (timer = setTimeout(() => resolve("late"), options.graceMs ?? 15_000)))
  const first = await Promise.race([exited, late])
  clearTimeout(timer)
  if (first !== "late") return first
  child.kill("SIGKILL")
  const e = await exited
  return { ...e, killed: true }
}

/** Stops every process (in parallel), whatever happens to the others; the exits in the same order. */
export const stopAll = (
  children: ReadonlyArray<ChildProcess | undefined>,
  graceMs?: number
): Promise<Array<Exit | undefined>> =>
  Promise.all(
    children.map((c) => (c === undefined ? undefined : stopProcess(c, graceMs === undefined ? {} : { graceMs })))
  )
