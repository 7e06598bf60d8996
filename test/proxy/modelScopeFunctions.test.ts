/**
 * The pure parts of model scopes and user injection (src/proxy/modelScope.ts) on the bodies a client can send: only
 * the top-level `model` counts, lists are filtered by splicing `data` alone, the user is inserted only where the
 * field is absent, and every other byte is left as it was.
 */
import { describe, expect, it } from "vitest"
import { filterModelList, injectUser, modelOfPath, modelScopeOf, requestModel } from "../../src/proxy/modelScope.js"

const buf = (s: string) => Buffer.from(s)

describe("modelScopeOf", () => {
  it("is null without lists; otherwise a model must pass both", () => {
    expect(modelScopeOf(null, null)).toBeNull()
    const scope = modelScopeOf(["gpt-4o*", "o1"], ["gpt-4o-mini", "claude-*"])!
    expect(["gpt-4o-mini", "gpt-4o", "o1", "claude-3", "gpt-4o-mini/x"].map(scope.allows)).toEqual([
      true,
      false,
      false,
      false,
      false
    ])
    const onlyToken = modelScopeOf(null, ["a[0-9]", "b"])!
    expect(["a1", "ab", "b", "bb"].map(onlyToken.allows)).toEqual([true, false, true, false])
    // A malformed glob (refused at write time) matches nothing, and does not break the others.
    expect(modelScopeOf(["x[", "y"], null)!.allows("y")).toBe(true)
  })
})

describe("requestModel", () => {
  it("reads the top-level model only, and says why it cannot when it cannot", () => {
    expect(requestModel(buf("{\"messages\":[{\"model\":\"inner\"}],\"model\":\"gpt-4o\"}"))).toEqual({
      _tag: "model",
      model: "gpt-4o"
    })
    expect(requestModel(buf("{\"model\":\"gpt-\\u0034o\"}"))).toEqual({ _tag: "model", model: "gpt-4o" })
    expect(requestModel(buf("{\"messages\":[{\"model\":\"inner\"}]}"))).toEqual({
      _tag: "unchecked",
      why: "it names no model",
      named: false
    })
    expect(requestModel(buf("{\"model\":\"a\",\"model\":\"b\"}"))).toEqual({
      _tag: "unchecked",
      why: "it names the model more than once",
      named: true
    })
    expect(requestModel(buf("{\"model\":[\"a\"]}"))).toEqual({
      _tag: "unchecked",
      why: "its model is not a string",
      named: true
    })
    expect(requestModel(buf("[1]"))).toEqual({ _tag: "unchecked", why: "its body is not a JSON object", named: false })
    expect(requestModel(buf("{\"model\":\"a\""))._tag).toBe("unchecked")
    expect(requestModel(buf(`{"model":"${"m".repeat(2000)}"}`))._tag).toBe("unchecked")
  })
})

describe("modelOfPath", () => {
  it("is the one segment after /v1/models/, percent-decoded", () => {
    expect(modelOfPath("/v1/models/gpt-4o")).toBe("gpt-4o")
    expect(modelOfPath("/v1/models/ft%3Agpt-4o%3Aacme")).toBe("ft:gpt-4o:acme")
    expect(modelOfPath("/v1/models/%E0%A4%A")).toBe("%E0%A4%A")
    expect([
      modelOfPath("/v1/models"),
      modelOfPath("/v1/models/"),
      modelOfPath("/v1/models/a/b"),
      modelOfPath("/v1/chat")
    ])
      .toEqual([undefined, undefined, undefined, undefined])
  })
})

describe("filterModelList", () => {
  const scope = modelScopeOf(["gpt-4o-mini"], null)!
  it("splices data alone: the rest of the answer byte for byte", () => {
    const body =
      "{ \"object\" : \"list\",\n \"data\": [{\"id\":\"gpt-4o\"},{\"id\":\"gpt-4o-mini\",\"x\":1},{\"id\":7},\"odd\"], \"has_more\":false }"
    expect(filterModelList(buf(body), scope)!.toString()).toBe(
      "{ \"object\" : \"list\",\n \"data\": [{\"id\":\"gpt-4o-mini\",\"x\":1}], \"has_more\":false }"
    )
  })
  it("leaves answers of another shape to the caller (undefined)", () => {
    for (const body of ["{\"models\":[]}", "{\"data\":{}}", "[]", "{\"data\":[],\"data\":[]}", "not json"]) {
      expect(filterModelList(buf(body), scope), body).toBeUndefined()
    }
  })
})

describe("injectUser", () => {
  it("inserts the field first when absent, and changes nothing else", () => {
    expect(injectUser(buf("{\"model\":\"m\"}"), "user", "u-1").toString()).toBe("{\"user\":\"u-1\",\"model\":\"m\"}")
    expect(injectUser(buf("  {  }  "), "user", "q\"\u2028").toString()).toBe(
      `  {"user":${JSON.stringify("q\"\u2028")}  }  `
    )
    expect(injectUser(buf("{\"model\":\"m\"}"), "safety_identifier", "u").toString()).toBe(
      "{\"safety_identifier\":\"u\",\"model\":\"m\"}"
    )
  })
  it("keeps the client's own value (even null) and bodies that are not a JSON object", () => {
    for (
      const body of [
        "{\"user\":null,\"model\":\"m\"}",
        "{\"model\":\"m\",\"user\":\"mine\"}",
        "[1,2]",
        "{\"a\":",
        "plain text"
      ]
    ) {
      const b = buf(body)
      expect(injectUser(b, "user", "u")).toBe(b)
    }
  })
})
