/**
 * Budgets through the real proxy on SQLite and PostgreSQL: a $0.001 budget stops the right request (429
 * budget_exceeded, `x-should-retry: false`, audited); a project's token budget stops its other tokens; 50 concurrent
 * requests overshoot by at most the requests in flight; two instances share one budget. Periods roll over (the
 * clock given to the check), on both databases.
 */
import { describe as effectDescribe, expect as effectExpect, it as effectIt } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import * as Budgets from "../../src/spend/Budgets.js"
import { Store } from "../../src/store/Store.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { call, chatBody, createToken, eventually, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { freshStore } from "../store/backends.js"
import { postgresUrl } from "../support/databases.js"
import { chatCompletion, json } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"

const dir = mkdtempSync(join(tmpdir(), "llm-proxy-budgets-"))
const pricesPath = join(dir, "prices.yaml")
writeFileSync(pricesPath, "models:\n  gpt-4o-mini: { input: 1, output: 2 }\n")
// 300 prompt + 200 completion tokens: 300 × $1 + 200 × $2 per million = $0.0007 an answer.
const answer = json(chatCompletion("ok", { prompt_tokens: 300, completion_tokens: 200 }))

describe.each(backends)("budgets on $name", (b) => {
  let backend: BackendInstance
  let stack: Stack
  beforeAll(async () => {
    backend = await b.create()
    stack = await startStack(backend, { pricesPath: Option.some(pricesPath) })
  })
  afterAll(async () => {
    await stack.close()
    await backend.cleanup()
  })
  beforeEach(() => {
    stack.mock.reset()
    stack.mock.setDefault(answer)
  })

  const go = (url: string, token: string) => call(url, "/v1/chat/completions", { token, body: chatBody() })
  const spent = async (tokenId: string) => (await stack.manage.get(`/manage/tokens/${tokenId}`)).json

  it("a budget of $0.001 stops the third request ($0.0007 each): 429 budget_exceeded, x-should-retry false, audited", async () => {
    const t = await projectAndToken(stack.manage)
    expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_cost_usd: 0.001 })).status).toBe(200)
    expect((await go(stack.server.url, t.token)).status).toBe(200) // $0 spent before it
    expect((await go(stack.server.url, t.token)).status).toBe(200) // $0.0007 before it
    const third = await go(stack.server.url, t.token) // $0.0014 before it
    expect(third.status).toBe(429)
    expect(third.headers["x-should-retry"]).toBe("false")
    const e = proxyError(third.json)
    expect(e.code).toBe("budget_exceeded")
    expect(JSON.stringify(third.json)).toContain("token budget used up: max_cost_usd 0.001 USD in total")
    expect(stack.mock.requests).toHaveLength(2)
    await eventually(async () => (await spent(t.tokenId)).tokens_used === 1000)
    const token = await spent(t.tokenId)
    expect(token.spent_usd).toBeCloseTo(0.0014, 12)
    expect(token.period_spent_usd).toBeCloseTo(0.0014, 12)
    await eventually(async () => {
      const audit = await stack.manage.get(`/manage/audit?token_id=${t.tokenId}&outcome=denied`)
      return audit.json.events?.some((ev: any) => ev.action === "proxy_request" && ev.reason === "budget_exceeded") ===
        true
    })
    // Raising the budget lets the token go on.
    expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_cost_usd: 0.01 })).status).toBe(200)
    expect((await go(stack.server.url, t.token)).status).toBe(200)
  })

  it("a project's max_tokens budget stops every token of the project; a token without budget of another project is not slowed", async () => {
    const t = await projectAndToken(stack.manage)
    const other = await createToken(stack.manage, t.projectId)
    expect(
      (await stack.manage.patch(`/manage/projects/${t.projectId}`, { max_tokens: 600, budget_period: "month" })).status
    ).toBe(200)
    expect((await go(stack.server.url, t.token)).status).toBe(200) // 500 tokens
    expect((await go(stack.server.url, other.token)).status).toBe(200) // 500 before: 1000 after
    const refused = await go(stack.server.url, t.token)
    expect(refused.status).toBe(429)
    expect(JSON.stringify(refused.json)).toContain("project budget used up: max_tokens 600 per month (UTC)")
    expect((await go(stack.server.url, other.token)).status).toBe(429)
    // Charges are written at once, in the background: refused above from this instance's count, read back here.
    await eventually(async () => (await stack.manage.get(`/manage/projects/${t.projectId}`)).json.tokens_used === 1000)
    const project = (await stack.manage.get(`/manage/projects/${t.projectId}`)).json
    expect(project).toMatchObject({
      tokens_used: 1000,
      period_tokens_used: 1000,
      max_tokens: 600,
      budget_period: "month"
    })
    expect(Date.parse(project.period_ends_at)).toBeGreaterThan(Date.now())
    const free = await projectAndToken(stack.manage)
    expect((await go(stack.server.url, free.token)).status).toBe(200)
  })

  it("50 concurrent requests against a nearly used-up budget: at most the 50 in flight pass, all are charged, the next is refused", async () => {
    const t = await projectAndToken(stack.manage)
    expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_tokens: 501 })).status).toBe(200)
    expect((await go(stack.server.url, t.token)).status).toBe(200) // 500 of 501 used
    stack.mock.setDefault(json(chatCompletion("ok", { prompt_tokens: 300, completion_tokens: 200 }), { delayMs: 100 }))
    const replies = await Promise.all(Array.from({ length: 50 }, () => go(stack.server.url, t.token)))
    const passed = replies.filter((r) => r.status === 200).length
    expect(passed + replies.filter((r) => r.status === 429).length).toBe(50)
    expect(passed).toBeLessThanOrEqual(50)
    expect(stack.mock.requests).toHaveLength(1 + passed)
    // Every answer that passed is charged: nothing is lost.
    await eventually(async () => (await spent(t.tokenId)).tokens_used === 500 * (1 + passed))
    expect((await go(stack.server.url, t.token)).status).toBe(429)
  })

  it("two instances share one budget", async () => {
    const second = await startStack(backend, { pricesPath: Option.some(pricesPath) }, undefined, stack.mock)
    try {
      const t = await projectAndToken(stack.manage)
      expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_cost_usd: 0.001 })).status).toBe(200)
      expect((await go(stack.server.url, t.token)).status).toBe(200)
      expect((await go(second.server.url, t.token)).status).toBe(200)
      // The second charge is written at once (not with the batched counters).
      await eventually(async () => (await spent(t.tokenId)).spent_usd > 0.0013)
      // Another instance's charge shows once this one's last read of what was spent is readTtlMs old.
      await new Promise((r) => setTimeout(r, Budgets.timingsFor(b.name).readTtlMs + 10))
      expect((await go(stack.server.url, t.token)).status).toBe(429)
      expect((await go(second.server.url, t.token)).status).toBe(429)
      expect(stack.mock.requests).toHaveLength(2)
    } finally {
      await second.close()
    }
  })

  it("a model without a price: 403 model_not_priced with a USD budget, forwarded with a token budget only or none", async () => {
    const t = await projectAndToken(stack.manage)
    const mystery = () =>
      call(stack.server.url, "/v1/chat/completions", { token: t.token, body: chatBody({ model: "mystery-2" }) })
    expect((await stack.manage.patch(`/manage/projects/${t.projectId}`, { max_cost_usd: 5 })).status).toBe(200)
    const refused = await mystery()
    expect(refused.status).toBe(403)
    expect(proxyError(refused.json).code).toBe("model_not_priced")
    expect(stack.mock.requests).toHaveLength(0)
    // The model checked is the one the upstream reads (the top-level member): a priced decoy before it is no way in.
    const decoy = await call(stack.server.url, "/v1/chat/completions", {
      token: t.token,
      body: { metadata: { model: "gpt-4o-mini" }, ...chatBody({ model: "mystery-2" }) }
    })
    expect(decoy.status).toBe(403)
    expect(proxyError(decoy.json).code).toBe("model_not_priced")
    expect(stack.mock.requests).toHaveLength(0)
    expect((await go(stack.server.url, t.token)).status).toBe(200) // a priced model goes through
    expect(
      (await stack.manage.patch(`/manage/projects/${t.projectId}`, { max_cost_usd: null, max_tokens: 100000 })).status
    ).toBe(200)
    expect((await mystery()).status).toBe(200)
  })

  it("budget fields are validated: bad values are refused with the field's message and change nothing", async () => {
    const t = await projectAndToken(stack.manage)
    for (
      const [body, message] of [
        [{ max_cost_usd: 0 }, "max_cost_usd must be null or a number > 0"],
        [{ max_cost_usd: "1" }, "invalid request body"],
        [{ max_cost_usd: 2e9 }, "max_cost_usd must be null or a number > 0 and <= 1000000000"],
        [{ max_tokens: 1.5 }, "max_tokens must be null or an integer"],
        [{ budget_period: "week" }, "budget_period must be total, day or month"]
      ] as const
    ) {
      const r = await stack.manage.patch(`/manage/tokens/${t.tokenId}`, body)
      expect(r.status, JSON.stringify(body)).toBe(400)
      expect(r.text).toContain(message)
    }
    expect(await spent(t.tokenId)).toMatchObject({ max_cost_usd: null, max_tokens: null, budget_period: "total" })
    const created = await stack.manage.post("/manage/tokens", {
      project_id: t.projectId,
      duration_minutes: 5,
      max_tokens: 10,
      budget_period: "day"
    })
    expect(created.status).toBe(201)
    expect((await stack.manage.get(`/manage/tokens/${created.json.id}`)).json).toMatchObject({
      max_tokens: 10,
      budget_period: "day"
    })
    expect((await stack.manage.patch(`/manage/tokens/${created.json.id}`, { max_tokens: null })).json.max_tokens)
      .toBeNull()
  })
})

