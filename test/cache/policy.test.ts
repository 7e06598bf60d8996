import { describe, expect, it } from "vitest"
import {
  cacheKey,
  type CacheRequest,
  cacheStatusHeaders,
  canonicalQuery,
  conditionalMatches,
  entrySize,
  hasClientConditional,
  type Headers,
  isFresh,
  isStorableHeader,
  makeEntry,
  parseCacheControl,
  parsePurge,
  planRequest,
  planStore,
  purgeMatches,
  refreshEntry,
  revalidationHeaders,
  scopeHash,
  servedHeaders,
  storableHeaders,
  urlHash,
  varyMatches,
  varyNames
} from "../../src/cache/policy.js"

const P1 = "11111111-1111-4111-8111-111111111111"
const P2 = "22222222-2222-4222-8222-222222222222"
const config = { defaultTtlSeconds: 300, maxObjectBytes: 1024, streamResponses: false }

const req = (over: Partial<CacheRequest> = {}): CacheRequest => ({
  method: "GET",
  path: "/v1/models",
  query: "",
  headers: {},
  projectId: P1,
  ...over
})

const keyOf = (over: Partial<CacheRequest>) => {
  const plan = planRequest(req(over))
  if (plan._tag !== "Lookup") throw new Error(`expected a lookup, got ${plan.reason}`)
  return plan.key
}

describe("parseCacheControl", () => {
  it.each([
    ["", {}],
    ["public, max-age=60", { public: true, maxAge: 60 }],
    ["PUBLIC, MAX-AGE=60", { public: true, maxAge: 60 }],
    ["s-maxage=30, max-age=10", { sMaxAge: 30, maxAge: 10 }],
    ["max-age=\"60\"", { maxAge: 60 }],
    ["max-age=abc", {}],
    ["max-age=-1", {}],
    ["no-store", { noStore: true }],
    ["no-cache", { noCache: true }],
    ["private=\"set-cookie, x-foo\", max-age=5", { private: true, maxAge: 5 }],
    ["must-revalidate", { mustRevalidate: true }],
    ["proxy-revalidate", { mustRevalidate: true }],
    ["max-age=0", { maxAge: 0 }],
    ["unknown-directive=1, public", { public: true }]
  ])("%j", (header, expected) => {
    expect(parseCacheControl(header)).toEqual({
      public: false,
      private: false,
      noStore: false,
      noCache: false,
      mustRevalidate: false,
      maxAge: undefined,
      sMaxAge: undefined,
      ...expected
    })
  })

  it("reads every value of a repeated header", () => {
    expect(parseCacheControl(["public", "max-age=9"])).toMatchObject({ public: true, maxAge: 9 })
    expect(parseCacheControl(undefined).public).toBe(false)
    expect(parseCacheControl([]).public).toBe(false)
  })
})

describe("planRequest: what is looked up", () => {
  it.each<[string, Partial<CacheRequest>, string]>([
    ["GET", {}, "Lookup"],
    ["HEAD", { method: "HEAD" }, "Lookup"],
    ["lower-case get", { method: "get" }, "Lookup"],
    ["DELETE", { method: "DELETE" }, "method"],
    ["PUT", { method: "PUT", headers: { "cache-control": "public, max-age=60" } }, "method"],
    ["client no-store", { headers: { "cache-control": "no-store" } }, "no-store"],
    ["POST without opt-in", { method: "POST", body: new Uint8Array([1]) }, "post-without-opt-in"],
    [
      "POST with public only",
      { method: "POST", body: new Uint8Array([1]), headers: { "cache-control": "public" } },
      "post-without-opt-in"
    ],
    ["POST with max-age=0", {
      method: "POST",
      body: new Uint8Array([1]),
      headers: { "cache-control": "public, max-age=0" }
    }, "post-without-opt-in"],
    [
      "POST opted in, body not buffered",
      { method: "POST", headers: { "cache-control": "public, max-age=60" } },
      "body-unavailable"
    ],
    [
      "POST opted in",
      { method: "POST", body: new Uint8Array([1]), headers: { "cache-control": "public, max-age=60" } },
      "Lookup"
    ],
    ["POST opted in with s-maxage", {
      method: "POST",
      body: new Uint8Array([1]),
      headers: { "cache-control": "public, s-maxage=5" }
    }, "Lookup"]
  ])("%s", (_name, over, expected) => {
    const plan = planRequest(req(over))
    expect(plan._tag === "Lookup" ? "Lookup" : plan.reason).toBe(expected)
  })

  it.each<[string, Headers, boolean, number | undefined]>([
    ["plain", {}, false, undefined],
    ["no-cache", { "cache-control": "no-cache" }, true, undefined],
    ["max-age=0", { "cache-control": "max-age=0" }, true, undefined],
    ["Pragma: no-cache without Cache-Control", { pragma: "no-cache" }, true, undefined],
    [
      "Pragma ignored when Cache-Control is present",
      { pragma: "no-cache", "cache-control": "public, max-age=5" },
      false,
      5
    ],
    ["opt-in prefers s-maxage", { "cache-control": "public, max-age=10, s-maxage=20" }, false, 20],
    ["max-age without public is no opt-in", { "cache-control": "max-age=10" }, false, undefined],
    ["opt-in lifetimes are capped at a year", { "cache-control": "public, max-age=9999999999" }, false, 31_536_000]
  ])("revalidate / forced TTL: %s", (_name, headers, revalidate, forcedTtl) => {
    const plan = planRequest(req({ headers }))
    expect(plan).toMatchObject({ _tag: "Lookup", revalidate, forcedTtl })
  })
})

