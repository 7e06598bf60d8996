/**
 * `llm-proxy benchmark`: a load test of a running gateway with a withering token. N small chat completions (the same
 * fixed body each time; SSE with `--stream`) go to `<url>/v1/chat/completions` over C keep-alive connections, C at a
 * time; the report gives throughput, latency percentiles, time to first token (streams) and the failures by status
 * (or by network error), as text or `--json`. A progress bar on a terminal, plain lines otherwise (stderr).
 *
 * Latency is the whole exchange as a client sees it (request sent → last byte of the answer); time to first token is
 * until the first SSE event that carries text. Both are measured here, on the client, with performance.now().
 */
import { Command, Options } from "@effect/cli"
import { Config, Effect, Redacted } from "effect"
import { Pool } from "undici"
import { parseDuration } from "../config/AppConfig.js"
import { parseSseLine } from "./chat.js"
import { CliFailure } from "./errors.js"
import { record, show } from "./output.js"

export interface BenchmarkOptions {
  /** Gateway base URL (the proxy's listener, not the provider). */
  readonly url: string
  readonly token: Redacted.Redacted<string>
  readonly requests: number
  readonly concurrency: number
  readonly stream: boolean
  readonly model: string
  /** Per request: connect, response headers and each gap in the body, ms. */
  readonly timeoutMs: number
}

export interface Distribution {
  readonly min: number
  readonly mean: number
  readonly p50: number
  readonly p90: number
  readonly p99: number
  readonly max: number
}

export interface BenchmarkReport {
  readonly url: string
  readonly model: string
  readonly stream: boolean
  readonly requests: number
  readonly concurrency: number
  readonly duration_seconds: number
  /** Requests finished (answered or failed) per second of wall time. */
  readonly requests_per_second: number
  /** 2xx answers read to the end. */
  readonly succeeded: number
  readonly failed: number
  /** Every answer's status, successes included. */
  readonly status_counts: Readonly<Record<string, number>>
  /** The failures: a non-2xx status, or the network error (`ECONNREFUSED`, `UND_ERR_HEADERS_TIMEOUT`, …). */
  readonly errors: Readonly<Record<string, number>>
  /** Request sent → last byte of the answer, ms, over every request that got an answer (any status). */
  readonly latency_ms: Distribution | null
  /** Streamed answers: request sent → first event with text, ms. */
  readonly time_to_first_token_ms: Distribution | null
  /** Usage the successful answers reported. */
  readonly tokens: { readonly prompt: number; readonly completion: number }
  /** Completion tokens per second of wall time, over all requests. */
  readonly output_tokens_per_second: number
}

/** Nearest-rank percentiles of `values` (any order); null for none. */
export const distribution = (values: ReadonlyArray<number>): Distribution | null => {
  if (values.length === 0) return null
  const sorted = [...values].sort((a, b) => a - b)
  const at = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!
  const round = (v: number) => Math.round(v * 100) / 100
  return {
    min: round(sorted[0]!),
    mean: round(sorted.reduce((a, b) => a + b, 0) / sorted.length),
    p50: round(at(50)),
    p90: round(at(90)),
    p99: round(at(99)),
    max: round(sorted[sorted.length - 1]!)
  }
}

/** `[#########...........]  45/100  12.3 req/s` for a terminal line. */
export const progressBar = (done: number, total: number, elapsedMs: number, width = 30): string => {
  const filled = total === 0 ? width : Math.min(width, Math.floor((done / total) * width))
  const rate = elapsedMs > 0 ? (done / elapsedMs) * 1000 : 0
  return `[${"#".repeat(filled)}${".".repeat(width - filled)}] ${
    String(done).padStart(String(total).length)
  }/${total}  ${rate.toFixed(1)} req/s`
}

interface Outcome {
  readonly status: number | undefined
  readonly error: string | undefined
  readonly latencyMs: number
  readonly firstTokenMs: number | undefined
  readonly promptTokens: number
  readonly completionTokens: number
}

const requestBody = (o: BenchmarkOptions): string =>
  JSON.stringify({
    model: o.model,
    messages: [{ role: "user", content: "Reply with one word: hello." }],
    ...(o.stream ? { stream: true, stream_options: { include_usage: true } } : {})
  })