const DAY = 86_400_000
const dialects = postgresUrl ? (["sqlite", "postgres"] as const) : (["sqlite"] as const)

effectDescribe.each(dialects)("budget periods roll over (%s)", (dialect) => {
  const layer = Budgets.layer.pipe(Layer.provideMerge(freshStore(dialect)))
  // The interplay of reads and writes, with the short timings of PostgreSQL on either database (fast rounds).
  const fast = Budgets.timingsFor("postgres")
  const fastLayer = Budgets.layerWith(fast).pipe(Layer.provideMerge(freshStore(dialect)))
  const setup = Effect.gen(function*() {
    const store = yield* Store
    const now = new Date().toISOString()
    const projectId = crypto.randomUUID()
    yield* store.createProject({
      id: projectId,
      name: `p-${projectId}`,
      apiKeys: [{ id: crypto.randomUUID(), key: "k", hint: "k", weight: 1, provider: null }],
      provider: "openai",
      now
    })
    const tokenId = crypto.randomUUID()
    yield* store.createToken({
      id: tokenId,
      tokenHash: tokenId.replace(/-/g, "").padEnd(64, "0"),
      tokenHint: "sk-****",
      projectId,
      expiresAt: new Date(Date.now() + DAY).toISOString(),
      maxRequests: null,
      now
    })
    return { tokenId, projectId }
  })

  effectIt.effect(
    "a day budget is used up on its day and free again the next UTC day; a month budget the next month",
    () =>
      Effect.gen(function*() {
        const budgets = yield* Budgets.Budgets
        const { tokenId, projectId } = yield* setup
        const day = { maxCostUsd: 1, maxTokens: null, period: "day" as const }
        const month = { maxCostUsd: null, maxTokens: 100, period: "month" as const }
        const t0 = Date.UTC(2026, 0, 31, 23, 0) // 23:00 on 31 January
        budgets.charge(tokenId, projectId, 1.5, 50, t0)
        yield* budgets.settled
        budgets.charge(tokenId, projectId, 0, 60, t0 + 1000)
        yield* budgets.settled
        effectExpect(yield* budgets.check(tokenId, day, projectId, undefined, t0 + 30 * 60_000)).toMatchObject({
          scope: "token",
          limit: "max_cost_usd"
        })
        effectExpect(yield* budgets.check(tokenId, undefined, projectId, month, t0 + 30 * 60_000)).toMatchObject({
          scope: "project",
          limit: "max_tokens"
        })
        // 00:30 on 1 February: a new day and a new month
        effectExpect(yield* budgets.check(tokenId, day, projectId, month, t0 + 90 * 60_000)).toBeUndefined()
        // What is spent on the new day counts for it alone; the total keeps everything.
        budgets.charge(tokenId, projectId, 0.5, 10, t0 + 90 * 60_000)
        yield* budgets.settled
        effectExpect(yield* budgets.check(tokenId, day, projectId, undefined, t0 + 2 * 3600_000)).toBeUndefined()
        const total = { maxCostUsd: 2, maxTokens: null, period: "total" as const }
        effectExpect(yield* budgets.check(tokenId, total, projectId, undefined, t0 + 2 * 3600_000)).toMatchObject({
          limit: "max_cost_usd"
        })
        const stored = Option.getOrThrow(yield* (yield* Store).spendOf(tokenId))
        effectExpect(stored.token).toMatchObject({
          spentUsd: 2,
          tokensUsed: 120,
          dayCostUsd: 0.5,
          dayTokens: 10,
          monthTokens: 10
        })
      }).pipe(Effect.provide(layer))
  )

  effectIt.live(
    "a check while a charge is being written counts it exactly once: neither missed nor twice (20 rounds)",
    () =>
      Effect.gen(function*() {
        const budgets = yield* Budgets.Budgets
        // Missed, the project's $0.5 budget would not be used up; counted twice, the token's $0.75 would be.
        const token = { maxCostUsd: 0.75, maxTokens: null, period: "total" as const }
        const project = { maxCostUsd: 0.5, maxTokens: null, period: "total" as const }
        for (let i = 0; i < 20; i++) {
          const { tokenId, projectId } = yield* setup
          // After a quiet spell a charge is written at once: its write is in flight when the check reads.
          yield* Effect.sleep(fast.writeGapMs + 5)
          const now = Date.now()
          budgets.charge(tokenId, projectId, 0.5, 10, now)
          effectExpect(yield* budgets.check(tokenId, token, projectId, project, now)).toMatchObject({
            scope: "project",
            limit: "max_cost_usd"
          })
        }
      }).pipe(Effect.provide(fastLayer))
  )

  effectIt.live(
    "under steady checks the next read is made in the background: a check never waits, and another instance's spend shows within readTtlMs",
    () =>
      Effect.gen(function*() {
        const budgets = yield* Budgets.Budgets
        const store = yield* Store
        const { tokenId, projectId } = yield* setup
        const budget = { maxCostUsd: 1, maxTokens: null, period: "total" as const }
        const t0 = Date.now()
        effectExpect(yield* budgets.check(tokenId, budget, projectId, undefined, t0)).toBeUndefined()
        // Another instance spends $2 (written straight to the database).
        yield* store.addSpend([
          { scope: "token", id: tokenId, costUsd: 2, tokens: 0, dayStart: t0 - (t0 % 86_400_000), monthStart: 0 }
        ])
        // Half readTtlMs on: answered at once from the last read ($0), and the next read starts.
        const early = budgets.unsafeCheck(tokenId, budget, projectId, undefined, t0 + fast.readTtlMs * 0.6)
        effectExpect(Effect.isEffect(early)).toBe(false)
        effectExpect(early).toBeUndefined()
        yield* Effect.sleep(20)
        // Past the first read's readTtlMs: the background read is there, so the check is answered at once, with the $2.
        const later = budgets.unsafeCheck(tokenId, budget, projectId, undefined, t0 + fast.readTtlMs * 1.2)
        effectExpect(Effect.isEffect(later)).toBe(false)
        effectExpect(later).toMatchObject({ scope: "token", limit: "max_cost_usd" })
      }).pipe(Effect.provide(fastLayer))
  )

  effectIt.live(
    "500 charges in a burst: counted by the next check at once, all written together in the background",
    () =>
      Effect.gen(function*() {
        const budgets = yield* Budgets.Budgets
        const store = yield* Store
        const { tokenId, projectId } = yield* setup
        for (let i = 0; i < 500; i++) budgets.charge(tokenId, projectId, 0.001, 3, Date.now())
        const limit = (maxTokens: number) => ({ maxCostUsd: null, maxTokens, period: "total" as const })
        effectExpect(yield* budgets.check(tokenId, limit(1500), projectId, undefined, Date.now())).toMatchObject({
          limit: "max_tokens"
        })
        effectExpect(yield* budgets.check(tokenId, limit(1501), projectId, limit(1501), Date.now())).toBeUndefined()
        // Without `settled`: the writes land on their own.
        let stored = Option.getOrThrow(yield* store.spendOf(tokenId))
        for (let k = 0; k < 200 && (stored.token.tokensUsed < 1500 || stored.project.tokensUsed < 1500); k++) {
          yield* Effect.sleep(10)
          stored = Option.getOrThrow(yield* store.spendOf(tokenId))
        }
        effectExpect(stored.token.tokensUsed).toBe(1500)
        effectExpect(stored.project.tokensUsed).toBe(1500)
        effectExpect(stored.token.spentUsd).toBeCloseTo(0.5, 9)
        // Read again after the writes: still counted once.
        yield* Effect.sleep(Budgets.timingsFor(dialect).readTtlMs + 5)
        effectExpect(yield* budgets.check(tokenId, limit(1501), projectId, limit(1501), Date.now())).toBeUndefined()
        effectExpect(yield* budgets.check(tokenId, limit(1500), projectId, undefined, Date.now())).toMatchObject({
          limit: "max_tokens"
        })
      }).pipe(Effect.provide(layer))
  )
})

describe("UNPRICED_MODELS=allow", () => {
  it("forwards a model without a price even with a USD budget (counted 0 USD)", async () => {
    const backend = await backends[0]!.create()
    const stack = await startStack(backend, { pricesPath: Option.some(pricesPath), unpricedModels: "allow" })
    try {
      const t = await projectAndToken(stack.manage)
      expect((await stack.manage.patch(`/manage/tokens/${t.tokenId}`, { max_cost_usd: 1 })).status).toBe(200)
      stack.mock.enqueue(json({ ...chatCompletion(), model: "mystery-3" }))
      const r = await call(stack.server.url, "/v1/chat/completions", {
        token: t.token,
        body: chatBody({ model: "mystery-3" })
      })
      expect(r.status).toBe(200)
      await eventually(async () => (await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.tokens_used === 12)
      expect((await stack.manage.get(`/manage/tokens/${t.tokenId}`)).json.spent_usd).toBe(0)
    } finally {
      await stack.close()
      await backend.cleanup()
    }
  })
})
