import { describe, expect, it } from "@effect/vitest"
import { createHash } from "node:crypto"
import {
  generateProxyToken,
  hashProxyToken,
  IMPORTED_HASH_PREFIX,
  importedHashOfGoHash,
  isAcceptedTokenFormat,
  isGoTokenFormat,
  isProxyTokenFormat,
  tokenHint
} from "../../src/crypto/ProxyToken.js"

const TOKEN_RE = /^sk-[A-Za-z0-9_-]{43}$/
const VALID_LAST = "AEIMQUYcgkosw048"
const body42 = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123-_"

describe("generateProxyToken", () => {
  it("produces 1000 unique, well-formed tokens", () => {
    const tokens = Array.from({ length: 1000 }, generateProxyToken)
    for (const t of tokens) {
      expect(t).toMatch(TOKEN_RE)
      expect(VALID_LAST).toContain(t.at(-1))
      expect(isProxyTokenFormat(t)).toBe(true)
    }
    expect(new Set(tokens).size).toBe(1000)
  })
})

describe("isProxyTokenFormat", () => {
  it("accepts every valid last char", () => {
    for (const c of VALID_LAST) expect(isProxyTokenFormat(`sk-${body42}${c}`)).toBe(true)
  })

  it.each([
    ["empty", ""],
    ["too short", `sk-${body42}`],
    ["too long", `sk-${body42}AA`],
    ["bad char +", `sk-+${body42.slice(1)}A`],
    ["bad char /", `sk-${body42.slice(0, 41)}/A`],
    ["bad char =", `sk-${body42}=`],
    ["bad last char B", `sk-${body42}B`],
    ["bad last char z", `sk-${body42}z`],
    ["bad last char -", `sk-${body42}-`],
    ["wrong prefix", `pk-${body42}A`],
    ["uppercase prefix", `SK-${body42}A`],
    ["legacy 25-char", "sk-abcdefghijklmnopqrstuv"]
  ])("rejects %s", (_label, s) => {
    expect(isProxyTokenFormat(s)).toBe(false)
  })
})

describe("hashProxyToken", () => {
  it("is 64 lowercase hex, stable, and input-sensitive", () => {
    const t = generateProxyToken()
    const h = hashProxyToken(t)
    expect(h).toMatch(/^[0-9a-f]{64}$/)
    expect(hashProxyToken(t)).toBe(h)
    expect(hashProxyToken(generateProxyToken())).not.toBe(h)
  })

  it("matches the known SHA-256 vector", () => {
    expect(hashProxyToken("abc")).toBe("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
  })
})

describe("tokenHint", () => {
  it("shows prefix, first 4 and last 4 body chars", () => {
    expect(tokenHint(`sk-${body42}A`)).toBe("sk-abcd****3-_A")
    const t = generateProxyToken()
    const hint = tokenHint(t)
    expect(hint).toMatch(/^sk-[A-Za-z0-9_-]{4}\*{4}[A-Za-z0-9_-]{4}$/)
    expect(hint).toBe(`sk-${t.slice(3, 7)}****${t.slice(-4)}`)
  })
})

describe("the Go llm-proxy's token format (imported tokens)", () => {
  const goBody = "AZRr3Wc8dK2b1hG9xq0T_w"

  it("accepts sk- + 22 base64url characters, whatever the last one", () => {
    for (const last of "AzZ09-_") {
      const t = `sk-${goBody.slice(0, 21)}${last}`
      expect(isGoTokenFormat(t)).toBe(true)
      expect(isAcceptedTokenFormat(t)).toBe(true)
    }
  })

  it.each([
    ["21 characters", `sk-${goBody.slice(1)}`],
    ["23 characters", `sk-${goBody}A`],
    ["a + in the body", `sk-+${goBody.slice(1)}`],
    ["padding", `sk-${goBody.slice(0, 20)}==`],
    ["wrong prefix", `pk-${goBody}`]
  ])("refuses %s", (_label, s) => {
    expect(isGoTokenFormat(s)).toBe(false)
    expect(isAcceptedTokenFormat(s)).toBe(false)
  })

  it("hashes into its own namespace: a Go-format string can never equal a native token's stored hash", () => {
    const go = `sk-${goBody}`
    expect(hashProxyToken(go)).toBe(IMPORTED_HASH_PREFIX + createHash("sha256").update(go).digest("hex"))
    expect(importedHashOfGoHash(createHash("sha256").update(go).digest("hex").toUpperCase())).toBe(hashProxyToken(go))
    const native = generateProxyToken()
    expect(isAcceptedTokenFormat(native)).toBe(true)
    expect(isGoTokenFormat(native)).toBe(false)
    expect(hashProxyToken(native).startsWith(IMPORTED_HASH_PREFIX)).toBe(false)
  })
})
