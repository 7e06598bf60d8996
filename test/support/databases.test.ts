import { Redis } from "ioredis"
import { describe, expect, it } from "vitest"
import { createTestDatabase, flushRedisPrefix, postgresUrl, redisUrl, withPgClient } from "./databases.js"

describe.skipIf(!postgresUrl)(
  postgresUrl
    ? "postgres test database helper (needs DATABASE_URL)"
    : "postgres test database helper (skipped: DATABASE_URL not set)",
  () => {
    it("creates a fresh database, connects to it and drops it", async () => {
      const db = await createTestDatabase()
      let dropped = false
      try {
        expect(db.name).toMatch(/^llmproxy_test_[0-9a-f]+$/)
        const url = new URL(db.url)
        const admin = new URL(postgresUrl!)
        expect(url.pathname).toBe(`/${db.name}`)
        expect(url.host).toBe(admin.host)
        expect(url.username).toBe(admin.username)

        const rows = await withPgClient(db.url, async (client) => {
          const one = await client.query<{ one: number; db: string }>("select 1 as one, current_database() as db")
          return one.rows
        })
        expect(rows).toEqual([{ one: 1, db: db.name }])

        await db.drop()
        dropped = true
        await db.drop() // idempotent

        const remaining = await withPgClient(
          postgresUrl!,
          async (client) => (await client.query("select 1 from pg_database where datname = $1", [db.name])).rows.length
        )
        expect(remaining).toBe(0)
      } finally {
        if (!dropped) await db.drop()
      }
    })

    it("drop() terminates connections still open to the test database", async () => {
      const db = await createTestDatabase()
      await withPgClient(db.url, async (client) => {
        await client.query("select 1")
        await db.drop()
      })
      const remaining = await withPgClient(
        postgresUrl!,
        async (client) => (await client.query("select 1 from pg_database where datname = $1", [db.name])).rows.length
      )
      expect(remaining).toBe(0)
    })
  }
)

describe.skipIf(!redisUrl)(
  redisUrl ? "redis prefix flush helper (needs REDIS_URL)" : "redis prefix flush helper (skipped: REDIS_URL not set)",
  () => {
    it("deletes only keys under the prefix, matching glob characters literally", async () => {
      const base = `llmproxy_test:${Math.random().toString(16).slice(2)}`
      const redis = new Redis(redisUrl!)
      try {
        const doomed = Array.from({ length: 1200 }, (_, i) => `${base}:*[x]:${i}`)
        const kept = [`${base}:other`, `${base}-*[x]`, `${base}:*[y]:1`]
        await redis.mset(...[...doomed, ...kept].flatMap((k) => [k, "1"]))

        await flushRedisPrefix(redisUrl!, `${base}:*[x]`)

        expect(await redis.exists(...doomed)).toBe(0)
        expect(await redis.exists(...kept)).toBe(kept.length)
        await flushRedisPrefix(redisUrl!, base)
        expect(await redis.exists(...kept)).toBe(0)
      } finally {
        redis.disconnect()
      }
    })
  }
)