describe("cache keys", () => {
  it("are 80 hex characters: url hash, project scope, variant", () => {
    const key = keyOf({})
    expect(key).toMatch(/^[0-9a-f]{80}$/)
    expect(key.slice(0, 32)).toBe(urlHash("GET", "/v1/models", ""))
    expect(key.slice(32, 48)).toBe(scopeHash(P1))
  })

  it.each<[string, Partial<CacheRequest>, Partial<CacheRequest>]>([
    ["query order", { query: "b=2&a=1" }, { query: "a=1&b=2" }],
    ["repeated query values in any order", { query: "a=2&a=1" }, { query: "a=1&a=2" }],
    ["header case of the method", { method: "get" }, { method: "GET" }],
    ["unkeyed headers (authorization, user-agent)", { headers: { authorization: "Bearer a", "user-agent": "x" } }, {
      headers: { authorization: "Bearer b" }
    }],
    ["whitespace around key header values", { headers: { accept: " application/json " } }, {
      headers: { accept: "application/json" }
    }],
    ["GET opt-in lifetime (not part of a GET key)", { headers: { "cache-control": "public, max-age=30" } }, {
      headers: { "cache-control": "public, max-age=60" }
    }]
  ])("same key despite %s", (_name, a, b) => {
    expect(keyOf(a)).toBe(keyOf(b))
  })

  const post = (body: string, cc = "public, max-age=60"): Partial<CacheRequest> => ({
    method: "POST",
    path: "/v1/chat/completions",
    body: new TextEncoder().encode(body),
    headers: { "cache-control": cc }
  })

  it.each<[string, Partial<CacheRequest>, Partial<CacheRequest>]>([
    ["project", { projectId: P1 }, { projectId: P2 }],
    ["method", { method: "GET" }, { method: "HEAD" }],
    ["path", { path: "/v1/models" }, { path: "/v1/models/gpt-4o" }],
    ["query value", { query: "a=1" }, { query: "a=2" }],
    ["Accept", { headers: { accept: "application/json" } }, { headers: { accept: "text/event-stream" } }],
    ["Accept-Encoding", { headers: { "accept-encoding": "gzip" } }, {}],
    ["Accept-Language", { headers: { "accept-language": "de" } }, { headers: { "accept-language": "fr" } }],
    ["POST body", post("{\"a\":1}"), post("{\"a\":2}")],
    ["POST opt-in lifetime", post("{}", "public, max-age=60"), post("{}", "public, max-age=61")]
  ])("different key for a different %s", (_name, a, b) => {
    expect(keyOf(a)).not.toBe(keyOf(b))
  })

  it("canonicalQuery sorts keys and values", () => {
    expect(canonicalQuery("b=2&a=3&a=1&c")).toBe("a=1,3&b=2&c=&")
    expect(canonicalQuery("")).toBe("")
  })

  it("cacheKey without a body hashes no body", () => {
    expect(cacheKey(req({ method: "POST" }), 5)).toMatch(/^[0-9a-f]{80}$/)
  })
})

