/**
 * The management token: MANAGEMENT_TOKEN when set; otherwise one generated once (256 bits), kept in
 * MANAGEMENT_TOKEN_FILE (default ./data/management-token, mode 0600) and reused by later starts.
 */
import { Effect, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { chmodSync, mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname } from "node:path"

export interface ResolvedToken {
  readonly token: Redacted.Redacted<string>
  /** Where it came from, for the start-up log line (never the token itself). */
  readonly source: "environment" | "file" | "generated"
}

const readExisting = (path: string): string | undefined => {
  try {
    const text = readFileSync(path, "utf8").trim()
    return text === "" ? undefined : text
  } catch {
    return undefined
  }
}

export const resolveManagementToken = (configured: Option.Option<Redacted.Redacted<string>>, file: string) =>
  Effect.try({
    try: (): ResolvedToken => {
      if (Option.isSome(configured)) return { token: configured.value, source: "environment" }
      const existing = readExisting(file)
      if (existing !== undefined) return { token: Redacted.make(existing), source: "file" }
      mkdirSync(dirname(file), { recursive: true })
      const token = randomBytes(32).toString("base64url")
      try {
        // `wx`: if another instance created it first, use theirs.
        writeFileSync(file, token + "\n", { mode: 0o600, flag: "wx" })
        chmodSync(file, 0o600)
      } catch (e) {
        const theirs = readExisting(file)
        if (theirs !== undefined) return { token: Redacted.make(theirs), source: "file" }
        throw e
      }
      return { token: Redacted.make(token), source: "generated" }
    },
    catch: (cause) => new Error(`cannot create the management token file ${file}: ${(cause as Error).message}`)
  })
