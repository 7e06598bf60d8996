/**
 * MAX_CONNECTIONS and MAX_CONNECTIONS_PER_IP on the real listener: a connection over a limit gets 503 (total) or
 * 429 (per address) with a JSON body and `Connection: close`, and is closed; closing a connection frees its slot;
 * trusted proxies are exempt from the per-address limit; 0 means unlimited; a flood never takes the server down.
 */
import { ConfigProvider, Effect, Either } from "effect"
import { connect, type Socket } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import type { AppConfigShape } from "../../src/config/AppConfig.js"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"
import { ConnectionLimiter } from "../../src/http/connections.js"
import { call, eventually, type Stack, startStack } from "../proxy/stack.js"
import { backends } from "./harness.js"

interface Conn {
  readonly socket: Socket
  /** Everything received so far. */
  text: () => string
  closed: () => boolean
}

const open = (port: number): Promise<Conn> =>
  new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1")
    let text = ""
    let closed = false
    socket.on("data", (d: Buffer) => (text += d.toString("latin1")))
    socket.on("error", () => {})
    socket.on("close", () => (closed = true))
    socket.once("connect", () => resolve({ socket, text: () => text, closed: () => closed }))
    socket.once("error", reject)
  })

/** One keep-alive GET /live on `c`; resolves with the status line's code and the body. */
const live = async (c: Conn): Promise<{ status: number; text: string }> => {
  const from = c.text().length
  c.socket.write("GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
  await eventually(
    () => {
      const t = c.text().slice(from)
      const sep = t.indexOf("\r\n\r\n")
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(t)?.[1] ?? -1)
      return (sep !== -1 && length >= 0 && t.length >= sep + 4 + length) || c.closed()
    },
    5_000,
    5
  )
  const t = c.text().slice(from)
  return { status: Number(/^HTTP\/1\.1 (\d{3})/.exec(t)?.[1] ?? 0), text: t }
}

let stack: Stack | undefined
const conns: Array<Conn> = []
afterEach(async () => {
  for (const c of conns.splice(0)) c.socket.destroy()
  await stack?.close()
  stack = undefined
})

const start = async (overrides: Partial<AppConfigShape>) => {
  stack = await startStack(await backends[0]!.create(), overrides)
  return Number(new URL(stack.server.url).port)
}

const openMany = async (port: number, n: number) => {
  const out: Array<Conn> = []
  for (let i = 0; i < n; i++) {
    const c = await open(port)
    conns.push(c)
    out.push(c)
  }
  return out
}

