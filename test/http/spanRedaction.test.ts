/** What the management API's server spans export of a request's query string (src/http/spanRedaction.ts). */
import { describe, expect, it } from "vitest"
import { REDACTED_HEADER_NAMES, redactQuery } from "../../src/http/spanRedaction.js"

describe("redactQuery", () => {
  it.each([
    ["page=2&page_size=50", "page=2&page_size=50"],
    ["project_id=p1&active_only=true", "project_id=p1&active_only=true"],
    ["projectId=p1", "projectId=p1"],
    [
      "action=token.create&search=abc&start_time=2026-01-01T00:00:00Z",
      "action=token.create&search=abc&start_time=2026-01-01T00:00:00Z"
    ],
    ["token=sk-abc", "token=REDACTED"],
    ["api_key=sk-proj-123&page=1", "api_key=REDACTED&page=1"],
    ["api-key=x", "api-key=REDACTED"],
    ["key=", "key=REDACTED"],
    ["access_token", "access_token=REDACTED"],
    // A bare value, or a name that is itself a credential: nothing of it stays.
    ["sk-proj-AbC123xyz789", "REDACTED"],
    ["sk-proj-AbC123xyz789=1&page=3", "REDACTED&page=3"],
    ["%E0%A4%A=1", "REDACTED"],
    ["page%5Fsize=5", "page%5Fsize=5"],
    ["page=1&&token=x&", "page=1&&token=REDACTED&"]
  ])("%j → %j", (query, expected) => {
    expect(redactQuery(query)).toBe(expected)
  })

  it("redacts the credential headers the platform does not know about", () => {
    for (
      const h of [
        "authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "proxy-authorization",
        "x-csrf-token"
      ]
    ) {
      expect(REDACTED_HEADER_NAMES).toContain(h)
    }
  })
})