describe("planStore: what is stored", () => {
  const store = (ttlSeconds: number, forced = false, streaming = false) => ({
    _tag: "Store",
    ttlSeconds,
    forced,
    streaming
  })
  const skip = (debug: string) => ({ _tag: "Skip", debug })
  it.each<[string, string, number | undefined, number, Headers, object]>([
    ["public max-age", "GET", undefined, 200, { "cache-control": "public, max-age=60" }, store(60)],
    [
      "lifetimes are capped at a year",
      "GET",
      undefined,
      200,
      { "cache-control": "public, s-maxage=99999999" },
      store(31_536_000)
    ],
    ["s-maxage wins over max-age", "GET", undefined, 200, { "cache-control": "max-age=10, s-maxage=20" }, store(20)],
    [
      "public without lifetime → HTTP_CACHE_DEFAULT_TTL",
      "GET",
      undefined,
      200,
      { "cache-control": "public" },
      store(300)
    ],
    [
      "must-revalidate without lifetime → default",
      "GET",
      undefined,
      200,
      { "cache-control": "must-revalidate" },
      store(300)
    ],
    ["203", "GET", undefined, 203, { "cache-control": "public, max-age=5" }, store(5)],
    ["HEAD", "HEAD", undefined, 200, { "cache-control": "public, max-age=5", "content-length": "99999" }, store(5)],
    ["no headers, no opt-in", "GET", undefined, 200, {}, skip("ttl-zero")],
    [
      "max-age without public (request had credentials)",
      "GET",
      undefined,
      200,
      { "cache-control": "max-age=60" },
      skip("ttl-zero")
    ],
    ["public max-age=0", "GET", undefined, 200, { "cache-control": "public, max-age=0" }, skip("ttl-zero")],
    ["client opt-in, upstream silent", "GET", 30, 200, {}, store(30, true)],
    [
      "client opt-in, upstream max-age without public",
      "GET",
      30,
      200,
      { "cache-control": "max-age=5" },
      store(30, true)
    ],
    ["upstream lifetime wins over opt-in", "GET", 30, 200, { "cache-control": "public, max-age=5" }, store(5)],
    ["opt-in POST", "POST", 60, 200, {}, store(60, true)],
    ["opt-in, upstream private", "GET", 30, 200, { "cache-control": "private" }, skip("private")],
    ["opt-in, upstream no-store", "GET", 30, 200, { "cache-control": "no-store" }, skip("no-store")],
    ["opt-in, upstream no-cache", "GET", 30, 200, { "cache-control": "no-cache" }, skip("no-cache")],
    ["404", "GET", undefined, 404, { "cache-control": "public, max-age=60" }, skip("status-not-cacheable")],
    ["500 with opt-in", "GET", 30, 500, {}, skip("status-not-cacheable")],
    ["304", "GET", undefined, 304, { "cache-control": "public, max-age=60" }, skip("status-not-cacheable")],
    ["Vary: *", "GET", undefined, 200, { "cache-control": "public, max-age=60", vary: "*" }, skip("vary-star")],
    ["Vary: accept, *", "GET", 30, 200, { vary: "accept, *" }, skip("vary-star")],
    [
      "SSE with stream caching off",
      "GET",
      30,
      200,
      { "content-type": "text/event-stream" },
      skip("streaming-response")
    ],
    ["declared body over HTTP_CACHE_MAX_OBJECT_BYTES", "GET", 30, 200, { "content-length": "1025" }, skip("too-large")],
    ["DELETE", "DELETE", 30, 200, {}, skip("method-not-cacheable")]
  ])("%s", (_name, method, forced, status, headers, expected) => {
    expect(planStore(method, forced, { status, headers }, config)).toEqual(expected)
  })

  it("stores SSE when HTTP_CACHE_STREAM_RESPONSES is on", () => {
    expect(
      planStore("GET", 60, { status: 200, headers: { "content-type": "text/event-stream; charset=utf-8" } }, {
        ...config,
        streamResponses: true
      })
    ).toEqual(store(60, true, true))
    // SSE servers send no-cache by convention; it does not block a stream the operator and client opted into
    expect(
      planStore("GET", 60, {
        status: 200,
        headers: { "content-type": "text/event-stream", "cache-control": "no-cache" }
      }, {
        ...config,
        streamResponses: true
      })
    ).toEqual(store(60, true, true))
  })
})

