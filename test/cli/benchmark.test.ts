/**
 * `llm-proxy benchmark` against a real `serve` stack (SQLite) in front of the in-process mock upstream: the counts it
 * prints are the traffic that happened (the mock and the gateway's own metrics agree), it keeps to its concurrency,
 * measures time to first token on streams, and reports failures by status or network error.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { distribution, progressBar } from "../../src/cli/benchmark.js"
import { type BackendInstance, backends } from "../http/harness.js"
import { parsePrometheus, value } from "../observability/prometheus.js"
import { type ProjectAndToken, projectAndToken, type Stack, startStack } from "../proxy/stack.js"
import { cli } from "../support/cli.js"
import { chatChunks, chatCompletion, json, sse } from "../support/mockUpstream.js"

const sqlite = backends.find((b) => b.name === "sqlite")!

interface Report {
  readonly url: string
  readonly requests: number
  readonly concurrency: number
  readonly stream: boolean
  readonly succeeded: number
  readonly failed: number
  readonly status_counts: Record<string, number>
  readonly errors: Record<string, number>
  readonly latency_ms: { min: number; mean: number; p50: number; p90: number; p99: number; max: number } | null
  readonly time_to_first_token_ms: { min: number; p50: number; p90: number; p99: number; max: number } | null
  readonly tokens: { prompt: number; completion: number }
  readonly requests_per_second: number
  readonly duration_seconds: number
}

/** How many of the mock's requests were open at the same time, at most. */
const maxOverlap = (requests: ReadonlyArray<{ receivedAt: number; closedAt?: number }>) => {
  const edges = requests.flatMap((r) => [[r.receivedAt, 1], [r.closedAt ?? Infinity, -1]] as const).sort((a, b) =>
    a[0] - b[0] || a[1] - b[1]
  )
  let open = 0
  let max = 0
  for (const [, d] of edges) max = Math.max(max, open += d)
  return max
}

