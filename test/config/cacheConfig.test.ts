/** The cache variables of docs/cache.md ("Settings"): defaults, accepted spellings, and one clear line for a bad value. */
import { ConfigProvider, Effect, Either } from "effect"
import { describe, expect, it } from "vitest"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"

const load = (env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  )

describe("cache configuration", () => {
  it("defaults", () => {
    const c = load({})
    expect(Either.isRight(c) && c.right.cache).toEqual({
      enabled: true,
      backend: "in-memory",
      defaultTtlSeconds: 300,
      maxObjectBytes: 1_048_576,
      maxBytes: 67_108_864,
      streamResponses: false,
      clientMaxTtlSeconds: 300,
      redisKeyPrefix: "llmproxy:cache:"
    })
    expect(Either.isRight(c) && c.right.redisUrl).toBe("redis://127.0.0.1:6379")
  })

  it.each<[Record<string, string>, object]>([
    [{ HTTP_CACHE_ENABLED: "false" }, { enabled: false }],
    [{ HTTP_CACHE_ENABLED: "YES" }, { enabled: true }],
    [{ HTTP_CACHE_BACKEND: "redis" }, { backend: "redis" }],
    [{ HTTP_CACHE_BACKEND: "memory" }, { backend: "in-memory" }],
    [{ HTTP_CACHE_DEFAULT_TTL: "60", HTTP_CACHE_MAX_OBJECT_BYTES: "10", HTTP_CACHE_MAX_BYTES: "100" }, {
      defaultTtlSeconds: 60,
      maxObjectBytes: 10,
      maxBytes: 100
    }],
    [{ HTTP_CACHE_STREAM_RESPONSES: "1" }, { streamResponses: true }],
    [{ HTTP_CACHE_CLIENT_MAX_TTL: "0" }, { clientMaxTtlSeconds: 0 }],
    [{ HTTP_CACHE_CLIENT_MAX_TTL: "86400" }, { clientMaxTtlSeconds: 86_400 }],
    [{ REDIS_CACHE_KEY_PREFIX: "x:" }, { redisKeyPrefix: "x:" }]
  ])("%j", (env, expected) => {
    const c = load(env)
    expect(Either.isRight(c) && c.right.cache).toMatchObject(expected)
  })

  it.each<[Record<string, string>, string]>([
    [{ REDIS_URL: "redis://cache:6380/2" }, "redis://cache:6380/2"],
    [{ REDIS_URL: "rediss://cache:6380" }, "rediss://cache:6380"],
    [{ REDIS_ADDR: "cache:6380" }, "redis://cache:6380"],
    [{ REDIS_URL: "redis://a:1", REDIS_ADDR: "b:2" }, "redis://a:1"]
  ])("Redis address %j", (env, url) => {
    const c = load(env)
    expect(Either.isRight(c) && c.right.redisUrl).toBe(url)
  })

  it.each<[Record<string, string>, string]>([
    [{ HTTP_CACHE_ENABLED: "maybe" }, "HTTP_CACHE_ENABLED: expected true or false, got \"maybe\""],
    [{ HTTP_CACHE_BACKEND: "memcached" }, "HTTP_CACHE_BACKEND: expected in-memory or redis, got \"memcached\""],
    [{ HTTP_CACHE_DEFAULT_TTL: "0" }, "HTTP_CACHE_DEFAULT_TTL: expected a positive integer, got \"0\""],
    [{ HTTP_CACHE_MAX_BYTES: "1MB" }, "HTTP_CACHE_MAX_BYTES: expected a positive integer, got \"1MB\""],
    [{ HTTP_CACHE_CLIENT_MAX_TTL: "5m" }, "HTTP_CACHE_CLIENT_MAX_TTL: expected a non-negative integer, got \"5m\""],
    [
      { HTTP_CACHE_MAX_OBJECT_BYTES: "200", HTTP_CACHE_MAX_BYTES: "100" },
      "HTTP_CACHE_MAX_OBJECT_BYTES: must not exceed HTTP_CACHE_MAX_BYTES (100)"
    ],
    [{ REDIS_CACHE_KEY_PREFIX: " " }, "REDIS_CACHE_KEY_PREFIX: must not be empty"],
    [{ REDIS_URL: "http://x" }, "REDIS_URL: expected a redis:// or rediss:// URL"],
    [{ REDIS_ADDR: "nohost" }, "REDIS_ADDR: expected host:port, got \"nohost\""]
  ])("rejects %j", (env, message) => {
    const c = load(env)
    expect(Either.isLeft(c) && formatConfigError(c.left)).toBe(`invalid configuration: ${message}`)
  })
})