describe("stored headers", () => {
  it.each([
    ["content-type", true],
    ["etag", true],
    ["last-modified", true],
    ["cache-control", true],
    ["vary", true],
    ["openai-processing-ms", true],
    ["set-cookie", false],
    ["Set-Cookie", false],
    ["date", false],
    ["age", false],
    ["x-request-id", false],
    ["server-timing", false],
    ["x-upstream-request-start", false],
    ["x-upstream-request-stop", false],
    ["x-proxy-received-at", false],
    ["x-proxy-first-response-at", false],
    ["x-proxy-final-response-at", false],
    ["access-control-allow-origin", false],
    ["access-control-expose-headers", false],
    ["connection", false],
    ["keep-alive", false],
    ["transfer-encoding", false],
    ["content-length", false],
    ["cache-status", false],
    ["x-proxy-cache-key", false]
  ])("%s stored: %s", (name, stored) => {
    expect(isStorableHeader(name)).toBe(stored)
  })

  it("drops headers the Connection header lists, and keeps repeated values", () => {
    expect(storableHeaders({ connection: "close, x-hop", "x-hop": "1", link: ["<a>", "<b>"] })).toEqual([
      ["link", "<a>"],
      ["link", "<b>"]
    ])
  })
})

describe("entries", () => {
  const now = 1_700_000_000_000
  const upstream = {
    status: 200,
    headers: {
      "content-type": "application/json",
      "set-cookie": "s=1",
      "x-request-id": "upstream-id",
      etag: "\"abc\"",
      "last-modified": "Tue, 01 Dec 2026 10:00:00 GMT",
      vary: "Accept-Language, X-Tenant",
      "cache-control": "max-age=5",
      "access-control-allow-origin": "https://a.example"
    }
  }
  const body = new TextEncoder().encode("{\"data\":[]}")
  const entry = makeEntry({ method: "GET", headers: { "x-tenant": " t1 ", "accept-language": "de" } }, upstream, body, {
    ttlSeconds: 60,
    forced: true
  }, now)

  it("keeps only storable headers; a forced entry carries its own Cache-Control", () => {
    const names = entry.headers.map(([n]) => n)
    expect(names).not.toContain("set-cookie")
    expect(names).not.toContain("x-request-id")
    expect(names).not.toContain("access-control-allow-origin")
    expect(entry.headers).toContainEqual(["cache-control", "public, max-age=60"])
    expect(entry.headers.filter(([n]) => n === "cache-control")).toHaveLength(1)
    expect(entry.expiresAt - entry.storedAt).toBe(60_000)
  })

  it("records Vary headers outside the key and matches later requests on them", () => {
    expect(entry.vary.map(([n]) => n)).toEqual(["x-tenant"])
    expect(entry.vary[0]![1]).toMatch(/^[0-9a-f]{32}$/) // a digest, never the value itself
    expect(varyMatches(entry, { "x-tenant": "t1" })).toBe(true)
    expect(varyMatches(entry, { "x-tenant": "t2" })).toBe(false)
    expect(varyMatches(entry, {})).toBe(false)
    expect(varyNames({ vary: ["b", "A, b"] })).toEqual(["a", "b"])
  })

  it("a credential named by Vary is never stored, only its digest", () => {
    const e = makeEntry(
      { method: "GET", headers: { authorization: "Bearer sk-secret-token" } },
      {
        status: 200,
        headers: { vary: "Authorization" }
      },
      new Uint8Array(),
      { ttlSeconds: 1, forced: false },
      now
    )
    expect(JSON.stringify(e)).not.toContain("sk-secret-token")
    expect(varyMatches(e, { authorization: "Bearer sk-secret-token" })).toBe(true)
    expect(varyMatches(e, { authorization: "Bearer sk-other" })).toBe(false)
    const absent = makeEntry(
      { method: "GET", headers: {} },
      { status: 200, headers: { vary: "cookie" } },
      new Uint8Array(),
      {
        ttlSeconds: 1,
        forced: false
      },
      now
    )
    expect(varyMatches(absent, {})).toBe(true)
    expect(varyMatches(absent, { cookie: "a=1" })).toBe(false)
  })

  it("HEAD entries keep the announced Content-Length", () => {
    const head = makeEntry(
      { method: "HEAD", headers: {} },
      { status: 200, headers: { "content-length": "42" } },
      new Uint8Array(),
      {
        ttlSeconds: 1,
        forced: false
      },
      now
    )
    expect(head.headers).toEqual([["content-length", "42"]])
  })

  it("freshness and size", () => {
    expect(isFresh(entry, now + 59_999)).toBe(true)
    expect(isFresh(entry, now + 60_000)).toBe(false)
    expect(entrySize(entry)).toBeGreaterThan(body.byteLength)
  })

  it("a hit has a fresh Date, an Age, the cache headers and no per-request header", () => {
    const headers = servedHeaders(entry, "hit", "k", now + 10_500)
    expect(headers).toContainEqual(["date", new Date(now + 10_500).toUTCString()])
    expect(headers).toContainEqual(["age", "10"])
    expect(headers).toContainEqual(["cache-status", "llm-proxy; hit"])
    expect(headers).toContainEqual(["x-proxy-cache", "hit"])
    expect(headers).toContainEqual(["x-proxy-cache-key", "k"])
    expect(headers.map(([n]) => n)).not.toContain("x-request-id")
  })

  it("a 304 carries only validators and caching headers", () => {
    const names = servedHeaders(entry, "conditional-hit", "k", now).map(([n]) => n)
    expect(names).toContain("etag")
    expect(names).toContain("last-modified")
    expect(names).not.toContain("content-type")
  })

  it.each<[Parameters<typeof cacheStatusHeaders>[0], string | undefined]>([
    ["miss", undefined],
    ["stored", "stored"],
    ["stored (forced)", "stored"],
    ["bypass", "bypass"],
    ["revalidated", "revalidated"]
  ])("cache headers for %s", (outcome, xProxyCache) => {
    const h = new Map(cacheStatusHeaders(outcome, undefined))
    expect(h.get("cache-status")).toBe(`llm-proxy; ${outcome}`)
    expect(h.get("x-proxy-cache")).toBe(xProxyCache)
  })

  it.each<[string, string, Headers, boolean]>([
    ["matching If-None-Match", "GET", { "if-none-match": "\"abc\"" }, true],
    ["weak If-None-Match", "GET", { "if-none-match": "W/\"abc\"" }, true],
    ["list containing it", "GET", { "if-none-match": "\"x\", \"abc\"" }, true],
    ["star", "HEAD", { "if-none-match": "*" }, true],
    ["other tag", "GET", { "if-none-match": "\"zzz\"" }, false],
    ["If-None-Match wins over If-Modified-Since", "GET", {
      "if-none-match": "\"zzz\"",
      "if-modified-since": "Tue, 01 Dec 2026 11:00:00 GMT"
    }, false],
    ["If-Modified-Since after Last-Modified", "GET", { "if-modified-since": "Tue, 01 Dec 2026 11:00:00 GMT" }, true],
    ["If-Modified-Since equal", "GET", { "if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT" }, true],
    ["If-Modified-Since before", "GET", { "if-modified-since": "Tue, 01 Dec 2026 09:00:00 GMT" }, false],
    ["bad date", "GET", { "if-modified-since": "yesterday" }, false],
    ["no conditional", "GET", {}, false],
    ["POST", "POST", { "if-none-match": "\"abc\"" }, false]
  ])("conditional: %s", (_name, method, headers, expected) => {
    expect(conditionalMatches(entry, method, headers)).toBe(expected)
  })

  it("conditionals against an entry without validators never match", () => {
    const bare = { ...entry, headers: [] }
    expect(conditionalMatches(bare, "GET", { "if-none-match": "\"abc\"" })).toBe(false)
    expect(conditionalMatches(bare, "GET", { "if-modified-since": "Tue, 01 Dec 2026 11:00:00 GMT" })).toBe(false)
    expect(revalidationHeaders(bare)).toEqual({})
    expect(hasClientConditional({})).toBe(false)
    expect(hasClientConditional({ "if-none-match": "x" })).toBe(true)
  })

  it("revalidation sends the stored validators", () => {
    expect(revalidationHeaders(entry)).toEqual({
      "if-none-match": "\"abc\"",
      "if-modified-since": "Tue, 01 Dec 2026 10:00:00 GMT"
    })
  })

  it("an upstream 304 refreshes headers and lifetime", () => {
    const later = now + 100_000
    const kept = refreshEntry(entry, { etag: "\"def\"", date: "x", "set-cookie": "y" }, later)!
    expect(kept.storedAt).toBe(later)
    expect(kept.expiresAt).toBe(later + 60_000)
    expect(kept.headers).toContainEqual(["etag", "\"def\""])
    expect(kept.headers.map(([n]) => n)).not.toContain("set-cookie")
    expect(kept.body).toBe(entry.body)
    expect(refreshEntry(entry, { "cache-control": "public, max-age=7" }, later)!.expiresAt).toBe(later + 7_000)
    expect(refreshEntry(entry, { "cache-control": "s-maxage=8" }, later)!.expiresAt).toBe(later + 8_000)
    expect(refreshEntry(entry, { "cache-control": "no-store" }, later)).toBeUndefined()
  })
})

