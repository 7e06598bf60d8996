/**
 * Token counting when a response carries no `usage`: gpt-tokenizer (ranks ship inside the npm package, nothing is
 * downloaded at run time). o200k_base for the GPT-4o / 4.1 / 5 and o-series families, cl100k_base otherwise.
 * Each encoding costs ~0.5 s and ~50–90 MB to load, so it is loaded on first use (and the bundle keeps the package
 * external): a process that always sees `usage` in responses never loads one.
 */
import { Context, Layer } from "effect"
import { createRequire } from "node:module"

export type EncodingName = "o200k_base" | "cl100k_base"

export const encodingForModel = (model: string | null | undefined): EncodingName => {
  const m = (model ?? "").toLowerCase().replace(/^.*\//, "")
  return /^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|chatgpt-4o|o[1-9]|omni|gpt-oss|gpt-image|gpt-realtime|gpt-audio|codex)/.test(
      m
    )
    ? "o200k_base"
    : "cl100k_base"
}

export type CountTokens = (encoding: EncodingName, text: string) => number

interface Encoding {
  countTokens(text: string): number
}

/** A synchronous counter that loads each encoding the first time it is needed. */
export const lazyTokenCounter = (): CountTokens => {
  const require = createRequire(import.meta.url)
  const loaded = new Map<EncodingName, Encoding>()
  return (encoding, text) => {
    if (text === "") return 0
    let enc = loaded.get(encoding)
    if (enc === undefined) {
      enc = require(`gpt-tokenizer/encoding/${encoding}`) as Encoding
      loaded.set(encoding, enc)
    }
    return countBounded(enc, text)
  }
}

const LONG_RUN = /\S{257}/

/**
 * BPE is quadratic in the length of one pre-token: 50,000 characters without a space take seconds. Runs longer than
 * 256 non-space characters are counted in 256-character pieces (a slight over-count only for such runs).
 */
const countBounded = (enc: Encoding, text: string): number => {
  if (!LONG_RUN.test(text)) return enc.countTokens(text)
  let total = 0
  let rest = ""
  for (const piece of text.split(/(\S{256})/)) {
    if (piece.length === 256 && !/\s/.test(piece)) {
      if (rest !== "") total += enc.countTokens(rest)
      rest = ""
      total += enc.countTokens(piece)
    } else rest += piece
  }
  return total + (rest === "" ? 0 : enc.countTokens(rest))
}

export const loadTokenCounter = async (): Promise<CountTokens> => lazyTokenCounter()

export class TokenCounter extends Context.Tag("llm-proxy/dispatcher/TokenCounter")<TokenCounter, CountTokens>() {
  static readonly layer = Layer.sync(TokenCounter, lazyTokenCounter)
}
