/**
 * The footprint of the built binary (`npm run build` first) in the default configuration (SQLite, no tracing, no
 * dispatcher, no Redis):
 *
 *   idle       3 s after `serve` listens its RSS is at most 100 MB (docs/performance.md: what start-up loads and
 *              keeps; the young generation is held while starting, src/startupMemory.ts)
 *   on demand  what is loaded only when asked for still works: the Swagger UI at /manage/docs (its own chunk) and
 *              the admin UI's assets (read on the first /admin request)
 *   traffic    after start-up the young generation grows with load again: 2,000 management reads leave `serve`
 *              answering, and its RSS within the range of an ordinary Node server (≤ 250 MB)
 */
import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { built, type Serve, sleep, startServe } from "./support.js"

const rssMb = (pid: number) =>
  Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? NaN) / 1024

const MANAGEMENT_TOKEN = "footprint-management-token-0123456789abcdef"

describe.skipIf(!built)("footprint of the built serve (default configuration)", () => {
  let serve: Serve

  beforeAll(async () => {
    serve = await startServe({ MANAGEMENT_TOKEN })
  })
  afterAll(async () => {
    await serve?.stop()
  })

  it("idles at ≤ 100 MB RSS 3 s after it listens", async () => {
    await sleep(3000)
    const rss = rssMb(serve.child.pid!)
    console.log(`[footprint] idle RSS ${rss.toFixed(1)} MB`)
    expect(rss).toBeLessThanOrEqual(100)
  })

  it("serves the Swagger UI and the admin UI, which it loads on their first request", async () => {
    const docs = await fetch(`${serve.url}/manage/docs`)
    expect(docs.status).toBe(200)
    expect(docs.headers.get("content-type")).toMatch(/^text\/html/)
    const html = await docs.text()
    expect(html).toContain("SwaggerUIBundle")
    expect(html).toContain("/manage/projects")
    // The same page again (made once).
    expect(await (await fetch(`${serve.url}/manage/docs`)).text()).toBe(html)

    const admin = await fetch(`${serve.url}/admin/`)
    expect(admin.status).toBe(200)
    expect(await admin.text()).toMatch(/<script[^>]+src="\/admin\/assets\/app-[^"]+\.js"/)
  })

  it("keeps answering under load once started, within an ordinary Node server's memory", async () => {
    const auth = { authorization: `Bearer ${MANAGEMENT_TOKEN}` }
    let ok = 0
    await Promise.all(Array.from({ length: 16 }, async () => {
      for (let i = 0; i < 125; i++) {
        const r = await fetch(`${serve.url}/manage/projects`, { headers: auth })
        await r.arrayBuffer()
        if (r.status === 200) ok++
      }
    }))
    expect(ok).toBe(2000)
    const rss = rssMb(serve.child.pid!)
    console.log(`[footprint] RSS after 2,000 management reads ${rss.toFixed(1)} MB`)
    expect(rss).toBeLessThanOrEqual(250)
    expect((await fetch(`${serve.url}/live`)).status).toBe(200)
  })
})
