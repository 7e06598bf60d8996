/** INVALIDATION_BACKEND: `auto` by default (postgres on PostgreSQL, in-memory on SQLite), explicit values, bad values. */
import { ConfigProvider, Effect, Either } from "effect"
import { describe, expect, it } from "vitest"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"

const load = (env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  )

const PG = { DATABASE_URL: "postgres://u@db:5432/llm" }

describe("INVALIDATION_BACKEND", () => {
  it.each<[Record<string, string>, string]>([
    [{}, "in-memory"],
    [{ REDIS_URL: "redis://r:6379" }, "in-memory"],
    [PG, "postgres"],
    [{ ...PG, REDIS_URL: "redis://r:6379", RATE_LIMIT_BACKEND: "redis" }, "postgres"],
    [{ ...PG, DB_DRIVER: "sqlite" }, "in-memory"],
    [{ ...PG, INVALIDATION_BACKEND: "AUTO" }, "postgres"],
    [{ ...PG, INVALIDATION_BACKEND: "" }, "postgres"],
    [{ ...PG, INVALIDATION_BACKEND: "postgresql" }, "postgres"],
    [{ ...PG, INVALIDATION_BACKEND: "redis" }, "redis"],
    [{ INVALIDATION_BACKEND: "redis" }, "redis"],
    [{ ...PG, INVALIDATION_BACKEND: "in-memory" }, "in-memory"],
    [{ ...PG, INVALIDATION_BACKEND: "memory" }, "in-memory"]
  ])("%j → %s", (env, expected) => {
    const c = load(env)
    expect(Either.isRight(c) && c.right.invalidationBackend).toBe(expected)
  })

  it.each<[Record<string, string>, string]>([
    [{ INVALIDATION_BACKEND: "postgres" }, "INVALIDATION_BACKEND: postgres needs a PostgreSQL database (DATABASE_URL)"],
    [
      { ...PG, DB_DRIVER: "sqlite", INVALIDATION_BACKEND: "postgres" },
      "INVALIDATION_BACKEND: postgres needs a PostgreSQL database (DATABASE_URL)"
    ],
    [
      { INVALIDATION_BACKEND: "kafka" },
      "INVALIDATION_BACKEND: expected auto, in-memory, redis or postgres, got \"kafka\""
    ]
  ])("%j is refused with one line", (env, line) => {
    const c = load(env)
    expect(Either.isLeft(c) && formatConfigError(c.left)).toBe(`invalid configuration: ${line}`)
  })
})
