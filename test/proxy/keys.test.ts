/**
 * The routing decisions of src/proxy/keys.ts, table-tested with an injected clock: Retry-After parsing, cool-downs
 * that double without one, which answers cool a key and which may be sent again, and key choice.
 */
import { describe, expect, it } from "vitest"
import {
  coolDown,
  coolsKey,
  isAvailable,
  isIdempotent,
  KeyStates,
  notSent,
  notStarted,
  pickKey,
  recovered,
  retryAfterMs,
  type RoutedKey,
  unavailability
} from "../../src/proxy/keys.js"

const NOW = Date.parse("2026-12-01T12:00:00Z")
const policy = { baseMs: 1_000, maxMs: 60_000 }

const keys = (...specs: ReadonlyArray<{ weight?: number; provider?: string }>): Array<RoutedKey> =>
  specs.map((s, i) => ({
    id: `k${i}`,
    index: i,
    slot: i,
    provider: s.provider ?? "openai",
    weight: s.weight ?? 1,
    state: undefined
  }))

const always = () => true

describe("retryAfterMs", () => {
  it.each([
    [{ "retry-after-ms": "1500" }, 1_500],
    [{ "retry-after-ms": "250.5", "retry-after": "9" }, 250.5],
    [{ "retry-after": "7" }, 7_000],
    [{ "retry-after": " 2 " }, 2_000],
    [{ "retry-after": new Date(NOW + 30_000).toUTCString() }, 30_000],
    [{ "retry-after": new Date(NOW - 30_000).toUTCString() }, 0],
    [{ "retry-after": "soon" }, undefined],
    [{ "retry-after": "" }, undefined],
    [{ "retry-after-ms": "-5" }, undefined],
    [{}, undefined]
  ])("%j → %s", (headers, expected) => expect(retryAfterMs(headers, NOW)).toBe(expected))
})

describe("cool-downs", () => {
  it("without Retry-After the interval doubles with each failure in a row, up to the maximum; a good answer resets it", () => {
    const states = new KeyStates(5, 30_000, () => NOW)
    const s = states.of("a")
    const intervals: Array<number> = []
    for (let i = 0; i < 8; i++) {
      coolDown(s, NOW, undefined, policy, "503")
      intervals.push(s.coolUntil - NOW)
    }
    expect(intervals).toEqual([1_000, 2_000, 4_000, 8_000, 16_000, 32_000, 60_000, 60_000])
    expect(s.reason).toBe("503")
    recovered(s)
    coolDown(s, NOW, undefined, policy, "429")
    expect(s.coolUntil - NOW).toBe(1_000)
  })

  it("a Retry-After is used as given, bounded by the maximum", () => {
    const s = new KeyStates(5, 30_000).of("a")
    coolDown(s, NOW, 5_000, policy, "429")
    expect(s.coolUntil).toBe(NOW + 5_000)
    coolDown(s, NOW, 3_600_000, policy, "429")
    expect(s.coolUntil).toBe(NOW + 60_000)
    expect(isAvailable(s, NOW + 59_999)).toBe(false)
    expect(isAvailable(s, NOW + 60_000)).toBe(true)
  })

  it("which answers cool a key, and which prove the provider did not start the work", () => {
    expect([200, 400, 404, 408, 413, 429, 401, 403, 500, 502, 503, 504].filter(coolsKey)).toEqual([
      429,
      401,
      403,
      500,
      502,
      503,
      504
    ])
    expect([429, 401, 403, 500, 502, 503, 504].filter(notStarted)).toEqual([429, 401, 403, 502, 503])
    expect(
      ["ECONNREFUSED", "ENOTFOUND", "UND_ERR_CONNECT_TIMEOUT", "ECONNRESET", "UND_ERR_HEADERS_TIMEOUT", undefined].map(
        notSent
      )
    )
      .toEqual([true, true, true, false, false, false])
    expect(["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "POST", "PATCH"].map(isIdempotent)).toEqual([
      true,
      true,
      true,
      true,
      true,
      false,
      false
    ])
  })
})

describe("pickKey", () => {
  it("spreads by weight, exactly and interleaved (smooth weighted round-robin)", () => {
    const states = new KeyStates(5, 30_000, () => NOW)
    const ks = keys({ weight: 5 }, { weight: 1 }, { weight: 1 })
    const picked = Array.from({ length: 14 }, () => {
      const k = pickKey(ks, "openai", states, NOW, 0, always, undefined)!
      k.state!.breaker.record(false)
      return k.index
    })
    expect(picked.filter((i) => i === 0)).toHaveLength(10)
    expect(picked.filter((i) => i === 1)).toHaveLength(2)
    expect(picked.filter((i) => i === 2)).toHaveLength(2)
    expect(picked.slice(0, 7)).toEqual([0, 0, 1, 0, 2, 0, 0])
  })

  it("skips tried and cooling keys; other providers' keys only when no own key is available, and only those admitted", () => {
    const states = new KeyStates(5, 30_000, () => NOW)
    const ks = keys({}, {}, { provider: "backup" }, { provider: "denied" })
    expect(pickKey(ks, "openai", states, NOW, 0b01, always, undefined)!.index).toBe(1)
    coolDown(states.attach(ks[0]!), NOW, 10_000, policy, "429")
    coolDown(states.attach(ks[1]!), NOW, 20_000, policy, "429")
    const admits = (provider: string) => provider === "backup"
    expect(pickKey(ks, "openai", states, NOW, 0, admits, undefined)!.index).toBe(2)
    expect(pickKey(ks, "openai", states, NOW, 0b100, admits, undefined)).toBeUndefined()
    // When is the first one back: in 10 s (rounded up to whole seconds).
    coolDown(states.attach(ks[2]!), NOW, 15_000, policy, "429")
    coolDown(states.attach(ks[3]!), NOW, 15_000, policy, "429")
    expect(unavailability(ks, states, NOW)).toEqual({ breakersOpen: false, retryAfterSeconds: 10 })
  })

  it("a key whose breaker is open is left out; every breaker open is told apart from cooling down", () => {
    const states = new KeyStates(1, 30_000, () => NOW)
    const ks = keys({}, {})
    for (const k of ks) {
      const s = states.attach(k)
      s.breaker.admit()
      s.breaker.record(true)
    }
    expect(pickKey(ks, "openai", states, NOW, 0, always, undefined)).toBeUndefined()
    expect(unavailability(ks, states, NOW)).toEqual({ breakersOpen: true, retryAfterSeconds: 30 })
  })

  it("one key: taken when its breaker admits, never twice for a request", () => {
    const states = new KeyStates(5, 30_000, () => NOW)
    const ks = keys({})
    expect(pickKey(ks, "openai", states, NOW, 0, always, undefined)).toBe(ks[0])
    expect(pickKey(ks, "openai", states, NOW, 0b1, always, undefined)).toBeUndefined()
  })
})
