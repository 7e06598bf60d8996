/**
 * Routing over a project's provider keys: which key a request goes to, when a key cools down, and whether a failed
 * attempt may be sent again on another key. Pure decisions plus the per-key state they read and write; the handler
 * (ProxyHandler.ts, stage 9) calls them. docs/proxy.md "Several keys, retries and fallbacks" is the user's view.
 *
 * - Each key has a `KeyState` on this instance (kept in `KeyStates`, attached to a token's grant on first use so a
 *   request reads it without a lookup): its cool-down, its circuit breaker, its running weight.
 * - `pickKey`: smooth weighted round-robin over the available keys of the project's own provider (exactly
 *   proportional to the weights, evenly interleaved); when none of them is available, over the other providers'
 *   keys that admit the request. Available: not cooling down, and the key's breaker lets a request through.
 * - A key that answers 429, 401, 403 or 5xx, or cannot be reached, cools down: for the upstream's `Retry-After`
 *   (`retry-after-ms`, `retry-after` in seconds or as a date) when it gave one, else for an interval that doubles
 *   with each cool-down in a row (UPSTREAM_KEY_COOLDOWN up to UPSTREAM_KEY_COOLDOWN_MAX); a good answer resets it.
 * - The state is per instance, by design: nothing is read or written across instances on the request path, and each
 *   instance learns of a key's 429s from its own requests (a multi-instance deployment converges the same way).
 */
import type { IncomingHttpHeaders } from "node:http"
import { CircuitBreaker } from "./CircuitBreaker.js"

export class KeyState {
  /** Epoch ms until which the key is cooling down (0 or past: it is not). */
  coolUntil = 0
  /** Cool-downs in a row without a good answer between them: the next interval grows with it. */
  strikes = 0
  /** Smooth weighted round-robin's running weight. */
  current = 0
  /** What cooled it down last (`429`, `ECONNREFUSED`, …): for the management API and the logs. */
  reason: string | undefined = undefined

  constructor(readonly breaker: CircuitBreaker) {}
}

/** One key of a token's grant, as the data plane routes over it (src/token/TokenValidator.ts builds them). */
export interface RoutedKey {
  /** Stable id of the stored key: its state is kept under it. */
  readonly id: string
  /** Position in the project's `api_keys` (what answers, logs and events name). */
  readonly index: number
  /** Position in the grant's list of keys (keys that cannot be decrypted are left out of it): its bit in `tried`. */
  readonly slot: number
  /** The key's provider (the project's when the key names none). */
  readonly provider: string
  readonly weight: number
  /** This instance's state of the key, attached on first use (`KeyStates.attach`). */
  state: KeyState | undefined
}

/** Key states kept at most; beyond it the oldest states of keys that are fine are forgotten. */
export const MAX_KEY_STATES = 100_000

export class KeyStates {
  private readonly states = new Map<string, KeyState>()

  constructor(
    readonly breakerThreshold: number,
    readonly breakerCooldownMs: number,
    private readonly now: () => number = Date.now
  ) {}

  /** The state kept for a key id, created when there is none. */
  of(id: string): KeyState {
    let s = this.states.get(id)
    if (s === undefined) {
      if (this.states.size >= MAX_KEY_STATES) this.forgetHealthy()
      s = new KeyState(new CircuitBreaker(this.breakerThreshold, this.breakerCooldownMs, this.now))
      this.states.set(id, s)
    }
    return s
  }

  /** The state of a key id if this instance has one (the management API's view); never creates one. */
  peek(id: string): KeyState | undefined {
    return this.states.get(id)
  }

  /** The key's state, looked up once per grant and then read from the key itself. */
  attach(k: RoutedKey): KeyState {
    return k.state ??= this.of(k.id)
  }

  get size(): number {
    return this.states.size
  }

  private forgetHealthy() {
    const now = this.now()
    let dropped = 0
    for (const [id, s] of this.states) {
      if (s.coolUntil <= now && s.breaker.current === "closed") {
        this.states.delete(id)
        if (++dropped >= MAX_KEY_STATES / 10) return
      }
    }
  }
}

/** May a request go to this key now (not cooling down, its breaker would admit one)? Changes nothing. */
export const isAvailable = (s: KeyState, now: number): boolean => s.coolUntil <= now && s.breaker.wouldAdmit()

/**
 * One round of smooth weighted round-robin over the untried, available keys of the provider `own` (`others`
 * false), or of the providers other than `own` that `admits` accepts (`others` true).
 */
const weighted = <K extends RoutedKey, C>(
  keys: ReadonlyArray<K>,
  states: KeyStates,
  now: number,
  tried: number,
  own: string,
  others: boolean,
  admits: (provider: string, context: C) => boolean,
  context: C
): K | undefined => {
  let total = 0
  let best: K | undefined
  let bestState: KeyState | undefined
  for (let i = 0; i < keys.length; i++) {
    const k = keys[i]!
    if ((tried & (1 << k.slot)) !== 0 || (k.provider === own) === others) continue
    if (others && !admits(k.provider, context)) continue
    const s = k.state ?? states.attach(k)
    if (!isAvailable(s, now)) continue
    s.current += k.weight
    total += k.weight
    if (bestState === undefined || s.current > bestState.current) {
      best = k
      bestState = s
    }
  }
  if (bestState !== undefined) bestState.current -= total
  return best
}

