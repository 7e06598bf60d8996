import type { Project, UsageHour } from "../../../src/domain/models.js"
import { api } from "../api.js"
import { barChart, dailyBars, hourlyBars } from "../chart.js"
import { h } from "../dom.js"
import { formatNumber, timeZone } from "../format.js"
import { formatUsd } from "../spend.js"
import { buttonLink, countText, type Ctx, pageHeader } from "../ui.js"

const DAY = 86_400_000

const card = (label: string, value: string, note?: string) =>
  h(
    "div",
    { class: "card stat" },
    h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value" }, value),
    note ? h("div", { class: "muted" }, note) : null
  )

const ratio = (hits: number, requests: number) => (requests === 0 ? "—" : `${((hits / requests) * 100).toFixed(1)} %`)

const sum = (hours: ReadonlyArray<UsageHour>, since: number) => {
  const t = { requests: 0, tokens: 0, cacheHits: 0, errors: 0, cost: 0 }
  for (const p of hours) {
    if (Date.parse(p.hour) < since) continue
    t.requests += p.requests
    t.tokens += p.prompt_tokens + p.completion_tokens
    t.cacheHits += p.cache_hits
    t.errors += p.errors
    t.cost += p.cost_usd
  }
  return t
}

/** The usage charts of one scope (everything, a project or a token). */
export const usageCharts = async (scope: { project_id?: string; token_id?: string }) => {
  const now = Date.now()
  // 31 days of hours covers "today and the 29 days before" in any time zone.
  const series = await api((c) =>
    c.usage.series({ urlParams: { since: new Date(now - 31 * DAY).toISOString(), ...scope } })
  )
  const day = sum(series.hours, now - DAY)
  const month = sum(series.hours, now - 30 * DAY)
  return {
    day,
    month,
    charts: h(
      "div",
      { class: "charts" },
      barChart("Requests, last 24 hours", hourlyBars(series.hours, (p) => p.requests, "requests"), "requests"),
      barChart(
        "Tokens used, last 24 hours",
        hourlyBars(series.hours, (p) => p.prompt_tokens + p.completion_tokens, "tokens"),
        "tokens"
      ),
      barChart("Requests, last 30 days", dailyBars(series.hours, "requests", "requests"), "requests"),
      barChart("Tokens used, last 30 days", dailyBars(series.hours, "tokens", "tokens"), "tokens"),
      barChart(
        "Spend (USD), last 24 hours",
        hourlyBars(series.hours, (p) => p.cost_usd, "", formatUsd),
        "",
        formatUsd,
        1e-6
      ),
      barChart("Spend (USD), last 30 days", dailyBars(series.hours, "cost", "", formatUsd), "", formatUsd, 1e-6)
    )
  }
}

export const dashboardPage = async (_ctx: Ctx) => {
  // Token counts come from the server (each counted up to a cap), never from loading every token.
  const [projects, counts, usage] = await Promise.all([
    api((c) => c.projects.list({ urlParams: {} })) as Promise<ReadonlyArray<Project>>,
    api((c) => c.tokens.counts({ urlParams: {} })),
    usageCharts({})
  ])
  const activeProjects = projects.filter((p) => p.is_active).length
  return h(
    "div",
    null,
    pageHeader(
      "Dashboard",
      buttonLink("/admin/projects/new", "New project", "primary"),
      buttonLink("/admin/tokens/new", "Generate token")
    ),
    h(
      "section",
      { class: "stats", "aria-label": "Summary" },
      card("Projects", formatNumber(projects.length), `${activeProjects} active`),
      card(
        "Active tokens",
        countText(counts.active),
        `${countText(counts.expired)} expired · ${countText(counts.revoked)} revoked`
      ),
      card("Requests (24 h)", formatNumber(usage.day.requests), `${formatNumber(usage.month.requests)} in 30 days`),
      card("Tokens used (24 h)", formatNumber(usage.day.tokens), `${formatNumber(usage.month.tokens)} in 30 days`),
      card("Spend (24 h)", formatUsd(usage.day.cost), `${formatUsd(usage.month.cost)} in 30 days`),
      card(
        "Cache hit ratio (24 h)",
        ratio(usage.day.cacheHits, usage.day.requests),
        `${ratio(usage.month.cacheHits, usage.month.requests)} in 30 days`
      )
    ),
    h(
      "section",
      { "aria-label": "Usage" },
      h("h2", null, "Usage"),
      h("p", { class: "muted" }, `Times in ${timeZone}.`),
      usage.charts
    )
  )
}
