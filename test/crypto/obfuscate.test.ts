import { describe, expect, it } from "@effect/vitest"
import { isObfuscatedApiKey, obfuscateApiKey } from "../../src/crypto/obfuscate.js"

describe("obfuscateApiKey", () => {
  it.each([
    ["", ""],
    ["a", "*"],
    ["abcd", "****"],
    ["abcde", "ab***"],
    ["abcdefghijkl", "ab**********"],
    ["abcdefghijklm", "abcdefgh...jklm"],
    ["sk-proj-1234567890abcdefghijklmnopqrstuvwxyz", "sk-proj-...wxyz"]
  ])("%j -> %j", (input, expected) => {
    expect(obfuscateApiKey(input)).toBe(expected)
  })

  it("never reveals the middle of a long key", () => {
    const key = "sk-ant-api03-SECRETMIDDLEPART-tail"
    expect(obfuscateApiKey(key)).not.toContain("SECRETMIDDLEPART")
  })
})

describe("isObfuscatedApiKey", () => {
  it.each([
    ["sk-proj-...wxyz", true],
    ["****", true],
    ["sk-abcd****wxyz", true],
    ["sk-proj-1234567890abcdefghijklmnopqrstuvwxyz", false],
    ["", false],
    ["a.b.c", false]
  ])("%j -> %s", (input, expected) => {
    expect(isObfuscatedApiKey(input)).toBe(expected)
  })

  it("recognises obfuscated output of real-length keys", () => {
    expect(isObfuscatedApiKey(obfuscateApiKey("sk-proj-1234567890abcdefghijklmnopqrstuvwxyz"))).toBe(true)
  })
})
