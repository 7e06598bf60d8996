/**
 * Micro-benchmark: CPU per streamed answer of what the proxy does to every SSE chunk on its way to the client
 * (`UsageCapture.pass`: the usage reader, the capture of the first bytes, the removal of the usage-only event the
 * proxy asked for), without the network. The stream is proxy.bench.ts's: 20 content events and the usage event, in
 * three shapes: one event per chunk (how they reach `serve` from a local upstream, and from real providers), the
 * first event and then the rest in one chunk, and OpenAI's own chunk shape (`finish_reason: null` and
 * `usage: null` in every event) one per chunk.
 *
 * Pinned to one core (taskset, when it exists: V8's helper threads would otherwise add their CPU from the other
 * core); each shape in ROUNDS (5) rounds, interleaved, and the median reported. CPU from process.cpuUsage(), less
 * that of making the chunk Buffers.
 *
 * Run with `npm run bench -- usage-reader`. Not part of `npm test`. Optional environment: BENCH_STREAMS (50000 per
 * round).
 */
import { UsageCapture } from "../../src/proxy/usage.js"
import { pinSelfToCore0 } from "./harness.js"

const STREAMS = Number(process.env["BENCH_STREAMS"] ?? 50_000)
const ROUNDS = 5

const benchEvent = (i: number) =>
  `data: ${
    JSON.stringify({
      id: "chatcmpl-bench",
      object: "chat.completion.chunk",
      model: "gpt-4o-mini",
      choices: [{ index: 0, delta: { content: `tok${i} ` } }]
    })
  }\n\n`
const openAiEvent = (i: number) =>
  `data: ${
    JSON.stringify({
      id: "chatcmpl-AbCdEf123",
      object: "chat.completion.chunk",
      created: 1733000000,
      model: "gpt-4o-mini-2024-07-18",
      service_tier: "default",
      system_fingerprint: "fp_0aa8d3e20b",
      choices: [{ index: 0, delta: { content: ` tok${i}` }, logprobs: null, finish_reason: i === 19 ? "stop" : null }],
      usage: null
    })
  }\n\n`
const usageEvent = `data: ${
  JSON.stringify({
    id: "chatcmpl-bench",
    object: "chat.completion.chunk",
    model: "gpt-4o-mini",
    choices: [],
    usage: { prompt_tokens: 12, completion_tokens: 20, total_tokens: 32 }
  })
}\n\ndata: [DONE]\n\n`

const events = (event: (i: number) => string) => [
  ...Array.from({ length: 20 }, (_, i) => Buffer.from(event(i))),
  Buffer.from(usageEvent)
]
const shapes: Record<string, ReadonlyArray<Buffer>> = {
  "one event per chunk": events(benchEvent),
  "first event, then the rest in one chunk": [events(benchEvent)[0]!, Buffer.concat(events(benchEvent).slice(1))],
  "OpenAI's chunk shape, one event per chunk": events(openAiEvent)
}

const cpuUs = () => {
  const u = process.cpuUsage()
  return u.user + u.system
}

/** CPU µs per stream of one round of `chunks`. */
const round = (name: string, chunks: ReadonlyArray<Buffer>): number => {
  // Each answer gets its own chunk Buffers, as it would from the socket.
  const fresh = () => chunks.map((c) => Buffer.from(c))
  const once = () => {
    const capture = new UsageCapture("sse", 262_144, true, true)
    for (const chunk of fresh()) capture.pass(chunk)
    capture.end()
    if (capture.usage?.total_tokens !== 32) throw new Error(`${name}: usage not read`)
  }
  const copies = cpuUs()
  for (let i = 0; i < STREAMS; i++) fresh()
  const copyUs = (cpuUs() - copies) / STREAMS
  const start = cpuUs()
  for (let i = 0; i < STREAMS; i++) once()
  return (cpuUs() - start) / STREAMS - copyUs
}

console.log(pinSelfToCore0() ? "pinned to core 0" : "not pinned (no taskset): helper threads add their CPU")
const results = new Map<string, Array<number>>(Object.keys(shapes).map((name) => [name, []]))
for (let r = 0; r <= ROUNDS; r++) {
  for (const [name, chunks] of Object.entries(shapes)) {
    const us = round(name, chunks)
    // Round 0 warms up.
    if (r > 0) results.get(name)!.push(us)
  }
}
for (const [name, chunks] of Object.entries(shapes)) {
  const sorted = [...results.get(name)!].sort((a, b) => a - b)
  const median = sorted[Math.floor(sorted.length / 2)]!
  console.log(
    `${name.padEnd(42)} ${median.toFixed(2)} µs per stream, median of ${ROUNDS} (${chunks.length} chunks; ` +
      `rounds ${sorted.map((u) => u.toFixed(1)).join(", ")})`
  )
}
