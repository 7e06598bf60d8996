/**
 * Two `serve` stacks on one PostgreSQL database with what INVALIDATION_BACKEND resolves to by default there
 * (`postgres`): revocation, deactivation and key rotation through A apply to B's very next request although B caches
 * tokens for ten minutes; `/health` shows the channel; a setting that cannot reach other instances is a warning at
 * start-up. (The same with the built binary, several processes and Redis: test/scale.)
 */
import { describe, expect, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, LogLevel, Option, Redacted, type Scope } from "effect"
import { afterAll, beforeAll } from "vitest"
import { AppConfig, type AppConfigShape } from "../../src/config/AppConfig.js"
import { KeyCipher } from "../../src/crypto/KeyCipher.js"
import { invalidationCheckLayer, invalidationLayer, migratedDatabaseLayer } from "../../src/Layers.js"
import * as Health from "../../src/observability/Health.js"
import { layerPostgres } from "../../src/token/PostgresInvalidation.js"
import { TokenValidator } from "../../src/token/TokenValidator.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { postgresUrl } from "../support/databases.js"
import { proxyError } from "../support/proxyErrors.js"
import { testConfig } from "../support/server.js"

const postgres = backends.find((b) => b.name === "postgres")

describe.skipIf(!postgresUrl)("two instances on PostgreSQL, INVALIDATION_BACKEND=postgres (the default there)", () => {
  let backend: BackendInstance
  let a: Stack
  let b: Stack
  beforeAll(async () => {
    backend = await postgres!.create()
    // Ten minutes: without the channel B would serve what it cached for that long.
    const options = { invalidationBackend: "postgres" as const, tokenCacheTtlMs: 600_000 }
    a = await startStack(backend, options)
    b = await startStack(backend, options, undefined, a.mock)
  })
  afterAll(async () => {
    await b?.close()
    await a?.close()
    await backend?.cleanup()
  })
  const viaB = (token: string) => call(b.server.url, "/v1/chat/completions", { token, body: chatBody() })

  it("revocation through A: B's very next request is 401 token_inactive", async () => {
    const t = await projectAndToken(a.manage)
    expect((await viaB(t.token)).status).toBe(200)
    expect((await viaB(t.token)).status).toBe(200)
    expect((await a.manage.delete(`/manage/tokens/${t.tokenId}`)).status).toBe(204)
    const r = await viaB(t.token)
    expect([r.status, proxyError(r.json).code]).toEqual([401, "token_inactive"])
  })

  it("project deactivation through A: B's very next request is 403 project_inactive; reactivation too", async () => {
    const t = await projectAndToken(a.manage)
    expect((await viaB(t.token)).status).toBe(200)
    expect((await a.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false })).status).toBe(200)
    const r = await viaB(t.token)
    expect([r.status, proxyError(r.json).code]).toEqual([403, "project_inactive"])
    expect((await a.manage.patch(`/manage/projects/${t.projectId}`, { is_active: true })).status).toBe(200)
    expect((await viaB(t.token)).status).toBe(200)
  })

  it("key rotation through A: B's very next request carries the new key upstream", async () => {
    const t = await projectAndToken(a.manage)
    expect((await viaB(t.token)).status).toBe(200)
    expect(a.mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${t.apiKey}`)
    const rotated = `sk-rotated-${crypto.randomUUID()}`
    expect((await a.manage.patch(`/manage/projects/${t.projectId}`, { api_key: rotated })).status).toBe(200)
    expect((await viaB(t.token)).status).toBe(200)
    expect(a.mock.requests.at(-1)!.headers.authorization).toBe(`Bearer ${rotated}`)
  })

  it("/health lists token_invalidation, up, on the PostgreSQL channel", async () => {
    const r = await fetch(`${b.server.url}/health`)
    const body = await r.json() as { checks: Record<string, Record<string, unknown>> }
    expect(body.checks["token_invalidation"]).toMatchObject({
      status: "up",
      required: false,
      channel: "postgres-listen"
    })
  })
})

describe.skipIf(!postgresUrl)("the token_invalidation check and the start-up lines", () => {
  let backend: BackendInstance
  beforeAll(async () => {
    backend = await postgres!.create()
  })
  afterAll(() => backend?.cleanup())

  /**
   * Builds `layer` on the real database, for as long as the test runs, with the log lines captured; returns the
   * lines and the built context.
   */
  const build = <A>(config: AppConfigShape, layer: Layer.Layer<A, never, any>) =>
    Effect.gen(function*() {
      const lines: Array<{ level: string; message: string }> = []
      const capture = Logger.replace(
        Logger.defaultLogger,
        Logger.make(({ logLevel, message }) => void lines.push({ level: logLevel.label, message: String(message) }))
      )
      const deps = Layer.mergeAll(
        migratedDatabaseLayer(config.database),
        KeyCipher.layer(Option.none()),
        Layer.succeed(AppConfig, config),
        Health.layer("test")
      )
      const full = layer.pipe(
        Layer.provideMerge(deps),
        Layer.provide(Layer.merge(capture, Logger.minimumLogLevel(LogLevel.Info)))
      )
      const ctx = yield* (Layer.build(full) as Effect.Effect<Context.Context<A | Health.Health>, never, Scope.Scope>)
      return { lines, ctx }
    })

  it.scopedLive("INVALIDATION_BACKEND=in-memory on PostgreSQL: a WARN naming the consequence and the fix", () =>
    Effect.gen(function*() {
      const config = testConfig(backend.database, { invalidationBackend: "in-memory" })
      const built = yield* build(config, invalidationLayer(config))
      const warn = built.lines.find((l) => l.level === "WARN")
      expect(warn?.message).toContain("INVALIDATION_BACKEND=in-memory on PostgreSQL")
      expect(warn?.message).toContain("keeps working on the other instances")
      expect(warn?.message).toContain("Unset INVALIDATION_BACKEND")
    }))

  it.live("nothing cached (TOKEN_CACHE_TTL=0s) or SQLite: no warning", () =>
    Effect.forEach([
      testConfig(backend.database, { invalidationBackend: "in-memory", tokenCacheTtlMs: 0 }),
      testConfig({ _tag: "sqlite", path: ":memory:" }, { invalidationBackend: "in-memory" })
    ], (config) =>
      Effect.scoped(Effect.gen(function*() {
        const built = yield* build(config, invalidationLayer(config))
        expect(built.lines.filter((l) => l.level === "WARN")).toEqual([])
      }))))

  it.scopedLive("postgres: the channel is named at start-up, and no warning", () =>
    Effect.gen(function*() {
      const config = testConfig(backend.database, { invalidationBackend: "postgres" })
      const built = yield* build(config, invalidationLayer(config))
      expect(built.lines).toContainEqual({
        level: "INFO",
        message: "token invalidations: PostgreSQL LISTEN/NOTIFY (every instance on this database applies them)"
      })
      expect(built.lines.filter((l) => l.level === "WARN")).toEqual([])
    }))

  it.scopedLive("a listening connection that cannot be opened: token_invalidation is down (not required), the instance still starts", () =>
    Effect.gen(function*() {
      const config = testConfig(backend.database, { invalidationBackend: "postgres" })
      // The store works; only the listening connection points at a closed port.
      const validator = layerPostgres(Redacted.make("postgres://postgres@127.0.0.1:1/nowhere"))
      const built = yield* build(config, invalidationCheckLayer(config).pipe(Layer.provideMerge(validator)))
      expect(Context.get(built.ctx, TokenValidator).trusted()).toBe(false)
      const report = yield* Context.get(built.ctx, Health.Health).report
      expect(report.checks["token_invalidation"]).toMatchObject({ status: "down", required: false })
      expect(report.checks["token_invalidation"]!.error).toContain("the token cache is bypassed")
      expect(report.ready).toBe(true)
      expect(
        built.lines.some((l) =>
          l.level === "WARN" && l.message.startsWith("token invalidation channel (PostgreSQL LISTEN)")
        )
      ).toBe(true)
    }))
})
