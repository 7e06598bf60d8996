/**
 * Prices and the cost of an answer: the lookup rules (exact, longest glob, dated names), PRICES_PATH, and the cost
 * of each usage shape the providers send, against figures computed by hand (USD per million tokens × tokens / 1e6).
 */
import { Effect, Either } from "effect"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { UsageReader } from "../../src/proxy/usage.js"
import { BUILT_IN_PRICES, BUILT_IN_PRICES_DATE } from "../../src/spend/builtinPrices.js"
import { costOf, tokensOf } from "../../src/spend/cost.js"
import { baseName, loadPrices, makePrices, parsePricesYaml } from "../../src/spend/prices.js"

const overrides = (yaml: string) => Either.getOrThrow(parsePricesYaml(yaml))

/** Reads an answer the way the proxy does (JSON body or SSE events) and prices it with `model`'s price. */
const costFromAnswer = (model: string, mode: "json" | "sse", body: string, yaml = "models: {}") => {
  const prices = makePrices(overrides(yaml))
  const reader = new UsageReader(mode, 0)
  reader.observe(Buffer.from(body))
  reader.finish()
  const detail = reader.detail
  if (detail === undefined) throw new Error("no usage read")
  return { cost: costOf(prices.lookup(model)!.price, detail), tokens: tokensOf(detail) }
}

const sseOf = (events: ReadonlyArray<unknown>) =>
  events.map((e) => `data: ${JSON.stringify(e)}\n\n`).join("") + "data: [DONE]\n\n"

describe("prices: lookup", () => {
  const prices = makePrices(overrides(`
models:
  gpt-4o: { input: 2.50, cached_input: 1.25, output: 10.00 }
  "my-finetune-*": { input: 3, output: 12 }
  "my-finetune-large-*": { input: 6, output: 24 }
  "acme-?": { input: 1, output: 2 }
`))

  it("an exact name wins over every pattern", () => {
    const r = prices.lookup("gpt-4o")!
    expect([r.key, r.rule, r.source, r.price.input, r.price.cachedInput, r.price.output]).toEqual([
      "gpt-4o",
      "exact",
      "PRICES_PATH",
      2.5,
      1.25,
      10
    ])
  })

  it("the longest matching glob wins", () => {
    expect(prices.lookup("my-finetune-large-v2")!.key).toBe("my-finetune-large-*")
    expect(prices.lookup("my-finetune-small")!.key).toBe("my-finetune-*")
    expect(prices.lookup("acme-7")!.key).toBe("acme-?")
    expect(prices.lookup("acme-77")).toBeUndefined()
  })

  it("a dated name falls back to its base name", () => {
    expect(baseName("gpt-4o-2024-08-06")).toBe("gpt-4o")
    expect(baseName("claude-opus-4-5-20251101")).toBe("claude-opus-4-5")
    expect(baseName("gpt-4-0613")).toBe("gpt-4")
    expect(baseName("gpt-4o")).toBeUndefined()
    const r = prices.lookup("gpt-4o-2024-08-06")!
    expect([r.key, r.rule]).toEqual(["gpt-4o", "dated-exact"])
    expect(prices.lookup("my-finetune-x-20250101")!.rule).toBe("glob")
  })

  it("names are compared in lower case; an unknown model has no price", () => {
    expect(prices.lookup("GPT-4o")!.key).toBe("gpt-4o")
    expect(prices.lookup("no-such-model")).toBeUndefined()
  })

  it("the built-in table is dated and has the current OpenAI and Anthropic families", () => {
    expect(BUILT_IN_PRICES_DATE).toMatch(/^\d{4}-\d{2}-\d{2}$/)
    const keys = BUILT_IN_PRICES.map(([k]) => k)
    expect(keys.some((k) => k.startsWith("gpt-"))).toBe(true)
    expect(keys.some((k) => k.startsWith("claude-"))).toBe(true)
    expect(keys.some((k) => k.startsWith("text-embedding-"))).toBe(true)
    for (const [, p] of BUILT_IN_PRICES) expect(p.input).toBeGreaterThan(0)
    // PRICES_PATH overrides a built-in entry
    const built = makePrices([]).lookup("gpt-4o")!
    expect(built.source).toBe("built-in")
    expect(prices.lookup("gpt-4o")!.source).toBe("PRICES_PATH")
  })
})

