/**
 * The built-in price table: USD per million tokens for the current OpenAI and Anthropic models (text tokens,
 * standard processing).
 *
 * Taken on 2026-12-02. The machine this was written on had no web access, so the figures were read from stored
 * copies of the providers' pages and of public price lists, each cross-checked against at least one other:
 *   - Anthropic: the pricing page (https://platform.claude.com/docs/en/about-claude/pricing, "Model pricing") and the
 *     model overview pages; Opus 5.5, Sonnet 5.5 (cache reads cut to $0.10 on 2026-10-07), Haiku 5.5 and Fable /
 *     Mythos 5.2 as quoted from those pages by price trackers that checked them between 2026-09-22 and 2026-12-01.
 *     `cache_write` is the 5-minute cache write (1.25 × input), `cache_write_1h` the 1-hour one (2 × input).
 *   - OpenAI: the pricing page (https://developers.openai.com/api/docs/pricing) and the model pages
 *     (https://developers.openai.com/api/docs/models/…), as quoted with their dates (GPT-6 Astra 2026-09-03, GPT-6
 *     Sol / Luna 2026-09-22, GPT-6.1 Sol / Terra 2026-09-30 / 2026-10-26, GPT-6.2 2026-11-17, GPT-5.6 price cuts
 *     2026-07-30); cache writes cost 1.25 × input from the GPT-5.6 family on (the prompt caching guide), earlier
 *     models do not charge them. Older models from LiteLLM's `model_prices_and_context_window.json`
 *     (github.com/BerriAI/litellm), which matches the pricing page for every model both list.
 * Not modelled (the standard rate applies): long-context tiers (OpenAI above 272K input tokens, Haiku 5.5 above a
 * 100K-token prompt), Batch / Flex / priority processing, regional or data-residency uplifts, audio and image tokens.
 *
 * Prices change: PRICES_PATH adds or overrides entries without a new release (docs/spend.md, "Keeping prices
 * current"); `llm-proxy prices` prints what applies.
 */
import type { PriceEntry } from "./prices.js"

const p = (
  input: number,
  cachedInput: number | undefined,
  output: number,
  cacheWrite?: number,
  cacheWrite1h?: number
): PriceEntry => ({
  input,
  cachedInput: cachedInput ?? input,
  output,
  cacheWrite: cacheWrite ?? input,
  cacheWrite1h: cacheWrite1h ?? cacheWrite ?? input
})

/** Anthropic: cache reads as given, writes 1.25 × (5 minutes) and 2 × (1 hour) the input price. */
const claude = (input: number, cacheRead: number, output: number) =>
  p(input, cacheRead, output, input * 1.25, input * 2)

/** OpenAI from the GPT-5.6 family on: cache writes cost 1.25 × the input price. */
const gpt = (input: number, cached: number | undefined, output: number) => p(input, cached, output, input * 1.25)

export const BUILT_IN_PRICES_DATE = "2026-12-02"

