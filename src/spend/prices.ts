/**
 * Prices: what a model's tokens cost, USD per million tokens. The built-in table (builtinPrices.ts, dated) plus
 * PRICES_PATH, a YAML file that adds or overrides entries:
 *
 *   models:
 *     gpt-4o: { input: 2.50, cached_input: 1.25, output: 10.00 }
 *     "my-finetune-*": { input: 3, output: 12 }
 *
 * A model's price: the entry of its exact name first, then the longest matching glob (`*` any run of characters,
 * `?` one character), then the same two for its base name when it ends in a date (`gpt-4o-2024-08-06` → `gpt-4o`,
 * `claude-opus-4-5-20251101` → `claude-opus-4-5`, `gpt-4-0613` → `gpt-4`). Names are compared in lower case.
 * Resolved names are memoized (bounded), so pricing an answer costs a Map lookup.
 */
import { Context, Data, Effect, Either, Layer, ParseResult, Schema } from "effect"
import { readFileSync } from "node:fs"
import { parse as parseYaml } from "yaml"
import { BUILT_IN_PRICES } from "./builtinPrices.js"

/** USD per million tokens. */
export interface PriceEntry {
  readonly input: number
  /** Input tokens read from the provider's prompt cache. */
  readonly cachedInput: number
  readonly output: number
  /** Input tokens written to the prompt cache (Anthropic's 5-minute writes; OpenAI from GPT-5.6 on). */
  readonly cacheWrite: number
  /** Anthropic's 1-hour cache writes. */
  readonly cacheWrite1h: number
}

export type PriceSource = "built-in" | "PRICES_PATH"

/** How a model name found its price. */
export interface Resolved {
  readonly price: PriceEntry
  /** The table key that matched (an exact name or a glob). */
  readonly key: string
  readonly source: PriceSource
  readonly rule: "exact" | "glob" | "dated-exact" | "dated-glob"
}

export interface PricesShape {
  /** The price of `model`, or undefined when the model has none. */
  readonly lookup: (model: string) => Resolved | undefined
  /** Every entry, sorted by key. */
  readonly entries: () => ReadonlyArray<
    { readonly key: string; readonly price: PriceEntry; readonly source: PriceSource }
  >
  /** PRICES_PATH, when one was read. */
  readonly path: string | undefined
}

export class Prices extends Context.Tag("llm-proxy/Prices")<Prices, PricesShape>() {}

export class PricesError extends Data.TaggedError("PricesError")<{ readonly message: string }> {}

// ---- the YAML ------------------------------------------------------------------------------------------------

const PRICE_MAX = 1_000_000
const Usd = Schema.Number.pipe(
  Schema.filter((n) => Number.isFinite(n) && n >= 0 && n <= PRICE_MAX, {
    message: () => `expected a number from 0 to ${PRICE_MAX} (USD per million tokens)`
  })
)

const EntryYaml = Schema.Struct({
  input: Usd,
  output: Schema.optional(Usd),
  cached_input: Schema.optional(Usd),
  cache_write: Schema.optional(Usd),
  cache_write_1h: Schema.optional(Usd)
})

const PricesYaml = Schema.Struct({
  models: Schema.Record({ key: Schema.String, value: EntryYaml })
})

export const entryOf = (e: typeof EntryYaml.Type): PriceEntry => ({
  input: e.input,
  output: e.output ?? 0,
  cachedInput: e.cached_input ?? e.input,
  cacheWrite: e.cache_write ?? e.input,
  cacheWrite1h: e.cache_write_1h ?? e.cache_write ?? e.input
})

const MODEL_NAME = /^[\x21-\x7e]{1,256}$/