/**
 * The key the next attempt goes to, its breaker's admission taken; undefined when none is available. `tried` has
 * bit `slot` set for the keys this request already tried. The project's own provider's keys come first; only when
 * none of them is available, the keys of other providers that `admits` (the route, the body) accepts for `context`
 * (passed on rather than closed over: no function is made per request).
 */
export const pickKey = <K extends RoutedKey, C>(
  keys: ReadonlyArray<K>,
  own: string,
  states: KeyStates,
  now: number,
  tried: number,
  admits: (provider: string, context: C) => boolean,
  context: C
): K | undefined => {
  if (keys.length === 1) {
    // One key (the common case): no weights to spread.
    const k = keys[0]!
    const s = k.state ?? states.attach(k)
    return tried === 0 && s.coolUntil <= now && s.breaker.admit() ? k : undefined
  }
  for (let round = 0; round < keys.length; round++) {
    const k = weighted(keys, states, now, tried, own, false, admits, context) ??
      weighted(keys, states, now, tried, own, true, admits, context)
    if (k === undefined) return undefined
    if (k.state!.breaker.admit()) return k
    // Taken by a concurrent probe meanwhile: not this one.
    tried |= 1 << k.slot
  }
  return undefined
}

/** Why no key could take the request: every breaker open, or cooling down; and when one is back, in seconds. */
export const unavailability = (
  keys: ReadonlyArray<RoutedKey>,
  states: KeyStates,
  now: number
): { readonly breakersOpen: boolean; readonly retryAfterSeconds: number } => {
  let breakersOpen = true
  let soonest = Infinity
  for (const k of keys) {
    const s = k.state ?? states.attach(k)
    const breakerMs = s.breaker.retryInMs()
    if (breakerMs === 0) breakersOpen = false
    soonest = Math.min(soonest, Math.max(s.coolUntil - now, breakerMs, 0))
  }
  return { breakersOpen, retryAfterSeconds: Math.max(1, Math.ceil((soonest === Infinity ? 1000 : soonest) / 1000)) }
}

export interface CoolingPolicy {
  /** The first interval when the upstream gave no Retry-After, ms. */
  readonly baseMs: number
  /** The longest cool-down, Retry-After included, ms. */
  readonly maxMs: number
}

/** Cools the key down: for `retryAfterMs` when the upstream gave one, else for base × 2^(cool-downs in a row). */
export const coolDown = (
  s: KeyState,
  now: number,
  retryAfterMs: number | undefined,
  policy: CoolingPolicy,
  reason: string
): void => {
  const interval = retryAfterMs ?? policy.baseMs * 2 ** Math.min(s.strikes, 30)
  s.strikes++
  s.coolUntil = now + Math.min(Math.max(interval, 0), policy.maxMs)
  s.reason = reason
}

/** A good answer: the next cool-down starts from the base interval again. */
export const recovered = (s: KeyState): void => {
  if (s.strikes !== 0) s.strikes = 0
}

const firstValue = (v: string | ReadonlyArray<string> | undefined): string | undefined =>
  typeof v === "string" ? v : v?.[0]

/**
 * How long the upstream asked to wait, ms: `retry-after-ms` (OpenAI, Azure), else `retry-after` in seconds or as an
 * HTTP date; undefined when it said nothing readable.
 */
export const retryAfterMs = (
  headers: IncomingHttpHeaders | Record<string, string | ReadonlyArray<string> | undefined>,
  now: number
): number | undefined => {
  const ms = firstValue(headers["retry-after-ms"])
  if (ms !== undefined && /^\s*\d+(\.\d+)?\s*$/.test(ms)) return Number(ms)
  const after = firstValue(headers["retry-after"])?.trim()
  if (after === undefined || after === "") return undefined
  if (/^\d+(\.\d+)?$/.test(after)) return Number(after) * 1000
  const date = Date.parse(after)
  return Number.isNaN(date) ? undefined : Math.max(0, date - now)
}

/** Answers that cool a key down: rate limited, refused (the key), or the upstream failing. */
export const coolsKey = (status: number): boolean => status === 429 || status === 401 || status === 403 || status >= 500

/**
 * Answers that say the provider did not start the work, so that even a request that is not idempotent may be sent
 * again: rate limited, the key refused, a gateway that could not reach or would not take the request.
 */
export const notStarted = (status: number): boolean =>
  status === 429 || status === 401 || status === 403 || status === 502 || status === 503

/** Connection failures before a byte of the request was sent: the provider never saw it. */
const CONNECT_FAILURES: ReadonlySet<string> = new Set([
  "ECONNREFUSED",
  "ENOTFOUND",
  "EAI_AGAIN",
  "EHOSTUNREACH",
  "ENETUNREACH",
  "UND_ERR_CONNECT_TIMEOUT"
])

export const notSent = (code: string | undefined): boolean => code !== undefined && CONNECT_FAILURES.has(code)

/** Methods a server must treat as idempotent (RFC 9110): their requests may be sent again after any failure. */
export const isIdempotent = (method: string): boolean =>
  method === "GET" || method === "HEAD" || method === "PUT" || method === "DELETE" || method === "OPTIONS"