export const BUILT_IN_PRICES: ReadonlyArray<readonly [string, PriceEntry]> = [
  // -- OpenAI: GPT-6 -------------------------------------------------------------------------------------------
  ["gpt-6.2-astra", gpt(8, 0.4, 40)],
  // The GPT-6.2 announcement names input and output only; cached input as GPT-6.1 Sol.
  ["gpt-6.2-sol", gpt(2, 0.1, 10)],
  ["gpt-6.1-sol", gpt(2, 0.1, 10)],
  ["gpt-6.1-terra", gpt(1, 0.05, 5)],
  ["gpt-6-astra", gpt(10, 1, 50)],
  ["gpt-6-sol", gpt(2, 0.2, 10)],
  ["gpt-6-luna", gpt(0.1, 0.01, 0.5)],
  // -- OpenAI: GPT-5 -------------------------------------------------------------------------------------------
  ["gpt-5.6-sol", gpt(5, 0.5, 30)],
  ["gpt-5.6", gpt(5, 0.5, 30)],
  ["gpt-5.6-terra", gpt(2, 0.2, 12)],
  ["gpt-5.6-luna", gpt(0.2, 0.02, 1.2)],
  ["gpt-5.5", p(5, 0.5, 30)],
  ["gpt-5.5-pro", p(30, undefined, 180)],
  ["gpt-5.4", p(2.5, 0.25, 15)],
  ["gpt-5.4-mini", p(0.75, 0.075, 4.5)],
  ["gpt-5.4-nano", p(0.2, 0.02, 1.25)],
  ["gpt-5.4-pro", p(30, undefined, 180)],
  ["gpt-5.3-codex", p(1.75, 0.175, 14)],
  ["gpt-5.3-chat-latest", p(1.75, 0.175, 14)],
  ["gpt-5.2", p(1.75, 0.175, 14)],
  ["gpt-5.2-chat-latest", p(1.75, 0.175, 14)],
  ["gpt-5.2-codex", p(1.75, 0.175, 14)],
  ["gpt-5.2-pro", p(21, undefined, 168)],
  ["gpt-5.1", p(1.25, 0.125, 10)],
  ["gpt-5.1-chat-latest", p(1.25, 0.125, 10)],
  ["gpt-5.1-codex", p(1.25, 0.125, 10)],
  ["gpt-5.1-codex-max", p(1.25, 0.125, 10)],
  ["gpt-5.1-codex-mini", p(0.25, 0.025, 2)],
  ["gpt-5", p(1.25, 0.125, 10)],
  ["gpt-5-chat-latest", p(1.25, 0.125, 10)],
  ["gpt-5-codex", p(1.25, 0.125, 10)],
  ["gpt-5-mini", p(0.25, 0.025, 2)],
  ["gpt-5-nano", p(0.05, 0.005, 0.4)],
  ["gpt-5-pro", p(15, undefined, 120)],
  // -- OpenAI: GPT-4.1, GPT-4o, o-series, older --------------------------------------------------------------
  ["gpt-4.1", p(2, 0.5, 8)],
  ["gpt-4.1-mini", p(0.4, 0.1, 1.6)],
  ["gpt-4.1-nano", p(0.1, 0.025, 0.4)],
  ["gpt-4o", p(2.5, 1.25, 10)],
  ["gpt-4o-2024-05-13", p(5, undefined, 15)],
  ["gpt-4o-mini", p(0.15, 0.075, 0.6)],
  ["o1", p(15, 7.5, 60)],
  ["o1-pro", p(150, undefined, 600)],
  ["o3", p(2, 0.5, 8)],
  ["o3-pro", p(20, undefined, 80)],
  ["o3-mini", p(1.1, 0.55, 4.4)],
  ["o3-deep-research", p(10, 2.5, 40)],
  ["o4-mini", p(1.1, 0.275, 4.4)],
  ["o4-mini-deep-research", p(2, 0.5, 8)],
  ["gpt-4-turbo", p(10, undefined, 30)],
  ["gpt-4", p(30, undefined, 60)],
  ["gpt-3.5-turbo", p(0.5, undefined, 1.5)],
  // -- OpenAI: embeddings (input only) --------------------------------------------------------------------------
  ["text-embedding-3-small", p(0.02, undefined, 0)],
  ["text-embedding-3-large", p(0.13, undefined, 0)],
  ["text-embedding-ada-002", p(0.1, undefined, 0)],
  // -- Anthropic ------------------------------------------------------------------------------------------------
  ["claude-fable-5-2", claude(8, 0.2, 40)],
  ["claude-mythos-5-2", claude(8, 0.2, 40)],
  ["claude-fable-5-1", claude(10, 0.25, 50)],
  ["claude-mythos-5-1", claude(10, 0.25, 50)],
  ["claude-fable-5", claude(10, 1, 50)],
  ["claude-mythos-5", claude(10, 1, 50)],
  ["claude-opus-5-5", claude(4, 0.2, 20)],
  ["claude-opus-5", claude(5, 0.5, 25)],
  ["claude-opus-4-8", claude(5, 0.5, 25)],
  ["claude-opus-4-7", claude(5, 0.5, 25)],
  ["claude-opus-4-6", claude(5, 0.5, 25)],
  ["claude-opus-4-5", claude(5, 0.5, 25)],
  ["claude-opus-4-1", claude(15, 1.5, 75)],
  ["claude-opus-4-0", claude(15, 1.5, 75)],
  ["claude-opus-4", claude(15, 1.5, 75)],
  ["claude-sonnet-5-5", claude(2, 0.1, 10)],
  ["claude-sonnet-5", claude(2, 0.2, 10)],
  ["claude-sonnet-4-6", claude(3, 0.3, 15)],
  ["claude-sonnet-4-5", claude(3, 0.3, 15)],
  ["claude-sonnet-4-0", claude(3, 0.3, 15)],
  ["claude-sonnet-4", claude(3, 0.3, 15)],
  ["claude-3-7-sonnet", claude(3, 0.3, 15)],
  ["claude-haiku-5-5", claude(0.1, 0.01, 0.5)],
  ["claude-haiku-4-5", claude(1, 0.1, 5)],
  ["claude-3-5-haiku", p(0.8, 0.08, 4, 1, 1.6)],
  ["claude-3-haiku", p(0.25, 0.03, 1.25, 0.3, 0.5)]
]
