/** Shared building blocks of the screens: headings, badges, tables, copy buttons, confirmation dialogs. */
import type { Token } from "../../src/domain/models.js"
import { type Child, h } from "./dom.js"
import { formatNumber } from "./format.js"

export interface Ctx {
  readonly params: ReadonlyArray<string>
  readonly query: URLSearchParams
  readonly navigate: (path: string, options?: { replace?: boolean; flash?: string }) => void
}

export const link = (href: string, ...children: ReadonlyArray<Child>) => h("a", { href }, ...children)

export const buttonLink = (href: string, text: string, kind = "secondary") =>
  h("a", { href, class: `button ${kind}` }, text)

export const pageHeader = (title: Child, ...actions: ReadonlyArray<Child>) =>
  h("div", { class: "page-header" }, h("h1", { tabindex: "-1" }, title), h("div", { class: "actions" }, ...actions))

export const badge = (text: string, kind: "ok" | "off" | "warn" | "info") => h("span", { class: `badge ${kind}` }, text)

export type TokenStatus = "active" | "expired" | "revoked"

export const tokenStatus = (t: Token, now = Date.now()): TokenStatus =>
  !t.is_active ? "revoked" : t.expires_at !== null && Date.parse(t.expires_at) <= now ? "expired" : "active"

export const tokenBadge = (t: Token) => {
  const s = tokenStatus(t)
  return s === "active" ? badge("Active", "ok") : s === "expired" ? badge("Expired", "warn") : badge("Revoked", "off")
}

export const projectBadge = (active: boolean) => (active ? badge("Active", "ok") : badge("Inactive", "off"))

export const table = (caption: string, headers: ReadonlyArray<string>, rows: ReadonlyArray<ReadonlyArray<Child>>) =>
  h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      null,
      h("caption", { class: "visually-hidden" }, caption),
      h("thead", null, h("tr", null, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", null, rows.map((r) => h("tr", null, r.map((c) => h("td", null, c)))))
    )
  )

export const empty = (text: string, ...actions: ReadonlyArray<Child>) =>
  h("div", { class: "empty" }, h("p", null, text), ...actions)

export const errorBox = (message: string) => h("div", { class: "alert error", role: "alert" }, message)

export const definitionList = (items: ReadonlyArray<readonly [string, Child]>) =>
  h("dl", { class: "details" }, items.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]))

/** Copies `text()`; says so in a live region. Falls back to selecting the text where the Clipboard API is absent. */
export const copyButton = (
  label: string,
  text: () => string,
  fallbackTarget?: () => HTMLInputElement | HTMLElement
) => {
  const status = h("span", { class: "copy-status", role: "status" })
  const button = h("button", {
    type: "button",
    class: "secondary small",
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(text())
        status.textContent = "Copied"
      } catch {
        const target = fallbackTarget?.()
        if (target instanceof HTMLInputElement) target.select()
        else if (target) window.getSelection()?.selectAllChildren(target)
        status.textContent = "Select and copy with Ctrl+C"
      }
      setTimeout(() => (status.textContent = ""), 3000)
    }
  }, label)
  return h("span", { class: "copy" }, button, status)
}

/**
 * A modal confirmation (native <dialog>: focus is trapped, Esc cancels). `extra` is shown inside, e.g. a checkbox
 * the caller reads after confirmation.
 */
export const confirmDialog = (options: {
  title: string
  message: string
  confirm: string
  danger?: boolean
  extra?: HTMLElement
}): Promise<boolean> =>
  new Promise((resolve) => {
    const cancel = h("button", { type: "button", class: "secondary" }, "Cancel")
    const ok = h("button", { type: "button", class: options.danger ? "danger" : "primary" }, options.confirm)
    const titleId = `dlg-${Math.random().toString(36).slice(2)}`
    const dialog = h(
      "dialog",
      { "aria-labelledby": titleId, class: "confirm" },
      h("h2", { id: titleId }, options.title),
      h("p", null, options.message),
      options.extra,
      h("div", { class: "actions" }, cancel, ok)
    )
    const done = (result: boolean) => {
      dialog.close()
      dialog.remove()
      resolve(result)
    }
    cancel.addEventListener("click", () => done(false))
    ok.addEventListener("click", () => done(true))
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault()
      done(false)
    })
    document.body.appendChild(dialog)
    dialog.showModal()
    cancel.focus()
  })

/** Disables a form's controls while `work` runs and shows its failure in the form. */
export const submitting = async (form: HTMLFormElement, errorSlot: HTMLElement, work: () => Promise<void>) => {
  const controls = [...form.querySelectorAll<HTMLButtonElement | HTMLInputElement>("button, input, select, textarea")]
  const wasDisabled = controls.map((c) => c.disabled)
  controls.forEach((c) => (c.disabled = true))
  form.setAttribute("aria-busy", "true")
  errorSlot.replaceChildren()
  try {
    await work()
  } catch (e) {
    errorSlot.replaceChildren(errorBox(e instanceof Error ? e.message : String(e)))
    ;(errorSlot.firstElementChild as HTMLElement | null)?.focus?.()
  } finally {
    controls.forEach((c, i) => (c.disabled = wasDisabled[i]!))
    form.removeAttribute("aria-busy")
  }
}