describe("prices: PRICES_PATH", () => {
  it("a missing field defaults: cached input and cache writes to the input price, output to 0", () => {
    const [key, p] = overrides("models:\n  embed-x: { input: 0.5 }")[0]!
    expect(key).toBe("embed-x")
    expect(p).toEqual({ input: 0.5, cachedInput: 0.5, output: 0, cacheWrite: 0.5, cacheWrite1h: 0.5 })
  })

  it.each([
    ["not YAML", "models: [", /not valid YAML/],
    ["a negative price", "models:\n  m: { input: -1, output: 1 }", /models\.m\.input/],
    ["an unknown field", "models:\n  m: { input: 1, outptu: 1 }", /outptu/],
    ["no input price", "models:\n  m: { output: 1 }", /models\.m\.input/],
    ["a name with a space", "models:\n  \"a b\": { input: 1 }", /models\.a b/],
    ["no models key", "prices: {}", /models|prices/]
  ])("refuses %s with one line naming the entry", (_what, yaml, message) => {
    const r = parsePricesYaml(yaml)
    expect(Either.isLeft(r)).toBe(true)
    expect(Either.isLeft(r) ? r.left : "").toMatch(message)
  })

  it("loadPrices reads the file; a missing file is an error naming it", async () => {
    const dir = mkdtempSync(join(tmpdir(), "prices-"))
    const path = join(dir, "prices.yaml")
    writeFileSync(path, "models:\n  house-model: { input: 1, output: 4 }\n")
    const p = await Effect.runPromise(loadPrices(path))
    expect(p.lookup("house-model")!.price.output).toBe(4)
    expect(p.path).toBe(path)
    const missing = await Effect.runPromise(Effect.flip(loadPrices(join(dir, "none.yaml"))))
    expect(missing.message).toBe(`PRICES_PATH: cannot read ${join(dir, "none.yaml")}: ENOENT`)
  })
})

