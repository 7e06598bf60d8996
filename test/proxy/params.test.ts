/**
 * The parameter whitelist's glob matcher and value checks (src/proxy/policy.ts `compileGlob`, `checkParams`):
 * Go `path.Match` semantics without a regular expression, compared on generated inputs with the RegExp translation
 * it replaced; hostile values (long, deeply nested, wide) are refused with a 400, never thrown; `checkBodyParams`
 * (the body scanned, only whitelisted values parsed) answers as `checkParams` on the parsed body does.
 */
import { describe, expect, it } from "vitest"
import { checkBodyParams, checkParams, compileGlob, MAX_PARAM_VALUE_LENGTH } from "../../src/proxy/policy.js"

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
  ])(
    "%s matches %s = %s (%s)",
    (pattern, value, expected) => expect(compileGlob(pattern)?.test(value) === true).toBe(expected)
  )

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
    expect(a.code).toBe("param_not_allowed")
    expect(a.message).toContain(`longer than ${MAX_PARAM_VALUE_LENGTH} characters`)
    expect(a.message.length).toBeLessThan(200)
    // exactly at the limit it is matched
    expect(checkParams({ model: "gpt" + "x".repeat(MAX_PARAM_VALUE_LENGTH - 3) }, whitelist)).toBeUndefined()
  })

  it("a deeply nested value (JSON.stringify would overflow the stack) → 400, not a throw", () => {
    const deep = JSON.parse("[".repeat(200_000) + "]".repeat(200_000))
    expect(() => JSON.stringify(deep)).toThrow()
    const a = checkParams({ model: deep }, whitelist)!
    expect(a.status).toBe(400)
    expect(a.code).toBe("param_not_allowed")
    expect(a.message).toBe(
      `Parameter 'model' value is longer than ${MAX_PARAM_VALUE_LENGTH} characters or nested too deeply`
    )
  })

  it("a wide object or array over the length cap → 400", () => {
    const wide = JSON.parse(`{${Array.from({ length: 50_000 }, (_, i) => `"k${i}":${i}`).join(",")}}`)
    expect(checkParams({ model: wide }, whitelist)?.code).toBe("param_not_allowed")
    expect(checkParams({ model: Array(10_000).fill("gpt") }, whitelist)?.code).toBe("param_not_allowed")
  })

  it("small structured values are matched as their JSON text, as before", () => {
    expect(checkParams({ model: { a: [1, "x", null, true] } }, new Map([["model", ["{\"a\":\\[1,\"x\",null,true]}"]]])))
      .toBeUndefined()
    expect(checkParams({ model: { b: 1, a: 2, "1": 3 } }, new Map([["model", ["{\"1\":3,\"b\":1,\"a\":2}"]]])))
      .toBeUndefined()
    expect(checkParams({ model: [[[[1]]]] }, new Map([["model", ["\\[\\[\\[\\[1]]]]"]]]))).toBeUndefined()
  })
})

describe("checkBodyParams (the body scanned, only whitelisted values parsed)", () => {
  const whitelist = new Map([["model", ["gpt-*", "o?"]], ["n", ["1", "2"]], ["tools", ["\\[*"]]])
  const check = (text: string) => checkBodyParams(Buffer.from(text), whitelist)

  it("answers as checkParams(JSON.parse(body)) on 5,000 generated bodies, compact and pretty-printed", () => {
    const r = prng(21)
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(r() * xs.length)]!
    const leaf = (): unknown =>
      pick<unknown>(["gpt-4o", "o1", "claude", "", 1, 2, 3.5, true, null, "a\"b", "é😀", "gpt-\\x", "[x]"])
    const value = (depth: number): unknown => {
      const k = r()
      if (depth > 3 || k < 0.5) return leaf()
      if (k < 0.75) return Array.from({ length: Math.floor(r() * 4) }, () => value(depth + 1))
      return Object.fromEntries(
        Array.from(
          { length: Math.floor(r() * 4) },
          () => [pick(["model", "n", "x", "tools", "m\"o"]), value(depth + 1)]
        )
      )
    }
    let refused = 0
    for (let i = 0; i < 5_000; i++) {
      const keys = ["model", "n", "tools", "messages", "x", "__proto__", "mode", "model2"].filter(() => r() < 0.5)
      const body: Record<string, unknown> = {}
      for (const k of keys) {
        Object.defineProperty(body, k, { value: value(0), enumerable: true, configurable: true, writable: true })
      }
      const text = r() < 0.5 ? JSON.stringify(body) : JSON.stringify(body, null, Math.floor(r() * 4))
      const want = checkParams(JSON.parse(text), whitelist)
      if (want !== undefined) refused++
      expect(check(text), text).toEqual(want)
    }
    expect(refused).toBeGreaterThan(1_000)
  })

  it.each([
    ["escaped key", "{\"mod\\u0065l\":\"claude\"}", "param_not_allowed"],
    ["duplicate key, the second disallowed", "{\"model\":\"gpt-4o\",\"model\":\"claude\"}", "param_not_allowed"],
    ["duplicate key, the first disallowed", "{\"model\":\"claude\",\"model\":\"gpt-4o\"}", "param_not_allowed"],
    ["model only inside a string", "{\"x\":\"\\\"model\\\":\\\"claude\\\"\",\"model\":\"gpt-4o\"}", undefined],
    ["model only nested", "{\"x\":{\"model\":\"claude\"},\"y\":[{\"model\":\"claude\"}]}", undefined],
    ["escaped backslashes before a quote", "{\"x\":\"a\\\\\",\"model\":\"claude\"}", "param_not_allowed"],
    ["not an object", "[\"model\",\"claude\"]", undefined],
    ["empty object", "{}", undefined],
    ["invalid after the model", "{\"model\":\"gpt-4o\", oops", undefined],
    ["invalid before the model", "{oops, \"model\":\"claude\"}", undefined],
    ["a model that is not JSON", "{\"model\":gpt}", "param_not_allowed"],
    ["a model with no value", "{\"model\":}", "param_not_allowed"],
    ["an unterminated model string", "{\"model\":\"gpt-4o", "param_not_allowed"],
    ["a byte order mark (not JSON)", "\ufeff{\"model\":\"claude\"}", undefined]
  ])("%s → %s", (_n, text, code) => expect(check(text)?.code).toBe(code))

  it("hostile bodies are refused or passed without being parsed whole", () => {
    expect(check(`{"model":${"[".repeat(200_000)}${"]".repeat(200_000)}}`)?.message).toBe(
      `Parameter 'model' value is longer than ${MAX_PARAM_VALUE_LENGTH} characters or nested too deeply`
    )
    expect(check(`{"model":"${"gp".repeat(500_000)}"}`)?.code).toBe("param_not_allowed")
    // an unlisted parameter may be anything (the upstream judges it), and the model after it is still checked
    expect(check(`{"messages":${"[".repeat(200_000)}${"]".repeat(200_000)},"model":"gpt-4o"}`)).toBeUndefined()
    expect(check(`{"messages":"${"x".repeat(5_000_000)}","model":"claude"}`)?.code).toBe("param_not_allowed")
    expect(check(`{"${"k".repeat(100_000)}":1,"model":"gpt-4o"}`)).toBeUndefined()
  })
})
