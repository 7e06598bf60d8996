/**
 * The admin UI's defences as designed (src/http/session.ts, AdminUi.ts, docs/admin.md), probed over HTTP:
 *
 *   headers    every /admin answer: a CSP with no inline or foreign script, no framing; nosniff; no-referrer
 *   login      a wrong token gets no cookie; the right one an HttpOnly, SameSite=Strict cookie scoped to /manage
 *              (Secure behind X-Forwarded-Proto: https) that is not the management token, and a CSRF token
 *   CSRF       with the cookie alone, reads work and every state-changing request is refused (403) unless it
 *              carries the session's CSRF token; random cookies and CSRF tokens (fuzzed) never get in
 *   logout     needs the session's CSRF token (403 without, the session lives on); the cookie is dead afterwards,
 *              on every instance
 *   sessions   rows of the database: a session made on one instance works on a second one of the same database and
 *              after a restart; the table holds no session id and no CSRF token
 *   brute force  fuzzed wrong login tokens from one address: 401 × 10, then 429 (the right token too), no cookie
 *
 * Skipped while the server has no /admin (before the `ui` branch lands).
 */
import { FastCheck as fc, Option, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BackendInstance, backends, uniqueName } from "../http/harness.js"
import { type Stack, startStack } from "../proxy/stack.js"
import { printTally, rawHttp, runs, tally } from "./support.js"

const TITLE = "admin UI checks"

let backend: BackendInstance
let stack: Stack
let port: number
let hasUi = false

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend)
  port = Number(new URL(stack.server.url).port)
  const r = await fetch(`${stack.server.url}/admin/`)
  hasUi = r.status === 200 && (r.headers.get("content-type") ?? "").includes("text/html")
})
afterAll(async () => {
  printTally(TITLE)
  await stack?.close()
  await backend?.cleanup()
})

const login = async (token: string, headers: Record<string, string> = {}) => {
  const r = await fetch(`${stack.server.url}/manage/session`, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: JSON.stringify({ token })
  })
  const text = await r.text()
  return {
    status: r.status,
    cookie: r.headers.get("set-cookie"),
    text,
    json: (() => {
      try {
        return JSON.parse(text)
      } catch {
        return undefined
      }
    })()
  }
}

const cookieValue = (setCookie: string) => setCookie.split(";")[0]!

