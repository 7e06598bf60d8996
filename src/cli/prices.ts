/**
 * `llm-proxy prices [--model M]`: the price table that applies (the built-in one plus PRICES_PATH), or how one model
 * finds its price (exact name, longest glob, or the base of a dated name). Reads nothing but PRICES_PATH.
 */
import { Command, Options } from "@effect/cli"
import { Config, Effect, Option } from "effect"
import { BUILT_IN_PRICES_DATE } from "../spend/builtinPrices.js"
import { loadPrices, type PriceEntry } from "../spend/prices.js"
import { CliFailure } from "./errors.js"
import { record, show, table } from "./output.js"

const money = (n: number) => String(Number(n.toFixed(6)))

const priceJson = (p: PriceEntry) => ({
  input: p.input,
  cached_input: p.cachedInput,
  output: p.output,
  cache_write: p.cacheWrite,
  cache_write_1h: p.cacheWrite1h
})

const RULES = {
  exact: "its exact name",
  glob: "the longest matching pattern",
  "dated-exact": "the name without its date",
  "dated-glob": "the longest pattern matching the name without its date"
} as const

export const prices = Command.make(
  "prices",
  {
    model: Options.text("model").pipe(
      Options.withDescription("Show the price that applies to this model"),
      Options.optional
    ),
    pricesPath: Options.text("prices-path").pipe(
      Options.withDescription("YAML of prices that add to or override the built-in table (env PRICES_PATH)"),
      Options.optional
    ),
    json: Options.boolean("json").pipe(Options.withDescription("Print JSON instead of a table"))
  },
  (o) =>
    Effect.gen(function*() {
      const fromEnv = yield* Config.option(Config.string("PRICES_PATH")).pipe(Effect.orDie)
      const path = Option.getOrUndefined(
        Option.orElse(o.pricesPath, () => Option.filter(fromEnv, (s) => s.trim() !== ""))
      )
      const table_ = yield* loadPrices(path).pipe(Effect.mapError((e) => new CliFailure({ message: e.message })))
      if (Option.isSome(o.model)) {
        const model = o.model.value
        const found = table_.lookup(model)
        if (found === undefined) {
          return yield* new CliFailure({
            message:
              `${model} has no price: its answers count 0 USD, and tokens or projects with a USD budget refuse it (add it to PRICES_PATH)`
          })
        }
        const p = found.price
        return yield* show(
          o.json ?
            { model, key: found.key, source: found.source, rule: found.rule, usd_per_million_tokens: priceJson(p) } :
            record([
              ["model", model],
              ["entry", `${found.key} (${found.source}, by ${RULES[found.rule]})`],
              ["input", money(p.input)],
              ["cached_input", money(p.cachedInput)],
              ["output", money(p.output)],
              ["cache_write", money(p.cacheWrite)],
              ["cache_write_1h", money(p.cacheWrite1h)],
              ["unit", "USD per million tokens"]
            ])
        )
      }
      const entries = table_.entries()
      if (o.json) {
        return yield* show({
          built_in_date: BUILT_IN_PRICES_DATE,
          prices_path: path ?? null,
          models: Object.fromEntries(entries.map((e) => [e.key, { ...priceJson(e.price), source: e.source }]))
        })
      }
      yield* show([
        table(
          ["MODEL", "INPUT", "CACHED INPUT", "OUTPUT", "CACHE WRITE", "CACHE WRITE 1H", "SOURCE"],
          entries.map((e) => [
            e.key,
            money(e.price.input),
            money(e.price.cachedInput),
            money(e.price.output),
            money(e.price.cacheWrite),
            money(e.price.cacheWrite1h),
            e.source
          ])
        ),
        "",
        `USD per million tokens. Built-in table taken on ${BUILT_IN_PRICES_DATE}${
          path !== undefined ? `; PRICES_PATH ${path}` : ""
        }.`
      ].join("\n"))
    })
).pipe(Command.withDescription("Print the model prices that apply (built-in table plus PRICES_PATH), or one model's"))