/** One request: status, timings and usage, or the network error that ended it. */
const one = async (
  pool: Pool,
  path: string,
  headers: Record<string, string>,
  body: string,
  stream: boolean,
  signal: AbortSignal
): Promise<Outcome> => {
  const start = performance.now()
  let status: number | undefined
  let firstTokenMs: number | undefined
  let prompt = 0
  let completion = 0
  try {
    const r = await pool.request({ path, method: "POST", headers, body, signal })
    status = r.statusCode
    const ok = status >= 200 && status < 300
    const sse = String(r.headers["content-type"] ?? "").includes("text/event-stream")
    if (ok && stream && sse) {
      let rest = ""
      for await (const chunk of r.body) {
        rest += (chunk as Buffer).toString("utf8")
        const lines = rest.split("\n")
        rest = lines.pop() ?? ""
        for (const line of lines) {
          const parsed = parseSseLine(line.trim())
          if (parsed.delta !== undefined && firstTokenMs === undefined) firstTokenMs = performance.now() - start
          if (parsed.usage !== undefined) {
            prompt = parsed.usage.prompt_tokens ?? prompt
            completion = parsed.usage.completion_tokens ?? completion
          }
        }
      }
    } else {
      const text = await r.body.text()
      if (ok) {
        try {
          const usage = (JSON.parse(text) as { usage?: { prompt_tokens?: number; completion_tokens?: number } }).usage
          prompt = usage?.prompt_tokens ?? 0
          completion = usage?.completion_tokens ?? 0
        } catch {
          // Not JSON: no usage to count.
        }
      }
    }
    return {
      status,
      error: ok ? undefined : String(status),
      latencyMs: performance.now() - start,
      firstTokenMs,
      promptTokens: prompt,
      completionTokens: completion
    }
  } catch (e) {
    const err = e as { code?: string; name?: string }
    // A stream that broke off after a 2xx is a failure too, named by the network error.
    return {
      status,
      error: err.code ?? err.name ?? "error",
      latencyMs: performance.now() - start,
      firstTokenMs: undefined,
      promptTokens: 0,
      completionTokens: 0
    }
  }
}

/** Runs the load and reports on it; `progress` is told after each finished request. */
export const runBenchmark = (o: BenchmarkOptions, progress: (done: number, elapsedMs: number) => void) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const url = new URL(o.url)
      return {
        pool: new Pool(url.origin, {
          connections: o.concurrency,
          connectTimeout: o.timeoutMs,
          headersTimeout: o.timeoutMs,
          bodyTimeout: o.timeoutMs
        }),
        path: `${url.pathname.replace(/\/+$/, "")}/v1/chat/completions`
      }
    }),
    ({ path, pool }) =>
      Effect.tryPromise({
        try: async (signal) => {
          const headers = { authorization: `Bearer ${Redacted.value(o.token)}`, "content-type": "application/json" }
          const body = requestBody(o)
          const outcomes: Array<Outcome> = []
          let next = 0
          const started = performance.now()
          const worker = async () => {
            while (next < o.requests && !signal.aborted) {
              next++
              outcomes.push(await one(pool, path, headers, body, o.stream, signal))
              progress(outcomes.length, performance.now() - started)
            }
          }
          await Promise.all(Array.from({ length: Math.min(o.concurrency, o.requests) }, worker))
          return { outcomes, elapsedMs: performance.now() - started }
        },
        catch: (e) => new CliFailure({ message: `benchmark failed: ${(e as Error).message}` })
      }),
    ({ pool }) => Effect.promise(() => pool.destroy().catch(() => undefined))
  ).pipe(Effect.map(({ elapsedMs, outcomes }) => report(o, outcomes, elapsedMs)))

const count = (keys: ReadonlyArray<string>): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const k of [...keys].sort()) out[k] = (out[k] ?? 0) + 1
  return out
}

const report = (o: BenchmarkOptions, outcomes: ReadonlyArray<Outcome>, elapsedMs: number): BenchmarkReport => {
  const seconds = elapsedMs / 1000
  const ok = outcomes.filter((x) => x.error === undefined)
  const completion = ok.reduce((n, x) => n + x.completionTokens, 0)
  const url = new URL(o.url)
  return {
    url: `${url.origin}${url.pathname.replace(/\/+$/, "")}/v1/chat/completions`,
    model: o.model,
    stream: o.stream,
    requests: o.requests,
    concurrency: o.concurrency,
    duration_seconds: Math.round(seconds * 1000) / 1000,
    requests_per_second: seconds > 0 ? Math.round((outcomes.length / seconds) * 10) / 10 : 0,
    succeeded: ok.length,
    failed: outcomes.length - ok.length,
    status_counts: count(outcomes.flatMap((x) => (x.status === undefined ? [] : [String(x.status)]))),
    errors: count(outcomes.flatMap((x) => (x.error === undefined ? [] : [x.error]))),
    latency_ms: distribution(outcomes.flatMap((x) => (x.status === undefined ? [] : [x.latencyMs]))),
    time_to_first_token_ms: o.stream
      ? distribution(ok.flatMap((x) => (x.firstTokenMs === undefined ? [] : [x.firstTokenMs])))
      : null,
    tokens: { prompt: ok.reduce((n, x) => n + x.promptTokens, 0), completion },
    output_tokens_per_second: seconds > 0 ? Math.round((completion / seconds) * 10) / 10 : 0
  }
}

const ms = (d: Distribution | null) =>
  d === null ? "-" : `p50 ${d.p50} ms  p90 ${d.p90} ms  p99 ${d.p99} ms  (min ${d.min}, mean ${d.mean}, max ${d.max})`
const counts = (c: Readonly<Record<string, number>>) => {
  const entries = Object.entries(c)
  return entries.length === 0 ? "none" : entries.map(([k, n]) => `${k} × ${n}`).join(", ")
}

