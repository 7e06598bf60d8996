/**
 * src/proxy/jsonBody.ts: the top-level members of a JSON body found without parsing it whole, compared with
 * JSON.parse on generated bodies; edits change only what they name.
 */
import { FastCheck as fc } from "effect"
import { describe, expect, it } from "vitest"
import { insertMember, membersNamed, parseMember, scanObject, splice, stringMember } from "../../src/proxy/jsonBody.js"

const buf = (s: string) => Buffer.from(s, "utf8")

describe("scanObject", () => {
  it("finds every top-level member, in order, with the value JSON.parse reads (5,000 generated objects)", () => {
    const key = fc.oneof(
      fc.constantFrom("model", "user", "stream", "a\"b", "ü", "messages"),
      fc.string({ maxLength: 8 })
    )
    fc.assert(
      fc.property(
        fc.array(fc.tuple(key, fc.jsonValue({ maxDepth: 4 })), { maxLength: 8 }),
        fc.boolean(),
        (entries, pretty) => {
          const obj = Object.fromEntries(entries)
          const text = pretty ? JSON.stringify(obj, null, 2) : JSON.stringify(obj)
          const body = buf(text)
          const scan = scanObject(body)!
          expect(scan.close).toBe(body.lastIndexOf("}"))
          expect(scan.members.map((m) => m.key)).toEqual(Object.keys(obj))
          const parsed = JSON.parse(text) as Record<string, unknown>
          for (const m of scan.members) expect(parseMember(body, m, Infinity, Infinity)).toEqual(parsed[m.key!])
        }
      ),
      { numRuns: 5_000 }
    )
  })

  it("is undefined for bodies that are not an object; a malformed one gives what was read, close = -1", () => {
    for (const t of ["[]", "\"x\"", "12", "", "  null"]) expect(scanObject(buf(t))).toBeUndefined()
    const partial = scanObject(buf(`{"model":"gpt-4o","messages":[{"role":"user"`))!
    expect(partial.close).toBe(-1)
    expect(partial.members.map((m) => m.key)).toEqual(["model"])
    expect(scanObject(buf("{}"))).toEqual({ open: 0, close: 1, members: [] })
  })

  it("a key named twice is found twice; stringMember refuses to choose", () => {
    const body = buf(`{"model":"a","model":"b"}`)
    const scan = scanObject(body)!
    expect(membersNamed(scan, "model")).toHaveLength(2)
    expect(stringMember(body, scan, "model")).toBeUndefined()
    expect(stringMember(buf(`{"model":"gpt-4o"}`), scanObject(buf(`{"model":"gpt-4o"}`))!, "model")).toBe("gpt-4o")
  })

  it("bounds: a value over the byte or depth limit is not parsed; a long key is not decoded", () => {
    const deep = buf(`{"x":${"[".repeat(100)}${"]".repeat(100)},"model":"${"m".repeat(10_000)}"}`)
    const scan = scanObject(deep)!
    expect(parseMember(deep, scan.members[0]!)).toBeUndefined()
    expect(stringMember(deep, scan, "model")).toBeUndefined()
    expect(stringMember(deep, scan, "model", 20_000)).toBe("m".repeat(10_000))
    const longKey = buf(`{"${"k".repeat(300)}":1}`)
    expect(scanObject(longKey)!.members[0]!.key).toBeUndefined()
  })

  it("scans 100,000 levels of nesting without recursion", () => {
    const body = buf(`{"a":${"[".repeat(100_000)}${"]".repeat(100_000)},"model":"x"}`)
    const scan = scanObject(body)!
    expect(scan.members[0]!.depth).toBe(100_000)
    expect(stringMember(body, scan, "model")).toBe("x")
  })
})

describe("edits", () => {
  it("insertMember adds the member first and leaves every other byte as it was", () => {
    const text = `{ "model" : "gpt-4o",\n  "messages": [] }`
    const body = buf(text)
    const out = insertMember(body, scanObject(body)!, "user", JSON.stringify("end-user-1"))
    expect(out.toString()).toBe(`{"user":"end-user-1", "model" : "gpt-4o",\n  "messages": [] }`)
    expect(JSON.parse(out.toString())).toEqual({ user: "end-user-1", model: "gpt-4o", messages: [] })
    const empty = buf(" { } ")
    expect(JSON.parse(insertMember(empty, scanObject(empty)!, "k", "true").toString())).toEqual({ k: true })
  })

  it("splice replaces a range with text (UTF-8)", () => {
    const body = buf(`{"stream_options":{"include_usage":false}}`)
    const m = membersNamed(scanObject(body)!, "stream_options")[0]!
    expect(splice(body, m.valueStart, m.valueEnd, `{"include_usage":true,"ü":1}`).toString())
      .toBe(`{"stream_options":{"include_usage":true,"ü":1}}`)
  })
})
