/**
 * Fuzzing the management API over raw sockets (so header bytes, duplicates and paths go out exactly as generated):
 *
 *   auth       every endpoint, random and near-miss Authorization headers (duplicates too) → 401/400, or 429 once
 *              the sending address has failed 10 times (the brute-force limit), data unchanged
 *   payloads   every endpoint with a body, hostile JSON / non-JSON / wrong types / huge / deep → 4xx, data unchanged
 *   ids        hostile path segments (encoded traversal, `//`, unicode, over-long) → 4xx, data unchanged
 *   query      GET /manage/tokens with hostile query strings → 200 or 4xx, data unchanged
 *   headers    CRLF and bare LF/CR in values, over-long headers, odd content types → 4xx, never 5xx
 *   schemas    payloads generated from the endpoints' own Schemas (effect `Arbitrary`) → 2xx or 4xx, never 5xx,
 *              and the data afterwards is exactly what the 2xx answers said
 *
 * After each property: /health is 200 and a proxied request still works.
 */
import { Arbitrary, FastCheck as fc, Schema } from "effect"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import {
  CachePurge,
  CreateProject,
  CreateProjectKey,
  CreateToken,
  UpdateProject,
  UpdateToken
} from "../../src/domain/models.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, type ProjectAndToken, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { printTally, rawHttp, type RawReply, runs, tally } from "./support.js"

const TITLE = "management API fuzzing"

let backend: BackendInstance
let stack: Stack
let port: number
let live: ProjectAndToken
let mt: string

// Wrong credentials count against the sending address's brute-force limit (10 a minute). The fuzzer sends them as
// a pool of addresses behind a trusted proxy (X-Forwarded-For), so that they exercise the endpoints' own checks as
// well as the limit, while the suite's own calls (127.0.0.1) stay below it. About 16 wrong attempts reach each
// address (roughly 40 % of the runs are refused with 401 or 429), so that the limit of 10 is crossed in every profile.
const ATTACKERS = Array.from({ length: Math.max(4, Math.round(runs(400) / 80)) }, (_, i) => `198.18.0.${i + 1}`)
const fromAttacker = fc.constantFrom(...ATTACKERS).map((ip) => ["X-Forwarded-For", ip] as const)

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, { trustedProxies: ["127.0.0.1"] })
  port = Number(new URL(stack.server.url).port)
  mt = stack.server.token
})
// A fresh project and token per property: a failure in one cannot cascade into the next.
beforeEach(async () => {
  live = await projectAndToken(stack.manage)
})
afterAll(async () => {
  printTally(TITLE)
  await stack?.close()
  await backend?.cleanup()
})

type Endpoint = { readonly method: string; readonly path: () => string; readonly label: string; readonly body: boolean }

const endpoints = (): ReadonlyArray<Endpoint> => [
  { method: "GET", path: () => "/manage/projects", label: "GET /manage/projects", body: false },
  { method: "POST", path: () => "/manage/projects", label: "POST /manage/projects", body: true },
  { method: "GET", path: () => `/manage/projects/${live.projectId}`, label: "GET /manage/projects/:id", body: false },
  {
    method: "PATCH",
    path: () => `/manage/projects/${live.projectId}`,
    label: "PATCH /manage/projects/:id",
    body: true
  },
  {
    method: "POST",
    path: () => `/manage/projects/${live.projectId}/tokens/revoke`,
    label: "POST /manage/projects/:id/tokens/revoke",
    body: false
  },
  {
    method: "GET",
    path: () => `/manage/projects/${live.projectId}/keys`,
    label: "GET /manage/projects/:id/keys",
    body: false
  },
  {
    method: "POST",
    path: () => `/manage/projects/${live.projectId}/keys`,
    label: "POST /manage/projects/:id/keys",
    body: true
  },
  {
    method: "DELETE",
    path: () => `/manage/projects/${live.projectId}/keys/${crypto.randomUUID()}`,
    label: "DELETE /manage/projects/:id/keys/:key_id",
    body: false
  },
  { method: "GET", path: () => "/manage/tokens", label: "GET /manage/tokens", body: false },
  { method: "POST", path: () => "/manage/tokens", label: "POST /manage/tokens", body: true },
  { method: "GET", path: () => `/manage/tokens/${live.tokenId}`, label: "GET /manage/tokens/:id", body: false },
  { method: "PATCH", path: () => `/manage/tokens/${live.tokenId}`, label: "PATCH /manage/tokens/:id", body: true },
  { method: "DELETE", path: () => `/manage/tokens/${live.tokenId}`, label: "DELETE /manage/tokens/:id", body: false },
  { method: "GET", path: () => "/manage/audit", label: "GET /manage/audit", body: false },
  { method: "GET", path: () => "/manage/audit/1", label: "GET /manage/audit/:id", body: false },
  { method: "GET", path: () => "/manage/usage", label: "GET /manage/usage", body: false },
  { method: "POST", path: () => "/manage/cache/purge", label: "POST /manage/cache/purge", body: true }
]

