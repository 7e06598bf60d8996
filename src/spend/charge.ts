/**
 * What one answer is charged: its LLM tokens and its cost, from the usage read on the side of the answer and the
 * price of its model. Runs once per answer when it is over (ProxyHandler's `complete`), off the path to the upstream.
 *
 * The model priced is the one that answered (`model` of the answer: a dated name falls back to its base), else the
 * one the request named, so that an answer naming a model without a price is still priced by the request's.
 */
import { namedModel } from "../proxy/modelScope.js"
import { costOf, tokensOf, type UsageDetail } from "./cost.js"
import type { PricesShape } from "./prices.js"

export interface Charge {
  /** Input (cached included) + output tokens. */
  readonly tokens: number
  /** USD; undefined when neither model has a price. */
  readonly costUsd: number | undefined
  /** The model priced, or the one without a price. */
  readonly model: string | undefined
}

export const chargeOf = (
  prices: PricesShape,
  detail: UsageDetail,
  answeredModel: string | undefined,
  requestBody: Buffer | undefined
): Charge => {
  const tokens = tokensOf(detail)
  const answered = answeredModel !== undefined ? prices.lookup(answeredModel) : undefined
  if (answered !== undefined) return { tokens, costUsd: costOf(answered.price, detail), model: answeredModel }
  const requested = namedModel(requestBody)
  const byRequest = requested !== undefined ? prices.lookup(requested) : undefined
  if (byRequest !== undefined) return { tokens, costUsd: costOf(byRequest.price, detail), model: requested }
  return { tokens, costUsd: undefined, model: answeredModel ?? requested }
}
