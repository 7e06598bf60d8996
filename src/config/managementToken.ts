/**
 * The management token: MANAGEMENT_TOKEN when set; otherwise one generated once (256 bits), kept in
 * MANAGEMENT_TOKEN_FILE (default ./data/management-token, mode 0600, in a 0700 directory) and reused by later starts.
 * A token shorter than MIN_MANAGEMENT_TOKEN_LENGTH characters, set by hand in either place, is refused: it is the
 * key to every project's provider credentials, and failed guesses are only throttled, not impossible.
 */
import { Effect, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { chmodSync, readFileSync, writeFileSync } from "node:fs"
import { dirname } from "node:path"
import { ensurePrivateDir, tightenPrivateFile } from "./privateFiles.js"

export const MIN_MANAGEMENT_TOKEN_LENGTH = 32

export interface ResolvedToken {
  readonly token: Redacted.Redacted<string>
  /** Where it came from, for the start-up log line (never the token itself). */
  readonly source: "environment" | "file" | "generated"
  /** Permissions tightened or found loose on the way (src/config/privateFiles.ts), to log. */
  readonly warnings: ReadonlyArray<string>
}

export class ManagementTokenError extends Error {}

const readExisting = (path: string): string | undefined => {
  try {
    const text = readFileSync(path, "utf8").trim()
    return text === "" ? undefined : text
  } catch {
    return undefined
  }
}

const tooShort = (where: string, length: number) =>
  new ManagementTokenError(
    `${where} must be at least ${MIN_MANAGEMENT_TOKEN_LENGTH} characters (it has ${length}); ` +
      "run `llm-proxy setup` for a generated one, or leave it unset to have one generated"
  )

const resolve = (configured: Option.Option<Redacted.Redacted<string>>, file: string): ResolvedToken => {
  if (Option.isSome(configured)) {
    const length = Redacted.value(configured.value).length
    if (length < MIN_MANAGEMENT_TOKEN_LENGTH) throw tooShort("MANAGEMENT_TOKEN", length)
    return { token: configured.value, source: "environment", warnings: [] }
  }
  const warnings = ensurePrivateDir(dirname(file))
  const fromFile = (text: string): ResolvedToken => {
    if (text.length < MIN_MANAGEMENT_TOKEN_LENGTH) throw tooShort(`the management token in ${file}`, text.length)
    return { token: Redacted.make(text), source: "file", warnings: [...warnings, ...tightenPrivateFile(file)] }
  }
  const existing = readExisting(file)
  if (existing !== undefined) return fromFile(existing)
  const token = randomBytes(32).toString("base64url")
  try {
    // `wx`: if another instance created it first, use theirs.
    writeFileSync(file, token + "\n", { mode: 0o600, flag: "wx" })
    chmodSync(file, 0o600)
  } catch (e) {
    const theirs = readExisting(file)
    if (theirs !== undefined) return fromFile(theirs)
    throw e
  }
  return { token: Redacted.make(token), source: "generated", warnings }
}

export const resolveManagementToken = (configured: Option.Option<Redacted.Redacted<string>>, file: string) =>
  Effect.try({
    try: () => resolve(configured, file),
    catch: (cause) =>
      cause instanceof ManagementTokenError
        ? cause
        : new Error(`cannot create the management token file ${file}: ${(cause as Error).message}`)
  })