describe("purge", () => {
  const k1 = keyOf({ projectId: P1 })
  const k1q = keyOf({ projectId: P1, query: "a=1" })
  const k1lang = keyOf({ projectId: P1, headers: { "accept-language": "de" } })
  const k2 = keyOf({ projectId: P2 })

  it.each<[string, unknown, string]>([
    ["not an object", [], "invalid JSON"],
    ["null", null, "invalid JSON"],
    ["nothing", {}, "method and url are required"],
    ["url missing", { method: "GET" }, "method and url are required"],
    ["method missing", { url: "/v1/models" }, "method and url are required"],
    ["bad method", { method: "G ET", url: "/v1/models" }, "invalid method"],
    ["relative url", { method: "GET", url: "v1/models" }, "invalid URL"],
    ["bad url", { method: "GET", url: "http://[" }, "invalid URL"],
    ["bad prefix", { prefix: "xyz" }, "prefix must be 1 to 80 hexadecimal characters (a prefix of X-PROXY-CACHE-KEY)"],
    ["bad project", { all: true, project_id: "nope" }, "invalid project_id"],
    ["bad all", { all: "yes" }, "all must be true or false"]
  ])("rejects %s", (_name, body, error) => {
    expect(parsePurge(body)).toEqual({ ok: false, error })
  })

  const select = (body: unknown) => {
    const parsed = parsePurge(body)
    if (!parsed.ok) throw new Error(parsed.error)
    return [k1, k1q, k1lang, k2].filter((k) => purgeMatches(parsed.selector, k))
  }

  it.each<[string, unknown, Array<string>]>([
    ["exact: every project and variant of that URL", { method: "GET", url: "/v1/models" }, [k1, k1lang, k2]],
    ["exact, absolute URL", { method: "get", url: "http://proxy.example/v1/models" }, [k1, k1lang, k2]],
    ["exact with query", { method: "GET", url: "/v1/models?a=1" }, [k1q]],
    ["exact for one project", { method: "GET", url: "/v1/models", project_id: P2 }, [k2]],
    ["exact, other method", { method: "HEAD", url: "/v1/models" }, []],
    ["prefix", { prefix: k1lang.slice(0, 60) }, [k1lang]],
    ["prefix upper-case", { prefix: k1lang.slice(0, 60).toUpperCase() }, [k1lang]],
    ["prefix outside the project", { prefix: k2.slice(0, 60), project_id: P1 }, []],
    ["all of one project", { all: true, project_id: P1 }, [k1, k1q, k1lang]],
    ["everything", { all: true }, [k1, k1q, k1lang, k2]],
    ["all:false falls back to exact", { all: false, method: "GET", url: "/v1/models?a=1" }, [k1q]]
  ])("%s", (_name, body, expected) => {
    expect(select(body)).toEqual(expected)
  })

  it("reports the kind of purge", () => {
    expect(parsePurge({ method: "GET", url: "/x" })).toMatchObject({ ok: true, kind: "exact" })
    expect(parsePurge({ prefix: "ab" })).toMatchObject({ ok: true, kind: "prefix" })
    expect(parsePurge({ all: true })).toMatchObject({ ok: true, kind: "all" })
  })
})