/** Parses and validates the YAML text; every problem is one line naming the key. */
export const parsePricesYaml = (text: string): Either.Either<ReadonlyArray<readonly [string, PriceEntry]>, string> => {
  let raw: unknown
  try {
    raw = parseYaml(text)
  } catch (e) {
    return Either.left(`not valid YAML: ${(e as Error).message.split("\n")[0]}`)
  }
  const decoded = Schema.decodeUnknownEither(PricesYaml)(raw, { onExcessProperty: "error" })
  if (Either.isLeft(decoded)) {
    const issue = ParseResult.ArrayFormatter.formatErrorSync(decoded.left)[0]
    return Either.left(
      issue ? `${issue.path.map(String).join(".") || "document"}: ${issue.message}` : "invalid document"
    )
  }
  const out: Array<readonly [string, PriceEntry]> = []
  for (const [name, e] of Object.entries(decoded.right.models)) {
    if (!MODEL_NAME.test(name)) {
      return Either.left(`models.${name}: a model name is 1 to 256 printable characters without spaces`)
    }
    out.push([name.toLowerCase(), entryOf(e)])
  }
  return Either.right(out)
}

// ---- lookup --------------------------------------------------------------------------------------------------

/** A glob (`*`, `?`) as an anchored RegExp; every other character literal. */
const globRegExp = (glob: string) =>
  new RegExp(`^${glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".")}$`, "s")

const isGlob = (key: string) => key.includes("*") || key.includes("?")

/** `name` without a trailing date (`-2024-08-06`, `-20251101`, `-0613`), or undefined when it has none. */
export const baseName = (name: string): string | undefined => {
  const m = /^(.+?)-(?:\d{4}-\d{2}-\d{2}|\d{8}|\d{4})$/.exec(name)
  return m?.[1]
}

const MAX_MEMO = 10_000

export const makePrices = (overrides: ReadonlyArray<readonly [string, PriceEntry]>, path?: string): PricesShape => {
  const table = new Map<string, { price: PriceEntry; source: PriceSource }>()
  for (const [key, price] of BUILT_IN_PRICES) table.set(key, { price, source: "built-in" })
  for (const [key, price] of overrides) table.set(key, { price, source: "PRICES_PATH" })
  // Longest pattern first; among equal lengths, PRICES_PATH before built-in, then as written.
  const globs = [...table.entries()]
    .filter(([key]) => isGlob(key))
    .map(([key, v], order) => ({ key, re: globRegExp(key), ...v, order }))
    .sort((a, b) =>
      b.key.length - a.key.length || (a.source === b.source ? a.order - b.order : a.source === "PRICES_PATH" ? -1 : 1)
    )
  const find = (name: string, dated: boolean): Resolved | undefined => {
    const exact = isGlob(name) ? undefined : table.get(name)
    if (exact !== undefined) return { ...exact, key: name, rule: dated ? "dated-exact" : "exact" }
    for (const g of globs) {
      if (g.re.test(name)) return { price: g.price, source: g.source, key: g.key, rule: dated ? "dated-glob" : "glob" }
    }
    return undefined
  }
  const memo = new Map<string, Resolved | null>()
  return {
    lookup: (model) => {
      const seen = memo.get(model)
      if (seen !== undefined) return seen ?? undefined
      const name = model.toLowerCase()
      let found = find(name, false)
      if (found === undefined) {
        const base = baseName(name)
        if (base !== undefined) found = find(base, true)
      }
      if (memo.size >= MAX_MEMO) memo.clear()
      memo.set(model, found ?? null)
      return found
    },
    entries: () => [...table.entries()].map(([key, v]) => ({ key, ...v })).sort((a, b) => a.key.localeCompare(b.key)),
    path
  }
}

/** Reads PRICES_PATH (none: the built-in table alone); a file that cannot be read or does not validate is an error. */
export const loadPrices = (path: string | undefined): Effect.Effect<PricesShape, PricesError> =>
  path === undefined ? Effect.succeed(makePrices([])) : Effect.gen(function*() {
    const text = yield* Effect.try({
      try: () => readFileSync(path, "utf8"),
      catch: (e) =>
        new PricesError({
          message: `PRICES_PATH: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? "error"}`
        })
    })
    const entries = yield* Either.mapLeft(
      parsePricesYaml(text),
      (m) => new PricesError({ message: `PRICES_PATH (${path}): ${m}` })
    )
    return makePrices(entries, path)
  })

export const layer = (path: string | undefined): Layer.Layer<Prices, PricesError> =>
  Layer.effect(Prices, loadPrices(path))

/** The built-in table only (tests, and layers that do not read the configuration). */
export const builtIn: Layer.Layer<Prices> = Layer.succeed(Prices, makePrices([]))
