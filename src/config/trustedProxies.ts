/** `TRUSTED_PROXIES`: the proxies whose X-Forwarded-For is believed (see src/audit/clientIp.ts). */
import { Either } from "effect"
import { isIP } from "node:net"

/** Parses `TRUSTED_PROXIES`: IPs and CIDRs separated by commas or spaces. */
export const parseTrustedProxies = (value: string): Either.Either<ReadonlyArray<string>, string> => {
  const entries = value.split(/[\s,]+/).filter((s) => s !== "")
  for (const entry of entries) {
    const [ip, prefix, ...rest] = entry.split("/")
    const version = isIP(ip ?? "")
    if (version === 0 || rest.length > 0) return Either.left(`"${entry.slice(0, 64)}" is not an IP address or CIDR`)
    if (prefix !== undefined) {
      const max = version === 4 ? 32 : 128
      if (!/^\d{1,3}$/.test(prefix) || Number(prefix) > max) {
        return Either.left(`"${entry.slice(0, 64)}" has an invalid prefix length (0..${max})`)
      }
    }
  }
  return Either.right(entries)
}
