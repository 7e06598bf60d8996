/**
 * The cost of one answer from its usage and the model's price (pure).
 *
 * The providers count input tokens two ways:
 *   - OpenAI (chat completions, completions, embeddings, the Responses API): `prompt_tokens` / `input_tokens`
 *     include the cached ones (`*_tokens_details.cached_tokens`) and, from GPT-5.6 on, the ones written to the
 *     cache (`cache_write_tokens`);
 *   - Anthropic: `input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens` (of which
 *     `cache_creation.ephemeral_1h_input_tokens` were 1-hour writes).
 * `UsageDetail` says which (`cacheApart`), so each token is priced once at its own rate.
 */
import type { PriceEntry } from "./prices.js"

export interface UsageDetail {
  /** Input tokens as reported (`prompt_tokens` / `input_tokens`). */
  readonly prompt: number
  readonly completion: number
  /** Input tokens read from the prompt cache. */
  readonly cacheRead: number
  /** Input tokens written to the prompt cache (all lifetimes). */
  readonly cacheWrite: number
  /** Of `cacheWrite`, those written for one hour (Anthropic). */
  readonly cacheWrite1h: number
  /** True when `prompt` excludes the cache reads and writes (Anthropic). */
  readonly cacheApart: boolean
}

const PER_TOKEN = 1 / 1_000_000

/** USD for one answer. */
export const costOf = (price: PriceEntry, u: UsageDetail): number => {
  const write1h = Math.min(u.cacheWrite1h, u.cacheWrite)
  const write5m = u.cacheWrite - write1h
  // Input tokens billed at the plain input rate: OpenAI's count includes the cached and written ones.
  const plain = u.cacheApart ? u.prompt : Math.max(0, u.prompt - u.cacheRead - u.cacheWrite)
  return (
    plain * price.input +
    u.cacheRead * price.cachedInput +
    write5m * price.cacheWrite +
    write1h * price.cacheWrite1h +
    u.completion * price.output
  ) * PER_TOKEN
}

/** Every input token (cached or not) plus the output: what `max_tokens` budgets and token-per-minute limits count. */
export const tokensOf = (u: UsageDetail): number =>
  (u.cacheApart ? u.prompt + u.cacheRead + u.cacheWrite : u.prompt) + u.completion
