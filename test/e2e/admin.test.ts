/**
 * The admin UI in real headless Chromium against a real in-process `serve` (SQLite): what an operator does, end to
 * end. Any console error, uncaught exception or CSP violation fails the suite. With UPDATE_SCREENSHOTS=1 the run
 * also writes docs/img/*.png.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Option, Redacted } from "effect"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import type { Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { buildWeb } from "../../scripts/build-web.mjs"
import { sqliteStore } from "../../src/store/layers.js"
import { type HourlyUsage, Store } from "../../src/store/Store.js"
import { hourOf } from "../../src/store/usage.js"
import { chatCompletion, json, type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type Browser, hasChromium, launch, screenshot } from "./browser.js"

// These run inside the page (page.evaluate); the test project itself has no DOM typings.
declare const document: any
declare const localStorage: { length: number }
declare const sessionStorage: { length: number }
declare const getComputedStyle: (el: unknown) => { outlineStyle: string }
type HTMLElement = { textContent: string | null }

const title = hasChromium
  ? "admin UI in Chromium"
  : "admin UI in Chromium (skipped: /usr/bin/chromium is not installed)"

describe.skipIf(!hasChromium)(title, () => {
  let dir: string
  let dbPath: string
  let server: TestServer
  let mock: MockUpstream
  let secret = ""
  let browser: Browser
  let page: Page

  const api = async (method: string, path: string, body?: unknown) => {
    const r = await fetch(server.url + path, {
      method,
      headers: {
        authorization: `Bearer ${server.token}`,
        ...(body !== undefined ? { "content-type": "application/json" } : {})
      },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {})
    })
    return { status: r.status, json: (r.status === 204 ? undefined : await r.json()) as any }
  }

  const go = (path: string) => page.goto(server.url + path)
  const h1 = (name: string | RegExp) => page.getByRole("heading", { level: 1, name })
  const pathname = () => new URL(page.url()).pathname

  /** Accepts (or dismisses) the app's confirmation dialog. */
  const confirm = async (button: string | RegExp, accept = true) => {
    const dialog = page.getByRole("dialog")
    await dialog.waitFor()
    await dialog.getByRole("button", { name: accept ? button : "Cancel" }).click()
    await dialog.waitFor({ state: "detached" })
  }

  const seedUsage = (deltas: ReadonlyArray<HourlyUsage>) =>
    Effect.runPromise(Effect.flatMap(Store, (s) => s.addHourlyUsage(deltas)).pipe(Effect.provide(sqliteStore(dbPath))))

  beforeAll(async () => {
    await buildWeb()
    dir = mkdtempSync(join(tmpdir(), "llm-proxy-e2e-"))
    dbPath = join(dir, "e2e.db")
    mock = await startMockUpstream()
    mock.setDefault(json(chatCompletion("Hi there", { prompt_tokens: 12, completion_tokens: 5 })))
    server = await startServer(
      testConfig({ _tag: "sqlite", path: dbPath }, { openaiApiUrl: mock.url, usageFlushIntervalMs: 100 })
    )
    browser = await launch({ timezoneId: "Asia/Tokyo" })
    page = browser.page
  }, 120_000)

  afterAll(async () => {
    await browser?.close()
    await server?.close()
    await mock?.close()
    if (dir) rmSync(dir, { recursive: true, force: true })
  })

  it("serves the app with a strict CSP, immutable hashed assets and no-cache HTML", async () => {
    const index = await fetch(`${server.url}/admin/`)
    expect(index.status).toBe(200)
    const csp = index.headers.get("content-security-policy") ?? ""
    expect(csp).toContain("default-src 'none'")
    expect(csp).toContain("script-src 'self'")
    expect(csp).not.toContain("unsafe-inline")
    expect(csp).toContain("frame-ancestors 'none'")
    expect(index.headers.get("cache-control")).toBe("no-cache")
    const html = await index.text()
    const asset = /\/admin\/assets\/app-[A-Z0-9]+\.js/.exec(html)?.[0]
    expect(asset).toBeDefined()
    expect(html).not.toMatch(/https?:\/\//) // nothing from a CDN
    const js = await fetch(server.url + asset!, { headers: { "accept-encoding": "gzip" } })
    expect(js.status).toBe(200)
    expect(js.headers.get("cache-control")).toBe("public, max-age=31536000, immutable")
    expect(js.headers.get("content-type")).toMatch(/^text\/javascript/)
    expect((await fetch(`${server.url}/admin/assets/app-OLD.js`)).status).toBe(404)
    // Deep links get the app.
    const deep = await fetch(`${server.url}/admin/tokens/new`)
    expect(deep.status).toBe(200)
    expect(await deep.text()).toBe(html)
  })

  it("sends an unauthenticated visitor to the login screen and rejects a wrong token", async () => {
    await go("/admin/projects")
    await h1("Sign in").waitFor()
    expect(pathname()).toBe("/admin/login")
    await screenshot(page, "login")
    await browser.expectingStatus([401], async () => {
      await page.getByLabel("Management token").fill("not-the-token")
      await page.getByRole("button", { name: "Sign in" }).click()
      await page.getByRole("alert").filter({ hasText: "Invalid management token" }).waitFor()
    })
    expect(pathname()).toBe("/admin/login")
    expect(await page.context().cookies()).toEqual([])
  })

  it("logs in with the management token into a session cookie that is HttpOnly and SameSite=Strict", async () => {
    await page.getByLabel("Management token").fill(server.token)
    await page.getByRole("button", { name: "Sign in" }).click()
    // Back where the visitor wanted to go.
    await h1("Projects").waitFor()
    expect(pathname()).toBe("/admin/projects")
    const cookies = await page.context().cookies()
    expect(cookies).toHaveLength(1)
    expect(cookies[0]).toMatchObject({ name: "llm_proxy_session", httpOnly: true, sameSite: "Strict", path: "/manage" })
    expect(cookies[0]!.value).not.toContain(server.token)
    const storage = await page.evaluate(() => localStorage.length + sessionStorage.length)
    expect(storage).toBe(0)
  })

  it("refuses a state-changing API call that carries the cookie but no CSRF token", async () => {
    const status = await page.evaluate(async () => {
      const r = await fetch("/manage/projects", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ name: "csrf-victim", api_key: "sk-x" })
      })
      return r.status
    }).catch(() => 0)
    // The console reports the refused request; that is this test's point, not a problem.
    browser.problems.splice(0, browser.problems.length, ...browser.problems.filter((p) => !p.includes("403")))
    expect(status).toBe(403)
    expect((await api("GET", "/manage/projects")).json.map((p: { name: string }) => p.name)).not.toContain(
      "csrf-victim"
    )
  })

  let projectId = ""
  let tokenId = ""

  it("creates a project", async () => {
    await page.getByRole("link", { name: "New project" }).first().click()
    await h1("New project").waitFor()
    await page.getByLabel("Name").fill("Acme chat")
    await page.getByLabel("Provider API key").fill("sk-upstream-secret-key-1234")
    await screenshot(page, "project-new")
    await page.getByRole("button", { name: "Create project" }).click()
    await h1("Acme chat").waitFor()
    projectId = pathname().split("/").pop()!
    expect(projectId).toMatch(/^[0-9a-f-]{36}$/)
    await page.getByRole("status").filter({ hasText: "created" }).waitFor()
    // The key is shown obfuscated only.
    expect(await page.content()).not.toContain("sk-upstream-secret-key-1234")
    expect(await page.getByText("Provider").first().isVisible()).toBe(true)
  })

  it("generates a token shown once, with a copy button and snippets using the server's address", async () => {
    await page.getByRole("link", { name: "Generate token" }).click()
    await h1("Generate token").waitFor()
    expect(await page.getByLabel("Project").inputValue()).toBe(projectId)
    await page.getByLabel("Valid for").selectOption({ label: "7 days" })
    await page.getByLabel("Request limit").fill("5")
    await page.getByLabel("Rate limit", { exact: true }).fill("100")
    await page.getByLabel("Rate limit window").selectOption({ label: "per minute" })
    await page.getByRole("button", { name: "Generate token" }).click()
    await h1("Token created").waitFor()
    secret = await page.getByLabel("Token", { exact: true }).inputValue()
    expect(secret).toMatch(/^sk-[A-Za-z0-9_-]{43}$/)
    expect(await page.getByRole("button", { name: "Copy token" }).isVisible()).toBe(true)
    const curl = await page.getByRole("region", { name: "curl example" }).or(page.locator("pre").first()).first()
      .textContent()
    expect(curl).toContain(`${server.url}/v1/chat/completions`)
    expect(curl).toContain(`Bearer ${secret}`)
    for (const name of ["Python", "Node.js"]) expect(await page.getByRole("heading", { name }).isVisible()).toBe(true)
    await screenshot(page, "token-created")
    await page.getByRole("link", { name: "View token" }).click()
    await h1(/^Token sk-/).waitFor()
    tokenId = pathname().split("/").pop()!
    // Never again in full.
    expect(await page.content()).not.toContain(secret)
    await go("/admin/tokens")
    await h1("Tokens").waitFor()
    expect(await page.content()).not.toContain(secret)
    expect(await page.locator("#request-count").count()).toBe(0)
  })

  it("counts requests made with the token through the proxy on the token page, charts included", async () => {
    await go(`/admin/tokens/${tokenId}`)
    await h1(/^Token sk-/).waitFor()
    expect(await page.locator("#request-count").textContent()).toBe("0 requests made")
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Hello" }] })
      })
      expect(r.status, await r.text()).toBe(200)
    }
    // The same completion twice with the client's cache opt-in: the second is answered from the response cache.
    for (let i = 0; i < 2; i++) {
      const r = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: {
          authorization: `Bearer ${secret}`,
          "content-type": "application/json",
          "cache-control": "public, max-age=60"
        },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Cache me" }] })
      })
      expect(r.status, await r.text()).toBe(200)
    }
    expect(mock.requests).toHaveLength(4)
    expect(mock.requests[0]!.headers.authorization).not.toContain(secret)
    // The counters and rollups are written by batched flushes (the token's counters, its cache hits and the hourly
    // rollups separately): refresh until every figure asserted below shows, not just one of them.
    const cacheHits = page.locator("dt", { hasText: "Cache hits" }).locator("xpath=following-sibling::dd[1]")
    const shown = async () => ({
      chart: await page.getByRole("img", { name: /^Requests, last 24 hours: 5 requests/ }).count(),
      requests: await page.locator("#request-count").textContent(),
      cacheHits: await cacheHits.textContent(),
      tokens: await page.getByText("48 prompt + 20 completion").count()
    })
    // Five answered (four by the provider, one from the cache): all five count against the limit of 5, and the
    // cache hit is also counted as a hit.
    const expected = { chart: 1, requests: "5 requests made", cacheHits: "1", tokens: 1 }
    for (let attempt = 0;; attempt++) {
      await page.getByRole("button", { name: "Refresh" }).click()
      await h1(/^Token sk-/).waitFor()
      const now = await shown()
      if (JSON.stringify(now) === JSON.stringify(expected)) break
      if (attempt > 50) expect(now, "usage never showed up on the token page").toEqual(expected)
      await page.waitForTimeout(100)
    }
    await screenshot(page, "token-detail")
  })

  it("regression: unticking Active on the token form revokes the token", async () => {
    await page.getByRole("link", { name: "Edit" }).click()
    await h1("Edit token").waitFor()
    expect(await page.getByLabel("Request limit").inputValue()).toBe("5")
    expect(await page.getByLabel("Rate limit", { exact: true }).inputValue()).toBe("100")
    await page.getByLabel("Active").uncheck()
    await screenshot(page, "token-edit")
    await page.getByRole("button", { name: "Save" }).click()
    await h1(/^Token sk-/).waitFor()
    await page.getByText("Revoked", { exact: true }).first().waitFor()
    const t = (await api("GET", `/manage/tokens/${tokenId}`)).json
    expect(t.is_active).toBe(false)
    expect(t.max_requests).toBe(5)
    expect(t.rate_limit).toEqual({ requests: 100, window_seconds: 60 })
  })

  it("regression: reactivating keeps max_requests; dismissing a revoke keeps the token active", async () => {
    await page.getByRole("button", { name: "Reactivate" }).click()
    await confirm("Reactivate")
    await page.getByRole("status").filter({ hasText: "reactivated" }).waitFor()
    let t = (await api("GET", `/manage/tokens/${tokenId}`)).json
    expect(t).toMatchObject({ is_active: true, max_requests: 5, rate_limit: { requests: 100, window_seconds: 60 } })
    await page.getByText("100 requests per minute").waitFor()
    await page.getByRole("button", { name: "Revoke" }).click()
    await confirm("Revoke token", false)
    t = (await api("GET", `/manage/tokens/${tokenId}`)).json
    expect(t.is_active).toBe(true)
  })

  it("revokes the token from its page", async () => {
    await page.getByRole("button", { name: "Revoke" }).click()
    await confirm("Revoke token")
    await page.getByRole("status").filter({ hasText: "Token revoked" }).waitFor()
    expect((await api("GET", `/manage/tokens/${tokenId}`)).json.is_active).toBe(false)
    // The very next proxy request with it is refused.
    const r = await fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      headers: { authorization: `Bearer ${secret}`, "content-type": "application/json" },
      body: "{}"
    })
    expect(r.status).toBe(401)
  })

  it("regression: unticking Active on the project form deactivates it; Generate token is then disabled", async () => {
    await go(`/admin/projects/${projectId}/edit`)
    await h1("Edit Acme chat").waitFor()
    await page.getByLabel("Active").uncheck()
    await page.getByLabel("Also revoke all its tokens").waitFor()
    await screenshot(page, "project-edit")
    await page.getByRole("button", { name: "Save" }).click()
    // The exact heading: "Edit Acme chat" would match a substring.
    await h1(/^Acme chat$/).waitFor()
    expect((await api("GET", `/manage/projects/${projectId}`)).json.is_active).toBe(false)
    expect(await page.getByRole("button", { name: "Generate token (project inactive)" }).isDisabled()).toBe(true)
    await page.getByRole("button", { name: "Activate" }).click()
    await page.getByRole("status").filter({ hasText: "Project activated." }).waitFor()
    expect((await api("GET", `/manage/projects/${projectId}`)).json.is_active).toBe(true)
  })

  it("deactivates the project from its page, revoking all its tokens", async () => {
    const extra = (await api("POST", "/manage/tokens", { project_id: projectId, duration_minutes: 60 })).json
    await go(`/admin/projects/${projectId}`)
    await h1("Acme chat").waitFor()
    await page.getByRole("button", { name: "Deactivate" }).click()
    await page.getByRole("dialog").getByLabel(/Also revoke all 1 active tokens/).check()
    await confirm("Deactivate")
    await page.getByRole("status").filter({ hasText: "deactivated and its tokens revoked" }).waitFor()
    await screenshot(page, "project-detail")
    expect((await api("GET", `/manage/projects/${projectId}`)).json.is_active).toBe(false)
    expect((await api("GET", `/manage/tokens/${extra.id}`)).json.is_active).toBe(false)
  })

  it("lists projects with server-side search and pagination", async () => {
    for (let i = 1; i <= 24; i++) {
      const r = await api("POST", "/manage/projects", {
        name: `team-${String(i).padStart(2, "0")}`,
        api_key: `sk-key-${i}`
      })
      expect(r.status).toBe(201)
    }
    await go("/admin/projects")
    await h1("Projects").waitFor()
    await page.getByText("Page 1 of 2 · 25 projects").waitFor()
    await screenshot(page, "projects")
    await page.getByRole("link", { name: "Next →" }).click()
    await page.getByText("Page 2 of 2 · 25 projects").waitFor()
    await page.getByRole("searchbox", { name: "Search projects" }).fill("TEAM-1")
    await page.getByRole("button", { name: "Search" }).click()
    await page.getByText("Page 1 of 1 · 10 projects").waitFor()
    expect(new URL(page.url()).searchParams.get("search")).toBe("TEAM-1")
    expect(await page.getByRole("row").count()).toBe(11)
  })

  it("filters tokens by project and status", async () => {
    const team = (await api("GET", "/manage/projects?search=team-01")).json[0]
    await api("POST", "/manage/tokens", { project_id: team.id, duration_minutes: 60, max_requests: 10 })
    await go(`/admin/tokens?project_id=${projectId}`)
    await h1("Tokens").waitFor()
    expect(await page.locator("tbody tr").count()).toBe(2)
    await page.getByLabel("Status").selectOption("active")
    await page.getByRole("button", { name: "Filter" }).click()
    await page.getByText("No tokens match.").waitFor()
    await page.getByLabel("Project").selectOption({ label: "All projects" })
    await page.getByRole("button", { name: "Filter" }).click()
    await page.locator("tbody tr").first().waitFor()
    expect(await page.locator("tbody tr").count()).toBe(1)
    expect(await page.getByText("0 / 10").isVisible()).toBe(true)
    await page.getByRole("link", { name: "Clear" }).click()
    await page.waitForURL(/\/admin\/tokens$/)
    await page.locator("tbody tr").nth(2).waitFor()
    await screenshot(page, "tokens")
  })

  it("finds tokens by end user or name, and shows their labels", async () => {
    const team = (await api("POST", "/manage/projects", { name: "labelled-sessions", api_key: "sk-labels-key" })).json
    const user = `user-${crypto.randomUUID().slice(0, 8)}`
    const mine = (await api("POST", "/manage/tokens", {
      project_id: team.id,
      duration_minutes: 60,
      user,
      name: "mobile session",
      metadata: { plan: "pro" },
      allowed_models: ["gpt-4o-mini"]
    })).json
    await api("POST", "/manage/tokens", {
      project_id: team.id,
      duration_minutes: 60,
      user: `${user}-other`,
      name: "web session"
    })
    await go("/admin/tokens")
    await h1("Tokens").waitFor()
    await page.getByLabel("Search").fill(user)
    await page.getByRole("button", { name: "Filter" }).click()
    await page.getByText("1 token, newest first").waitFor()
    expect(await page.locator("tbody").textContent()).toContain(`${user} · mobile session`)
    await page.getByLabel("Search").fill("web session")
    await page.getByRole("button", { name: "Filter" }).click()
    await page.locator("tbody tr").filter({ hasText: `${user}-other` }).waitFor()
    expect(await page.locator("tbody tr").count()).toBe(1)
    await go(`/admin/tokens/${mine.id}`)
    await page.getByText("plan: pro").waitFor()
    const details = await page.locator("dl").first().textContent()
    expect(details).toContain(user)
    expect(details).toContain("mobile session")
    expect(details).toContain("gpt-4o-mini")
    expect(details).toContain("Management token")
  })

  it("pages 5,000 tokens from the server: older, newer, oldest, search by id; no request loads every token", async () => {
    const bulk = (await api("POST", "/manage/projects", { name: "bulk-sessions", api_key: "sk-bulk-key" })).json
    // Written straight into the database, a second apart and older than everything else.
    await Effect.runPromise(
      Effect.flatMap(
        SqlClient.SqlClient,
        (sql) =>
          sql`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
          INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, created_at)
          SELECT printf('%08x-0000-4000-8000-%012d', i, i), 'bulk-' || i, 'sk-bulk****' || printf('%04d', i), ${bulk.id},
            '2099-01-01T00:00:00.000Z', strftime('%Y-%m-%dT%H:%M:%fZ', '2020-01-01', '+' || i || ' seconds') FROM n`
      ).pipe(Effect.provide(sqliteStore(dbPath)))
    )
    const listings: Array<URL> = []
    const record = (request: { url: () => string }) => {
      const url = new URL(request.url())
      if (url.pathname.startsWith("/manage/tokens") && !/\/manage\/tokens\/[0-9a-f-]{36}$/.test(url.pathname)) {
        listings.push(url)
      }
    }
    page.on("request", record)
    try {
      await go(`/admin/tokens?project_id=${bulk.id}`)
      await h1("Tokens").waitFor()
      await page.getByText("25 tokens, newest first").waitFor()
      expect(await page.locator("tbody tr").count()).toBe(25)
      expect(await page.locator("tbody tr").first().textContent()).toContain("sk-bulk****5000")
      await page.getByRole("link", { name: "Older →" }).click()
      await page.locator("tbody tr").first().filter({ hasText: "sk-bulk****4975" }).waitFor()
      expect(new URL(page.url()).searchParams.get("cursor")).not.toBeNull()
      await page.getByRole("link", { name: "← Newer" }).click()
      await page.locator("tbody tr").first().filter({ hasText: "sk-bulk****5000" }).waitFor()
      await page.getByRole("link", { name: "Oldest »" }).click()
      await page.locator("tbody tr").last().filter({ hasText: "sk-bulk****0001" }).waitFor()
      expect(await page.getByRole("link", { name: "Older →" }).count()).toBe(0)
      await page.getByRole("link", { name: "« Newest" }).click()
      await page.locator("tbody tr").first().filter({ hasText: "sk-bulk****5000" }).waitFor()
      await page.getByLabel("Search").fill("00000abc-")
      await page.getByRole("button", { name: "Filter" }).click()
      await page.getByText("1 token, newest first").waitFor()
      expect(await page.locator("tbody").textContent()).toContain("sk-bulk****2748") // 0xabc
      await screenshot(page, "tokens-paged")

      await page.getByRole("link", { name: "Dashboard" }).click()
      await h1("Dashboard").waitFor()
      await page.getByText(/^\d[\d,]*\+? expired · \d[\d,]*\+? revoked$/).waitFor()
    } finally {
      page.off("request", record)
    }
    // Every token listing asked for one page; the dashboard asked for counts only.
    const lists = listings.filter((u) => u.pathname === "/manage/tokens")
    expect(lists.length).toBeGreaterThanOrEqual(6)
    for (const u of lists) expect(u.searchParams.get("page_size")).toBe("25")
    expect(listings.some((u) => u.pathname === "/manage/tokens/counts")).toBe(true)
  })

  it("token limit: set to 10, cleared to unlimited (∞ in the list); Revoke all tokens asks first", async () => {
    const team = (await api("GET", "/manage/projects?search=team-01")).json[0]
    const token = (await api("GET", `/manage/tokens?project_id=${team.id}`)).json[0]
    await go(`/admin/tokens/${token.id}/edit`)
    await h1("Edit token").waitFor()
    await page.getByLabel("Request limit").fill("")
    await page.getByRole("button", { name: "Save" }).click()
    await h1(/^Token sk-/).waitFor()
    expect((await api("GET", `/manage/tokens/${token.id}`)).json.max_requests).toBeNull()
    await go(`/admin/tokens?project_id=${team.id}`)
    await page.getByText("0 / ∞").waitFor()

    await go(`/admin/projects/${team.id}`)
    await h1("team-01").waitFor()
    await page.getByRole("button", { name: "Revoke all tokens" }).click()
    const dialog = page.getByRole("dialog")
    expect(await dialog.textContent()).toContain("revoke ALL tokens")
    await confirm("Revoke all tokens", false)
    expect((await api("GET", `/manage/tokens/${token.id}`)).json.is_active).toBe(true)
    await page.getByRole("button", { name: "Revoke all tokens" }).click()
    await confirm("Revoke all tokens")
    await page.getByRole("status").filter({ hasText: "1 token revoked (0 were already revoked)." }).waitFor()
    expect(pathname()).toBe(`/admin/projects/${team.id}`)
    expect((await api("GET", `/manage/tokens/${token.id}`)).json.is_active).toBe(false)
  })

  it("shows the dashboard from the per-hour rollups, with times in the browser's time zone", async () => {
    const hour = 3_600_000
    const deltas: Array<HourlyUsage> = []
    for (let i = 0; i < 24 * 30; i += 5) {
      deltas.push({
        hour: hourOf(Date.now() - i * hour),
        projectId,
        tokenId,
        requests: 5 + (i % 17),
        cacheHits: i % 3,
        errors: 0,
        promptTokens: 400 + (i % 11) * 30,
        completionTokens: 200 + (i % 7) * 20
      })
    }
    await seedUsage(deltas)
    await page.getByRole("link", { name: "Dashboard" }).click()
    await h1("Dashboard").waitFor()
    await page.getByText("Times in Asia/Tokyo.").waitFor()
    expect(await page.getByRole("img", { name: /^Requests, last 30 days/ }).count()).toBe(1)
    expect(await page.getByRole("img", { name: /^Tokens used, last 24 hours/ }).count()).toBe(1)
    await page.getByText("Cache hit ratio (24 h)").waitFor()
    await screenshot(page, "dashboard")
    // A <time> shows local time and keeps the UTC instant.
    await go(`/admin/projects/${projectId}`)
    const created = page.locator("time[data-local-time]").first()
    const iso = await created.getAttribute("datetime")
    expect(iso).toMatch(/Z$/)
    const text = await created.textContent()
    const tokyo = new Intl.DateTimeFormat("en-US", { dateStyle: "medium", timeStyle: "short", timeZone: "Asia/Tokyo" })
    expect(text).toBe(tokyo.format(new Date(iso!)))
  })

  it("is usable at phone width", async () => {
    await page.setViewportSize({ width: 390, height: 844 })
    await go("/admin/")
    await h1("Dashboard").waitFor()
    const overflow = await page.evaluate(() =>
      document.documentElement.scrollWidth - document.documentElement.clientWidth
    )
    expect(overflow).toBeLessThanOrEqual(0)
    await screenshot(page, "dashboard-phone")
    await go("/admin/tokens")
    await h1("Tokens").waitFor()
    expect(await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth))
      .toBeLessThanOrEqual(0)
    await screenshot(page, "tokens-phone")
    await page.setViewportSize({ width: 1280, height: 800 })
  })

  it("can be driven by keyboard: focus moves to each new page's heading; skip link; visible focus ring", async () => {
    await go("/admin/")
    await h1("Dashboard").waitFor()
    expect(await page.evaluate(() => document.activeElement?.tagName)).toBe("H1")
    // Start from the top of the document, as a keyboard user arriving on the page does.
    await page.evaluate(() => {
      document.body.tabIndex = -1
      document.body.focus()
      document.body.removeAttribute("tabindex")
    })
    await page.keyboard.press("Tab")
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe("Skip to content")
    await page.keyboard.press("Tab") // brand
    await page.keyboard.press("Tab")
    const focused = await page.evaluate(() => {
      const el = document.activeElement as HTMLElement
      return { text: el.textContent, outline: getComputedStyle(el).outlineStyle }
    })
    expect(focused.text).toBe("Dashboard")
    expect(focused.outline).toBe("solid")
    await page.keyboard.press("Tab")
    await page.keyboard.press("Enter")
    await h1("Projects").waitFor()
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe("Projects")
  })

  it("searches the audit log for what was done: login (also the refused one), revoke, deactivation", async () => {
    await page.getByRole("link", { name: "Audit" }).click()
    await h1("Audit log").waitFor()
    const headers = await page.locator("thead th").allTextContents()
    expect(headers.map((t) => t.toLowerCase())).toEqual([
      "time",
      "action",
      "actor",
      "outcome",
      "count",
      "ip address",
      "actions"
    ])
    await screenshot(page, "audit")
    // Events are written by a background batch writer: search until they are there.
    const searchFor = async (fill: () => Promise<void>, minRows: number) => {
      for (let attempt = 0;; attempt++) {
        await fill()
        await page.getByRole("button", { name: "Search" }).click()
        await h1("Audit log").waitFor()
        const rows = await page.locator("tbody tr").count()
        if (rows >= minRows) return rows
        if (attempt > 30) throw new Error("audit events never appeared")
        await page.waitForTimeout(150)
      }
    }
    await searchFor(() => page.getByRole("searchbox", { name: "Search" }).fill("token.revoke"), 1)
    expect(new URL(page.url()).searchParams.get("search")).toBe("token.revoke")
    expect(await page.locator("tbody").textContent()).toContain("token.revoke")
    await page.getByRole("link", { name: "Clear" }).click()
    await page.waitForURL(/\/admin\/audit$/)
    await h1("Audit log").waitFor()
    expect(await page.getByRole("searchbox", { name: "Search" }).inputValue()).toBe("")

    const denied = await searchFor(async () => {
      await page.getByLabel("Action").fill("admin.login")
      await page.getByLabel("Outcome").selectOption("denied")
    }, 1)
    expect(denied).toBe(1)
    // Refused logins are aggregated per address and minute: the row says how many it stands for.
    expect(await page.locator("tbody tr td").nth(4).textContent()).toMatch(/^(1|× \d+)$/)
    await page.getByLabel("Outcome").selectOption("success")
    expect(await searchFor(async () => {}, 1)).toBe(1)

    // The deactivation: a project.update event for the project, with what changed.
    await page.getByLabel("Outcome").selectOption("")
    await page.getByLabel("Action").fill("project.update")
    await page.getByLabel("Project ID").fill(projectId)
    await searchFor(async () => {}, 1)
    await page.getByRole("link", { name: /^Details/ }).first().click()
    await h1("Audit event").waitFor()
    for (const section of ["Basic information", "Network information", "Identifiers", "Additional details"]) {
      await page.getByRole("heading", { level: 2, name: section }).waitFor()
    }
    const details = await page.getByRole("region", { name: "Details as JSON" }).or(page.locator("pre")).first()
      .textContent()
    expect(JSON.parse(details!)).toMatchObject({ is_active: false, origin: "admin-ui" })
    expect(await page.locator("main").textContent()).not.toContain(server.token)
    await screenshot(page, "audit-detail")
    await page.getByRole("link", { name: "Back to list" }).click()
    await h1("Audit log").waitFor()
  })

  it("pages the audit log by cursor on the server: older, newer, oldest", async () => {
    await Effect.runPromise(
      Effect.flatMap(
        SqlClient.SqlClient,
        (sql) =>
          sql`WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60)
          INSERT INTO audit_events (id, timestamp, action, actor, outcome, request_id)
          SELECT printf('00000000-0000-7000-8000-%012d', i), strftime('%Y-%m-%dT%H:%M:%fZ', '2021-06-01', '+' || i || ' minutes'),
            'bulk.event', 'bulk-actor', 'success', printf('bulk-%02d', i) FROM n`
      ).pipe(Effect.provide(sqliteStore(dbPath)))
    )
    const listings: Array<URL> = []
    const record = (request: { url: () => string }) => {
      const url = new URL(request.url())
      if (url.pathname === "/manage/audit") listings.push(url)
    }
    page.on("request", record)
    try {
      await go("/admin/audit?actor=bulk-actor")
      await h1("Audit log").waitFor()
      await page.getByText("25 events, newest first").waitFor()
      const row = (which: "first" | "last", n: number) =>
        page.locator(`tbody tr:${which}-child a[href$="${String(n).padStart(12, "0")}"]`).waitFor()
      await row("first", 60)
      await page.getByRole("link", { name: "Older →" }).click()
      await row("first", 35)
      expect(new URL(page.url()).searchParams.get("cursor")).not.toBeNull()
      await page.getByRole("link", { name: "Oldest »" }).click()
      await row("last", 1)
      await row("first", 25)
      expect(await page.getByRole("link", { name: "Older →" }).count()).toBe(0)
      await page.getByRole("link", { name: "← Newer" }).click()
      await row("first", 50)
      await page.getByRole("link", { name: "« Newest" }).click()
      await row("first", 60)
      expect(await page.getByRole("link", { name: "← Newer" }).count()).toBe(0)
    } finally {
      page.off("request", record)
    }
    expect(listings.length).toBeGreaterThanOrEqual(5)
    for (const u of listings) {
      expect(u.searchParams.get("page_size")).toBe("25")
      expect(u.searchParams.has("cursor")).toBe(true)
    }
  })

  it("returns to the sign-in screen when the session ends on the server, then back to the page", async () => {
    await go(`/admin/projects/${projectId}`)
    await h1("Acme chat").waitFor()
    // End the session behind the page's back, as the idle timeout would (logging out needs the session's CSRF token).
    const cookie = (await page.context().cookies()).find((c) => c.name === "llm_proxy_session")!
    const pair = `${cookie.name}=${cookie.value}`
    const csrf = ((await (await fetch(`${server.url}/manage/session`, { headers: { cookie: pair } })).json()) as {
      csrf_token: string
    }).csrf_token
    const out = await fetch(`${server.url}/manage/session`, {
      method: "DELETE",
      headers: { cookie: pair, "x-csrf-token": csrf }
    })
    expect(out.status).toBe(204)
    await browser.expectingStatus([401], async () => {
      await page.getByRole("link", { name: "Edit" }).click()
      await h1("Sign in").waitFor()
    })
    await page.getByRole("status").filter({ hasText: "Your session has ended" }).waitFor()
    await page.getByLabel("Management token").fill(server.token)
    await page.getByRole("button", { name: "Sign in" }).click()
    await h1("Edit Acme chat").waitFor()
  })

  it("a restart of the server does not sign the user out (sessions live in the database)", async () => {
    await go("/admin/tokens")
    await h1("Tokens").waitFor()
    const port = Number(new URL(server.url).port)
    await server.close()
    server = await startServer(testConfig({ _tag: "sqlite", path: dbPath }, {
      listen: { host: "127.0.0.1", port },
      managementToken: Option.some(Redacted.make(server.token)),
      openaiApiUrl: mock.url,
      usageFlushIntervalMs: 100
    }))
    await go("/admin/projects")
    await h1("Projects").waitFor()
    expect(pathname()).toBe("/admin/projects")
  })

  it("spend: a budget set on the token form, bars that fill as answers are charged, the spend chart", async () => {
    const project =
      (await api("POST", "/manage/projects", { name: "spend-e2e", api_key: "sk-spend-e2e-0123456789abcdef" })).json
    const created = (await api("POST", "/manage/tokens", { project_id: project.id, duration_minutes: 60 })).json
    await go(`/admin/tokens/${created.id}/edit`)
    await h1("Edit token").waitFor()
    // gpt-4o-mini at the built-in $0.15 / $0.60 per million: 12 prompt + 5 completion tokens = $0.0000048 an answer.
    await page.getByLabel("Budget (USD)").fill("0.000009")
    await page.getByLabel("Budget period").selectOption("day")
    await page.getByRole("button", { name: "Save" }).click()
    await h1(/^Token sk-/).waitFor()
    expect((await api("GET", `/manage/tokens/${created.id}`)).json).toMatchObject({
      max_cost_usd: 0.000009,
      budget_period: "day"
    })
    const statuses: Array<number> = []
    for (let i = 0; i < 3; i++) {
      const r = await fetch(`${server.url}/v1/chat/completions`, {
        method: "POST",
        headers: { authorization: `Bearer ${created.token}`, "content-type": "application/json" },
        body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "Spend" }] })
      })
      statuses.push(r.status)
      await r.arrayBuffer()
      // A budgeted token's charge is written at once, in the background: let it land before the next request.
      for (
        let k = 0;
        k < 50 && (await api("GET", `/manage/tokens/${created.id}`)).json.tokens_used < 17 * Math.min(i + 1, 2);
        k++
      ) {
        await page.waitForTimeout(20)
      }
    }
    expect(statuses).toEqual([200, 200, 429])
    await go(`/admin/tokens/${created.id}`)
    await h1(/^Token sk-/).waitFor()
    const bar = page.getByRole("progressbar", { name: "USD budget used" })
    await bar.waitFor()
    expect(await bar.getAttribute("value")).toBe("0.000009")
    await page.getByText("$0.000010 of $0.000009 today (UTC) — used up: requests are refused").waitFor()
    await page.getByText("$0.000010 · 34 tokens since creation").waitFor()
    await go("/admin")
    await page.getByRole("img", { name: /^Spend \(USD\), last 24 hours: \$0\.0000\d\d  ?in total/ }).first().waitFor()
  })

  it("logs out: the session ends on the server and protected pages redirect to login again", async () => {
    const cookie = (await page.context().cookies()).find((c) => c.name === "llm_proxy_session")!
    // The page sends its CSRF token with the logout, as with every state-changing request.
    const logoutRequest = page.waitForRequest((r) => r.url().endsWith("/manage/session") && r.method() === "DELETE")
    await page.getByRole("button", { name: "Sign out" }).click()
    expect((await logoutRequest).headers()["x-csrf-token"]).toMatch(/^[A-Za-z0-9_-]{43}$/)
    await h1("Sign in").waitFor()
    // The old cookie no longer opens anything.
    const replay = await fetch(`${server.url}/manage/projects`, {
      headers: { cookie: `${cookie.name}=${cookie.value}` }
    })
    expect(replay.status).toBe(401)
    await page.getByRole("status").filter({ hasText: "signed out" }).waitFor()
    expect(await page.context().cookies()).toEqual([])
    await go("/admin/tokens")
    await h1("Sign in").waitFor()
    expect(pathname()).toBe("/admin/login")
    let events: Array<{ action: string; outcome: string; actor: string }> = []
    // One from the session ended behind the page's back, one from Sign out.
    for (let i = 0; i < 50 && events.length < 2; i++) {
      events = (await api("GET", "/manage/audit?action=admin.logout")).json.events
      if (events.length < 2) await new Promise((r) => setTimeout(r, 100))
    }
    expect(events).toMatchObject([
      { action: "admin.logout", outcome: "success", actor: "admin" },
      { action: "admin.logout", outcome: "success", actor: "admin" }
    ])
  })

  it("shows the API documentation (Swagger UI) under its strict policy, framing refused", async () => {
    const r = await page.goto(`${server.url}/manage/docs`)
    expect(r?.headers()["x-frame-options"]).toBe("DENY")
    expect(r?.headers()["content-security-policy"]).not.toContain("unsafe-inline")
    await page.locator(".swagger-ui .info .title").filter({ hasText: "llm-proxy management API" }).waitFor()
    // The operations are rendered and one opens.
    const list = page.locator(".opblock-summary-path").filter({ hasText: /^\/manage\/projects$/ }).first()
    await list.waitFor()
    await list.click()
    await page.locator(".opblock-body").first().waitFor()
    expect(await page.locator(".opblock").count()).toBeGreaterThan(10)
  })

  it("after 10 wrong tokens the sign-in screen says to wait (429), even for the right token", async () => {
    // Last, as it locks this address out of the management API for a minute.
    for (let i = 0; i < 10; i++) {
      const r = await fetch(`${server.url}/manage/session`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ token: `guess-${i}` })
      })
      expect(r.status).toBe(401)
    }
    await go("/admin/login")
    await h1("Sign in").waitFor()
    await browser.expectingStatus([429], async () => {
      await page.getByLabel("Management token").fill(server.token)
      await page.getByRole("button", { name: "Sign in" }).click()
      await page.getByRole("alert").filter({ hasText: "Too many failed sign-ins from your address" }).waitFor()
    })
    expect(pathname()).toBe("/admin/login")
    expect(await page.context().cookies()).toEqual([])
  })

  it("saw no console error, page error or CSP violation", () => {
    expect(browser.problems).toEqual([])
  })
})