/** Endpoints that need no management token (the admin UI's login and session), fuzzed for their payloads only. */
const sessionEndpoints: ReadonlyArray<Endpoint> = [
  { method: "POST", path: () => "/manage/session", label: "POST /manage/session", body: true }
]

const bodySchemas: Record<string, Schema.Schema<any, any, never>> = {
  "POST /manage/projects": CreateProject,
  "PATCH /manage/projects/:id": UpdateProject,
  "POST /manage/projects/:id/keys": CreateProjectKey,
  "POST /manage/tokens": CreateToken,
  "PATCH /manage/tokens/:id": UpdateToken,
  "POST /manage/cache/purge": CachePurge
}

const auth = (): readonly [string, string] => ["Authorization", `Bearer ${mt}`]

const USAGE_FIELDS = [
  "request_count",
  "prompt_tokens",
  "completion_tokens",
  "cache_hit_count",
  "last_used_at",
  // What the health probe's answers cost (charged in the background, like the counters above).
  "spent_usd",
  "tokens_used",
  "period_spent_usd",
  "period_tokens_used",
  "period_ends_at"
]

/** Projects and tokens as the API shows them, minus usage counters (the health probe's request adds to those). */
const snapshot = async () => {
  const s = await stack.manage.snapshot()
  const withoutUsage = (rows: unknown) =>
    (rows as Array<Record<string, unknown>>).map((r) =>
      Object.fromEntries(Object.entries(r).filter(([k]) => !USAGE_FIELDS.includes(k)))
    )
  return { projects: withoutUsage(s.projects), tokens: withoutUsage(s.tokens) }
}

/** The answer is a JSON error with a 4xx status. */
const expect4xx = (r: RawReply, what: string) => {
  if (!(r.status >= 400 && r.status < 500) || typeof r.json?.error !== "string") {
    throw new Error(
      `${what}: expected a 4xx JSON error, got ${r.status} ${r.dropped ? "(dropped)" : ""} ${r.body.slice(0, 300)}`
    )
  }
}

const expectHealthy = async () => {
  const h = await fetch(`${stack.server.url}/health`)
  expect(h.status).toBe(200)
  const p = await call(stack.server.url, "/v1/chat/completions", { token: live.token, body: chatBody() })
  expect(p.status).toBe(200)
}

// -- generators -------------------------------------------------------------------------------------------------

const nasty = [
  "",
  " ",
  "null",
  "undefined",
  "../",
  "..%2f..%2f",
  "%2e%2e%2f",
  "%252e%252e%252f",
  "%00",
  "\u0000",
  "%",
  "%zz",
  "%c0%af",
  "\u202e",
  "\ufeff",
  "ｐｒｏｊｅｃｔ",
  "é",
  "e\u0301",
  "\ud83d\ude00",
  "'; DROP TABLE projects; --",
  "\" OR 1=1 --",
  "<script>alert(1)</script>",
  "${jndi:ldap://x}",
  "{{7*7}}",
  "__proto__",
  "constructor",
  "a".repeat(300),
  "a".repeat(70_000),
  "-1",
  "1e309",
  "NaN",
  "0x10"
]

