/**
 * Instrumentation events, measured (not part of `npm test`; run with `npm run bench -- events`):
 *  1. Redis Streams end to end: events/s from `publish` to a line fsync'ed in the dispatcher's JSONL file,
 *     and the publishing side alone (XADD pipelined by the background fiber).
 *  2. The cost on the request path: proxy throughput (mock upstream, keep-alive client, fixed concurrency) with
 *     events off, on with the in-memory bus, and on with the Redis Streams bus — as ratios to "off".
 * Environment: REDIS_URL (default redis://127.0.0.1:6379; part 1 and the Redis case of part 2 are skipped when it
 * does not answer), BENCH_EVENTS (20000), BENCH_REQUESTS (4000), BENCH_CONCURRENCY (32).
 */
import { Context, Effect, Exit, Layer, Option, Redacted, Scope } from "effect"
import { Redis } from "ioredis"
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { Agent, request } from "undici"
import type { AppConfigShape } from "../../src/config/AppConfig.js"
import { fileBackend } from "../../src/dispatcher/backends.js"
import * as Dispatcher from "../../src/dispatcher/Dispatcher.js"
import { TokenCounter } from "../../src/dispatcher/tokens.js"
import type { ProxyEvent } from "../../src/domain/ProxyEvent.js"
import { EventBus } from "../../src/eventbus/EventBus.js"
import * as InMemoryBus from "../../src/eventbus/InMemoryBus.js"
import * as RedisStreamsBus from "../../src/eventbus/RedisStreamsBus.js"
import { ServerAddress } from "../../src/http/Server.js"
import { loggerLayer, serveLayer } from "../../src/Layers.js"
import { toEvent } from "../../src/proxy/EventCapture.js"
import { ProxyRequestContext } from "../../src/proxy/ProxyHooks.js"
import { startMockUpstream } from "../support/mockUpstream.js"
import { testConfig } from "../support/server.js"

const REDIS = process.env["REDIS_URL"] || "redis://127.0.0.1:6379"
const EVENTS = Number(process.env["BENCH_EVENTS"] ?? 20_000)
const REQUESTS = Number(process.env["BENCH_REQUESTS"] ?? 4_000)
const CONCURRENCY = Number(process.env["BENCH_CONCURRENCY"] ?? 32)
const dir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-events-"))
const prefix = `llm-proxy-bench:${process.pid}:`

const build = async <A, E>(layer: Layer.Layer<A, E>) => {
  const scope = Effect.runSync(Scope.make())
  const ctx = await Effect.runPromise(Layer.buildWithScope(layer, scope))
  return { ctx: ctx as Context.Context<A>, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

const redisAnswers = async () => {
  const r = new Redis(REDIS, { lazyConnect: true, maxRetriesPerRequest: 1, retryStrategy: () => null })
  r.on("error", () => {})
  try {
    await r.connect()
    await r.ping()
    return true
  } catch {
    return false
  } finally {
    r.disconnect()
  }
}

const body = (s: string) => ({
  base64: Buffer.from(s).toString("base64"),
  size: s.length,
  truncated: false,
  content_type: "application/json"
})
const sampleEvent = (i: number): ProxyEvent => ({
  request_id: `bench-${i}`,
  timestamp: new Date().toISOString(),
  project_id: "11111111-1111-4111-8111-111111111111",
  token_id: "22222222-2222-4222-8222-222222222222",
  method: "POST",
  path: "/v1/chat/completions",
  status: 200,
  duration_ms: 123.4,
  upstream_ms: 100.1,
  model: "gpt-4o-mini",
  stream: false,
  usage: { prompt_tokens: 20, completion_tokens: 40, total_tokens: 60 },
  request_body: body(JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(400) }] })),
  response_body: body(
    JSON.stringify({
      id: "c",
      object: "chat.completion",
      choices: [{ index: 0, message: { role: "assistant", content: "y".repeat(800) } }],
      usage: { prompt_tokens: 20, completion_tokens: 40, total_tokens: 60 }
    })
  ),
  error: null
})

const countLines = (path: string) => {
  if (!existsSync(path)) return 0
  const text = readFileSync(path)
  let n = 0
  for (let i = 0; i < text.length; i++) if (text[i] === 10) n++
  return n
}

const startDispatcher = (options: RedisStreamsBus.RedisStreamsOptions, path: string) =>
  build(
    Dispatcher.layer({
      group: "bench",
      consumer: "bench-1",
      batchSize: 500,
      flushIntervalMs: 200,
      buffer: 2000,
      deadLetterPath: join(dir, "dead.jsonl"),
      keepAliveMs: 10_000,
      status: "off"
    }).pipe(Layer.provide(Layer.mergeAll(RedisStreamsBus.layerSource(options), fileBackend(path), TokenCounter.layer)))
  )

