/**
 * Token-cache invalidations over PostgreSQL LISTEN/NOTIFY (src/token/PostgresInvalidation.ts), with two validators
 * ("instances") on one real database: a change announced by A reaches B's cache; B stops trusting its cache while
 * its listening connection is gone (terminated by the server, cut, or silent) and drops everything it cached when
 * it listens again, so a notification lost in the gap cannot leave a stale grant behind.
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Exit, Layer, Option, Redacted, Schedule, Scope } from "effect"
import { connect, createServer, type Server, type Socket } from "node:net"
import pg from "pg"
import { afterAll, beforeAll } from "vitest"
import { AppConfig } from "../../src/config/AppConfig.js"
import { KeyCipher } from "../../src/crypto/KeyCipher.js"
import { loggerLayer, migratedDatabaseLayer } from "../../src/Layers.js"
import { Store, type StoreShape } from "../../src/store/Store.js"
import { APPLICATION_NAME, layerPostgres, type ListenerOptions } from "../../src/token/PostgresInvalidation.js"
import { type Invalidation, TokenValidator, type TokenValidatorShape } from "../../src/token/TokenValidator.js"
import { createTestDatabase, postgresUrl, type TestDatabase, withPgClient } from "../support/databases.js"
import { testConfig } from "../support/server.js"

interface Instance {
  readonly validator: TokenValidatorShape
  readonly store: StoreShape
}

/** Polls `check` every 10 ms until it holds; dies after `timeoutMs`. */
const until = (what: string, check: Effect.Effect<boolean>, timeoutMs = 5_000) =>
  check.pipe(
    Effect.filterOrFail((holds) => holds, () => new Error(`not yet: ${what}`)),
    Effect.retry(Schedule.spaced("10 millis")),
    Effect.timeoutFail({ duration: timeoutMs, onTimeout: () => new Error(`timed out waiting for ${what}`) }),
    Effect.orDie,
    Effect.asVoid
  )

const holds = (f: () => boolean) => Effect.sync(f)

/**
 * A TCP forwarder that can be frozen: while frozen it forwards nothing in either direction and new connections
 * hang, like a network that silently drops packets (no reset, no close).
 */
const freezableProxy = async (target: URL) => {
  let frozen = false
  const sockets = new Set<Socket>()
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname)
    sockets.add(client).add(upstream)
    const drop = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on("error", drop).on("close", drop)
    upstream.on("error", drop).on("close", drop)
    client.on("data", (d) => void (frozen || upstream.write(d)))
    upstream.on("data", (d) => void (frozen || client.write(d)))
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  const url = new URL(target)
  url.port = String((server.address() as { port: number }).port)
  return {
    url: url.toString(),
    freeze: () => {
      frozen = true
    },
    /** Thaws, and cuts what was open while frozen (its bytes were lost). */
    thaw: () => {
      for (const s of sockets) s.destroy()
      sockets.clear()
      frozen = false
    },
    /** Closes every forwarded connection at once (like a server restart). */
    cut: () => {
      for (const s of sockets) s.destroy()
      sockets.clear()
    },
    close: () => {
      for (const s of sockets) s.destroy()
      return new Promise<void>((r) => server.close(() => r()))
    }
  }
}

