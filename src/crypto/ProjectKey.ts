/**
 * Project keys (`lpk-` + 43 base64url characters, 256 random bits): the credential an app backend holds to mint and
 * manage the tokens of one project (src/token/ProjectKeys.ts). Like proxy tokens they are stored only as their
 * SHA-256 and shown in full once.
 */
import { createHash, randomBytes } from "node:crypto"

export const PROJECT_KEY_PREFIX = "lpk-"
const BODY_LENGTH = 43
// 32 bytes leave 4 data bits + 2 zero bits in the last character (see ProxyToken.ts).
const BODY_RE = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/

export const generateProjectKey = (): string => PROJECT_KEY_PREFIX + randomBytes(32).toString("base64url")

export const isProjectKeyFormat = (s: string): boolean =>
  s.length === PROJECT_KEY_PREFIX.length + BODY_LENGTH && s.startsWith(PROJECT_KEY_PREFIX) &&
  BODY_RE.test(s.slice(PROJECT_KEY_PREFIX.length))

/** 256 random bits: an unsalted fast hash cannot be brute-forced, and lookup stays one indexed equality match. */
export const hashProjectKey = (key: string): string => createHash("sha256").update(key, "utf8").digest("hex")

/** `lpk-` + first 4 + `****` + last 4, stored at creation (the key itself is never kept). */
export const projectKeyHint = (key: string): string => {
  const body = key.slice(PROJECT_KEY_PREFIX.length)
  return `${PROJECT_KEY_PREFIX}${body.slice(0, 4)}****${body.slice(-4)}`
}
