/**
 * Bar charts as SVG built with DOM calls (no inline styles, so they work under the CSP). Each chart has a text
 * summary for screen readers and a tooltip per bar.
 */
import type { UsageHour } from "../../src/domain/models.js"
import { type Child, h, svg } from "./dom.js"
import { formatDay, formatHour, formatNumber } from "./format.js"

export interface Bar {
  readonly label: string
  readonly title: string
  readonly value: number
}

const HOUR = 3_600_000

/** `count` hourly buckets ending with the current hour, zeros where there was no usage. */
export const hourlyBuckets = (hours: ReadonlyArray<UsageHour>, count: number, now = Date.now()) => {
  const end = Math.floor(now / HOUR) * HOUR
  const byHour = new Map(hours.map((p) => [Date.parse(p.hour), p]))
  return Array.from({ length: count }, (_, i) => {
    const start = end - (count - 1 - i) * HOUR
    return { start, point: byHour.get(start) }
  })
}

/** `count` local calendar days ending today, summing the hours that fall in each. */
export const dailyBuckets = (hours: ReadonlyArray<UsageHour>, count: number, now = Date.now()) => {
  const today = new Date(now)
  today.setHours(0, 0, 0, 0)
  const starts = Array.from({ length: count }, (_, i) => {
    const d = new Date(today)
    d.setDate(d.getDate() - (count - 1 - i))
    return d.getTime()
  })
  const sums = starts.map((start) => ({ start, requests: 0, tokens: 0, cacheHits: 0, cost: 0 }))
  for (const p of hours) {
    const t = Date.parse(p.hour)
    for (let i = sums.length - 1; i >= 0; i--) {
      if (t >= sums[i]!.start) {
        sums[i]!.requests += p.requests
        sums[i]!.tokens += p.prompt_tokens + p.completion_tokens
        sums[i]!.cacheHits += p.cache_hits
        sums[i]!.cost += p.cost_usd
        break
      }
    }
  }
  return sums
}

export const hourlyBars = (
  hours: ReadonlyArray<UsageHour>,
  metric: (p: UsageHour) => number,
  unit: string,
  format: (n: number) => string = formatNumber
): Array<Bar> =>
  hourlyBuckets(hours, 24).map(({ start, point }) => {
    const value = point ? metric(point) : 0
    return { label: formatHour(start), title: `${formatHour(start)}: ${format(value)} ${unit}`.trimEnd(), value }
  })

export const dailyBars = (
  hours: ReadonlyArray<UsageHour>,
  metric: "requests" | "tokens" | "cost",
  unit: string,
  format: (n: number) => string = formatNumber
): Array<Bar> =>
  dailyBuckets(hours, 30).map((d) => ({
    label: formatDay(d.start),
    title: `${formatDay(d.start)}: ${format(d[metric])} ${unit}`.trimEnd(),
    value: d[metric]
  }))

const W = 600
const H = 160
const PAD_BOTTOM = 22
const PAD_LEFT = 36

export const barChart = (
  title: string,
  bars: ReadonlyArray<Bar>,
  unit: string,
  format: (n: number) => string = formatNumber,
  /** The smallest top of the scale (1 for counts; amounts of money can be far smaller). */
  floor = 1
): HTMLElement => {
  const max = Math.max(floor, ...bars.map((b) => b.value))
  const total = bars.reduce((s, b) => s + b.value, 0)
  const slot = (W - PAD_LEFT) / Math.max(1, bars.length)
  const plot = H - PAD_BOTTOM
  const labelEvery = Math.ceil(bars.length / 8)
  const children: Array<Child> = [
    svg("line", { x1: PAD_LEFT, y1: plot, x2: W, y2: plot, class: "axis" }),
    svg("text", { x: PAD_LEFT - 6, y: 12, class: "tick", "text-anchor": "end" }, format(max)),
    svg("text", { x: PAD_LEFT - 6, y: plot, class: "tick", "text-anchor": "end" }, "0")
  ]
  bars.forEach((b, i) => {
    const height = Math.round((b.value / max) * (plot - 8))
    const x = PAD_LEFT + i * slot + slot * 0.15
    children.push(
      svg(
        "rect",
        {
          x: x.toFixed(1),
          y: plot - height,
          width: (slot * 0.7).toFixed(1),
          height: Math.max(height, b.value > 0 ? 1 : 0),
          class: "bar"
        },
        svg("title", null, b.title)
      )
    )
    if (i % labelEvery === 0) {
      children.push(
        svg("text", { x: (x + slot * 0.35).toFixed(1), y: H - 6, class: "tick", "text-anchor": "middle" }, b.label)
      )
    }
  })
  const summary = `${title}: ${format(total)} ${unit} in total, at most ${format(max)} per bar`.replace(/ {2,}/g, " ")
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", null, title, " ", h("span", { class: "muted" }, `(${format(total)} ${unit})`.replace(" )", ")"))),
    svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": summary, preserveAspectRatio: "none" }, children)
  )
}
