import { describe, expect, it } from "@effect/vitest"
import { generateProxyToken, hashProxyToken, isProxyTokenFormat, tokenHint } from "../../src/crypto/ProxyToken.js"

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