describe("admin UI", () => {
  it("every /admin answer carries the CSP and the other security headers", async (ctx) => {
    if (!hasUi) return ctx.skip()
    for (
      const path of ["/admin", "/admin/", "/admin/projects", "/admin/does-not-exist", "/admin/%2e%2e/manage/projects"]
    ) {
      tally(TITLE, "GET /admin/*")
      const r = await fetch(stack.server.url + path)
      await r.arrayBuffer()
      if (r.status >= 400) continue
      const csp = r.headers.get("content-security-policy") ?? ""
      const directives = Object.fromEntries(csp.split(";").map((d) => d.trim().split(/\s+/)).map(([k, ...v]) => [k, v]))
      expect(directives["default-src"]).toEqual(["'none'"])
      expect(directives["script-src"]).toEqual(["'self'"])
      expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|\*|http:|data:.*script/)
      expect(directives["frame-ancestors"]).toEqual(["'none'"])
      expect(r.headers.get("x-content-type-options")).toBe("nosniff")
      expect(r.headers.get("x-frame-options")).toBe("DENY")
      expect(r.headers.get("referrer-policy")).toBe("no-referrer")
    }
  })

  it("login: a wrong token gets no cookie; the right one a strict, HttpOnly, /manage-scoped session cookie", async (ctx) => {
    if (!hasUi) return ctx.skip()
    tally(TITLE, "POST /manage/session", 4)
    for (const wrong of ["", "x", `${stack.server.token}x`, stack.server.token.slice(0, -1)]) {
      const r = await login(wrong)
      expect(r.status).toBe(wrong === "" ? 401 : 401)
      expect(r.cookie).toBeNull()
    }
    const ok = await login(stack.server.token)
    expect(ok.status).toBe(200)
    const cookie = ok.cookie!
    const attrs = cookie.split(";").map((a) => a.trim().toLowerCase())
    expect(attrs).toContain("httponly")
    expect(attrs).toContain("samesite=strict")
    expect(attrs).toContain("path=/manage")
    expect(attrs).not.toContain("secure")
    expect(cookie).not.toContain(stack.server.token)
    expect(ok.text).not.toContain(stack.server.token)
    expect(typeof ok.json.csrf_token).toBe("string")
    expect(ok.json.csrf_token.length).toBeGreaterThanOrEqual(32)
    const behindTls = await login(stack.server.token, { "x-forwarded-proto": "https" })
    expect(behindTls.cookie!.split(";").map((a) => a.trim().toLowerCase())).toContain("secure")
  })

  it("CSRF: with the cookie alone reads work, writes need the session's CSRF token", async (ctx) => {
    if (!hasUi) return ctx.skip()
    const s = await login(stack.server.token)
    const cookie = cookieValue(s.cookie!)
    const csrf = s.json.csrf_token as string
    const body = (name: string) => JSON.stringify({ name, api_key: "sk-csrf-check-0123456789" })
    const send = (method: string, path: string, headers: ReadonlyArray<readonly [string, string]>, text?: string) =>
      rawHttp(port, method, path, [
        ["Cookie", cookie],
        ...headers,
        ...(text !== undefined
          ? [
            ["Content-Type", "application/json"] as const,
            ["Content-Length", String(Buffer.byteLength(text))] as const
          ]
          : [])
      ], text)
    expect((await send("GET", "/manage/projects", [])).status).toBe(200)
    const before = (await stack.manage.get("/manage/projects")).json.length
    const writes: ReadonlyArray<readonly [string, string, string | undefined]> = [
      ["POST", "/manage/projects", body(uniqueName("csrf"))],
      [
        "POST",
        "/manage/tokens",
        JSON.stringify({ project_id: "00000000-0000-4000-8000-000000000000", duration_minutes: 5 })
      ],
      ["DELETE", "/manage/tokens/00000000-0000-4000-8000-000000000000", undefined],
      ["PATCH", "/manage/projects/00000000-0000-4000-8000-000000000000", "{}"]
    ]
    for (const [method, path, text] of writes) {
      for (
        const headers of [[], [["X-CSRF-Token", ""]], [["X-CSRF-Token", csrf.slice(0, -1)]], [[
          "X-CSRF-Token",
          `${csrf}x`
        ]], [["X-CSRF-Token", csrf.toUpperCase()]]] as const
      ) {
        tally(TITLE, `${method} with cookie, bad CSRF`)
        const r = await send(method, path, headers, text)
        expect(r.status).toBe(403)
        expect(r.json.code).toBe("csrf_failed")
      }
    }
    expect((await stack.manage.get("/manage/projects")).json.length).toBe(before)
    const ok = await send("POST", "/manage/projects", [["X-CSRF-Token", csrf]], body(uniqueName("csrf-ok")))
    expect(ok.status).toBe(201)
    // Logout is state-changing too: without the session's CSRF token it is refused and the session lives on.
    for (
      const headers of [[], [["X-CSRF-Token", ""]], [["X-CSRF-Token", csrf.slice(0, -1)]], [[
        "X-CSRF-Token",
        `${csrf}x`
      ]]] as const
    ) {
      tally(TITLE, "DELETE /manage/session with cookie, bad CSRF")
      const out = await send("DELETE", "/manage/session", headers)
      expect(out.status).toBe(403)
      expect(out.json.code).toBe("csrf_failed")
    }
    expect((await send("GET", "/manage/projects", [])).status).toBe(200)
  })

  it("fuzz: random session cookies and CSRF tokens never get in", async (ctx) => {
    if (!hasUi) return ctx.skip()
    const s = await login(stack.server.token)
    const real = cookieValue(s.cookie!).split("=")[1]!
    const before = (await stack.manage.get("/manage/projects")).json.length
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.stringMatching(/^[A-Za-z0-9_-]{0,60}$/),
          fc.constantFrom(
            real.slice(0, -1),
            `${real}x`,
            real.toUpperCase(),
            stack.server.token,
            "",
            "null",
            "undefined"
          )
        ),
        fc.oneof(fc.stringMatching(/^[A-Za-z0-9_-]{0,60}$/), fc.constant(s.json.csrf_token as string)),
        fc.constantFrom("GET", "POST"),
        async (cookie, csrf, method) => {
          tally(TITLE, `${method} /manage/projects with a fuzzed session`)
          const text = method === "POST"
            ? JSON.stringify({ name: uniqueName("fuzz"), api_key: "sk-fuzz-session-0123456789" })
            : undefined
          const r = await rawHttp(port, method, "/manage/projects", [
            ["Cookie", `llm_proxy_session=${cookie}`],
            ["X-CSRF-Token", csrf],
            ...(text !== undefined
              ? [["Content-Type", "application/json"] as const, ["Content-Length", String(text.length)] as const]
              : [])
          ], text)
          expect(r.status === 401 || r.status === 403 || r.status === 400).toBe(true)
        }
      ),
      { numRuns: runs(200) }
    )
    expect((await stack.manage.get("/manage/projects")).json.length).toBe(before)
  })

  it("sessions live in the database: another instance and a restart know them; logout ends them everywhere", async (ctx) => {
    if (!hasUi) return ctx.skip()
    const second = await startStack(backend, { managementToken: Option.some(Redacted.make(stack.server.token)) })
    try {
      const secondPort = Number(new URL(second.server.url).port)
      const s = await login(stack.server.token)
      const cookie = cookieValue(s.cookie!)
      const csrf = s.json.csrf_token as string
      tally(TITLE, "session used on a second instance")
      expect((await rawHttp(secondPort, "GET", "/manage/projects", [["Cookie", cookie]])).status).toBe(200)
      const body = JSON.stringify({ name: uniqueName("second"), api_key: "sk-second-instance-0123456789" })
      const write = await rawHttp(secondPort, "POST", "/manage/projects", [
        ["Cookie", cookie],
        ["X-CSRF-Token", csrf],
        ["Content-Type", "application/json"],
        ["Content-Length", String(body.length)]
      ], body)
      expect(write.status).toBe(201)
      // What the table holds signs nobody in.
      const rows = JSON.stringify(await backend.rows("admin_sessions"))
      expect(rows).not.toContain(cookie.split("=")[1]!)
      expect(rows).not.toContain(csrf)
      // Restart the first instance: the session is still there.
      await stack.close()
      stack = await startStack(backend, { managementToken: Option.some(Redacted.make(second.server.token)) })
      port = Number(new URL(stack.server.url).port)
      tally(TITLE, "session used after a restart")
      expect((await rawHttp(port, "GET", "/manage/projects", [["Cookie", cookie]])).status).toBe(200)
      tally(TITLE, "DELETE /manage/session")
      const out = await rawHttp(port, "DELETE", "/manage/session", [["Cookie", cookie], ["X-CSRF-Token", csrf]])
      expect(out.status).toBe(204)
      expect((await rawHttp(port, "GET", "/manage/projects", [["Cookie", cookie]])).status).toBe(401)
      expect((await rawHttp(secondPort, "GET", "/manage/projects", [["Cookie", cookie]])).status).toBe(401)
    } finally {
      await second.close()
    }
  })

  it("brute force: fuzzed wrong login tokens from one address get 401 × 10, then 429 — the right token too — and no cookie", async (ctx) => {
    if (!hasUi) return ctx.skip()
    const guarded = await startStack(backend, { trustedProxies: ["127.0.0.1"] })
    try {
      const from = { "x-forwarded-for": "198.18.2.1" }
      const statuses: Array<number> = []
      await fc.assert(
        fc.asyncProperty(fc.string({ maxLength: 80 }), async (guess) => {
          tally(TITLE, "POST /manage/session with a fuzzed token")
          const r = await fetch(`${guarded.server.url}/manage/session`, {
            method: "POST",
            headers: { "content-type": "application/json", ...from },
            body: JSON.stringify({ token: guess })
          })
          await r.arrayBuffer()
          statuses.push(r.status)
          expect(r.headers.get("set-cookie")).toBeNull()
        }),
        { numRuns: runs(60) }
      )
      // Every wrong token counts, the empty one too.
      const counted = statuses
      expect(counted.slice(0, 10).every((s) => s === 401)).toBe(true)
      expect(counted.slice(10).every((s) => s === 429)).toBe(true)
      const right = await fetch(`${guarded.server.url}/manage/session`, {
        method: "POST",
        headers: { "content-type": "application/json", ...from },
        body: JSON.stringify({ token: guarded.server.token })
      })
      expect(right.status).toBe(counted.length >= 10 ? 429 : 200)
      expect(Number(right.headers.get("retry-after") ?? "1")).toBeGreaterThan(0)
      // Another address signs in at once.
      const other = await fetch(`${guarded.server.url}/manage/session`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: guarded.server.token })
      })
      expect(other.status).toBe(200)
    } finally {
      await guarded.close()
    }
  })
})
