import { createHash, randomBytes } from "node:crypto"

const PREFIX = "sk-"
const BODY_LENGTH = 43 // base64url of 32 bytes, unpadded
const TOKEN_LENGTH = PREFIX.length + BODY_LENGTH

// 32 bytes leave 4 data bits + 2 zero padding bits in the last char, so only
// alphabet indices divisible by 4 can appear there; anything else was not
// produced by generateProxyToken.
const BODY_RE = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/

export const generateProxyToken = (): string => PREFIX + randomBytes(32).toString("base64url")

export const isProxyTokenFormat = (s: string): boolean =>
  s.length === TOKEN_LENGTH && s.startsWith(PREFIX) && BODY_RE.test(s.slice(PREFIX.length))

// Tokens carry 256 bits of entropy, so an unsalted fast hash is not brute-forceable
// and keeps lookup a single indexed equality match.
export const hashProxyToken = (token: string): string => createHash("sha256").update(token, "utf8").digest("hex")

// Stored at creation time because the plaintext token is never kept.
export const tokenHint = (token: string): string => {
  const body = token.startsWith(PREFIX) ? token.slice(PREFIX.length) : token
  return `${PREFIX}${body.slice(0, 4)}****${body.slice(-4)}`
}
