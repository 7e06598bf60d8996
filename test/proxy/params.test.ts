/**
 * The parameter whitelist's glob matcher and value checks (src/proxy/policy.ts `compileGlob`, `checkParams`):
 * Go `path.Match` semantics without a regular expression, compared on generated inputs with the RegExp translation
 * it replaced; hostile values (long, deeply nested, wide) are refused with a 400, never thrown.
 */
import { describe, expect, it } from "vitest"
import { checkParams, compileGlob, MAX_PARAM_VALUE_LENGTH } from "../../src/proxy/policy.js"

/** The previous implementation (a glob translated to a RegExp), kept here as the reference for small inputs. */
const legacyGlob = (pattern: string): RegExp | null => {
  let re = "^"
  let ok = true
  for (let i = 0; i < pattern.length && ok; i++) {
    const c = pattern[i]!
    if (c === "*") re += "[^/]*"
    else if (c === "?") re += "[^/]"
    else if (c === "\\") {
      const n = pattern[++i]
      if (n === undefined) ok = false
      else re += n.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&")
    } else if (c === "[") {
      const end = pattern.indexOf("]", i + 2)
      if (end === -1) {
        ok = false
        break
      }
      let body = pattern.slice(i + 1, end)
      const negate = body.startsWith("^")
      if (negate) body = body.slice(1)
      if (body === "") ok = false
      re += `[${negate ? "^/" : ""}${body.replace(/[\]\\]/g, "\\$&")}]`
      i = end
    } else re += c.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&")
  }
  if (!ok) return null
  try {
    return new RegExp(re + "$", "s")
  } catch {
    return null
  }
}

/** A small deterministic PRNG (mulberry32), so a failure names a reproducible seed. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const VALUE_CHARS = "abc-.x*?[]^\\"
const LITERALS = "abc-.x^]"

/** Well-formed patterns from the constructs both implementations read the same way. */
const genPattern = (r: () => number): string => {
  const pick = (s: string) => s[Math.floor(r() * s.length)]!
  let p = ""
  const n = Math.floor(r() * 6)
  for (let i = 0; i < n; i++) {
    const k = r()
    if (k < 0.35) p += pick(LITERALS.replace("]", "").replace("^", i === 0 ? "" : "^"))
    else if (k < 0.5) p += "*"
    else if (k < 0.62) p += "?"
    else if (k < 0.72) p += "\\" + pick("*?[]\\ab")
    else if (k < 0.82) p += `[${pick("abc")}${pick("abcx.")}]`
    else if (k < 0.9) p += `[${pick("ab")}-${pick("cx")}]`
    else p += `[^${pick("abc")}${pick("ax-").replace("-", "b")}]`
  }
  return p
}

const genValue = (r: () => number): string => {
  let v = ""
  const n = Math.floor(r() * 8)
  for (let i = 0; i < n; i++) v += VALUE_CHARS[Math.floor(r() * VALUE_CHARS.length)]!
  return v
}

