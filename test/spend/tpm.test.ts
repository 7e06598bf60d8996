/**
 * Token-per-minute limits (`rate_limit.tokens`) through the real proxy: an answer's tokens are debited when known, a
 * request is refused (429 rate_limit_exceeded, Retry-After) while its window's tokens are used up; per instance in
 * memory, and shared by two instances on Redis. Either count alone is valid; both together apply both.
 */
import { Redis } from "ioredis"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, createToken, eventually, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { redisUrl } from "../support/databases.js"
import { chatCompletion, json } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"

// Every answer: 9 prompt + 3 completion = 12 tokens.
const go = (url: string, token: string) => call(url, "/v1/chat/completions", { token, body: chatBody() })

describe("token-per-minute limits (memory)", () => {
  let backend: BackendInstance
  let stack: Stack
  beforeAll(async () => {
    backend = await backends[0]!.create()
    stack = await startStack(backend)
  })
  afterAll(async () => {
    await stack.close()
    await backend.cleanup()
  })
  beforeEach(() => stack.mock.reset())

  it("tokens 20 per minute: two answers (12 + 12) pass, the third is refused with Retry-After until the window ends", async () => {
    const t = await projectAndToken(stack.manage)
    const r = await stack.manage.patch(`/manage/tokens/${t.tokenId}`, {
      rate_limit: { tokens: 20, window_seconds: 3600 }
    })
    expect(r.status).toBe(200)
    expect(r.json.rate_limit).toEqual({ tokens: 20, window_seconds: 3600 })
    expect((await go(stack.server.url, t.token)).status).toBe(200) // 0 used before
    expect((await go(stack.server.url, t.token)).status).toBe(200) // 12 used before
    const third = await go(stack.server.url, t.token) // 24 used before
    expect(third.status).toBe(429)
    expect(proxyError(third.json).code).toBe("rate_limit_exceeded")
    const retry = Number(third.headers["retry-after"])
    expect(retry).toBeGreaterThanOrEqual(1)
    expect(retry).toBeLessThanOrEqual(3600)
    expect(stack.mock.requests).toHaveLength(2)
  })

  it("a project's token limit applies to all its tokens; requests and tokens together apply both", async () => {
    const t = await projectAndToken(stack.manage)
    const other = await createToken(stack.manage, t.projectId)
    expect(
      (await stack.manage.patch(`/manage/projects/${t.projectId}`, {
        rate_limit: { tokens: 12, window_seconds: 3600 }
      })).status
    ).toBe(200)
    expect((await go(stack.server.url, t.token)).status).toBe(200)
    expect((await go(stack.server.url, other.token)).status).toBe(429)
    const both = await projectAndToken(stack.manage)
    expect(
      (await stack.manage.patch(`/manage/tokens/${both.tokenId}`, {
        rate_limit: { requests: 1, tokens: 1000, window_seconds: 60 }
      })).status
    ).toBe(200)
    expect((await go(stack.server.url, both.token)).status).toBe(200)
    expect((await go(stack.server.url, both.token)).status).toBe(429) // the request count
  })

  it("rate_limit without requests and tokens is refused with the field's message", async () => {
    const t = await projectAndToken(stack.manage)
    const r = await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { rate_limit: { window_seconds: 60 } })
    expect(r.status).toBe(400)
    expect(r.json.error).toMatch(/^rate_limit must be null or/)
    const zero = await stack.manage.patch(`/manage/tokens/${t.tokenId}`, {
      rate_limit: { tokens: 0, window_seconds: 60 }
    })
    expect(zero.status).toBe(400)
  })
})

describe.skipIf(!redisUrl)("token-per-minute limits shared by two instances on Redis", () => {
  // An hour's window: the windows are aligned to multiples of their length, and a test crossing one would start afresh.
  it("tokens 30 per hour, answers of 12 alternating between two instances: the fourth request is refused on both", async () => {
    const backend = await backends[0]!.create()
    const a = await startStack(backend, { rateLimitBackend: "redis", redisUrl: redisUrl! })
    const b = await startStack(backend, { rateLimitBackend: "redis", redisUrl: redisUrl! }, undefined, a.mock)
    try {
      a.mock.setDefault(json(chatCompletion()))
      const t = await projectAndToken(a.manage)
      expect(
        (await a.manage.patch(`/manage/tokens/${t.tokenId}`, { rate_limit: { tokens: 30, window_seconds: 3600 } }))
          .status
      ).toBe(200)
      expect((await go(a.server.url, t.token)).status).toBe(200) // 0
      expect((await go(b.server.url, t.token)).status).toBe(200) // 12
      expect((await go(a.server.url, t.token)).status).toBe(200) // 24
      // 36 used: the debit is sent when the answer ends; wait until Redis holds it.
      const redis = new Redis(redisUrl!)
      try {
        await eventually(async () => {
          const keys = await redis.keys(`llm-proxy:ratelimit:tpm:token:${t.tokenId}|3600000:*`)
          const values = keys.length === 0 ? [] : await redis.mget(...keys)
          return values.some((v) => Number(v) === 36)
        })
      } finally {
        redis.disconnect()
      }
      expect((await go(b.server.url, t.token)).status).toBe(429)
      expect((await go(a.server.url, t.token)).status).toBe(429)
      expect(a.mock.requests).toHaveLength(3)
    } finally {
      await b.close()
      await a.close()
      await backend.cleanup()
    }
  })
})
