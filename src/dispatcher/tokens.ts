/**
 * Token counting when a response carries no `usage`: gpt-tokenizer (ranks ship inside the npm package, nothing is
 * downloaded at run time). o200k_base for the GPT-4o / 4.1 / 5 and o-series families, cl100k_base otherwise.
 * The encodings are large, so they are loaded on first use (the bundle keeps the package external).
 */
export type EncodingName = "o200k_base" | "cl100k_base"

export const encodingForModel = (model: string | null | undefined): EncodingName => {
  const m = (model ?? "").toLowerCase().replace(/^.*\//, "")
  return /^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|chatgpt-4o|o[1-9]|omni|gpt-oss|gpt-image|gpt-realtime|gpt-audio|codex)/.test(m)
    ? "o200k_base"
    : "cl100k_base"
}

export type CountTokens = (encoding: EncodingName, text: string) => number

/** Loads both encodings and returns a synchronous counter. */
export const loadTokenCounter = async (): Promise<CountTokens> => {
  const [o200k, cl100k] = await Promise.all([
    import("gpt-tokenizer/encoding/o200k_base"),
    import("gpt-tokenizer/encoding/cl100k_base")
  ])
  return (encoding, text) =>
    text === "" ? 0 : (encoding === "o200k_base" ? o200k.countTokens(text) : cl100k.countTokens(text))
}

import { Context, Effect, Layer } from "effect"

export class TokenCounter extends Context.Tag("llm-proxy/dispatcher/TokenCounter")<TokenCounter, CountTokens>() {
  /** gpt-tokenizer's o200k_base and cl100k_base, loaded once when the layer is built */
  static readonly layer = Layer.effect(TokenCounter, Effect.promise(loadTokenCounter))
}