const waitUntil = async (f: () => Promise<boolean> | boolean) => {
  while (!(await f())) await new Promise((r) => setTimeout(r, 5))
}

const endToEnd = async () => {
  const options = (key: string): RedisStreamsBus.RedisStreamsOptions => ({
    url: Redacted.make(REDIS),
    streamKey: `${prefix}${key}`,
    maxLen: 0,
    bufferSize: EVENTS,
    claimIdleMs: 30_000
  })
  const events = Array.from({ length: EVENTS }, (_, i) => sampleEvent(i))
  const rate = (ms: number) => Math.round(EVENTS / (ms / 1000)).toLocaleString("en-US")
  console.log(
    `Redis Streams, ${EVENTS} events of ~${JSON.stringify(events[0]).length} bytes, one process (2 shared cores):`
  )

  // A: publishing alone
  {
    const publisher = await build(RedisStreamsBus.layerPublisher(options("e2e-a")))
    const bus = Context.get(publisher.ctx, EventBus)
    const t0 = performance.now()
    for (const e of events) bus.publish(e)
    const call = performance.now() - t0
    await waitUntil(async () => (await Effect.runPromise(bus.stats)).written >= EVENTS)
    const written = performance.now() - t0
    await publisher.close()
    console.log(`  publish() call            ${(call * 1000 / EVENTS).toFixed(2)} µs/event (synchronous enqueue)`)
    console.log(`  publishing alone          ${rate(written)} events/s XADD'ed (pipelined, 256 per round trip)`)
    // B: the dispatcher draining that backlog
    const path = join(dir, "backlog.jsonl")
    const t1 = performance.now()
    const dispatcher = await startDispatcher(options("e2e-a"), path)
    // poll the counter, not the file: reading a growing file every few ms would be the bottleneck
    const stateB = Context.get(dispatcher.ctx, Dispatcher.DispatcherState)
    await waitUntil(() => stateB.delivered >= EVENTS)
    const drained = performance.now() - t1
    await dispatcher.close()
    if (countLines(path) < EVENTS) throw new Error(`only ${countLines(path)} lines in ${path}`)
    console.log(
      `  dispatcher alone          ${rate(drained)} events/s read, transformed, written, fsync'ed, XACK'ed (batch 500)`
    )
  }
  // C: both at once, publish → line in the file
  {
    const path = join(dir, "e2e.jsonl")
    const dispatcher = await startDispatcher(options("e2e-c"), path)
    const stateC = Context.get(dispatcher.ctx, Dispatcher.DispatcherState)
    const publisher = await build(RedisStreamsBus.layerPublisher(options("e2e-c")))
    const bus = Context.get(publisher.ctx, EventBus)
    const t0 = performance.now()
    for (const e of events) bus.publish(e)
    await waitUntil(() => stateC.delivered >= EVENTS)
    const total = performance.now() - t0
    await publisher.close()
    await dispatcher.close()
    if (countLines(path) < EVENTS) throw new Error(`only ${countLines(path)} lines in ${path}`)
    console.log(
      `  end to end, concurrently  ${rate(total)} events/s (${
        (total / 1000).toFixed(2)
      } s from the first publish to the last fsync)`
    )
  }
}

const startProxy = async (
  name: string,
  events: Partial<AppConfigShape["events"]>,
  extra: Partial<AppConfigShape> = {}
) => {
  const mock = await startMockUpstream()
  const base = testConfig({ _tag: "sqlite", path: join(dir, `${name.replace(/\W+/g, "-")}.db`) }, {
    openaiApiUrl: mock.url,
    ...extra
  })
  const config: AppConfigShape = { ...base, events: { ...base.events, ...events } }
  const server = await build(serveLayer(config).pipe(Layer.provide(loggerLayer(config))))
  const url = `http://127.0.0.1:${Context.get(server.ctx, ServerAddress).port}`
  const auth = {
    authorization: `Bearer ${Option.getOrThrow(config.managementToken).pipe(Redacted.value)}`,
    "content-type": "application/json"
  }
  const project = await (await fetch(`${url}/manage/projects`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ name: `bench-${name}`, api_key: "sk-bench-upstream-key-000000" })
  })).json() as { id: string }
  const token = await (await fetch(`${url}/manage/tokens`, {
    method: "POST",
    headers: auth,
    body: JSON.stringify({ project_id: project.id, duration_minutes: 60 })
  })).json() as { token: string }
  const agent = new Agent({ connections: CONCURRENCY, pipelining: 1 })
  const payload = JSON.stringify({
    model: "gpt-4o-mini",
    messages: [{ role: "user", content: "Hello there, how are you today?" }]
  })
  const one = async () => {
    const r = await request(`${url}/v1/chat/completions`, {
      method: "POST",
      dispatcher: agent,
      headers: { authorization: `Bearer ${token.token}`, "content-type": "application/json" },
      body: payload
    })
    await r.body.text()
    if (r.statusCode !== 200) throw new Error(`${name}: HTTP ${r.statusCode}`)
  }
  /** requests per second over n requests */
  const run = async (n: number) => {
    let next = 0
    const t0 = performance.now()
    await Promise.all(Array.from({ length: CONCURRENCY }, async () => {
      while (next++ < n) await one()
    }))
    return n / ((performance.now() - t0) / 1000)
  }
  return {
    name,
    run,
    stats: () => Effect.runPromise(Context.get(server.ctx, EventBus).stats),
    close: async () => {
      await agent.close()
      await server.close()
      await mock.close()
    }
  }
}

