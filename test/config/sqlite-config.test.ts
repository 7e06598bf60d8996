/** SQLITE_SYNCHRONOUS: default, accepted values, one line naming the variable when wrong; and what SQLite gets. */
import { SqlClient } from "@effect/sql"
import { ConfigProvider, Effect, Either, Layer } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"
import { databaseLayer } from "../../src/Layers.js"

const load = (env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  )

describe("SQLITE_SYNCHRONOUS", () => {
  it("defaults to normal (not named in the database setting); full and normal are accepted in any case", () => {
    expect(Either.map(load({ DATABASE_PATH: "/tmp/x.db" }), (c) => c.database)).toEqual(
      Either.right({ _tag: "sqlite", path: "/tmp/x.db" })
    )
    expect(Either.map(load({ DATABASE_PATH: "/tmp/x.db", SQLITE_SYNCHRONOUS: "FULL" }), (c) => c.database)).toEqual(
      Either.right({ _tag: "sqlite", path: "/tmp/x.db", synchronous: "full" })
    )
    expect(Either.map(load({ SQLITE_SYNCHRONOUS: "normal" }), (c) => c.database._tag)).toEqual(Either.right("sqlite"))
    expect(Either.mapLeft(load({ SQLITE_SYNCHRONOUS: "off" }), formatConfigError)).toEqual(
      Either.left("invalid configuration: SQLITE_SYNCHRONOUS: expected normal or full, got \"off\"")
    )
  })

  it("the connection runs with it: PRAGMA synchronous is 1 (NORMAL) by default, 2 (FULL) when set", async () => {
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-sync-"))
    try {
      const pragma = (synchronous?: "full") =>
        Effect.runPromise(
          Effect.scoped(
            Effect.gen(function*() {
              const ctx = yield* Layer.build(
                databaseLayer({ _tag: "sqlite", path: join(dir, "db.sqlite"), ...(synchronous ? { synchronous } : {}) })
              )
              const sql = yield* Effect.provide(SqlClient.SqlClient, ctx)
              const [row] = yield* sql<{ synchronous: number }>`PRAGMA synchronous`
              return row?.synchronous
            })
          )
        )
      expect(await pragma()).toBe(1)
      expect(await pragma("full")).toBe(2)
    } finally {
      rmSync(dir, { recursive: true, force: true })
    }
  })
})
