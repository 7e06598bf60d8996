/**
 * A delivery backend: sends a batch of transformed events and says, per event, whether it was accepted, should be
 * retried later, or was permanently rejected (→ dead-letter file). Layers: FileBackend, LunaryBackend, HeliconeBackend.
 */
import { Context, type Effect } from "effect"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"

export type Outcome =
  | { readonly _tag: "Accepted" }
  | { readonly _tag: "Retry"; readonly reason: string }
  | { readonly _tag: "Rejected"; readonly reason: string }

export const accepted: Outcome = { _tag: "Accepted" }
export const retry = (reason: string): Outcome => ({ _tag: "Retry", reason })
export const rejected = (reason: string): Outcome => ({ _tag: "Rejected", reason })

export class Backend extends Context.Tag("llm-proxy/dispatcher/Backend")<Backend, {
  readonly name: string
  /** true when one call carries the whole batch (a rejection then says nothing about single events) */
  readonly batched: boolean
  readonly send: (batch: ReadonlyArray<DeliveredEvent>) => Effect.Effect<ReadonlyArray<Outcome>>
}>() {}

/** HTTP status → outcome: 2xx accepted; 408, 425, 429 and 5xx are worth retrying; other 4xx never will succeed. */
export const outcomeOfStatus = (status: number, body: string): Outcome => {
  if (status >= 200 && status < 300) return accepted
  const reason = `HTTP ${status}${body === "" ? "" : `: ${body.slice(0, 300)}`}`
  return status === 408 || status === 425 || status === 429 || status >= 500 ? retry(reason) : rejected(reason)
}
