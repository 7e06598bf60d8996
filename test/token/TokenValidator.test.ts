/**
 * The token cache on a real SQLite store (src/token/TokenValidator.ts): `load` reads and caches a grant (concurrent
 * loads of one token share one query), `cached` then answers from memory; an invalidation drops what it names; a
 * database that does not answer is a typed `TokenLoadError` carrying the driver's reason for the log, unless a
 * recent grant can stand in. The management side's calls are traced.
 */
import { SqlClient } from "@effect/sql"
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Exit, Layer, Option, Redacted, Tracer } from "effect"
import { AppConfig } from "../../src/config/AppConfig.js"
import { KeyCipher } from "../../src/crypto/KeyCipher.js"
import { Store } from "../../src/store/Store.js"
import * as TokenValidator from "../../src/token/TokenValidator.js"
import { freshStore } from "../store/backends.js"
import { testConfig } from "../support/server.js"

const config = testConfig({ _tag: "sqlite", path: ":memory:" }, {
  tokenCacheTtlMs: 600_000,
  tokenCacheStaleTtlMs: 600_000
})

const validator = TokenValidator.layer.pipe(
  Layer.provideMerge(
    Layer.mergeAll(freshStore("sqlite"), KeyCipher.layer(Option.none()), Layer.succeed(AppConfig, config))
  )
)

/** A project with one unlimited token, written through the store; returns the token's hash (what `load` takes). */
const projectAndToken = Effect.gen(function*() {
  const store = yield* Store
  const now = new Date().toISOString()
  const projectId = crypto.randomUUID()
  const tokenId = crypto.randomUUID()
  const hash = `hash-${tokenId}`
  yield* store.createProject({
    id: projectId,
    name: `p-${projectId}`,
    apiKeys: [{ id: crypto.randomUUID(), key: "sk-key", hint: "sk-...", weight: 1, provider: null }],
    provider: "openai",
    now
  })
  yield* store.createToken({
    id: tokenId,
    tokenHash: hash,
    tokenHint: "wt-...",
    projectId,
    expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
    maxRequests: null,
    now
  })
  return { projectId, tokenId, hash }
})

/** Makes every token lookup fail inside the database while `self` runs. */
const tokensUnreadable = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.flatMap(SqlClient.SqlClient, (sql) =>
    Effect.acquireUseRelease(
      sql`ALTER TABLE tokens RENAME TO tokens_away`,
      () => self,
      () => Effect.orDie(sql`ALTER TABLE tokens_away RENAME TO tokens`)
    ))

describe("TokenValidator", () => {
  // The real clock: entries are stamped with Date.now().
  layer(validator, { excludeTestServices: true })((it) => {
    it.effect("load reads the grant once and caches it; concurrent loads of one token share one query", () =>
      Effect.gen(function*() {
        const tokens = yield* TokenValidator.TokenValidator
        const t = yield* projectAndToken
        expect(tokens.cached(t.hash, Date.now())).toBeUndefined()
        const loadsBefore = tokens.stats().loads
        const grants = yield* Effect.all([tokens.load(t.hash), tokens.load(t.hash), tokens.load(t.hash)], {
          concurrency: "unbounded"
        })
        expect(tokens.stats().loads).toBe(loadsBefore + 1)
        expect(grants[0]).toMatchObject({
          tokenId: t.tokenId,
          projectId: t.projectId,
          isActive: true,
          projectActive: true
        })
        expect(grants[1]).toBe(grants[0])
        expect(grants[0]!.keys.map((k) => Redacted.value(k.apiKey))).toEqual(["sk-key"])
        expect(tokens.cached(t.hash, Date.now())).toBe(grants[0])
      }))

    it.effect("an unknown token loads as undefined and is then known not to exist", () =>
      Effect.gen(function*() {
        const tokens = yield* TokenValidator.TokenValidator
        expect(yield* tokens.load("hash-of-nothing")).toBeUndefined()
        expect(tokens.cached("hash-of-nothing", Date.now())).toBeNull()
      }))

    it.effect("invalidate drops what it names, and only that", () =>
      Effect.gen(function*() {
        const tokens = yield* TokenValidator.TokenValidator
        const a = yield* projectAndToken
        const b = yield* projectAndToken
        yield* tokens.load(a.hash)
        yield* tokens.load(b.hash)
        yield* tokens.invalidate({ kind: "token", id: a.tokenId })
        yield* tokens.settled
        expect(tokens.cached(a.hash, Date.now())).toBeUndefined()
        expect(tokens.cached(b.hash, Date.now())).toMatchObject({ tokenId: b.tokenId })
        tokens.unsafeInvalidate({ kind: "project", id: b.projectId })
        expect(tokens.cached(b.hash, Date.now())).toBeUndefined()
      }))

    it.effect("the management side's calls are spans (TokenValidator.invalidate, TokenValidator.settled)", () =>
      Effect.gen(function*() {
        const tokens = yield* TokenValidator.TokenValidator
        const names: Array<string> = []
        const native = yield* Effect.tracer
        const recording = Tracer.make({
          span: (name, ...rest) => {
            names.push(name)
            return native.span(name, ...rest)
          },
          context: (f, fiber) => native.context(f, fiber)
        })
        yield* Effect.withTracer(Effect.zipRight(tokens.invalidate({ kind: "all" }), tokens.settled), recording)
        expect(names).toEqual(["TokenValidator.invalidate", "TokenValidator.settled"])
      }))

    it.effect("a database that fails: TokenLoadError with the driver's reason for the log; a recent grant stands in", () =>
      Effect.gen(function*() {
        const tokens = yield* TokenValidator.TokenValidator
        const warm = yield* projectAndToken
        const cold = yield* projectAndToken
        const grant = yield* tokens.load(warm.hash)
        const [stale, failed] = yield* tokensUnreadable(
          Effect.all([tokens.load(warm.hash), Effect.exit(tokens.load(cold.hash))])
        )
        // Loaded a moment ago (TOKEN_CACHE_STALE_TTL is ten minutes): served although the database failed.
        expect(stale).toBe(grant)
        expect(tokens.stats().staleServed).toBe(1)
        expect(Exit.isFailure(failed)).toBe(true)
        const error = yield* Effect.flip(failed)
        expect(error).toBeInstanceOf(TokenValidator.TokenLoadError)
        expect(error.message).toBe("token lookup failed")
        expect(error.cause.detail).toMatch(/^database error during getTokenAuth: .*no such table: tokens/)
        // Once the database answers again, so does load.
        expect(yield* tokens.load(cold.hash)).toMatchObject({ tokenId: cold.tokenId })
      }))
  })
})