describe.skipIf(!postgresUrl)("token invalidations over PostgreSQL LISTEN/NOTIFY", () => {
  let db: TestDatabase
  beforeAll(async () => {
    db = await createTestDatabase()
  })
  afterAll(() => db?.drop())

  /** One "instance": a token validator on `db`, listening through `listenUrl` (the database itself by default). */
  const instanceLayer = (listenUrl: string, options: ListenerOptions) => {
    const database = { _tag: "postgres" as const, url: Redacted.make(db.url), poolSize: 3 }
    // A cache lifetime of 10 minutes: only an invalidation can explain B seeing a change.
    const config = testConfig(database, { tokenCacheTtlMs: 600_000 })
    return layerPostgres(Redacted.make(listenUrl), options).pipe(
      Layer.provideMerge(
        Layer.mergeAll(
          migratedDatabaseLayer(database),
          KeyCipher.layer(Option.none()),
          Layer.succeed(AppConfig, config)
        )
      ),
      Layer.provide(loggerLayer(config))
    )
  }

  const ofContext = (ctx: Context.Context<TokenValidator | Store>): Instance => ({
    validator: Context.get(ctx, TokenValidator),
    store: Context.get(ctx, Store)
  })

  /** An instance that lives as long as the test. */
  const instance = (listenUrl = db.url, options: ListenerOptions = {}) =>
    Effect.map(Effect.orDie(Layer.build(instanceLayer(listenUrl, options))), ofContext)

  /** A TCP forwarder (`freezableProxy`) to `db` that lives as long as the test. */
  const proxyToDb = Effect.acquireRelease(
    Effect.promise(() => freezableProxy(new URL(db.url))),
    (p) => Effect.promise(p.close)
  )

  const now = () => new Date().toISOString()

  /** A project and one token in it, written through `store`; returns the token's hash (what `load` takes). */
  const projectAndToken = (store: StoreShape, apiKey = "sk-before") =>
    Effect.gen(function*() {
      const projectId = crypto.randomUUID()
      const tokenId = crypto.randomUUID()
      const hash = `hash-${tokenId}`
      yield* store.createProject({
        id: projectId,
        name: `p-${projectId}`,
        apiKeys: [{ id: crypto.randomUUID(), key: apiKey, hint: "sk-...", weight: 1, provider: null }],
        provider: "openai",
        now: now()
      })
      yield* store.createToken({
        id: tokenId,
        tokenHash: hash,
        tokenHint: "wt-...",
        projectId,
        expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
        maxRequests: null,
        now: now()
      })
      return { projectId, tokenId, hash }
    }).pipe(Effect.orDie)

  /** Loads on B and checks that B now answers from memory. */
  const warm = (b: Instance, hash: string) =>
    Effect.gen(function*() {
      const grant = yield* Effect.orDie(b.validator.load(hash))
      expect(b.validator.cached(hash, Date.now())).toEqual(grant)
      return grant!
    })

  /** `a` announces the change; done once the announcement is out. */
  const announce = (a: Instance, what: Invalidation) =>
    Effect.zipRight(a.validator.invalidate(what), a.validator.settled)

  /** B no longer answers `hash` from memory. */
  const dropped = (b: Instance, hash: string) => holds(() => b.validator.cached(hash, Date.now()) === undefined)

  const listeners = Effect.promise(() =>
    withPgClient(postgresUrl!, async (c) =>
      Number(
        (await c.query<{ n: string }>(
          "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE $2",
          [db.name, `${APPLICATION_NAME}%`]
        )).rows[0]!.n
      ))
  )

  it.scopedLive("A's settled resolves only once B has applied the announcement (20 in a row, no waiting)", () =>
    Effect.gen(function*() {
      const a = yield* instance()
      const b = yield* instance()
      for (let i = 0; i < 20; i++) {
        const t = yield* projectAndToken(a.store)
        yield* warm(b, t.hash)
        yield* announce(a, { kind: "token", id: t.tokenId })
        // What the management API answers after settled must already hold on B.
        expect(b.validator.cached(t.hash, Date.now()), `round ${i}`).toBeUndefined()
      }
    }).pipe(Effect.orDie))

  it.scopedLive("settled waits for every instance listening on the database: one that never acknowledges holds it ~1 s", () =>
    Effect.gen(function*() {
      const a = yield* instance()
      const t = yield* projectAndToken(a.store)
      // A connection that looks like another instance's listener (by its name) but acknowledges nothing.
      yield* Effect.acquireRelease(
        Effect.promise(async () => {
          const c = new pg.Client({
            connectionString: db.url,
            application_name: `${APPLICATION_NAME} pid 1 0123456789ab`
          })
          c.on("error", () => {})
          await c.connect()
          return c
        }),
        (c) => Effect.promise(() => c.end())
      )
      const started = performance.now()
      yield* announce(a, { kind: "token", id: t.tokenId })
      expect(performance.now() - started).toBeGreaterThan(900)
    }).pipe(Effect.orDie))

  it.scopedLive("a revocation, a deactivation and a key rotation announced by A reach B's cache (10 min TTL) at once", () =>
    Effect.gen(function*() {
      const a = yield* instance()
      const b = yield* instance()
      expect(a.validator.trusted() && b.validator.trusted()).toBe(true)
      const t = yield* projectAndToken(a.store)

      // key rotation
      expect((yield* warm(b, t.hash)).keys.map((k) => Redacted.value(k.apiKey))).toEqual(["sk-before"])
      yield* a.store.updateProject(t.projectId, {
        apiKeys: [{ id: crypto.randomUUID(), key: "sk-after", hint: "sk-...", weight: 1, provider: null }],
        now: now()
      })
      yield* announce(a, { kind: "project", id: t.projectId })
      yield* until("B to drop the project's grant", dropped(b, t.hash), 2_000)
      expect((yield* warm(b, t.hash)).keys.map((k) => Redacted.value(k.apiKey))).toEqual(["sk-after"])

      // deactivation
      yield* a.store.updateProject(t.projectId, { isActive: false, now: now() })
      yield* announce(a, { kind: "project", id: t.projectId })
      yield* until("B to drop the project's grant", dropped(b, t.hash), 2_000)
      expect((yield* warm(b, t.hash)).projectActive).toBe(false)

      // revocation
      yield* a.store.updateProject(t.projectId, { isActive: true, now: now() })
      yield* announce(a, { kind: "project", id: t.projectId })
      yield* until(
        "B to re-read the project",
        Effect.map(Effect.orDie(b.validator.load(t.hash)), (g) => g?.projectActive === true),
        2_000
      )
      yield* warm(b, t.hash)
      yield* a.store.revokeToken(t.tokenId, now())
      yield* announce(a, { kind: "token", id: t.tokenId })
      yield* until("B to drop the token's grant", dropped(b, t.hash), 2_000)
      expect((yield* warm(b, t.hash)).isActive).toBe(false)

      // Only what was named is dropped: another token of B's cache stays.
      const other = yield* projectAndToken(a.store)
      yield* warm(b, other.hash)
      yield* announce(a, { kind: "token", id: t.tokenId })
      yield* Effect.sleep("100 millis")
      expect(b.validator.cached(other.hash, Date.now())).toBeDefined()
      // Dropping everything reaches B too.
      yield* announce(a, { kind: "all" })
      yield* until("B to drop everything", dropped(b, other.hash), 2_000)
    }).pipe(Effect.orDie))

  it.scopedLive("the listening connection terminated by the server: B bypasses its cache until it listens again, then clears it", () =>
    Effect.gen(function*() {
      const a = yield* instance()
      const b = yield* instance()
      const t = yield* projectAndToken(a.store)
      yield* warm(b, t.hash)
      expect(yield* listeners).toBeGreaterThanOrEqual(2)
      const killed = yield* Effect.promise(() =>
        withPgClient(
          postgresUrl!,
          async (c) =>
            (await c.query(
              "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE $2",
              [
                db.name,
                `${APPLICATION_NAME}%`
              ]
            )).rows.length
        )
      )
      expect(killed).toBeGreaterThanOrEqual(2)
      yield* until("B to notice", holds(() => !b.validator.trusted()), 2_000)
      // Not trusted: the entry is not served from memory.
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      yield* until("B to listen again", holds(() => b.validator.trusted()), 5_000)
      // Everything cached before the gap was dropped.
      expect(b.validator.stats().size).toBe(0)
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      // And B receives A's announcements again.
      yield* warm(b, t.hash)
      yield* a.store.revokeToken(t.tokenId, now())
      yield* announce(a, { kind: "token", id: t.tokenId })
      yield* until("B to drop the token's grant", dropped(b, t.hash), 2_000)
      expect((yield* b.validator.load(t.hash))?.isActive).toBe(false)
    }).pipe(Effect.orDie))

  it.scopedLive("a revocation announced while B's connection was cut is not lost: B cannot serve what it cached before", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToDb
      const a = yield* instance()
      const b = yield* instance(proxy.url, { maxBackoffMs: 100 })
      const t = yield* projectAndToken(a.store)
      yield* warm(b, t.hash)
      proxy.freeze()
      proxy.cut()
      yield* until("B to notice", holds(() => !b.validator.trusted()), 2_000)
      // The announcement B misses.
      yield* a.store.revokeToken(t.tokenId, now())
      yield* announce(a, { kind: "token", id: t.tokenId })
      yield* Effect.sleep("200 millis")
      expect(b.validator.trusted()).toBe(false)
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      proxy.thaw()
      yield* until("B to listen again", holds(() => b.validator.trusted()), 10_000)
      // Without the reset B would now serve the active grant it cached before the cut, for ten minutes.
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      expect((yield* b.validator.load(t.hash))?.isActive).toBe(false)
    }).pipe(Effect.orDie))

  it.scopedLive("a connection that goes silent (no reset, no close) is noticed by the ping and reopened", () =>
    Effect.gen(function*() {
      const proxy = yield* proxyToDb
      const a = yield* instance()
      const b = yield* instance(proxy.url, { pingIntervalMs: 100, pingTimeoutMs: 200, maxBackoffMs: 100 })
      const t = yield* projectAndToken(a.store)
      yield* warm(b, t.hash)
      proxy.freeze()
      yield* until("the ping to give up on the connection", holds(() => !b.validator.trusted()), 3_000)
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      proxy.thaw()
      yield* until("B to listen again", holds(() => b.validator.trusted()), 10_000)
      yield* warm(b, t.hash)
      yield* a.store.revokeToken(t.tokenId, now())
      yield* announce(a, { kind: "token", id: t.tokenId })
      yield* until("B to drop the token's grant", dropped(b, t.hash), 2_000)
    }).pipe(Effect.orDie))

  it.live("closing the layer closes the listening connection", () =>
    Effect.gen(function*() {
      const before = yield* listeners
      const scope = yield* Scope.make()
      yield* Effect.orDie(Layer.buildWithScope(instanceLayer(db.url, {}), scope))
      expect(yield* listeners).toBe(before + 1)
      yield* Scope.close(scope, Exit.void)
      yield* until("the connection to be gone", Effect.map(listeners, (n) => n === before), 5_000)
    }))
})
