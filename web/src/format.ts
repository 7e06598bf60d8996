/** Times are shown in the browser's time zone; the exact UTC instant is in `datetime` and the tooltip. */
import { h } from "./dom.js"

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" })
const hourFmt = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" })
const dayFmt = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" })
const numberFmt = new Intl.NumberFormat()

export const timeZone = Intl.DateTimeFormat().resolvedOptions().timeZone

export const formatDateTime = (iso: string) => dateTime.format(new Date(iso))
export const formatHour = (ms: number) => hourFmt.format(new Date(ms))
export const formatDay = (ms: number) => dayFmt.format(new Date(ms))
export const formatNumber = (n: number) => numberFmt.format(n)

/** A `<time>` in local time, or `fallback` when there is no time. */
export const time = (iso: string | null | undefined, fallback = "—") =>
  iso ? h("time", { datetime: iso, title: `${iso} (UTC)`, "data-local-time": true }, formatDateTime(iso)) : fallback

/** `2026-01-02T03:04` in local time, for `<input type="datetime-local">`. */
export const toLocalInput = (iso: string) => {
  const d = new Date(iso)
  const pad = (n: number) => String(n).padStart(2, "0")
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`
}

export const fromLocalInput = (value: string): string | undefined => {
  const ms = new Date(value).getTime()
  return Number.isFinite(ms) ? new Date(ms).toISOString() : undefined
}