describe("cost of each usage shape (hand-computed)", () => {
  // A price with distinct rates for every kind of token, so a token priced at the wrong rate shows.
  const yaml = `models:
  test-model: { input: 2, cached_input: 0.5, output: 8, cache_write: 2.5, cache_write_1h: 4 }`

  it.each([
    {
      shape: "chat completion, JSON",
      mode: "json" as const,
      body: JSON.stringify({
        id: "c",
        model: "test-model",
        choices: [],
        usage: { prompt_tokens: 1000, completion_tokens: 500, total_tokens: 1500 }
      }),
      // 1000 × 2 + 500 × 8 = 6000 → $0.006
      cost: 0.006,
      tokens: 1500
    },
    {
      shape: "chat completion, JSON, with cached prompt tokens",
      mode: "json" as const,
      body: JSON.stringify({
        usage: { prompt_tokens: 1000, completion_tokens: 100, prompt_tokens_details: { cached_tokens: 600 } }
      }),
      // 400 × 2 + 600 × 0.5 + 100 × 8 = 800 + 300 + 800 = 1900 → $0.0019
      cost: 0.0019,
      tokens: 1100
    },
    {
      shape: "chat completion, SSE with the usage chunk",
      mode: "sse" as const,
      body: sseOf([
        {
          id: "c",
          model: "test-model",
          choices: [{ index: 0, delta: { content: "Hi" }, finish_reason: null }],
          usage: null
        },
        { id: "c", model: "test-model", choices: [{ index: 0, delta: {}, finish_reason: "stop" }], usage: null },
        {
          id: "c",
          model: "test-model",
          choices: [],
          usage: {
            prompt_tokens: 20,
            completion_tokens: 2,
            total_tokens: 22,
            prompt_tokens_details: { cached_tokens: 0 }
          }
        }
      ]),
      // 20 × 2 + 2 × 8 = 56 → $0.000056
      cost: 0.000056,
      tokens: 22
    },
    {
      shape: "Responses API, JSON",
      mode: "json" as const,
      body: JSON.stringify({
        object: "response",
        usage: { input_tokens: 300, input_tokens_details: { cached_tokens: 100 }, output_tokens: 50, total_tokens: 350 }
      }),
      // 200 × 2 + 100 × 0.5 + 50 × 8 = 400 + 50 + 400 = 850 → $0.00085
      cost: 0.00085,
      tokens: 350
    },
    {
      shape: "Responses API, SSE (response.completed)",
      mode: "sse" as const,
      body: sseOf([
        { type: "response.created", response: { id: "r", model: "test-model", usage: null } },
        { type: "response.output_text.delta", delta: "Hello" },
        {
          type: "response.completed",
          response: { id: "r", model: "test-model", usage: { input_tokens: 10, output_tokens: 5, total_tokens: 15 } }
        }
      ]),
      // 10 × 2 + 5 × 8 = 60 → $0.00006
      cost: 0.00006,
      tokens: 15
    },
    {
      shape: "embeddings",
      mode: "json" as const,
      body: JSON.stringify({ object: "list", data: [], usage: { prompt_tokens: 8000, total_tokens: 8000 } }),
      // 8000 × 2 = 16000 → $0.016
      cost: 0.016,
      tokens: 8000
    },
    {
      shape: "Anthropic message, JSON with cache read and 5-minute and 1-hour cache writes",
      mode: "json" as const,
      body: JSON.stringify({
        type: "message",
        usage: {
          input_tokens: 100,
          cache_read_input_tokens: 2000,
          cache_creation_input_tokens: 1000,
          cache_creation: { ephemeral_5m_input_tokens: 600, ephemeral_1h_input_tokens: 400 },
          output_tokens: 300
        }
      }),
      // 100 × 2 + 2000 × 0.5 + 600 × 2.5 + 400 × 4 + 300 × 8 = 200 + 1000 + 1500 + 1600 + 2400 = 6700 → $0.0067
      cost: 0.0067,
      tokens: 3400
    },
    {
      shape: "Anthropic message, SSE (message_start then message_delta)",
      mode: "sse" as const,
      body: [
        `event: message_start\ndata: ${
          JSON.stringify({
            type: "message_start",
            message: {
              id: "m",
              model: "test-model",
              usage: {
                input_tokens: 50,
                cache_read_input_tokens: 1000,
                cache_creation_input_tokens: 0,
                output_tokens: 1
              }
            }
          })
        }\n\n`,
        `event: content_block_delta\ndata: ${
          JSON.stringify({ type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hi" } })
        }\n\n`,
        `event: message_delta\ndata: ${
          JSON.stringify({ type: "message_delta", delta: { stop_reason: "end_turn" }, usage: { output_tokens: 200 } })
        }\n\n`
      ].join(""),
      // 50 × 2 + 1000 × 0.5 + 200 × 8 = 100 + 500 + 1600 = 2200 → $0.0022
      cost: 0.0022,
      tokens: 1250
    }
  ])("$shape", ({ mode, body, cost, tokens }) => {
    const r = costFromAnswer("test-model", mode, body, yaml)
    expect(r.cost).toBeCloseTo(cost, 12)
    expect(r.tokens).toBe(tokens)
  })

  it("built-in prices: gpt-4o and claude-sonnet-4-5 as published", () => {
    const prices = makePrices([])
    const detail = {
      prompt: 1_000_000,
      completion: 1_000_000,
      cacheRead: 0,
      cacheWrite: 0,
      cacheWrite1h: 0,
      cacheApart: false
    }
    // gpt-4o: $2.50 input + $10 output per million
    expect(costOf(prices.lookup("gpt-4o-2024-08-06")!.price, detail)).toBeCloseTo(12.5, 9)
    // claude-sonnet-4-5: $3 input + $15 output; cache reads $0.30
    expect(
      costOf(prices.lookup("claude-sonnet-4-5-20250929")!.price, { ...detail, cacheRead: 1_000_000, cacheApart: true })
    ).toBeCloseTo(18.3, 9)
  })
})
