/** Who the client is: the socket peer, or X-Forwarded-For read right to left past trusted proxies. */
import { describe, expect, it } from "vitest"
import { clientIpOf, makeTrustedProxies, normalizeIp } from "../../src/audit/clientIp.js"

const trusted = makeTrustedProxies(["10.0.0.0/8", "192.168.1.1", "::1", "fd00::/8"])
const none = makeTrustedProxies([])

describe("clientIpOf", () => {
  it.each([
    // [peer, X-Forwarded-For, expected]
    ["203.0.113.5", undefined, "203.0.113.5"],
    ["203.0.113.5", "1.2.3.4", "203.0.113.5"], // untrusted peer: header ignored
    ["10.1.1.1", undefined, "10.1.1.1"],
    ["10.1.1.1", "1.2.3.4", "1.2.3.4"],
    ["10.1.1.1", "1.2.3.4, 5.6.7.8", "5.6.7.8"], // 1.2.3.4 is only what 5.6.7.8 claimed
    ["10.1.1.1", "1.2.3.4, 10.2.2.2", "1.2.3.4"], // trusted hops are skipped
    ["10.1.1.1", "10.3.3.3, 10.2.2.2", "10.3.3.3"], // all trusted: the furthest one
    ["10.1.1.1", "1.2.3.4,,  ", "1.2.3.4"],
    ["10.1.1.1", "not-an-ip, 10.2.2.2", "10.2.2.2"], // garbage ends the walk at the last good hop
    ["10.1.1.1", "1.2.3.4, nonsense", "10.1.1.1"],
    ["::ffff:10.1.1.1", "1.2.3.4", "1.2.3.4"], // IPv4-mapped peer
    ["::ffff:203.0.113.5", "1.2.3.4", "203.0.113.5"],
    ["::1", "2001:db8::1", "2001:db8::1"],
    ["fd00::5", "2001:DB8::2, fd00::9", "2001:db8::2"],
    ["192.168.1.1", "1.2.3.4", "1.2.3.4"],
    ["192.168.1.2", "1.2.3.4", "192.168.1.2"]
  ])("peer %s, X-Forwarded-For %j → %s", (peer, xff, expected) => {
    expect(clientIpOf(peer, xff, trusted)).toBe(expected)
  })

  it("without TRUSTED_PROXIES the peer is always the client; no peer, no IP", () => {
    expect(clientIpOf("10.1.1.1", "1.2.3.4", none)).toBe("10.1.1.1")
    expect(clientIpOf(undefined, "1.2.3.4", trusted)).toBeUndefined()
  })

  it("normalizeIp", () => {
    expect(normalizeIp(" ::FFFF:127.0.0.1 ")).toBe("127.0.0.1")
    expect(normalizeIp("2001:DB8::1")).toBe("2001:db8::1")
    expect(trusted.contains("not an ip")).toBe(false)
  })
})
