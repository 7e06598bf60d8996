import { hash, randomFillSync } from "node:crypto"

const PREFIX = "sk-"
const BODY_LENGTH = 43 // base64url of 32 bytes, unpadded
const TOKEN_LENGTH = PREFIX.length + BODY_LENGTH

// 32 bytes leave 4 data bits + 2 zero padding bits in the last char, so only
// alphabet indices divisible by 4 can appear there; anything else was not
// produced by generateProxyToken.
const BODY_RE = /^[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]$/

/**
 * Tokens of the Go llm-proxy: `sk-` + base64url of a 16-byte UUIDv7, unpadded (22 characters). Its decoder ignores
 * the 4 spare bits of the last character, so any base64url character is accepted there.
 */
const GO_TOKEN_LENGTH = PREFIX.length + 22
const GO_BODY_RE = /^[A-Za-z0-9_-]{22}$/

/**
 * Prefix of the stored hash of a token imported from the Go llm-proxy (`llm-proxy migrate import`). Hashes of the
 * two formats live in separate namespaces: a Go-format string can only ever match a row the import wrote, never a
 * token minted here, whatever the two strings are.
 */
export const IMPORTED_HASH_PREFIX = "go:"

// One draw from the CSPRNG serves 128 tokens: randomBytes(32) per token cost ~10 µs, a slice of the pool ~0.1 µs. Each
// slice is used once.
const POOL_TOKENS = 128
const pool = Buffer.alloc(POOL_TOKENS * 32)
let poolIndex = POOL_TOKENS

export const generateProxyToken = (): string => {
  if (poolIndex === POOL_TOKENS) {
    randomFillSync(pool)
    poolIndex = 0
  }
  const start = poolIndex * 32
  poolIndex++
  return PREFIX + pool.toString("base64url", start, start + 32)
}

export const isProxyTokenFormat = (s: string): boolean =>
  s.length === TOKEN_LENGTH && s.startsWith(PREFIX) && BODY_RE.test(s.slice(PREFIX.length))

/** The Go llm-proxy's token format (25 characters); such tokens exist here only when they were imported. */
export const isGoTokenFormat = (s: string): boolean =>
  s.length === GO_TOKEN_LENGTH && s.startsWith(PREFIX) && GO_BODY_RE.test(s.slice(PREFIX.length))

/** What `/v1` looks up: a token minted here, or one imported from the Go llm-proxy. */
export const isAcceptedTokenFormat = (s: string): boolean => isProxyTokenFormat(s) || isGoTokenFormat(s)

// crypto.hash: the one-shot form, a quarter of createHash().update().digest()'s time for a token (~0.25 vs ~1 µs).
const sha256Hex = (s: string): string => hash("sha256", s, "hex")

// Tokens carry 256 bits of entropy (Go tokens: a UUIDv7's 74 random bits), so an unsalted fast hash is not
// brute-forceable and keeps lookup a single indexed equality match. A Go-format token hashes into the imported
// namespace (the length check keeps the cost for our own tokens at one comparison).
export const hashProxyToken = (token: string): string =>
  token.length === GO_TOKEN_LENGTH && isGoTokenFormat(token)
    ? IMPORTED_HASH_PREFIX + sha256Hex(token)
    : sha256Hex(token)

/** The stored hash of a Go token the Go proxy had already hashed (hex SHA-256 of the token, its `migrate encrypt`). */
export const importedHashOfGoHash = (hex: string): string => IMPORTED_HASH_PREFIX + hex.toLowerCase()

// Stored at creation time because the plaintext token is never kept.
export const tokenHint = (token: string): string => {
  const body = token.startsWith(PREFIX) ? token.slice(PREFIX.length) : token
  return `${PREFIX}${body.slice(0, 4)}****${body.slice(-4)}`
}
