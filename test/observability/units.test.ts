/** Pure parts of observability, table-driven. */
import { Either } from "effect"
import { describe, expect, it } from "vitest"
import { parseOtlpHeaders } from "../../src/config/AppConfig.js"
import { routeTemplate } from "../../src/http/Server.js"
import { statusClass } from "../../src/observability/Metrics.js"
import { cacheStatusOf, modelOf } from "../../src/observability/ProxyObservability.js"
import { toOtlpSpans } from "../../src/observability/ProxySpans.js"

describe("modelOf", () => {
  it.each([
    ['{"model":"gpt-4o-mini","messages":[]}', "gpt-4o-mini"],
    ['{ "messages": [], "model" : "claude-3-5-sonnet" }', "claude-3-5-sonnet"],
    ['{"messages":[{"content":"the \\"model\\" word"}]}', undefined],
    ['{"model": 42}', undefined],
    ["not json at all", undefined],
    ["", undefined],
    [`{"messages":"${"x".repeat(9000)}","model":"late"}`, undefined]
  ])("%s → %s", (body, model) => {
    expect(modelOf(body === "" ? Buffer.alloc(0) : Buffer.from(body))).toBe(model)
  })
  it("undefined body", () => expect(modelOf(undefined)).toBeUndefined())
})

describe("cacheStatusOf", () => {
  it.each([
    [{ "x-proxy-cache": "stored", "cache-status": "llm-proxy; stored" }, "stored"],
    [{ "x-proxy-cache": "BYPASS" }, "bypass"],
    [{ "cache-status": "llm-proxy; miss" }, "miss"],
    [{ "cache-status": "llm-proxy; stored (forced)" }, "stored"],
    [{ "cache-status": "llm-proxy; conditional-hit" }, "conditional-hit"],
    [{ "cache-status": "othercache; hit" }, "none"],
    [{ "x-proxy-cache": "weird" }, "none"],
    [{}, "none"]
  ])("%j → %s", (headers, status) => expect(cacheStatusOf(headers)).toBe(status))
})

describe("statusClass", () => {
  it.each([[200, "2xx"], [204, "2xx"], [301, "3xx"], [404, "4xx"], [499, "4xx"], [503, "5xx"], [0, "none"], [600, "none"]])(
    "%i → %s",
    (status, cls) => expect(statusClass(status)).toBe(cls)
  )
})

describe("routeTemplate", () => {
  it.each([
    ["/manage/projects", "/manage/projects"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60", "/manage/projects/:id"],
    ["/manage/projects/1f0c7c3e-2b7a-4d52-9a77-1b2c3d4e5f60/tokens/revoke", "/manage/projects/:id/tokens/revoke"],
    ["/manage/tokens/abc123", "/manage/tokens/:id"],
    ["/manage/cache/purge", "/manage/cache/purge"],
    ["/manage/openapi.json", "/manage/openapi.json"]
  ])("%s → %s", (path, template) => expect(routeTemplate(path)).toBe(template))
})

describe("parseOtlpHeaders", () => {
  it.each([
    ["", {}],
    ["api-key=abc", { "api-key": "abc" }],
    ["A=1, b=x%20y ,", { a: "1", b: "x y" }],
    ["x-honeycomb-team=k=v", { "x-honeycomb-team": "k=v" }]
  ])("%s", (input, out) => expect(parseOtlpHeaders(input)).toEqual(Either.right(out)))
  it.each(["novalue", "=v", "bad key=v", "k=%E0%A4%A"])("rejects %s", (input) => expect(Either.isLeft(parseOtlpHeaders(input))).toBe(true))
})

describe("toOtlpSpans", () => {
  it("builds a server span and a client child with typed attributes and error status", () => {
    const [root, up] = toOtlpSpans({
      name: "proxy.request",
      startMs: 1_700_000_000_000.5,
      endMs: 1_700_000_000_010,
      error: false,
      attributes: { a: "x", n: 3, d: 1.5, b: true, skip: undefined },
      upstream: { startMs: 1_700_000_000_001, endMs: 1_700_000_000_010, error: true, attributes: {} }
    }) as Array<any>
    expect(root.kind).toBe(2)
    expect(root.traceId).toMatch(/^[0-9a-f]{32}$/)
    expect(root.spanId).toMatch(/^[0-9a-f]{16}$/)
    expect(root.startTimeUnixNano).toBe("1700000000000500000")
    expect(root.attributes).toEqual([
      { key: "a", value: { stringValue: "x" } },
      { key: "n", value: { intValue: 3 } },
      { key: "d", value: { doubleValue: 1.5 } },
      { key: "b", value: { boolValue: true } }
    ])
    expect(root.status).toEqual({ code: 1 })
    expect(up).toMatchObject({ kind: 3, traceId: root.traceId, parentSpanId: root.spanId, status: { code: 2 } })
  })
})