describe("llm-proxy benchmark through a running serve", () => {
  let backend: BackendInstance
  let stack: Stack
  let pt: ProjectAndToken

  beforeAll(async () => {
    backend = await sqlite.create()
    stack = await startStack(backend)
    pt = await projectAndToken(stack.manage)
  }, 30_000)

  afterAll(async () => {
    await stack?.close()
    await backend?.cleanup()
  })

  it("20 JSON requests, 4 at a time → 20 successes, the usage they reported, and the gateway saw exactly those", async () => {
    stack.mock.reset()
    // Each answer 50 ms late, so requests overlap and the concurrency shows at the upstream.
    stack.mock.setDefault(json(chatCompletion("hi", { prompt_tokens: 9, completion_tokens: 3 }), { delayMs: 50 }))
    const run = await cli(
      "benchmark",
      "--url",
      stack.server.url,
      "--token",
      pt.token,
      "--requests",
      "20",
      "--concurrency",
      "4",
      "--json"
    )
    expect(run.ok, run.err).toBe(true)
    const r = JSON.parse(run.out) as Report
    expect(r).toMatchObject({
      url: `${stack.server.url}/v1/chat/completions`,
      requests: 20,
      concurrency: 4,
      stream: false,
      succeeded: 20,
      failed: 0,
      status_counts: { "200": 20 },
      errors: {},
      tokens: { prompt: 180, completion: 60 },
      time_to_first_token_ms: null
    })
    const l = r.latency_ms!
    // Every answer waited 50 ms at the upstream.
    expect(l.min).toBeGreaterThanOrEqual(50)
    expect([l.min <= l.p50, l.p50 <= l.p90, l.p90 <= l.p99, l.p99 <= l.max]).toEqual([true, true, true, true])
    expect(r.requests_per_second).toBeGreaterThan(0)
    // The upstream got the 20 requests, each the same small chat completion for the model asked, never more than 4
    // at once — and 4 at some point.
    expect(stack.mock.requests).toHaveLength(20)
    for (const m of stack.mock.requests) {
      expect(JSON.parse(m.body)).toMatchObject({ model: "gpt-4o-mini", messages: [{ role: "user" }] })
    }
    expect(maxOverlap(stack.mock.requests)).toBe(4)
    // Plain progress lines (stderr is not a terminal here), the last one at 20/20.
    expect(run.err.split("\n").filter((x) => x.startsWith("benchmark: ")).at(-1)).toMatch(/^benchmark: 20\/20 requests/)
    const metrics = parsePrometheus(await (await fetch(`${stack.server.url}/metrics`)).text())
    expect(value(metrics, "llm_proxy_requests_total", { route: "/v1/chat/completions", status_class: "2xx" }))
      .toBeGreaterThanOrEqual(20)
  })

  it("--stream: 10 streamed answers, time to first token measured, usage from the final chunk; a readable report", async () => {
    stack.mock.reset()
    stack.mock.setDefault(sse(chatChunks(["Hel", "lo", "!"]), { intervalMs: 10 }))
    const run = await cli(
      "benchmark",
      "--base-url",
      stack.server.url,
      "--token",
      pt.token,
      "-r",
      "10",
      "-c",
      "2",
      "--stream",
      "--model",
      "gpt-4.1"
    )
    expect(run.ok, run.err).toBe(true)
    expect(stack.mock.requests).toHaveLength(10)
    for (const m of stack.mock.requests) {
      expect(JSON.parse(m.body)).toMatchObject({
        model: "gpt-4.1",
        stream: true,
        stream_options: { include_usage: true }
      })
    }
    const lines = run.out.split("\n")
    expect(lines[0]).toBe(
      `10 requests to ${stack.server.url}/v1/chat/completions (model gpt-4.1, streamed), 2 at a time`
    )
    const field = (name: string) => lines.find((x) => x.startsWith(`${name}:`))?.slice(name.length + 1).trim()
    expect(field("succeeded")).toBe("10")
    expect(field("failed")).toBe("0")
    expect(field("statuses")).toBe("200 × 10")
    expect(field("errors")).toBe("none")
    expect(field("tokens")).toMatch(/^50 prompt, 30 completion \(/)
    expect(field("latency")).toMatch(/^p50 [\d.]+ ms {2}p90 [\d.]+ ms {2}p99 [\d.]+ ms/)
    // The first text arrives before the last chunk (2 more chunks, 10 ms apart, then the usage and [DONE]).
    const ttft = /^p50 ([\d.]+) ms {2}p90 ([\d.]+) ms {2}p99 ([\d.]+) ms {2}\(min [\d.]+, mean [\d.]+, max ([\d.]+)\)$/
      .exec(field("time to first token") ?? "")
    expect(ttft).not.toBeNull()
    const latency = /max ([\d.]+)\)$/.exec(field("latency")!)!
    expect(Number(ttft![4])).toBeLessThan(Number(latency[1]))
  })

  it("a revoked token: every request fails with 401, reported by status, and the command fails", async () => {
    stack.mock.reset()
    const revoked = await projectAndToken(stack.manage)
    expect((await stack.manage.delete(`/manage/tokens/${revoked.tokenId}`)).status).toBe(204)
    const run = await cli(
      "benchmark",
      "--url",
      stack.server.url,
      "--token",
      revoked.token,
      "--requests",
      "5",
      "--concurrency",
      "5",
      "--json"
    )
    expect(run.ok).toBe(false)
    const r = JSON.parse(run.out) as Report
    expect(r).toMatchObject({
      succeeded: 0,
      failed: 5,
      status_counts: { "401": 5 },
      errors: { "401": 5 },
      tokens: { prompt: 0, completion: 0 }
    })
    expect(run.err).toContain("llm-proxy: 5 of 5 requests failed (401 × 5)")
    expect(stack.mock.requests).toHaveLength(0)
    // The token never appears in what the command prints.
    expect(run.out + run.err).not.toContain(revoked.token)
  })

  it("failures of the upstream count under their status; a gateway that is not there under the network error", async () => {
    stack.mock.reset()
    stack.mock.enqueue(
      json({ error: { message: "overloaded" } }, { status: 503 }),
      json({ error: { message: "overloaded" } }, { status: 503 })
    )
    const mixed = JSON.parse(
      (await cli(
        "benchmark",
        "--url",
        stack.server.url,
        "--token",
        pt.token,
        "--requests",
        "6",
        "--concurrency",
        "1",
        "--json"
      )).out
    ) as Report
    expect(mixed).toMatchObject({
      succeeded: 4,
      failed: 2,
      status_counts: { "200": 4, "503": 2 },
      errors: { "503": 2 }
    })
    const gone = await cli(
      "benchmark",
      "--url",
      "http://127.0.0.1:1",
      "--token",
      pt.token,
      "--requests",
      "3",
      "--concurrency",
      "2",
      "--json"
    )
    expect(gone.ok).toBe(false)
    expect(JSON.parse(gone.out)).toMatchObject({
      succeeded: 0,
      failed: 3,
      status_counts: {},
      errors: { ECONNREFUSED: 3 },
      latency_ms: null
    })
  })

  it.each([
    [["--requests", "0"], "--requests must be a positive integer, got 0"],
    [["--concurrency", "-2"], "--concurrency must be a positive integer, got -2"],
    [["--url", "ftp://example.com"], "--url: expected an http:// or https:// URL without credentials"],
    [["--url", "http://user:pw@example.com"], "--url: expected an http:// or https:// URL without credentials"],
    [["--timeout", "soon"], "--timeout: expected a duration"]
  ])("%j → one line, nothing sent", async (args, message) => {
    stack.mock.reset()
    const run = await cli(
      "benchmark",
      ...(args.includes("--url") ? [] : ["--url", stack.server.url]),
      "--token",
      pt.token,
      ...args
    )
    expect(run.ok).toBe(false)
    expect(run.err).toContain(`llm-proxy: ${message}`)
    expect(run.err.split("\n").filter((x) => x.startsWith("llm-proxy:"))).toHaveLength(1)
    expect(stack.mock.requests).toHaveLength(0)
  })

  it("without a token (no --token, no LLM_PROXY_TOKEN): one line naming the variable, nothing sent", async () => {
    stack.mock.reset()
    const saved = process.env["LLM_PROXY_TOKEN"]
    delete process.env["LLM_PROXY_TOKEN"]
    try {
      const run = await cli("benchmark", "--url", stack.server.url, "--requests", "1")
      expect(run.ok).toBe(false)
      expect(run.err).toMatch(/LLM_PROXY_TOKEN|--token/)
      expect(stack.mock.requests).toHaveLength(0)
    } finally {
      if (saved !== undefined) process.env["LLM_PROXY_TOKEN"] = saved
    }
  })

  it("on a terminal, draws a progress bar on stderr that ends at N/N", async () => {
    stack.mock.reset()
    const written: Array<string> = []
    const stderr = process.stderr as { isTTY?: boolean | undefined; write: typeof process.stderr.write }
    const { isTTY, write } = stderr
    stderr.isTTY = true
    stderr.write = ((chunk: string) => written.push(String(chunk)) > 0) as typeof process.stderr.write
    try {
      const run = await cli(
        "benchmark",
        "--url",
        stack.server.url,
        "--token",
        pt.token,
        "--requests",
        "3",
        "--concurrency",
        "1"
      )
      expect(run.ok, run.err).toBe(true)
      // No plain progress lines then.
      expect(run.err).not.toContain("benchmark: ")
    } finally {
      stderr.isTTY = isTTY
      stderr.write = write
    }
    expect(written.at(-1)).toMatch(/^\r\[#{30}\] 3\/3 {2}[\d.]+ req\/s\n$/)
    expect(written.every((x) => x.startsWith("\r["))).toBe(true)
  })

  it("is listed in --help with its options", async () => {
    expect((await cli("--help")).out).toContain("benchmark")
    const run = await cli("benchmark", "--help")
    for (
      const flag of ["--url", "--token", "--requests", "--concurrency", "--stream", "--model", "--timeout", "--json"]
    ) expect(run.out, flag).toContain(flag)
  })
})

describe("benchmark arithmetic", () => {
  it("nearest-rank percentiles", () => {
    expect(distribution([])).toBeNull()
    expect(distribution([5])).toEqual({ min: 5, mean: 5, p50: 5, p90: 5, p99: 5, max: 5 })
    const hundred = Array.from({ length: 100 }, (_, i) => 100 - i)
    expect(distribution(hundred)).toEqual({ min: 1, mean: 50.5, p50: 50, p90: 90, p99: 99, max: 100 })
    expect(distribution([1, 2, 3, 1000])).toMatchObject({ p50: 2, p90: 1000, p99: 1000 })
  })

  it("draws the progress bar", () => {
    expect(progressBar(0, 100, 0, 10)).toBe("[..........]   0/100  0.0 req/s")
    expect(progressBar(45, 100, 2000, 10)).toBe("[####......]  45/100  22.5 req/s")
    expect(progressBar(100, 100, 4000, 10)).toBe("[##########] 100/100  25.0 req/s")
  })
})
