/**
 * Who is on the other end of a request: the socket peer, unless the peer is one of `TRUSTED_PROXIES`, in which
 * case `X-Forwarded-For` is read from the right, skipping trusted proxies, and the first address that is not one
 * is the client. (Reading the leftmost entry, as the Go llm-proxy did, lets any client behind a proxy that appends
 * to the header claim any address: docs/audit.md "Client IP and `TRUSTED_PROXIES`".)
 */
import { BlockList, isIP } from "node:net"

export interface TrustedProxies {
  readonly isEmpty: boolean
  readonly contains: (address: string) => boolean
}

/** `::ffff:10.0.0.1` (an IPv4 client on a dual-stack socket) is `10.0.0.1`. */
export const normalizeIp = (address: string): string => {
  const a = address.trim()
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a)
  return mapped ? mapped[1]! : a.toLowerCase()
}

const family = (ip: string) => (isIP(ip) === 6 ? "ipv6" : "ipv4")

export const makeTrustedProxies = (entries: ReadonlyArray<string>): TrustedProxies => {
  const list = new BlockList()
  for (const entry of entries) {
    const [rawIp, prefix] = entry.split("/")
    const ip = normalizeIp(rawIp!)
    if (prefix === undefined) list.addAddress(ip, family(ip))
    else list.addSubnet(ip, Number(prefix), family(ip))
  }
  return {
    isEmpty: entries.length === 0,
    contains: (address) => {
      const ip = normalizeIp(address)
      return isIP(ip) !== 0 && list.check(ip, family(ip))
    }
  }
}

/**
 * The client address for a request that arrived from `peer` with the given `X-Forwarded-For` header value
 * (several headers joined with ","). Entries that are not IP addresses end the walk: what is left of them
 * cannot be trusted, so the last good hop is the answer.
 */
export const clientIpOf = (
  peer: string | undefined,
  forwardedFor: string | undefined,
  trusted: TrustedProxies
): string | undefined => {
  if (peer === undefined) return undefined
  let client = normalizeIp(peer)
  if (trusted.isEmpty || forwardedFor === undefined || !trusted.contains(client)) return client
  const hops = forwardedFor.split(",").map((s) => normalizeIp(s)).filter((s) => s !== "")
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = hops[i]!
    if (isIP(hop) === 0) return client
    client = hop
    if (!trusted.contains(hop)) return client
  }
  return client
}