describe("compileGlob", () => {
  it("agrees with the RegExp translation it replaced on 20,000 generated (pattern, value) pairs", () => {
    const r = prng(14)
    let matched = 0
    for (let i = 0; i < 20_000; i++) {
      const pattern = genPattern(r)
      const value = r() < 0.5 ? genValue(r) : pattern.replace(/\\(.)/g, "$1").replace(/\[[^\]]*\]/g, "a")
      const legacy = legacyGlob(pattern)
      const glob = compileGlob(pattern)
      expect(glob === null, `malformed? ${pattern}`).toBe(legacy === null)
      const want = legacy?.test(value) === true
      if (want) matched++
      expect(glob?.test(value) === true, `${JSON.stringify(pattern)} vs ${JSON.stringify(value)}`).toBe(want)
    }
    // The generator must exercise both outcomes, not only refusals.
    expect(matched).toBeGreaterThan(2_000)
  })

  it.each([
    // Where the RegExp translation differed from Go's path.Match, Go's answer holds.
    ["[]a]", "]", false, "a class must not start with ] (malformed)"],
    ["[a-]", "a", false, "a range needs an end (malformed)"],
    ["[-a]", "-", false, "a class must not start with - (malformed)"],
    ["[^]", "x", false, "an empty negated class (malformed)"],
    ["[\\]]", "]", true, "an escaped ] inside a class"],
    ["[\\-a]", "-", true, "an escaped - inside a class"],
    ["[^a]", "/", true, "a negated class does admit / (as in Go)"],
    ["x[a-c]y", "xby", true, "a range"],
    ["[z-a]", "m", false, "an inverted range matches nothing"],
    ["a*b", "a/b", false, "* never skips /"],
    ["a?b", "a/b", false, "? never matches /"],
    ["**", "", true, "stars match the empty string"],
    ["", "", true, "the empty pattern matches only the empty value"],
    ["", "a", false, "the empty pattern matches only the empty value"],
    ["*gpt*", "my-gpt-4", true, "two stars"],
    ["*a*b*c", "xxaxxbxxc", true, "leftmost match of each chunk"],
    ["*ab", "aab", true, "the last chunk must end the value"],
    ["?", "é", true, "? is one character, not one byte"],
    ["?", "😀", true, "? is one code point, not one UTF-16 unit"],
    ["[😀]", "😀", true, "a class of an astral character"]
  ])("%s matches %s = %s (%s)", (pattern, value, expected) => expect(compileGlob(pattern)?.test(value) === true).toBe(expected))

  it("a value a backtracking RegExp stalls on is answered correctly", () => {
    // `*gpt*` and `*a*a*a*a*b` were RegExps with nested [^/]* runs: 120 KB took seconds. The matcher walks each
    // chunk once per start position.
    const long = "gp".repeat(60_000)
    expect(compileGlob("*gpt*")!.test(long)).toBe(false)
    expect(compileGlob("*gpt*")!.test(long + "gpt")).toBe(true)
    expect(compileGlob("*a*a*a*a*b")!.test("a".repeat(100_000))).toBe(false)
  })
})

describe("checkParams on hostile values", () => {
  const whitelist = new Map([["model", ["*gpt*", "{*"]]])

  it(`a string longer than ${MAX_PARAM_VALUE_LENGTH} characters → 400 param_not_allowed, echoing at most a prefix`, () => {
    const value = "gpt" + "x".repeat(1_000_000)
    const a = checkParams({ model: value }, whitelist)!
    expect(a.status).toBe(400)
    expect(a.body.code).toBe("param_not_allowed")
    expect(a.body.error).toContain(`longer than ${MAX_PARAM_VALUE_LENGTH} characters`)
    expect(a.body.error.length).toBeLessThan(200)
    // exactly at the limit it is matched
    expect(checkParams({ model: "gpt" + "x".repeat(MAX_PARAM_VALUE_LENGTH - 3) }, whitelist)).toBeUndefined()
  })

  it("a deeply nested value (JSON.stringify would overflow the stack) → 400, not a throw", () => {
    const deep = JSON.parse("[".repeat(200_000) + "]".repeat(200_000))
    expect(() => JSON.stringify(deep)).toThrow()
    const a = checkParams({ model: deep }, whitelist)!
    expect(a.status).toBe(400)
    expect(a.body.code).toBe("param_not_allowed")
    expect(a.body.error).toBe(`Parameter 'model' value is longer than ${MAX_PARAM_VALUE_LENGTH} characters or nested too deeply`)
  })

  it("a wide object or array over the length cap → 400", () => {
    const wide = JSON.parse(`{${Array.from({ length: 50_000 }, (_, i) => `"k${i}":${i}`).join(",")}}`)
    expect(checkParams({ model: wide }, whitelist)?.body.code).toBe("param_not_allowed")
    expect(checkParams({ model: Array(10_000).fill("gpt") }, whitelist)?.body.code).toBe("param_not_allowed")
  })

  it("small structured values are matched as their JSON text, as before", () => {
    expect(checkParams({ model: { a: [1, "x", null, true] } }, new Map([["model", ['{"a":\\[1,"x",null,true]}']]]))).toBeUndefined()
    expect(checkParams({ model: { b: 1, a: 2, "1": 3 } }, new Map([["model", ['{"1":3,"b":1,"a":2}']]]))).toBeUndefined()
    expect(checkParams({ model: [[[[1]]]] }, new Map([["model", ["\\[\\[\\[\\[1]]]]"]]]))).toBeUndefined()
  })
})
