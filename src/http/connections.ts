/**
 * Limits on open client connections of the listener (`MAX_CONNECTIONS` in total, `MAX_CONNECTIONS_PER_IP` per socket
 * peer address), so that one client — or a flood — cannot take every socket and file descriptor of the process.
 * Counted when a connection opens and until it closes; synchronous and allocation-light (one Map entry per peer).
 * A connection over a limit is not counted: the server answers its first request 503 / 429 and closes it
 * (src/http/Server.ts).
 */

export type ConnectionVerdict = "ok" | "total" | "per_ip"

export class ConnectionLimiter {
  private total = 0
  private readonly perIp = new Map<string, number>()

  constructor(
    /** 0 = unlimited. */
    readonly maxTotal: number,
    /** 0 = unlimited. */
    readonly maxPerIp: number,
    /** Peers the per-address limit does not apply to (trusted reverse proxies carry many clients). */
    private readonly exempt: (ip: string) => boolean = () => false
  ) {}

  /** A connection from `ip` opened: "ok" when admitted (then `close(ip)` must follow), else the limit it hit. */
  open(ip: string): ConnectionVerdict {
    if (this.maxTotal > 0 && this.total >= this.maxTotal) return "total"
    if (this.maxPerIp > 0) {
      const n = this.perIp.get(ip) ?? 0
      if (n >= this.maxPerIp && !this.exempt(ip)) return "per_ip"
      this.perIp.set(ip, n + 1)
    }
    this.total++
    return "ok"
  }

  /** An admitted connection from `ip` closed. */
  close(ip: string): void {
    this.total--
    if (this.maxPerIp > 0) {
      const n = this.perIp.get(ip) ?? 0
      if (n <= 1) this.perIp.delete(ip)
      else this.perIp.set(ip, n - 1)
    }
  }

  /** Admitted connections open now, in total and from `ip`. */
  count(ip?: string): number {
    return ip === undefined ? this.total : this.perIp.get(ip) ?? 0
  }
}
