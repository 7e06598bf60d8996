/**
 * Headless Debian Chromium driven by playwright-core, with a fresh profile per run, and a page wrapper that
 * records every console error, uncaught exception and CSP violation so a test can fail on any of them.
 */
import { existsSync, mkdirSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { type BrowserContext, chromium, type Page } from "playwright-core"

// Runs inside the page; the test project has no DOM typings.
declare const document: {
  addEventListener: (type: string, f: (e: { violatedDirective: string; blockedURI: string }) => void) => void
}

export const CHROMIUM = "/usr/bin/chromium"
export const hasChromium = existsSync(CHROMIUM)

export const LAUNCH_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync"
]

export interface Browser {
  readonly context: BrowserContext
  readonly page: Page
  /** Console errors, page errors and CSP violations seen so far (tests assert it stays empty). */
  readonly problems: Array<string>
  /** Runs `f` while console messages about a refused request with one of `statuses` are expected, not problems. */
  readonly expectingStatus: <A>(statuses: ReadonlyArray<number>, f: () => Promise<A>) => Promise<A>
  readonly close: () => Promise<void>
}

export const launch = async (options: { timezoneId?: string } = {}): Promise<Browser> => {
  const profile = mkdtempSync(join(tmpdir(), "llm-proxy-chromium-"))
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: LAUNCH_ARGS,
    viewport: { width: 1280, height: 800 },
    timezoneId: options.timezoneId ?? "Asia/Tokyo",
    locale: "en-US"
  })
  const problems: Array<string> = []
  let expected: ReadonlyArray<number> = []
  const page = context.pages()[0] ?? (await context.newPage())
  // Runs before the app's scripts; init scripts are not subject to the page's CSP.
  await context.addInitScript(() => {
    document.addEventListener("securitypolicyviolation", (e) => {
      console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI}`)
    })
  })
  page.on("console", (msg) => {
    if (msg.type() !== "error") return
    const text = msg.text()
    const refused = /status of (\d{3})/.exec(text)
    if (refused && expected.includes(Number(refused[1]))) return
    problems.push(`console error: ${text}`)
  })
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`))
  return {
    context,
    page,
    problems,
    expectingStatus: async (statuses, f) => {
      expected = statuses
      try {
        return await f()
      } finally {
        expected = []
      }
    },
    close: async () => {
      await context.close()
      rmSync(profile, { recursive: true, force: true })
    }
  }
}

/** docs/img/<name>.png, only when UPDATE_SCREENSHOTS=1 (so `npm test` leaves the tree clean). */
export const screenshot = async (page: Page, name: string) => {
  if (process.env["UPDATE_SCREENSHOTS"] !== "1") return
  mkdirSync("docs/img", { recursive: true })
  await page.screenshot({ path: `docs/img/${name}.png`, fullPage: true, animations: "disabled" })
}