/** The report as a person reads it. */
export const formatReport = (r: BenchmarkReport): string =>
  [
    `${r.requests} requests to ${r.url} (model ${r.model}${r.stream ? ", streamed" : ""}), ${r.concurrency} at a time`,
    record([
      ["duration", `${r.duration_seconds} s`],
      ["throughput", `${r.requests_per_second} requests/s`],
      ["succeeded", String(r.succeeded)],
      ["failed", String(r.failed)],
      ["latency", ms(r.latency_ms)],
      ...(r.stream ? [["time to first token", ms(r.time_to_first_token_ms)] as const] : []),
      [
        "tokens",
        `${r.tokens.prompt} prompt, ${r.tokens.completion} completion (${r.output_tokens_per_second} completion tokens/s)`
      ],
      ["statuses", counts(r.status_counts)],
      ["errors", counts(r.errors)]
    ])
  ].join("\n")

const positive = (name: string, n: number) =>
  Number.isInteger(n) && n >= 1
    ? Effect.succeed(n)
    : Effect.fail(new CliFailure({ message: `--${name} must be a positive integer, got ${n}` }))

export const benchmark = Command.make(
  "benchmark",
  {
    url: Options.text("url").pipe(
      Options.withAlias("base-url"),
      Options.withDescription(
        "Gateway base URL (env LLM_PROXY_URL, default http://localhost:8080); requests go to <url>/v1/chat/completions"
      ),
      Options.withFallbackConfig(Config.string("LLM_PROXY_URL").pipe(Config.withDefault("http://localhost:8080")))
    ),
    token: Options.redacted("token").pipe(
      Options.withDescription("Withering token (sk-…) to call the gateway with (env LLM_PROXY_TOKEN)"),
      Options.withFallbackConfig(Config.redacted("LLM_PROXY_TOKEN"))
    ),
    requests: Options.integer("requests").pipe(
      Options.withAlias("r"),
      Options.withDescription("How many requests to send (default 100)"),
      Options.withDefault(100)
    ),
    concurrency: Options.integer("concurrency").pipe(
      Options.withAlias("c"),
      Options.withDescription("How many at a time, each on a keep-alive connection of its own (default 10)"),
      Options.withDefault(10)
    ),
    stream: Options.boolean("stream").pipe(
      Options.withDescription("Ask for streamed answers (SSE) and measure the time to first token")
    ),
    model: Options.text("model").pipe(
      Options.withDescription("Model named in the request body (default gpt-4o-mini)"),
      Options.withDefault("gpt-4o-mini")
    ),
    timeout: Options.text("timeout").pipe(
      Options.withDescription("Per request: connecting, the answer's headers, each pause in its body (default 60s)"),
      Options.withDefault("60s")
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print the report as JSON"))
  },
  (o) =>
    Effect.gen(function*() {
      const requests = yield* positive("requests", o.requests)
      const concurrency = yield* positive("concurrency", o.concurrency)
      const timeoutMs = parseDuration(o.timeout)
      if (timeoutMs === undefined || timeoutMs < 1) {
        return yield* Effect.fail(
          new CliFailure({ message: `--timeout: expected a duration such as 30s or 500ms, got "${o.timeout}"` })
        )
      }
      const url = yield* Effect.try({
        try: () => {
          const u = new URL(o.url)
          if (u.protocol !== "http:" && u.protocol !== "https:") throw new Error()
          if (u.username !== "" || u.password !== "") throw new Error()
          return u.href
        },
        catch: () =>
          new CliFailure({ message: `--url: expected an http:// or https:// URL without credentials, got "${o.url}"` })
      })
      const options: BenchmarkOptions = {
        url,
        token: o.token,
        requests,
        concurrency,
        stream: o.stream,
        model: o.model,
        timeoutMs
      }
      // Progress on stderr: a bar redrawn in place on a terminal, a line per tenth otherwise.
      const console = yield* Effect.console
      const tty = process.stderr.isTTY === true
      let lastDraw = 0
      let lastTenth = 0
      const progress = (done: number, elapsedMs: number) => {
        if (tty) {
          if (done === requests || elapsedMs - lastDraw >= 100) {
            lastDraw = elapsedMs
            process.stderr.write(`\r${progressBar(done, requests, elapsedMs)}${done === requests ? "\n" : ""}`)
          }
          return
        }
        const tenth = Math.floor((done * 10) / requests)
        if (tenth > lastTenth) {
          lastTenth = tenth
          console.unsafe.error(
            `benchmark: ${done}/${requests} requests (${((done / Math.max(1, elapsedMs)) * 1000).toFixed(1)} req/s)`
          )
        }
      }
      const result = yield* runBenchmark(options, progress)
      yield* show(o.json ? result : formatReport(result))
      if (result.failed > 0) {
        return yield* Effect.fail(
          new CliFailure({
            message: `${result.failed} of ${result.requests} requests failed (${counts(result.errors)})`
          })
        )
      }
    })
).pipe(
  Command.withDescription(
    "Load-test a running gateway with a withering token: throughput, latency p50/p90/p99, time to first token, errors by status"
  )
)
