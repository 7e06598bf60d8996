/**
 * Diagnostics are not public: /metrics, /metrics/prometheus and /metrics/json answer loopback clients only by default
 * (not through a reverse proxy on the same host, not from another address), need METRICS_TOKEN as a bearer from
 * anywhere when it is set, and move to their own listener with METRICS_ADDR (404 on the main one). /manage/docs
 * carries the same security headers as /admin. Health probes stay open.
 */
import { Option, Redacted } from "effect"
import { randomBytes, randomUUID } from "node:crypto"
import { rmSync } from "node:fs"
import { createServer } from "node:net"
import { networkInterfaces, tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, describe, expect, it } from "vitest"
import { ADMIN_CSP } from "../../src/http/AdminUi.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

const METRICS_PATHS = ["/metrics", "/metrics/prometheus", "/metrics/json"]

/** An address of this machine that is not loopback, if it has one. */
const external = Object.values(networkInterfaces()).flat().find((i) =>
  i !== undefined && !i.internal && i.family === "IPv4"
)?.address

const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })

const servers: Array<TestServer> = []
const files: Array<string> = []
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()))
  for (const f of files) for (const suffix of ["", "-wal", "-shm"]) rmSync(f + suffix, { force: true })
})

const start = async (overrides: Parameters<typeof testConfig>[1] = {}) => {
  const path = join(tmpdir(), `llm-proxy-diag-${randomUUID()}.db`)
  files.push(path)
  const s = await startServer(
    testConfig({ _tag: "sqlite", path }, { listen: { host: "0.0.0.0", port: 0 }, ...overrides })
  )
  servers.push(s)
  return { ...s, port: Number(new URL(s.url).port) }
}

describe("metrics by default: loopback clients only", () => {
  it("answer a loopback client; refuse one whose request came through a proxy (forwarding headers)", async () => {
    const s = await start()
    for (const path of METRICS_PATHS) {
      const r = await fetch(`http://127.0.0.1:${s.port}${path}`)
      expect(r.status, path).toBe(200)
      await r.arrayBuffer()
      for (const header of ["x-forwarded-for", "forwarded", "x-real-ip"]) {
        const proxied = await fetch(`http://127.0.0.1:${s.port}${path}`, { headers: { [header]: "198.51.100.7" } })
        expect(proxied.status, `${path} with ${header}`).toBe(403)
        expect(await proxied.json()).toEqual({
          error:
            "metrics are served to loopback clients only; set METRICS_TOKEN or METRICS_ADDR to scrape them from elsewhere",
          code: "metrics_loopback_only"
        })
      }
    }
    expect((await fetch(`http://[::1]:${s.port}/metrics`).catch(() => undefined))?.status ?? 200).toBe(200)
  })

  it.skipIf(external === undefined)(
    "refuse a client on another address; health probes stay open (skipped without a non-loopback interface)",
    async () => {
      const s = await start()
      for (const path of METRICS_PATHS) {
        const r = await fetch(`http://${external}:${s.port}${path}`)
        expect(r.status, path).toBe(403)
        const text = await r.text()
        expect(text).not.toContain("llm_proxy_")
      }
      for (const path of ["/health", "/ready", "/live"]) {
        expect((await fetch(`http://${external}:${s.port}${path}`)).status, path).toBe(200)
      }
    }
  )
})

describe("METRICS_TOKEN", () => {
  it("requires the bearer from everywhere, loopback included, and compares it whole", async () => {
    const token = randomBytes(24).toString("base64url")
    const s = await start({ metricsToken: Option.some(Redacted.make(token)) })
    const hosts = ["127.0.0.1", ...(external !== undefined ? [external] : [])]
    for (const host of hosts) {
      for (const path of METRICS_PATHS) {
        const url = `http://${host}:${s.port}${path}`
        for (
          const auth of [
            undefined,
            "Bearer ",
            `Bearer ${token.slice(0, -1)}`,
            `Bearer ${token}x`,
            `Basic ${token}`,
            token
          ]
        ) {
          const r = await fetch(url, auth === undefined ? {} : { headers: { authorization: auth } })
          expect(r.status, `${url} ${auth}`).toBe(401)
          expect(r.headers.get("www-authenticate")).toBe("Bearer realm=\"metrics\"")
          expect(await r.json()).toEqual({ error: "missing or invalid metrics token", code: "unauthorized" })
        }
        const ok = await fetch(url, {
          headers: { authorization: `Bearer ${token}`, "x-forwarded-for": "198.51.100.7" }
        })
        expect(ok.status, url).toBe(200)
        expect(await ok.text()).toMatch(path === "/metrics/json" ? /"uptime_seconds"/ : /llm_proxy_/)
      }
    }
  })
})

describe("METRICS_ADDR", () => {
  it("serves the metrics on their own listener and 404 on the main one", async () => {
    const port = await freePort()
    const s = await start({ metricsAddr: Option.some({ host: "127.0.0.1", port }) })
    for (const path of METRICS_PATHS) {
      const main = await fetch(`http://127.0.0.1:${s.port}${path}`)
      expect(main.status, path).toBe(404)
      expect(await main.json()).toEqual({ error: "not found" })
    }
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()
    expect(text).toContain("# TYPE llm_proxy_")
    const json = await fetch(`http://127.0.0.1:${port}/metrics/json`)
    expect(json.status).toBe(200)
    expect(await json.json()).toHaveProperty("uptime_seconds")
    expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200)
    expect((await fetch(`http://127.0.0.1:${port}/manage/projects`)).status).toBe(404)
  })

  it("with METRICS_TOKEN too, the own listener requires the bearer", async () => {
    const port = await freePort()
    const token = randomBytes(24).toString("base64url")
    await start({
      metricsAddr: Option.some({ host: "127.0.0.1", port }),
      metricsToken: Option.some(Redacted.make(token))
    })
    for (const path of ["/metrics", "/metrics/json"]) {
      expect((await fetch(`http://127.0.0.1:${port}${path}`)).status, path).toBe(401)
      expect(
        (await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${token}` } })).status,
        path
      ).toBe(200)
    }
    expect((await fetch(`http://127.0.0.1:${port}/health`)).status).toBe(200)
  })
})

describe("/manage/docs", () => {
  it("carries the admin UI's security headers, with a policy that admits only its own inline script and style", async () => {
    const s = await start()
    const r = await fetch(`http://127.0.0.1:${s.port}/manage/docs`)
    expect(r.status).toBe(200)
    expect(r.headers.get("x-frame-options")).toBe("DENY")
    expect(r.headers.get("x-content-type-options")).toBe("nosniff")
    expect(r.headers.get("referrer-policy")).toBe("no-referrer")
    const csp = r.headers.get("content-security-policy")!
    expect(csp).toContain("frame-ancestors 'none'")
    expect(csp).toContain("default-src 'none'")
    expect(csp).not.toContain("unsafe-inline")
    expect(csp).not.toContain("unsafe-eval")
    expect(csp).toMatch(/script-src 'self' 'sha256-[A-Za-z0-9+/=]{44}'(;|$)/)
    expect(csp).toMatch(/style-src 'self' 'sha256-[A-Za-z0-9+/=]{44}'(;|$)/)
    // Everything else is the admin policy.
    const strip = (p: string) => p.split("; ").filter((d) => !/^(script|style)-src /.test(d))
    expect(strip(csp)).toEqual(strip(ADMIN_CSP))
    await r.text()
  })
})
