/**
 * What the data plane does when a dependency fails (docs/operations.md): the database stops answering (tokens
 * validated recently keep working for TOKEN_CACHE_STALE_TTL, others get 503, recovery without restart), and the
 * rate-limit store is unreachable (RATE_LIMIT_FAILURE_MODE open or closed, failures counted).
 * The full picture with real servers stopped and restarted is test/scale (npm run test:scale).
 */
import { it } from "@effect/vitest"
import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect } from "vitest"
import * as RateLimits from "../../src/token/RateLimits.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, exec, projectAndToken, sleep, type Stack, startStack } from "../proxy/stack.js"
import { proxyError } from "../support/proxyErrors.js"

const sqlite = backends.find((b) => b.name === "sqlite")!

describe("database outage (the tokens table made unreadable)", () => {
  let backend: BackendInstance
  let stack: Stack
  let strict: Stack
  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend, { tokenCacheTtlMs: 200, tokenCacheStaleTtlMs: 60_000 })
    strict = await startStack(backend, { tokenCacheTtlMs: 200, tokenCacheStaleTtlMs: 0 }, undefined, stack.mock)
  })
  afterAll(async () => {
    await strict.close()
    await stack.close()
    await backend.cleanup()
  })
  const go = (s: Stack, token: string) => call(s.server.url, "/v1/chat/completions", { token, body: chatBody() })

  it("a validated token keeps working past its TTL, a new one gets 503 service_unavailable, both work once it is back", async () => {
    const warm = await projectAndToken(stack.manage)
    const cold = await projectAndToken(stack.manage)
    expect((await go(stack, warm.token)).status).toBe(200)
    expect((await go(strict, warm.token)).status).toBe(200)
    await sleep(300) // past TOKEN_CACHE_TTL
    await exec(backend, "ALTER TABLE tokens RENAME TO tokens_away")
    try {
      expect((await go(stack, warm.token)).status).toBe(200)
      expect((await go(stack, warm.token)).status).toBe(200)
      const fresh = await go(stack, cold.token)
      expect([fresh.status, proxyError(fresh.json)]).toMatchObject([503, {
        message: "Service temporarily unavailable",
        code: "service_unavailable"
      }])
      // TOKEN_CACHE_STALE_TTL=0: nothing is served past the TTL.
      expect((await go(strict, warm.token)).status).toBe(503)
    } finally {
      await exec(backend, "ALTER TABLE tokens_away RENAME TO tokens")
    }
    expect((await go(stack, cold.token)).status).toBe(200)
    expect((await go(strict, warm.token)).status).toBe(200)
  })

  it("a token revoked before the outage is not brought back by the stale cache", async () => {
    const t = await projectAndToken(stack.manage)
    expect((await go(stack, t.token)).status).toBe(200)
    expect((await stack.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
    await exec(backend, "ALTER TABLE tokens RENAME TO tokens_away")
    try {
      expect((await go(stack, t.token)).status).toBe(503)
    } finally {
      await exec(backend, "ALTER TABLE tokens_away RENAME TO tokens")
    }
    expect(proxyError((await go(stack, t.token)).json).code).toBe("token_inactive")
  })
})

describe("rate-limit store unreachable", () => {
  const limit = { requests: 1, windowSeconds: 60 }
  const checkTwice = Effect.gen(function*() {
    const limits = yield* RateLimits.RateLimits
    const first = yield* limits.check("t", limit, "p", null)
    const second = yield* limits.check("t", null, "p", limit)
    return { first, second, failures: limits.storeFailures() }
  })
  // The real clock: the 250 ms timeout and the Redis client's reconnects run on it.
  const redisDown = (mode: RateLimits.FailureMode) =>
    Effect.provide(checkTwice, RateLimits.layerRedis("redis://127.0.0.1:1", mode))

  it.live("fail-open (default): requests are allowed and the failures counted", () =>
    Effect.map(redisDown("open"), (r) => expect(r).toEqual({ first: undefined, second: undefined, failures: 2 })))

  it.live("fail-closed: requests are refused (503 in the proxy) and the failures counted", () =>
    Effect.map(
      redisDown("closed"),
      (r) => expect(r).toEqual({ first: RateLimits.Unavailable, second: RateLimits.Unavailable, failures: 2 })
    ))

  it.live("the data plane gets the Redis store's verdict as an Effect to run, never a value it would wait for", () =>
    Effect.gen(function*() {
      const limits = yield* RateLimits.RateLimits
      const pending = limits.unsafeCheck("t", limit, "p", null)
      if (!Effect.isEffect(pending)) return expect.fail("expected an Effect")
      expect(yield* pending).toBe(RateLimits.Unavailable)
      // No limit set: allowed at once, nothing to run.
      expect(limits.unsafeCheck("t", null, "p", null)).toBeUndefined()
    }).pipe(Effect.provide(RateLimits.layerRedis("redis://127.0.0.1:1", "closed"))))

  it.effect("the memory store never fails", () =>
    Effect.gen(function*() {
      const limits = yield* RateLimits.RateLimits
      expect(yield* limits.check("t", limit, "p", null)).toBeUndefined()
      expect(yield* limits.check("t", limit, "p", null)).toMatchObject({ scope: "token" })
      expect(limits.storeFailures()).toBe(0)
    }).pipe(Effect.provide(RateLimits.layerMemory)))
})
