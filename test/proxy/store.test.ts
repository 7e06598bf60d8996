/**
 * The parts of the proxy where the store matters, on SQLite and on PostgreSQL (when DATABASE_URL is set):
 * quotas (56–60, exactly K of N concurrent requests), expiry and revocation (61–65, including unlimited tokens
 * that sit in the validation cache), project deactivation (66, 68), key rotation (69), batched usage counters,
 * and the window rate limits per token and per project.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { redisUrl } from "../support/databases.js"
import { chatChunks, json, sse } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import {
  call,
  chatBody,
  createToken,
  eventually,
  exec,
  projectAndToken,
  sleep,
  type Stack,
  startStack,
  tokenRow
} from "./stack.js"

const inactive = { message: "Token is inactive", code: "token_inactive" }

describe.each(backends)("proxy on $name", (b) => {
  let backend: BackendInstance
  let stack: Stack
  beforeAll(async () => {
    backend = await b.create()
    stack = await startStack(backend)
  })
  afterAll(async () => {
    await stack.close()
    await backend.cleanup()
  })
  beforeEach(() => stack.mock.reset())

  const go = (token: string, extra: Record<string, unknown> = {}) =>
    call(stack.server.url, "/v1/chat/completions", { token, body: chatBody(extra) })

  describe("quotas", () => {
    it("56 max_requests 2: calls 1–2 pass, call 3 → 429 rate_limit_exceeded; request_count = 2", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 2 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
      const third = await go(t.token)
      expect(third.status).toBe(429)
      // A used-up quota is final: SDKs read x-should-retry before their own retry rules, and OpenAI's quota type.
      expect(proxyError(third.json)).toMatchObject({
        message: "Rate limit exceeded",
        code: "rate_limit_exceeded",
        type: "insufficient_quota"
      })
      expect(third.headers["x-should-retry"]).toBe("false")
      expect(stack.mock.requests).toHaveLength(2)
      await stack.manage.get(`/manage/tokens/${t.tokenId}`)
      await eventually(async () => Number((await tokenRow(backend, t.tokenId)).request_count) === 2)
      await sleep(400) // nothing later adds to it
      expect(Number((await tokenRow(backend, t.tokenId)).request_count)).toBe(2)
    })

    it("57 20 concurrent calls with max_requests 5 → exactly 5 reach the upstream, 15 get 429", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 5 })
      stack.mock.setDefault(json({ ok: true }, { delayMs: 50 }))
      const replies = await Promise.all(Array.from({ length: 20 }, () => go(t.token)))
      const statuses = replies.map((r) => r.status).sort()
      expect(statuses.filter((s) => s === 200)).toHaveLength(5)
      expect(statuses.filter((s) => s === 429)).toHaveLength(15)
      expect(stack.mock.requests).toHaveLength(5)
      expect(Number((await tokenRow(backend, t.tokenId)).request_count)).toBe(5)
    })

    it("57 with two instances: 20 concurrent calls split across them, max_requests 5 → exactly 5 pass", async () => {
      const other = await startStack(backend, {}, undefined, stack.mock)
      try {
        const t = await projectAndToken(stack.manage, { max_requests: 5 })
        stack.mock.setDefault(json({ ok: true }, { delayMs: 30 }))
        const replies = await Promise.all(
          Array.from({ length: 20 }, (_, i) =>
            call((i % 2 === 0 ? stack : other).server.url, "/v1/chat/completions", {
              token: t.token,
              body: chatBody()
            }))
        )
        expect(replies.filter((r) => r.status === 200)).toHaveLength(5)
        expect(replies.filter((r) => r.status === 429)).toHaveLength(15)
        expect(stack.mock.requests).toHaveLength(5)
      } finally {
        await other.close()
      }
    })

    it("58 unlimited token: N calls → request_count = N and last_used_at set within 6 s", async () => {
      const t = await projectAndToken(stack.manage)
      for (let i = 0; i < 7; i++) expect((await go(t.token)).status).toBe(200)
      await eventually(async () => {
        const row = await tokenRow(backend, t.tokenId)
        return Number(row.request_count) === 7 && row.last_used_at !== null
      })
      const api = await stack.manage.get(`/manage/tokens/${t.tokenId}`)
      expect(api.json).toMatchObject({ request_count: 7, prompt_tokens: 63, completion_tokens: 21 })
    })

    it("59 an exhausted token works again after PATCH max_requests 10", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 1 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(429)
      expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_requests: 10 })).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
    })

    it("a limited token made unlimited is counted in batches from then on", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 1 })
      expect((await go(t.token)).status).toBe(200)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_requests: 0 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
      await eventually(async () => Number((await tokenRow(backend, t.tokenId)).request_count) === 3)
    })

    it("60 upstream 500 answers count toward the quota", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 2 })
      stack.mock.setDefault(json({ error: "boom" }, { status: 500 }))
      expect((await go(t.token)).status).toBe(500)
      expect((await go(t.token)).status).toBe(500)
      expect((await go(t.token)).status).toBe(429)
    })

    it("requests rejected before the upstream (bad params, origin…) are not counted", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 1 })
      expect((await call(stack.server.url, "/v1/nope", { token: t.token })).status).toBe(404)
      expect((await go(t.token)).status).toBe(200)
    })
  })

  describe("usage", () => {
    it("prompt/completion tokens are read from JSON answers and SSE streams and added to the token", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 10 })
      stack.mock.enqueue(sse(chatChunks(["a", "b"], { prompt_tokens: 100, completion_tokens: 20 })))
      const streamed = await go(t.token, { stream: true })
      expect(streamed.text).toContain("data: [DONE]")
      expect((await go(t.token)).status).toBe(200)
      await eventually(async () => {
        const row = await tokenRow(backend, t.tokenId)
        return Number(row.prompt_tokens) === 109 && Number(row.completion_tokens) === 23
      })
      expect(Number((await tokenRow(backend, t.tokenId)).request_count)).toBe(2)
    })
  })

  describe("expiry and revocation", () => {
    it("61 an expired token → 401 token_expired", async () => {
      const t = await projectAndToken(stack.manage)
      expect((await go(t.token)).status).toBe(200)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { expires_at: new Date(Date.now() - 1000).toISOString() })
      const expired = await go(t.token)
      expect(proxyError(expired.json)).toMatchObject({
        message: "Token has expired",
        code: "token_expired",
        type: "authentication_error"
      })
      expect(expired.headers["x-should-retry"]).toBe("false")
      const limited = await projectAndToken(stack.manage, { max_requests: 5 })
      await stack.manage.patch(`/manage/tokens/${limited.tokenId}`, {
        expires_at: new Date(Date.now() - 1000).toISOString()
      })
      expect(proxyError((await go(limited.token)).json).code).toBe("token_expired")
    })

    it("a token that expires while cached is refused at its expiry, without any management call", async () => {
      const t = await projectAndToken(stack.manage)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { expires_at: new Date(Date.now() + 1500).toISOString() })
      expect((await go(t.token)).status).toBe(200)
      await sleep(1600)
      expect(proxyError((await go(t.token)).json).code).toBe("token_expired")
    })

    it("62 revoking a limited token → the very next call 401 token_inactive", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 100 })
      expect((await go(t.token)).status).toBe(200)
      expect((await stack.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
    })

    it("63 revoking an unlimited token that was just used (cached) → the very next call 401 token_inactive", async () => {
      const t = await projectAndToken(stack.manage)
      for (let i = 0; i < 3; i++) expect((await go(t.token)).status).toBe(200)
      expect((await stack.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
      expect(stack.mock.requests).toHaveLength(3)
    })

    it("33 PATCH is_active false/true takes effect on the next call", async () => {
      const t = await projectAndToken(stack.manage)
      expect((await go(t.token)).status).toBe(200)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { is_active: false })
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { is_active: true })
      expect((await go(t.token)).status).toBe(200)
    })

    it("64/65 bulk revoke → every token of the project 401 at once; reactivation via PATCH → calls pass again", async () => {
      const t = await projectAndToken(stack.manage)
      const second = await createToken(stack.manage, t.projectId, { max_requests: 50 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(second.token)).status).toBe(200)
      const r = await stack.manage.post(`/manage/projects/${t.projectId}/tokens/revoke`)
      expect(r.json.revoked_count).toBe(2)
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
      expect(proxyError((await go(second.token)).json)).toMatchObject(inactive)
      await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { is_active: true })
      expect((await go(t.token)).status).toBe(200)
      expect(proxyError((await go(second.token)).json)).toMatchObject(inactive)
    })

    it("18 deactivating with revoke_tokens revokes every token at once", async () => {
      const t = await projectAndToken(stack.manage)
      expect((await go(t.token)).status).toBe(200)
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false, revoke_tokens: true })
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: true })
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
    })
  })

  describe("changes made by another instance (written straight to the database)", () => {
    it("a limited token sees revocation and project deactivation on its next call (the quota update checks the rows)", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 10 })
      expect((await go(t.token)).status).toBe(200)
      await exec(backend, "UPDATE projects SET is_active = '0' WHERE id = ?", [t.projectId])
      expect(proxyError((await go(t.token)).json)).toMatchObject({
        message: "Project is inactive",
        code: "project_inactive"
      })
      await exec(backend, "UPDATE projects SET is_active = '1' WHERE id = ?", [t.projectId])
      expect((await go(t.token)).status).toBe(200)
      await exec(backend, "UPDATE tokens SET is_active = '0' WHERE id = ?", [t.tokenId])
      expect(proxyError((await go(t.token)).json)).toMatchObject(inactive)
    })

    it("an unlimited token sees them after at most TOKEN_CACHE_TTL", async () => {
      const quick = await startStack(backend, { tokenCacheTtlMs: 300 }, undefined, stack.mock)
      try {
        const t = await projectAndToken(quick.manage)
        const once = () => call(quick.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
        expect((await once()).status).toBe(200)
        await exec(backend, "UPDATE tokens SET is_active = '0' WHERE id = ?", [t.tokenId])
        await sleep(350)
        expect(proxyError((await once()).json)).toMatchObject(inactive)
      } finally {
        await quick.close()
      }
    })
  })

  describe("projects", () => {
    it("66/68 deactivating a project blocks its (cached) tokens with 403 project_inactive; reactivating restores them", async () => {
      const t = await projectAndToken(stack.manage)
      const limited = await createToken(stack.manage, t.projectId, { max_requests: 10 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(limited.token)).status).toBe(200)
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false })
      for (const token of [t.token, limited.token]) {
        const r = await go(token)
        expect(r.status).toBe(403)
        expect(proxyError(r.json)).toMatchObject({ message: "Project is inactive", code: "project_inactive" })
      }
      expect(stack.mock.requests).toHaveLength(2)
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: true })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(limited.token)).status).toBe(200)
      // A refused request did not use the quota.
      expect(Number((await tokenRow(backend, limited.tokenId)).request_count)).toBe(2)
    })

    it("69 rotating the project's api_key → the very next upstream request uses the new key", async () => {
      const t = await projectAndToken(stack.manage)
      expect((await go(t.token)).status).toBe(200)
      expect(stack.mock.requests[0]!.headers.authorization).toBe(`Bearer ${t.apiKey}`)
      const rotated = `sk-rotated-${crypto.randomUUID()}`
      expect((await stack.manage.patch(`/manage/projects/${t.projectId}`, { api_key: rotated })).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
      expect(stack.mock.requests[1]!.headers.authorization).toBe(`Bearer ${rotated}`)
    })
  })

  describe("window rate limits (rate_limit of tokens and projects)", () => {
    it("per token: limit 2 per 60 s → the 3rd call 429 rate_limit_exceeded with Retry-After", async () => {
      const t = await projectAndToken(stack.manage)
      const patched = await stack.manage.patch(`/manage/tokens/${t.tokenId}`, {
        rate_limit: { requests: 2, window_seconds: 60 }
      })
      expect(patched.json.rate_limit).toEqual({ requests: 2, window_seconds: 60 })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
      const r = await go(t.token)
      expect(r.status).toBe(429)
      expect(proxyError(r.json)).toMatchObject({
        code: "rate_limit_exceeded",
        description: "token rate limit exceeded",
        type: "rate_limit_error"
      })
      // A window limit passes: retrying later can succeed.
      expect(r.headers["x-should-retry"]).toBeUndefined()
      expect(Number(r.headers["retry-after"])).toBeGreaterThanOrEqual(1)
      expect(Number(r.headers["retry-after"])).toBeLessThanOrEqual(60)
      expect(stack.mock.requests).toHaveLength(2)
    })

    it("per project: the limit is shared by the project's tokens; a rate-limited call does not use the quota", async () => {
      const t = await projectAndToken(stack.manage, { max_requests: 100 })
      const second = await createToken(stack.manage, t.projectId)
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { rate_limit: { requests: 3, window_seconds: 60 } })
      expect((await go(t.token)).status).toBe(200)
      expect((await go(second.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(200)
      const r = await go(second.token)
      expect(r.status).toBe(429)
      expect(proxyError(r.json).description).toBe("project rate limit exceeded")
      expect((await go(t.token)).status).toBe(429)
      expect(Number((await tokenRow(backend, t.tokenId)).request_count)).toBe(2)
    })

    it("the window passes → calls pass again; a limit set at creation applies; null removes it", async () => {
      const p = await projectAndToken(stack.manage)
      const created = await stack.manage.post("/manage/tokens", {
        project_id: p.projectId,
        duration_minutes: 5,
        rate_limit: { requests: 1, window_seconds: 1 }
      })
      const token = created.json.token as string
      expect((await go(token)).status).toBe(200)
      expect((await go(token)).status).toBe(429)
      await sleep(1100)
      expect((await go(token)).status).toBe(200)
      expect((await go(token)).status).toBe(429)
      await stack.manage.patch(`/manage/tokens/${created.json.id}`, { rate_limit: null })
      expect((await go(token)).status).toBe(200)
      expect((await go(token)).status).toBe(200)
    })

    it("a rate limit written straight to the database (another instance) applies once the cache entry is re-read", async () => {
      const t = await projectAndToken(stack.manage)
      await exec(backend, "UPDATE tokens SET rate_limit_requests = 1, rate_limit_window_seconds = 60 WHERE id = ?", [
        t.tokenId
      ])
      await stack.manage.patch(`/manage/projects/${t.projectId}`, { name: `renamed-${crypto.randomUUID()}` }) // re-read
      expect((await go(t.token)).status).toBe(200)
      expect((await go(t.token)).status).toBe(429)
    })
  })
})

describe.skipIf(!redisUrl)("window rate limits shared through Redis (RATE_LIMIT_BACKEND=redis)", () => {
  it("two instances share one token's limit", async () => {
    const backend = await backends[0]!.create()
    const a = await startStack(backend, { rateLimitBackend: "redis", redisUrl: redisUrl! })
    const b = await startStack(backend, { rateLimitBackend: "redis", redisUrl: redisUrl! }, undefined, a.mock)
    try {
      const t = await projectAndToken(a.manage)
      await a.manage.patch(`/manage/tokens/${t.tokenId}`, { rate_limit: { requests: 3, window_seconds: 60 } })
      const goOn = (s: Stack) => call(s.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
      const statuses = [await goOn(a), await goOn(b), await goOn(a), await goOn(b), await goOn(a)].map((r) => r.status)
      expect(statuses).toEqual([200, 200, 200, 429, 429])
    } finally {
      await b.close()
      await a.close()
      await backend.cleanup()
    }
  })
})

describe.skipIf(!redisUrl)("several instances with INVALIDATION_BACKEND=redis", () => {
  it("63/69 revoking on one instance, deactivating or rotating the key reaches the other's cache at once", async () => {
    const backend = await backends[0]!.create()
    // A long cache lifetime: only the invalidation channel can explain instance B noticing the changes.
    const options = { invalidationBackend: "redis" as const, redisUrl: redisUrl!, tokenCacheTtlMs: 600_000 }
    const a = await startStack(backend, options)
    const b = await startStack(backend, options, undefined, a.mock)
    try {
      const t = await projectAndToken(a.manage)
      const viaB = () => call(b.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
      expect((await viaB()).status).toBe(200)
      const rotated = `sk-rotated-${crypto.randomUUID()}`
      await a.manage.patch(`/manage/projects/${t.projectId}`, { api_key: rotated })
      await eventually(
        async () => {
          await viaB()
          return a.mock.requests.at(-1)!.headers.authorization === `Bearer ${rotated}`
        },
        2_000,
        20
      )
      await a.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false })
      await eventually(async () => (await viaB()).status === 403, 2_000, 20)
      await a.manage.patch(`/manage/projects/${t.projectId}`, { is_active: true })
      await eventually(async () => (await viaB()).status === 200, 2_000, 20)
      expect((await a.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
      await eventually(async () => (await viaB()).status === 401, 2_000, 20)
    } finally {
      await b.close()
      await a.close()
      await backend.cleanup()
    }
  })
})

describe("Redis unreachable", () => {
  it("rate-limited requests are allowed (and logged) instead of failing or hanging; invalidation still applies locally", async () => {
    const backend = await backends[0]!.create()
    const s = await startStack(backend, {
      rateLimitBackend: "redis",
      invalidationBackend: "redis",
      redisUrl: "redis://127.0.0.1:1"
    })
    try {
      const t = await projectAndToken(s.manage)
      await s.manage.patch(`/manage/tokens/${t.tokenId}`, { rate_limit: { requests: 1, window_seconds: 60 } })
      const go = () => call(s.server.url, "/v1/chat/completions", { token: t.token, body: chatBody() })
      expect((await go()).status).toBe(200)
      expect((await go()).status).toBe(200)
      expect((await s.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
      expect(proxyError((await go()).json)).toMatchObject(inactive)
    } finally {
      await s.close()
      await backend.cleanup()
    }
  })
})
