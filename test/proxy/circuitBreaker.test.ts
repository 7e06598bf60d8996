import { describe, expect, it } from "vitest"
import { CircuitBreaker, isFailureStatus } from "../../src/proxy/CircuitBreaker.js"

const clock = () => {
  let t = 1_000
  return { now: () => t, advance: (ms: number) => void (t += ms) }
}

describe("CircuitBreaker", () => {
  it("opens after `threshold` consecutive failures and answers locally during the cooldown", () => {
    const c = clock()
    const b = new CircuitBreaker(5, 30_000, c.now)
    for (let i = 0; i < 4; i++) {
      expect(b.admit()).toBe(true)
      b.record(true)
    }
    expect(b.current).toBe("closed")
    expect(b.admit()).toBe(true)
    b.record(true)
    expect(b.current).toBe("open")
    expect(b.admit()).toBe(false)
    c.advance(29_999)
    expect(b.admit()).toBe(false)
  })

  it("a success in between resets the count (4 failures, 1 success, 4 failures stay closed)", () => {
    const b = new CircuitBreaker(5, 30_000, clock().now)
    for (const failed of [true, true, true, true, false, true, true, true, true]) {
      expect(b.admit()).toBe(true)
      b.record(failed)
    }
    expect(b.current).toBe("closed")
  })

  it("after the cooldown lets exactly one probe through; a good probe closes it", () => {
    const c = clock()
    const b = new CircuitBreaker(2, 1_000, c.now)
    b.record(true)
    b.record(true)
    c.advance(1_000)
    expect(b.current).toBe("half-open")
    expect(b.admit()).toBe(true)
    expect(b.admit()).toBe(false)
    b.record(false)
    expect(b.current).toBe("closed")
    expect(b.admit()).toBe(true)
  })

  it("a failed probe opens it again for a full cooldown", () => {
    const c = clock()
    const b = new CircuitBreaker(1, 1_000, c.now)
    b.record(true)
    c.advance(1_000)
    expect(b.admit()).toBe(true)
    b.record(true)
    expect(b.current).toBe("open")
    c.advance(999)
    expect(b.admit()).toBe(false)
    c.advance(1)
    expect(b.admit()).toBe(true)
  })

  it("a probe abandoned by its client frees the slot", () => {
    const c = clock()
    const b = new CircuitBreaker(1, 10, c.now)
    b.record(true)
    c.advance(10)
    expect(b.admit()).toBe(true)
    b.release()
    expect(b.admit()).toBe(true)
  })

  it.each([[502, true], [503, true], [504, true], [500, false], [429, false], [200, false]])(
    "status %s counts as failure: %s",
    (s, expected) => expect(isFailureStatus(s)).toBe(expected)
  )
})
