/**
 * Token-cache invalidations over PostgreSQL LISTEN/NOTIFY (src/token/PostgresInvalidation.ts), with two validators
 * ("instances") on one real database: a change announced by A reaches B's cache; B stops trusting its cache while
 * its listening connection is gone (terminated by the server, cut, or silent) and drops everything it cached when
 * it listens again, so a notification lost in the gap cannot leave a stale grant behind.
 */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { connect, createServer, type Server, type Socket } from "node:net"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { AppConfig } from "../../src/config/AppConfig.js"
import { KeyCipher } from "../../src/crypto/KeyCipher.js"
import { loggerLayer, migratedDatabaseLayer } from "../../src/Layers.js"
import { Store, type StoreShape } from "../../src/store/Store.js"
import { APPLICATION_NAME, type ListenerOptions, layerPostgres } from "../../src/token/PostgresInvalidation.js"
import { TokenValidator, type TokenValidatorShape } from "../../src/token/TokenValidator.js"
import { createTestDatabase, postgresUrl, type TestDatabase, withPgClient } from "../support/databases.js"
import { testConfig } from "../support/server.js"

interface Instance {
  readonly validator: TokenValidatorShape
  readonly store: StoreShape
  readonly close: () => Promise<void>
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

/** Polls `check` every 10 ms until it holds, or fails after `timeoutMs`. */
const until = async (what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000) => {
  const end = Date.now() + timeoutMs
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await sleep(10)
  }
}

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
  const open: Array<Instance> = []

  /** One "instance": a token validator on `db`, listening through `listenUrl` (the database itself by default). */
  const instance = async (listenUrl = db.url, options: ListenerOptions = {}): Promise<Instance> => {
    const database = { _tag: "postgres" as const, url: Redacted.make(db.url), poolSize: 3 }
    // A cache lifetime of 10 minutes: only an invalidation can explain B seeing a change.
    const config = testConfig(database, { tokenCacheTtlMs: 600_000 })
    const layer = layerPostgres(Redacted.make(listenUrl), options).pipe(
      Layer.provideMerge(
        Layer.mergeAll(migratedDatabaseLayer(database), KeyCipher.layer(Option.none()), Layer.succeed(AppConfig, config))
      ),
      Layer.provide(loggerLayer(config))
    )
    const scope = Effect.runSync(Scope.make())
    const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
    const i = {
      validator: Context.get(ctx, TokenValidator),
      store: Context.get(ctx, Store),
      close: () => Effect.runPromise(Scope.close(scope, Exit.void))
    }
    open.push(i)
    return i
  }

  beforeAll(async () => {
    db = await createTestDatabase()
  })
  afterAll(async () => {
    await Promise.all(open.map((i) => i.close()))
    await db?.drop()
  })

  const now = () => new Date().toISOString()

  /** A project and one token in it, written through `store`; returns the token's hash (what `load` takes). */
  const projectAndToken = async (store: StoreShape, apiKey = "sk-before") => {
    const projectId = crypto.randomUUID()
    const tokenId = crypto.randomUUID()
    const hash = `hash-${tokenId}`
    await Effect.runPromise(store.createProject({
      id: projectId,
      name: `p-${projectId}`,
      apiKey,
      apiKeyHint: "sk-...",
      provider: "openai",
      now: now()
    }))
    await Effect.runPromise(store.createToken({
      id: tokenId,
      tokenHash: hash,
      tokenHint: "wt-...",
      projectId,
      expiresAt: new Date(Date.now() + 3_600_000).toISOString(),
      maxRequests: null,
      now: now()
    }))
    return { projectId, tokenId, hash }
  }

  /** Loads on B and checks that B now answers from memory. */
  const warm = async (b: Instance, hash: string) => {
    const grant = await b.validator.load(hash)
    expect(b.validator.cached(hash, Date.now())).toEqual(grant)
    return grant!
  }

  const listeners = (): Promise<number> =>
    withPgClient(postgresUrl!, async (c) =>
      Number((await c.query<{ n: string }>(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE $2",
        [db.name, `${APPLICATION_NAME}%`]
      )).rows[0]!.n))

  it("A's settled() resolves only once its own announcement came back: B has applied it by then (20 in a row)", async () => {
    const a = await instance()
    const b = await instance()
    for (let i = 0; i < 20; i++) {
      const t = await projectAndToken(a.store)
      await warm(b, t.hash)
      a.validator.invalidateToken(t.tokenId)
      await a.validator.settled()
      // No waiting here: what the management API answers after settled() must already hold on B.
      expect(b.validator.cached(t.hash, Date.now()), `round ${i}`).toBeUndefined()
    }
  })

  it("settled() waits for every instance listening on the database: one that never acknowledges holds it for ~1 s", async () => {
    const a = await instance()
    const t = await projectAndToken(a.store)
    // A connection that looks like another instance's listener (by its name) but acknowledges nothing.
    const silent = new pg.Client({ connectionString: db.url, application_name: `${APPLICATION_NAME} pid 1 0123456789ab` })
    silent.on("error", () => {})
    await silent.connect()
    try {
      const started = performance.now()
      a.validator.invalidateToken(t.tokenId)
      await a.validator.settled()
      const waited = performance.now() - started
      expect(waited).toBeGreaterThan(900)
    } finally {
      await silent.end()
    }
  })

  it("a revocation, a deactivation and a key rotation announced by A reach B's cache (10 min TTL) at once", async () => {
    const a = await instance()
    const b = await instance()
    expect(a.validator.trusted() && b.validator.trusted()).toBe(true)
    const t = await projectAndToken(a.store)

    // key rotation
    expect(Option.map((await warm(b, t.hash)).apiKey, Redacted.value)).toEqual(Option.some("sk-before"))
    await Effect.runPromise(a.store.updateProject(t.projectId, { apiKey: "sk-after", apiKeyHint: "sk-...", now: now() }))
    a.validator.invalidateProject(t.projectId)
    await a.validator.settled()
    await until("B to drop the project's grant", () => b.validator.cached(t.hash, Date.now()) === undefined, 2_000)
    expect(Option.map((await warm(b, t.hash)).apiKey, Redacted.value)).toEqual(Option.some("sk-after"))

    // deactivation
    await Effect.runPromise(a.store.updateProject(t.projectId, { isActive: false, now: now() }))
    a.validator.invalidateProject(t.projectId)
    await a.validator.settled()
    await until("B to drop the project's grant", () => b.validator.cached(t.hash, Date.now()) === undefined, 2_000)
    expect((await warm(b, t.hash)).projectActive).toBe(false)

    // revocation
    await Effect.runPromise(a.store.updateProject(t.projectId, { isActive: true, now: now() }))
    a.validator.invalidateProject(t.projectId)
    await a.validator.settled()
    await until("B to re-read the project", async () => (await b.validator.load(t.hash))?.projectActive === true, 2_000)
    await warm(b, t.hash)
    await Effect.runPromise(a.store.revokeToken(t.tokenId, now()))
    a.validator.invalidateToken(t.tokenId)
    await a.validator.settled()
    await until("B to drop the token's grant", () => b.validator.cached(t.hash, Date.now()) === undefined, 2_000)
    expect((await warm(b, t.hash)).isActive).toBe(false)

    // Only what was named is dropped: another token of B's cache stays.
    const other = await projectAndToken(a.store)
    await warm(b, other.hash)
    a.validator.invalidateToken(t.tokenId)
    await a.validator.settled()
    await sleep(100)
    expect(b.validator.cached(other.hash, Date.now())).toBeDefined()
    // invalidateAll reaches B too.
    a.validator.invalidateAll()
    await a.validator.settled()
    await until("B to drop everything", () => b.validator.cached(other.hash, Date.now()) === undefined, 2_000)
  })

  it("the listening connection terminated by the server: B bypasses its cache until it listens again, then clears it", async () => {
    const a = await instance()
    const b = await instance()
    const t = await projectAndToken(a.store)
    await warm(b, t.hash)
    expect(await listeners()).toBeGreaterThanOrEqual(2)
    const killed = await withPgClient(postgresUrl!, async (c) =>
      (await c.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND application_name LIKE $2", [
        db.name,
        `${APPLICATION_NAME}%`
      ])).rows.length)
    expect(killed).toBeGreaterThanOrEqual(2)
    await until("B to notice", () => !b.validator.trusted(), 2_000)
    // Not trusted: the entry is not served from memory.
    expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
    await until("B to listen again", () => b.validator.trusted(), 5_000)
    // Everything cached before the gap was dropped.
    expect(b.validator.stats().size).toBe(0)
    expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
    // And B receives A's announcements again.
    await warm(b, t.hash)
    await Effect.runPromise(a.store.revokeToken(t.tokenId, now()))
    a.validator.invalidateToken(t.tokenId)
    await a.validator.settled()
    await until("B to drop the token's grant", () => b.validator.cached(t.hash, Date.now()) === undefined, 2_000)
    expect((await b.validator.load(t.hash))?.isActive).toBe(false)
  })

  it("a revocation announced while B's connection was cut is not lost: B cannot serve what it cached before", async () => {
    const proxy = await freezableProxy(new URL(db.url))
    try {
      const a = await instance()
      const b = await instance(proxy.url, { maxBackoffMs: 100 })
      const t = await projectAndToken(a.store)
      await warm(b, t.hash)
      proxy.freeze()
      proxy.cut()
      await until("B to notice", () => !b.validator.trusted(), 2_000)
      // The announcement B misses.
      await Effect.runPromise(a.store.revokeToken(t.tokenId, now()))
      a.validator.invalidateToken(t.tokenId)
      await a.validator.settled()
      await sleep(200)
      expect(b.validator.trusted()).toBe(false)
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      proxy.thaw()
      await until("B to listen again", () => b.validator.trusted(), 10_000)
      // Without the reset B would now serve the active grant it cached before the cut, for ten minutes.
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      expect((await b.validator.load(t.hash))?.isActive).toBe(false)
    } finally {
      await proxy.close()
    }
  })

  it("a connection that goes silent (no reset, no close) is noticed by the ping and reopened", async () => {
    const proxy = await freezableProxy(new URL(db.url))
    try {
      const a = await instance()
      const b = await instance(proxy.url, { pingIntervalMs: 100, pingTimeoutMs: 200, maxBackoffMs: 100 })
      const t = await projectAndToken(a.store)
      await warm(b, t.hash)
      proxy.freeze()
      await until("the ping to give up on the connection", () => !b.validator.trusted(), 3_000)
      expect(b.validator.cached(t.hash, Date.now())).toBeUndefined()
      proxy.thaw()
      await until("B to listen again", () => b.validator.trusted(), 10_000)
      await warm(b, t.hash)
      await Effect.runPromise(a.store.revokeToken(t.tokenId, now()))
      a.validator.invalidateToken(t.tokenId)
      await a.validator.settled()
      await until("B to drop the token's grant", () => b.validator.cached(t.hash, Date.now()) === undefined, 2_000)
    } finally {
      await proxy.close()
    }
  })

  it("closing the layer closes the listening connection", async () => {
    const before = await listeners()
    const c = await instance()
    expect(await listeners()).toBe(before + 1)
    await c.close()
    open.splice(open.indexOf(c), 1)
    await until("the connection to be gone", async () => (await listeners()) === before, 5_000)
  })
})