const hostileString = fc.oneof(
  fc.constantFrom(...nasty),
  fc.string({ maxLength: 40 }),
  fc.fullUnicodeString({ maxLength: 40 }),
  fc.uuid()
)

const wrongValue = fc.oneof(
  hostileString,
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constantFrom(-1, 0, 2 ** 31, 2 ** 53 + 1, Number.MAX_VALUE, -0),
  fc.array(fc.jsonValue(), { maxLength: 3 }),
  fc.dictionary(fc.string({ maxLength: 5 }), fc.jsonValue(), { maxKeys: 3 })
)

const fieldNames = [
  "name",
  "api_key",
  "provider",
  "is_active",
  "revoke_tokens",
  "project_id",
  "duration_minutes",
  "max_requests",
  "expires_at",
  "user",
  "metadata",
  "allowed_models",
  "max_token_minutes",
  "__proto__",
  "constructor"
]

/** JSON documents shaped like the payloads but with wrong types, plus any JSON at all. */
const hostileJson = fc.oneof(
  fc.dictionary(fc.constantFrom(...fieldNames), wrongValue, { maxKeys: 5 }),
  fc.jsonValue({ maxDepth: 4 }),
  fc.constantFrom<unknown>([], "", 0, true, null, [[[]]], { name: { $gt: "" } })
)

/** Bodies that are not JSON documents at all, or are pathological ones. */
const hostileRaw = fc.oneof(
  fc.string({ maxLength: 200 }),
  fc.constantFrom(
    "{",
    "{\"name\":",
    "{\"name\":\"a\",}",
    "[".repeat(100_000) + "]".repeat(100_000),
    "{\"a\":".repeat(20_000) + "1" + "}".repeat(20_000),
    "{\"name\":\"" + "x".repeat(3 * 1024 * 1024) + "\"}",
    "\u0000\u0001\u0002",
    "{\"name\":\"\\ud800\",\"api_key\":\"k\"}",
    "{\"__proto__\":{\"isAdmin\":true}}"
  ),
  fc.uint8Array({ maxLength: 200 }).map((b) => Buffer.from(b).toString("latin1"))
)

const contentTypes = fc.constantFrom(
  "application/json",
  "application/json; charset=utf-8",
  "text/plain",
  "application/x-www-form-urlencoded",
  "multipart/form-data; boundary=x",
  "application/json; charset=utf-16",
  "",
  "application/vnd.api+json"
)

/** Whether the API would accept the document (those are the schema property's business, not this one's). */
const acceptable = (label: string, doc: unknown): boolean => {
  const schema = bodySchemas[label]
  if (schema === undefined) return false
  try {
    return Schema.is(schema)(JSON.parse(JSON.stringify(doc) ?? "null"))
  } catch {
    return false
  }
}

// -- properties -------------------------------------------------------------------------------------------------

