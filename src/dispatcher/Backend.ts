/**
 * A delivery backend: sends a batch of transformed events and says, per event, whether it was accepted, should be
 * retried later, or was permanently rejected (→ dead-letter file). Layers: FileBackend, LunaryBackend, HeliconeBackend.
 */
import { Context, type Effect } from "effect"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"

export type Outcome =
  | { readonly _tag: "Accepted" }
  /** `attempts`: a failure of this event alone — after that many sends in all it is dead-lettered; else forever */
  | { readonly _tag: "Retry"; readonly reason: string; readonly attempts?: number }
  | { readonly _tag: "Rejected"; readonly reason: string }
  /** the backend refused our credentials: nothing is wrong with the event; delivery pauses and retries, never drops */
  | { readonly _tag: "Unauthorized"; readonly reason: string }

export const accepted: Outcome = { _tag: "Accepted" }
export const retry = (reason: string, attempts?: number): Outcome =>
  attempts === undefined ? { _tag: "Retry", reason } : { _tag: "Retry", reason, attempts }
export const rejected = (reason: string): Outcome => ({ _tag: "Rejected", reason })
export const unauthorized = (reason: string): Outcome => ({ _tag: "Unauthorized", reason })

export class Backend extends Context.Tag("llm-proxy/dispatcher/Backend")<Backend, {
  readonly name: string
  /** true when one call carries the whole batch (a rejection then says nothing about single events) */
  readonly batched: boolean
  readonly send: (batch: ReadonlyArray<DeliveredEvent>) => Effect.Effect<ReadonlyArray<Outcome>>
}>() {}

/** The statuses that mean "your API key is not accepted" for most services. */
export const CREDENTIAL_STATUSES: ReadonlyArray<number> = [401, 403]

/**
 * HTTP status → outcome: 2xx accepted; the service's credential statuses pause delivery (a rotated key must not
 * empty the stream into the dead letter); 408, 425, 429 and 5xx are worth retrying; other 4xx never will succeed.
 */
export const outcomeOfStatus = (status: number, body: string, credentialStatuses = CREDENTIAL_STATUSES): Outcome => {
  if (status >= 200 && status < 300) return accepted
  const reason = `HTTP ${status}${body === "" ? "" : `: ${body.slice(0, 300)}`}`
  if (credentialStatuses.includes(status)) return unauthorized(reason)
  return status === 408 || status === 425 || status === 429 || status >= 500 ? retry(reason) : rejected(reason)
}
