/**
 * A TCP forwarder in front of a real server (Redis, Postgres) that a test can cut and restore, to exercise
 * outages against the real thing. `stop()` closes the listener and every forwarded connection; `start()` listens
 * again on the same port.
 */
import { connect, createServer, type Server, type Socket } from "node:net"

export interface TcpProxy {
  readonly port: number
  /** `redis://127.0.0.1:<port><path>` style URL for the target's scheme. */
  readonly url: (scheme: string, path?: string) => string
  readonly stop: () => Promise<void>
  readonly start: () => Promise<void>
  readonly close: () => Promise<void>
}

export const startTcpProxy = async (targetHost: string, targetPort: number): Promise<TcpProxy> => {
  const sockets = new Set<Socket>()
  let server: Server | undefined
  let port = 0

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = connect(targetPort, targetHost)
        sockets.add(client)
        sockets.add(upstream)
        const drop = () => {
          client.destroy()
          upstream.destroy()
          sockets.delete(client)
          sockets.delete(upstream)
        }
        client.on("error", drop).on("close", drop)
        upstream.on("error", drop).on("close", drop)
        client.pipe(upstream)
        upstream.pipe(client)
      })
      s.once("error", reject)
      s.listen(port, "127.0.0.1", () => {
        port = (s.address() as { port: number }).port
        server = s
        resolve()
      })
    })

  const stop = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy()
      sockets.clear()
      if (server === undefined) return resolve()
      const s = server
      server = undefined
      s.close(() => resolve())
    })

  await listen()
  return {
    get port() {
      return port
    },
    url: (scheme, path = "") => `${scheme}://127.0.0.1:${port}${path}`,
    stop,
    start: listen,
    close: stop
  }
}