describe("management API under hostile input", () => {
  it("auth: random, near-miss and duplicate Authorization headers never get in", async () => {
    const before = await snapshot()
    const nearMiss = fc.oneof(
      fc.constantFrom(
        `Bearer ${mt.slice(0, -1)}`,
        `Bearer ${mt.slice(0, -1)}${mt.at(-1) === "x" ? "y" : "x"}`,
        `Bearer ${mt}x`,
        `bearer ${mt}`,
        `BEARER ${mt}`,
        `Bearer  ${mt}`,
        `Bearer ${mt.toUpperCase()}`,
        `Basic ${Buffer.from(`admin:${mt}`).toString("base64")}`,
        `Bearer ${encodeURIComponent(mt)}%00`,
        `Token ${mt}`,
        mt,
        "Bearer",
        "Bearer ",
        `Bearer ${"a".repeat(10_000)}`
      ),
      fc.integer({ min: 1, max: mt.length - 1 }).map((n) => `Bearer ${mt.slice(0, n)}`),
      fc.string({ maxLength: 80 }).map((s) => `Bearer ${s.replace(/[\r\n]/g, "")}`),
      fc.string({ maxLength: 80 }).map((s) => s.replace(/[\r\n]/g, ""))
    )
    const headerSets = fc.oneof(
      nearMiss.map((v) => [["Authorization", v] as const]),
      fc.constant([] as Array<readonly [string, string]>),
      // Two Authorization headers, the valid one first or second: ambiguous, refused.
      nearMiss.map((v) => [auth(), ["Authorization", v] as const]),
      nearMiss.map((v) => [["Authorization", v] as const, auth()]),
      nearMiss.map((v) => [auth(), ["authorization", v] as const])
    )
    const seen = new Map<number, number>()
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...endpoints()),
        headerSets,
        fc.option(hostileJson),
        fromAttacker,
        async (e, headers, body, from) => {
          tally(TITLE, e.label)
          const text = e.body && body !== null ? JSON.stringify(body) : undefined
          const h = [
            from,
            ...headers,
            ...(text !== undefined
              ? [
                ["Content-Type", "application/json"] as const,
                ["Content-Length", String(Buffer.byteLength(text))] as const
              ]
              : [])
          ]
          const r = await rawHttp(port, e.method, e.path(), h, text)
          expect4xx(r, `${e.label} with ${JSON.stringify(headers).slice(0, 200)}`)
          if (r.status !== 401 && r.status !== 400 && r.status !== 429) {
            throw new Error(
              `${e.label}: unauthenticated request got ${r.status}`
            )
          }
          if (r.status === 429) {
            expect(r.json.code).toBe("too_many_attempts")
            expect(Number(r.headers["retry-after"])).toBeGreaterThan(0)
          }
          seen.set(r.status, (seen.get(r.status) ?? 0) + 1)
        }
      ),
      { numRuns: runs(400) }
    )
    console.log(`[chaos] management auth fuzz: answers by status ${JSON.stringify(Object.fromEntries(seen))}`)
    // Both the endpoints' own refusals and the limit were exercised.
    expect(seen.get(401) ?? 0).toBeGreaterThan(0)
    expect(seen.get(429) ?? 0).toBeGreaterThan(0)
    expect(await snapshot()).toEqual(before)
    await expectHealthy()
  })

  it("brute force: past 10 failures an address gets 429 on every endpoint, the right token included, and nothing else", async () => {
    const ip = "198.18.1.1"
    const from = ["X-Forwarded-For", ip] as const
    for (let i = 0; i < 10; i++) {
      tally(TITLE, "wrong bearer (counted)")
      expect((await rawHttp(port, "GET", "/manage/projects", [from, ["Authorization", `Bearer guess-${i}`]])).status)
        .toBe(401)
    }
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...endpoints()), fc.boolean(), async (e, right) => {
        tally(TITLE, `${e.label} after the limit`)
        const r = await rawHttp(port, e.method, e.path(), [from, [
          "Authorization",
          right ? `Bearer ${mt}` : "Bearer guess"
        ]])
        expect(r.status).toBe(429)
        expect(r.json).toEqual({ error: "too many failed authentication attempts", code: "too_many_attempts" })
      }),
      { numRuns: runs(100) }
    )
    const login = JSON.stringify({ token: mt })
    const r = await rawHttp(port, "POST", "/manage/session", [from, ["Content-Type", "application/json"], [
      "Content-Length",
      String(login.length)
    ]], login)
    expect(r.status).toBe(429)
    expect(r.headers["set-cookie"]).toBeUndefined()
    await expectHealthy()
  })

  it("payloads: hostile JSON and non-JSON bodies get a 4xx and change nothing", async () => {
    const before = await snapshot()
    const withBody = [...endpoints().filter((e) => e.body), ...sessionEndpoints]
    const payload = fc.oneof(
      hostileJson.filter((d) => d !== undefined).map((d) => ({ raw: false, value: d as unknown })),
      hostileRaw.map((s) => ({ raw: true, value: s as unknown }))
    )
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...withBody), payload, contentTypes, fc.boolean(), async (e, p, ct, chunked) => {
        if (!p.raw && acceptable(e.label, p.value)) return
        tally(TITLE, e.label)
        const text = p.raw ? (p.value as string) : JSON.stringify(p.value)
        const bytes = Buffer.from(text, "utf8")
        const framing: Array<readonly [string, string]> = chunked
          ? [["Transfer-Encoding", "chunked"]]
          : [["Content-Length", String(bytes.length)]]
        const body = chunked
          ? Buffer.concat([Buffer.from(`${bytes.length.toString(16)}\r\n`), bytes, Buffer.from("\r\n0\r\n\r\n")])
          : bytes
        // A wrong login counts against the address: those come from the fuzzer's pool.
        const from = e.label === "POST /manage/session"
          ? [["X-Forwarded-For", ATTACKERS[Math.floor(Math.random() * ATTACKERS.length)]!] as const]
          : []
        const h: Array<readonly [string, string]> = [
          auth(),
          ...from,
          ...framing,
          ...(ct === "" ? [] : [["Content-Type", ct] as const])
        ]
        const r = await rawHttp(port, e.method, e.path(), h, body)
        expect4xx(r, `${e.label} ${text.slice(0, 120)}`)
      }),
      { numRuns: runs(500) }
    )
    expect(await snapshot()).toEqual(before)
    await expectHealthy()
  })

  it("ids: hostile path segments get a 4xx and change nothing", async () => {
    const before = await snapshot()
    const segment = fc.oneof(
      hostileString.map((s) => encodeURIComponent(s)),
      fc.constantFrom(
        "..",
        "%2e%2e",
        "..%2f..%2fetc%2fpasswd",
        "%2F",
        "%5c",
        "",
        "%",
        "%zz",
        "%ff",
        "%c0%ae%c0%ae",
        `${live.projectId}%00`,
        `${live.projectId}/`,
        `${live.tokenId}/../${live.tokenId}`,
        "a".repeat(5000)
      ),
      // Raw bytes above ASCII, unencoded (latin1 on the wire).
      fc.fullUnicodeString({ minLength: 1, maxLength: 10 }).map((s) =>
        Buffer.from(s, "utf8").toString("latin1").replace(/[\s?#]/g, "x")
      )
    )
    const shapes = [
      {
        method: ["GET", "PATCH"],
        path: (s: string) => `/manage/projects/${s}`,
        label: "GET|PATCH /manage/projects/:id"
      },
      {
        method: ["POST"],
        path: (s: string) => `/manage/projects/${s}/tokens/revoke`,
        label: "POST /manage/projects/:id/tokens/revoke"
      },
      {
        method: ["GET", "PATCH", "DELETE"],
        path: (s: string) => `/manage/tokens/${s}`,
        label: "GET|PATCH|DELETE /manage/tokens/:id"
      },
      { method: ["GET", "DELETE"], path: (s: string) => `/manage/audit/${s}`, label: "GET|DELETE /manage/audit/:id" },
      { method: ["GET", "POST"], path: (s: string) => `/manage/${s}`, label: "/manage/:resource" },
      { method: ["GET", "POST"], path: (s: string) => `/manage//projects/${s}`, label: "/manage//projects/:id" },
      {
        method: ["GET", "DELETE", "PUT"],
        path: (s: string) => `/manage/projects/${live.projectId}/${s}`,
        label: "/manage/projects/:id/:x"
      }
    ]
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(...shapes), segment, fc.nat(), async (shape, s, m) => {
        const method = shape.method[m % shape.method.length]!
        tally(TITLE, shape.label)
        const body = method === "PATCH" ? JSON.stringify({ name: "renamed-by-fuzz" }) : undefined
        const h: Array<readonly [string, string]> = [
          auth(),
          ...(body
            ? [["Content-Type", "application/json"] as const, ["Content-Length", String(body.length)] as const]
            : [])
        ]
        const target = shape.path(s)
        const r = await rawHttp(port, method, target, h, body)
        if (r.status === 0) return // the HTTP parser refused the request line and closed the connection
        expect4xx(r, `${method} ${target.slice(0, 200)}`)
      }),
      { numRuns: runs(400) }
    )
    const after = await snapshot()
    expect(after).toEqual(before)
    await expectHealthy()
  })

  it("query: hostile query strings on GET /manage/tokens get 200 or a 4xx, never a 5xx", async () => {
    const before = await snapshot()
    const key = fc.constantFrom(
      "project_id",
      "projectId",
      "active_only",
      "page",
      "page_size",
      "limit",
      "__proto__",
      "project_id[]",
      "x",
      // GET /manage/audit's filters
      "action",
      "actor",
      "outcome",
      "token_id",
      "client_ip",
      "request_id",
      "correlation_id",
      "method",
      "path",
      "search",
      "start_time",
      "end_time",
      "cursor",
      "order",
      // GET /manage/usage's
      "since",
      "until"
    )
    const value = fc.oneof(
      hostileString.map(encodeURIComponent),
      fc.constantFrom(
        live.projectId,
        "true",
        "false",
        "1",
        "-1",
        "%",
        "%zz",
        "",
        "%25",
        "_",
        "%25%25%25",
        "'%20OR%201=1--",
        "2026-13-45T99:99:99Z",
        "1e309",
        "99999999999999999999"
      )
    )
    const query = fc.array(fc.tuple(key, value), { maxLength: 5 }).map((pairs) =>
      pairs.map(([k, v]) => `${k}=${v}`).join("&")
    )
    await fc.assert(
      fc.asyncProperty(
        query,
        fc.constantFrom("/manage/tokens", "/manage/projects", "/manage/audit", "/manage/usage"),
        async (q, path) => {
          tally(TITLE, `GET ${path}?query`)
          const r = await rawHttp(port, "GET", `${path}?${q}`, [auth()])
          if (r.status === 200) {
            expect(typeof r.json).toBe("object")
            return
          }
          expect4xx(r, `GET ${path}?${q}`)
        }
      ),
      { numRuns: runs(300) }
    )
    expect(await snapshot()).toEqual(before)
  })

  it("headers: CR/LF in values, over-long headers and odd framing get a 4xx or a closed connection", async () => {
    const before = await snapshot()
    const headerCases = fc.oneof(
      fc.constantFrom<Array<readonly [string, string]>>(
        [["X-Request-ID", "abc\rSet-Cookie: x=1"]],
        [["X-Request-ID", "abc\nSet-Cookie: x=1"]],
        [["Authorization", `Bearer ${mt}\rX-Evil: 1`]],
        [["X-Long", "a".repeat(20_000)]],
        [["Authorization", `Bearer ${"a".repeat(17_000)}`]],
        [["Content-Length", "5"], ["Content-Length", "6"]],
        [["Content-Length", "-1"]],
        [["Content-Length", "abc"]],
        [["Transfer-Encoding", "chunked"], ["Content-Length", "3"]],
        [["Transfer-Encoding", "gzip, chunked"]],
        [["Bad Header", "x"]],
        [["X:Y", "x"]],
        [["", "x"]]
      ),
      fc.array(
        fc.tuple(
          fc.constantFrom("X-A", "X-Request-ID", "Origin", "Content-Type", "Accept"),
          fc.string({ maxLength: 50 })
        ),
        {
          minLength: 1,
          maxLength: 4
        }
      )
    )
    await fc.assert(
      // Not the two that change data with an empty body (revoking): this property is about the headers.
      fc.asyncProperty(
        fc.constantFrom(...endpoints().filter((e) => e.method !== "DELETE" && !e.label.endsWith("revoke"))),
        headerCases,
        async (e, headers) => {
          tally(TITLE, `${e.label} (headers)`)
          // A complete request whatever the framing headers say (an unfinished body is the raw-HTTP suite's case).
          const chunked = headers.some(([k, v]) => k === "Transfer-Encoding" && v.includes("chunked"))
          const r = await rawHttp(port, e.method, e.path(), [auth(), ...headers], chunked ? "0\r\n\r\n" : "")
          expect(r.timedOut).toBe(false)
          if (r.dropped) return
          expect(r.status).toBeLessThan(500)
          // A value that made it through is never reflected as a header of its own.
          expect(r.headers["set-cookie"]).toBeUndefined()
          expect(r.headers["x-evil"]).toBeUndefined()
        }
      ),
      { numRuns: runs(300) }
    )
    // The fuzzed headers may have included valid GETs, but nothing that writes without a valid body.
    const after = await snapshot()
    expect((after.projects as Array<unknown>).length).toBe((before.projects as Array<unknown>).length)
    await expectHealthy()
  })

  it("schemas: payloads from the endpoints' Schemas get a 2xx or a 4xx, and the data matches the answers", async () => {
    const created: Array<string> = []
    const createProject = Arbitrary.make(CreateProject)
    const updateProject = Arbitrary.make(UpdateProject)
    const createToken = Arbitrary.make(CreateToken)
    const updateToken = Arbitrary.make(UpdateToken)
    const send = async (method: string, path: string, doc: unknown) => {
      const text = JSON.stringify(doc)
      return rawHttp(port, method, path, [auth(), ["Content-Type", "application/json"], [
        "Content-Length",
        String(Buffer.byteLength(text))
      ]], text)
    }
    const ok = (r: RawReply, label: string) => {
      tally(TITLE, `${label} (schema)`)
      if (r.status >= 500 || r.status === 0) throw new Error(`${label}: ${r.status} ${r.body.slice(0, 300)}`)
    }
    await fc.assert(
      fc.asyncProperty(createProject, async (doc) => {
        // Half of them name a configured provider, so some succeed.
        const r = await send("POST", "/manage/projects", Math.random() < 0.5 ? { ...doc, provider: "openai" } : doc)
        ok(r, "POST /manage/projects")
        if (r.status === 201) {
          created.push(r.json.id)
          // No key is ever returned whole (api_key, or each of api_keys).
          const keys = [doc.api_key, ...(doc.api_keys ?? []).map((k) => k.key)]
          for (const k of keys) {
            if (k !== undefined && JSON.stringify(k).slice(1, -1).length > 12) expect(r.body).not.toContain(k)
          }
        }
      }),
      { numRuns: runs(150) }
    )
    const target = created[0] ?? live.projectId
    await fc.assert(
      fc.asyncProperty(updateProject, async (doc) => {
        const { is_active: _a, revoke_tokens: _r, ...rest } = doc
        ok(await send("PATCH", `/manage/projects/${target}`, rest), "PATCH /manage/projects/:id")
      }),
      { numRuns: runs(150) }
    )
    let tokens = 0
    await fc.assert(
      fc.asyncProperty(createToken, fc.boolean(), async (doc, real) => {
        const r = await send("POST", "/manage/tokens", real ? { ...doc, project_id: live.projectId } : doc)
        ok(r, "POST /manage/tokens")
        if (r.status === 201) tokens++
      }),
      { numRuns: runs(150) }
    )
    const spare = (await stack.manage.post("/manage/tokens", { project_id: live.projectId, duration_minutes: 5 })).json
      .id as string
    await fc.assert(
      fc.asyncProperty(updateToken, async (doc) => {
        ok(await send("PATCH", `/manage/tokens/${spare}`, doc), "PATCH /manage/tokens/:id")
      }),
      { numRuns: runs(150) }
    )
    const projects = (await stack.manage.get("/manage/projects")).json as Array<{ id: string }>
    for (const id of created) expect(projects.some((p) => p.id === id)).toBe(true)
    const list = (await stack.manage.get(`/manage/tokens?project_id=${live.projectId}`)).json as Array<unknown>
    // live's token, the spare one, and every 201.
    expect(list.length).toBe(tokens + 2)
    expect(tokens).toBeGreaterThan(0)
    await expectHealthy()
  })
})