const median = (xs: ReadonlyArray<number>) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!

/** CPU the onComplete hook costs per request: build the event (bounded bodies, base64) and publish it. */
const hookCost = async () => {
  const scope = Effect.runSync(Scope.make())
  const { bus } = await Effect.runPromise(Scope.extend(InMemoryBus.make(1_000_000), scope))
  const measure = (name: string, requestBytes: number, responseBytes: number) => {
    const ctx = new ProxyRequestContext(
      "req-1",
      "POST",
      "/v1/chat/completions",
      "/v1/chat/completions",
      undefined,
      performance.now(),
      Date.now()
    )
    ctx.projectId = "p"
    ctx.tokenId = "t"
    ctx.status = 200
    ctx.durationMs = 12.3
    ctx.upstreamMs = 10.1
    ctx.requestBody = Buffer.from(
      JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "x".repeat(requestBytes) }] })
    )
    ctx.responseBody = Buffer.from(
      JSON.stringify({ id: "c", choices: [{ message: { content: "y".repeat(responseBytes) } }] })
    )
    ctx.upstreamHeaders = { "content-type": "application/json" }
    const config = { maxRequestBodyBytes: 65_536, maxResponseBodyBytes: 262_144 }
    const n = requestBytes > 10_000 ? 2_000 : 50_000
    for (let i = 0; i < 1000; i++) bus.publish(toEvent(ctx, config))
    const t0 = performance.now()
    for (let i = 0; i < n; i++) bus.publish(toEvent(ctx, config))
    console.log(`  ${name.padEnd(44)} ${((performance.now() - t0) * 1000 / n).toFixed(2)} µs`)
  }
  console.log("Request-path cost of an event (toEvent + publish, after the response has ended), per request:")
  measure("typical chat (300 B request, 1 KiB response)", 300, 1_000)
  measure("at the bounds (64 KiB request, 256 KiB response)", 70_000, 300_000)
  const stats = await Effect.runPromise(bus.stats)
  if (stats.published === 0) throw new Error("nothing was published")
  await Effect.runPromise(Scope.close(scope, Exit.void))
}

const main = async () => {
  await hookCost()
  console.log("")
  const redis = await redisAnswers()
  if (redis) await endToEnd()
  else console.log(`Redis at ${REDIS} does not answer: end-to-end bus benchmark skipped`)
  const ROUNDS = 5
  console.log(
    `\nProxy throughput: ${ROUNDS} interleaved rounds of ${REQUESTS} chat completions per setting, concurrency ${CONCURRENCY},`
  )
  console.log("mock upstream in the same process; median req/s, ratio to events off:")
  const proxies = [
    await startProxy("events off", { enabled: false }),
    await startProxy("events on, in-memory bus", {}),
    ...(redis
      ? [
        await startProxy("events on, redis-streams", { bus: "redis-streams", streamKey: `${prefix}proxy` }, {
          redisUrl: REDIS
        })
      ]
      : [])
  ]
  for (const p of proxies) await p.run(1000) // warm-up
  const samples = proxies.map(() => [] as Array<number>)
  for (let round = 0; round < ROUNDS; round++) {
    for (let i = 0; i < proxies.length; i++) samples[i]!.push(await proxies[i]!.run(REQUESTS))
  }
  const off = median(samples[0]!)
  for (let i = 0; i < proxies.length; i++) {
    const stats = await proxies[i]!.stats()
    const m = median(samples[i]!)
    console.log(
      `  ${proxies[i]!.name.padEnd(26)} ${Math.round(m).toString().padStart(6)} req/s  ratio ${
        (m / off).toFixed(3)
      }  ` +
        `(rounds ${
          samples[i]!.map((x) => Math.round(x)).join(", ")
        }; published ${stats.published}, dropped ${stats.dropped})`
    )
    await proxies[i]!.close()
  }
  if (redis) {
    const r = new Redis(REDIS)
    for (const key of [`${prefix}e2e`, `${prefix}proxy`]) await r.del(key)
    await r.quit()
  }
  rmSync(dir, { recursive: true, force: true })
}

await main()
