/** Human output for the CLI: aligned tables; `--json` prints the API's JSON instead. */
import { Console, Effect } from "effect"

export const table = (headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<string>>): string => {
  if (rows.length === 0) return "(none)"
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)))
  const line = (cells: ReadonlyArray<string>) => cells.map((c, i) => c.padEnd(widths[i] ?? 0)).join("  ").trimEnd()
  return [line(headers), line(widths.map((w) => "-".repeat(w))), ...rows.map(line)].join("\n")
}

/** `key: value` lines for a single record. */
export const record = (entries: ReadonlyArray<readonly [string, string]>): string => {
  const width = Math.max(...entries.map(([k]) => k.length))
  return entries.map(([k, v]) => `${(k + ":").padEnd(width + 1)} ${v}`).join("\n")
}

export const show = (value: unknown) =>
  Effect.orDie(Console.log(typeof value === "string" ? value : JSON.stringify(value, null, 2)))

export const orDash = (
  v: string | number | null | undefined
): string => (v === null || v === undefined ? "-" : String(v))
