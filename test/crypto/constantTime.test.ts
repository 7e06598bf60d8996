import { describe, expect, it } from "@effect/vitest"
import { constantTimeEqual } from "../../src/crypto/constantTime.js"

describe("constantTimeEqual", () => {
  it.each([
    ["", "", true],
    ["secret", "secret", true],
    ["sk-ünïcødé", "sk-ünïcødé", true],
    ["secret", "secreT", false],
    ["secret", "secret2", false],
    ["secret", "", false],
    ["", "x", false],
    ["a".repeat(10_000), "a".repeat(10_000), true],
    ["a".repeat(10_000), "a".repeat(9_999), false]
  ])("%#: equal=%s", (a, b, expected) => {
    expect(constantTimeEqual(a, b)).toBe(expected)
    expect(constantTimeEqual(b, a)).toBe(expected)
  })
})
