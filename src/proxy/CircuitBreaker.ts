/**
 * One circuit breaker per provider key (src/proxy/keys.ts). `threshold` consecutive failures (upstream 502/503/504, connection errors,
 * header timeouts) open it: requests are answered locally with 503 for `cooldownMs`; then exactly one probe is let
 * through (half-open). A good probe closes the breaker, a failed one opens it again. Any non-failure answer resets
 * the count. Synchronous and clock-injected, so it is table-tested without waiting.
 */
export type BreakerState = "closed" | "open" | "half-open"

export class CircuitBreaker {
  private failures = 0
  private openedAt = 0
  private state: BreakerState = "closed"
  private probeInFlight = false

  constructor(
    readonly threshold: number,
    readonly cooldownMs: number,
    private readonly now: () => number = Date.now
  ) {}

  /** May a request go upstream now? In half-open state only the first caller (the probe) gets true. */
  admit(): boolean {
    if (this.state === "closed") return true
    if (this.state === "open") {
      if (this.now() - this.openedAt < this.cooldownMs) return false
      this.state = "half-open"
      this.probeInFlight = false
    }
    if (this.probeInFlight) return false
    this.probeInFlight = true
    return true
  }

  /** Would `admit` let a request through now? Changes nothing. */
  wouldAdmit(): boolean {
    if (this.state === "closed") return true
    if (this.state === "open" && this.now() - this.openedAt < this.cooldownMs) return false
    return !(this.state === "half-open" && this.probeInFlight)
  }

  /** How long until the breaker lets a probe through, ms; 0 when it is not open. */
  retryInMs(): number {
    return this.state === "open" ? Math.max(0, this.cooldownMs - (this.now() - this.openedAt)) : 0
  }

  /** The outcome of an admitted request: true when it counts as an upstream failure. */
  record(failed: boolean): void {
    if (this.state === "half-open") {
      this.probeInFlight = false
      if (failed) this.open()
      else this.close()
      return
    }
    if (!failed) {
      this.failures = 0
      return
    }
    if (++this.failures >= this.threshold) this.open()
  }

  /** An admitted request that ended without an outcome (client went away first): frees a probe slot. */
  release(): void {
    if (this.state === "half-open") this.probeInFlight = false
  }

  get current(): BreakerState {
    if (this.state === "open" && this.now() - this.openedAt >= this.cooldownMs) return "half-open"
    return this.state
  }

  private open() {
    this.state = "open"
    this.openedAt = this.now()
    this.failures = 0
  }

  private close() {
    this.state = "closed"
    this.failures = 0
  }
}

/** Statuses that count as the upstream failing (reference F28). */
export const isFailureStatus = (status: number): boolean => status === 502 || status === 503 || status === 504