export const pagination = (
  p: {
    page: number
    total_pages: number
    total_count: number
    has_next: boolean
    has_prev: boolean
    total_exact?: boolean | undefined
  },
  hrefFor: (page: number) => string,
  noun: string
) => {
  // Counting stops at a cap (total_exact false): say "more than", and page on while there is a next page.
  const exact = p.total_exact !== false
  const total = exact ? `${p.total_count} ${noun}` : `more than ${formatNumber(p.total_count)} ${noun}`
  return h(
    "nav",
    { class: "pagination", "aria-label": "Pagination" },
    p.has_prev
      ? h("a", { href: hrefFor(p.page - 1), rel: "prev", class: "button secondary small" }, "← Previous")
      : null,
    h("span", null, exact ? `Page ${p.page} of ${Math.max(1, p.total_pages)} · ${total}` : `Page ${p.page} · ${total}`),
    p.has_next ? h("a", { href: hrefFor(p.page + 1), rel: "next", class: "button secondary small" }, "Next →") : null
  )
}

/**
 * Paging by cursor (token and audit lists): newest, newer, older, oldest. `hrefFor(undefined)` is the first page;
 * `last` the oldest.
 */
export const cursorPagination = (
  p: { has_next: boolean; has_prev: boolean; next_cursor: string | null; prev_cursor: string | null },
  hrefFor: (cursor: string | undefined) => string,
  shown: string
) =>
  h(
    "nav",
    { class: "pagination", "aria-label": "Pagination" },
    p.has_prev ? h("a", { href: hrefFor(undefined), class: "button secondary small" }, "« Newest") : null,
    p.prev_cursor !== null
      ? h("a", { href: hrefFor(p.prev_cursor), rel: "prev", class: "button secondary small" }, "← Newer")
      : null,
    h("span", null, shown),
    p.next_cursor !== null
      ? h("a", { href: hrefFor(p.next_cursor), rel: "next", class: "button secondary small" }, "Older →")
      : null,
    p.has_next ? h("a", { href: hrefFor("last"), class: "button secondary small" }, "Oldest »") : null
  )

/** A count that may have stopped at its cap. */
export const countText = (
  c: { count: number; exact: boolean }
) => (c.exact ? formatNumber(c.count) : `${formatNumber(c.count)}+`)

export const withQuery = (path: string, params: Record<string, string | number | undefined>) => {
  const q = new URLSearchParams()
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== "") q.set(k, String(v))
  const s = q.toString()
  return s === "" ? path : `${path}?${s}`
}

const WINDOWS: ReadonlyArray<readonly [number, string]> = [
  [1, "second"],
  [60, "minute"],
  [3600, "hour"],
  [86400, "day"]
]

/** A window rate limit as the API shows it: a request count, an LLM-token count or both. */
export type RateLimitValue = {
  readonly requests?: number | undefined
  readonly tokens?: number | undefined
  readonly window_seconds: number
}

export const rateLimitText = (r: RateLimitValue | null | undefined) => {
  if (!r) return "None"
  const unit = WINDOWS.find(([s]) => s === r.window_seconds)
  const counts = [
    r.requests !== undefined ? `${r.requests} requests` : undefined,
    r.tokens !== undefined ? `${r.tokens} tokens` : undefined
  ].filter((x) => x !== undefined).join(", ")
  return unit ? `${counts} per ${unit[1]}` : `${counts} per ${r.window_seconds} s`
}

/** "N requests per [second|minute|hour|day]" inputs; blank = no limit. */
export const rateLimitFields = (current: RateLimitValue | null | undefined, hint: string) => {
  const requestsId = `rl-${Math.random().toString(36).slice(2)}`
  const requests = h("input", {
    id: requestsId,
    name: "rate_limit_requests",
    type: "number",
    min: 1,
    step: 1,
    inputmode: "numeric",
    placeholder: "No limit",
    value: current?.requests !== undefined ? String(current.requests) : "",
    "aria-describedby": `${requestsId}-hint`
  })
  const known = current ? WINDOWS.some(([s]) => s === current.window_seconds) : true
  const window = h(
    "select",
    { name: "rate_limit_window", "aria-label": "Rate limit window" },
    WINDOWS.map(([s, label]) =>
      h("option", { value: String(s), selected: current ? current.window_seconds === s : s === 60 }, `per ${label}`)
    ),
    !known && current
      ? h("option", { value: String(current.window_seconds), selected: true }, `per ${current.window_seconds} s`)
      : null
  )
  const element = h(
    "div",
    { class: "field" },
    h("label", { for: requestsId }, "Rate limit"),
    h("div", { class: "inline" }, requests, window),
    h("small", { id: `${requestsId}-hint`, class: "hint" }, hint)
  )
  // A token-per-minute count set through the API is kept as it is (the form edits the request count only).
  const value = (): RateLimitValue | null => {
    const n = requests.value.trim() === "" ? undefined : Number(requests.value)
    const tokens = current?.tokens
    if (n === undefined && tokens === undefined) return null
    return {
      ...(n !== undefined ? { requests: n } : {}),
      ...(tokens !== undefined ? { tokens } : {}),
      window_seconds: Number(window.value)
    }
  }
  return { element, value }
}