describe("connection limits", () => {
  it("MAX_CONNECTIONS_PER_IP: the next connection from the address gets 429 JSON + Connection: close and is closed", async () => {
    const port = await start({ maxConnections: 0, maxConnectionsPerIp: 3 })
    const held = await openMany(port, 3)
    for (const c of held) expect((await live(c)).status).toBe(200)
    const [over] = await openMany(port, 1)
    const r = await live(over!)
    expect(r.status).toBe(429)
    expect(r.text).toMatch(/\r\nconnection: close\r\n/i)
    expect(r.text).toMatch(/\r\ncontent-type: application\/json\r\n/i)
    expect(JSON.parse(r.text.slice(r.text.indexOf("\r\n\r\n") + 4))).toEqual({
      error: "Too many connections from this address",
      code: "too_many_connections_per_ip"
    })
    await eventually(() => over!.closed())
    // a held connection keeps working; closing one frees its slot
    expect((await live(held[0]!)).status).toBe(200)
    held[1]!.socket.destroy()
    await eventually(async () => {
      const [c] = await openMany(port, 1)
      const s = (await live(c!)).status
      return s === 200
    })
  })

  it("MAX_CONNECTIONS: beyond it new connections get 503 JSON; the proxy path too", async () => {
    const port = await start({ maxConnections: 2, maxConnectionsPerIp: 0 })
    const held = await openMany(port, 2)
    for (const c of held) expect((await live(c)).status).toBe(200)
    const [over] = await openMany(port, 1)
    const r = await live(over!)
    expect(r.status).toBe(503)
    expect(JSON.parse(r.text.slice(r.text.indexOf("\r\n\r\n") + 4))).toEqual({
      error: "Too many connections",
      code: "too_many_connections"
    })
    // /v1 as well (answered before the proxy sees the request)
    held[0]!.socket.destroy()
    await eventually(() => held[0]!.closed())
    await eventually(async () => (await call(stack!.server.url, "/v1/models")).status === 401)
  })

  it("peers in TRUSTED_PROXIES are exempt from the per-address limit", async () => {
    const port = await start({ maxConnections: 0, maxConnectionsPerIp: 1, trustedProxies: ["127.0.0.0/8"] })
    for (const c of await openMany(port, 4)) expect((await live(c)).status).toBe(200)
  })

  it("0 = unlimited", async () => {
    const port = await start({ maxConnections: 0, maxConnectionsPerIp: 0 })
    const many = await openMany(port, 60)
    const statuses = await Promise.all(many.map((c) => live(c)))
    expect(statuses.every((s) => s.status === 200)).toBe(true)
  })

  it("a connection over the limit that never sends a request is closed soon", async () => {
    const port = await start({ maxConnections: 1, maxConnectionsPerIp: 0 })
    const [held] = await openMany(port, 1)
    expect((await live(held!)).status).toBe(200)
    const [silent] = await openMany(port, 1)
    await eventually(() => silent!.closed(), 8_000)
    expect(silent!.text()).toBe("")
  })

  it("a flood of 300 connections against a limit of 5: each gets 200 or a JSON 503, and the server stays up", async () => {
    const port = await start({ maxConnections: 5, maxConnectionsPerIp: 0 })
    const flood = await Promise.all(Array.from({ length: 300 }, () => open(port)))
    conns.push(...flood)
    const results = await Promise.all(flood.map((c) => live(c)))
    const statuses = new Set(results.map((r) => r.status))
    expect([...statuses].every((s) => s === 200 || s === 503)).toBe(true)
    expect(results.filter((r) => r.status === 200).length).toBeLessThanOrEqual(5)
    for (const c of flood) c.socket.destroy()
    await eventually(async () => (await call(stack!.server.url, "/v1/models")).status === 401)
  })
})

describe("ConnectionLimiter", () => {
  it("counts per address and in total, frees on close, exempts", () => {
    const l = new ConnectionLimiter(3, 2, (ip) => ip === "10.0.0.1")
    expect([l.open("a"), l.open("a"), l.open("a")]).toEqual(["ok", "ok", "per_ip"])
    expect(l.open("10.0.0.1")).toBe("ok")
    expect(l.open("b")).toBe("total")
    l.close("a")
    expect([l.count(), l.count("a")]).toEqual([2, 1])
    expect(l.open("b")).toBe("ok")
    l.close("a")
    l.close("b")
    l.close("10.0.0.1")
    expect([l.count(), l.count("a"), l.count("10.0.0.1")]).toEqual([0, 0, 0])
  })
})

describe("configuration", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSync(
      Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
    )

  it("defaults 10,000 in total and 1,000 per address; 0 = unlimited; a bad value names the variable", () => {
    const d = load({})
    expect(Either.isRight(d) && [d.right.maxConnections, d.right.maxConnectionsPerIp]).toEqual([10_000, 1_000])
    const z = load({ MAX_CONNECTIONS: "0", MAX_CONNECTIONS_PER_IP: "0" })
    expect(Either.isRight(z) && [z.right.maxConnections, z.right.maxConnectionsPerIp]).toEqual([0, 0])
    const bad = load({ MAX_CONNECTIONS_PER_IP: "lots" })
    expect(Either.isLeft(bad) && formatConfigError(bad.left)).toBe(
      "invalid configuration: MAX_CONNECTIONS_PER_IP: expected a non-negative integer, got \"lots\""
    )
  })
})

describe("Expect: 100-continue outside /v1", () => {
  it("the management API sends 100 Continue at once (the proxy alone defers it until the token passed)", async () => {
    const port = await start({})
    const body = JSON.stringify({ name: `continue-${Date.now()}`, api_key: "sk-abcdefghijklmnopqrstuvwx" })
    const [c] = await openMany(port, 1)
    c!.socket.write(
      `POST /manage/projects HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${stack!.server.token}\r\n` +
        `Content-Type: application/json\r\nContent-Length: ${body.length}\r\nExpect: 100-continue\r\n\r\n`
    )
    await eventually(() => c!.text().startsWith("HTTP/1.1 100 Continue\r\n\r\n"))
    c!.socket.write(body)
    await eventually(() => /HTTP\/1\.1 201 /.test(c!.text()))
  })
})
