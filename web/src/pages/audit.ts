import { AuditActions, type AuditEvent, OUTCOMES } from "../../../src/domain/audit.js"
import type { CursorPagination } from "../../../src/domain/models.js"
import { api } from "../api.js"
import { type Child, field, h } from "../dom.js"
import { fromLocalInput, time, toLocalInput } from "../format.js"
import {
  badge,
  buttonLink,
  type Ctx,
  cursorPagination,
  definitionList,
  empty,
  link,
  pageHeader,
  table,
  withQuery
} from "../ui.js"

const FILTERS = [
  "search",
  "action",
  "outcome",
  "actor",
  "project_id",
  "token_id",
  "client_ip",
  "start_time",
  "end_time"
] as const
type Filter = (typeof FILTERS)[number]

export const outcomeBadge = (outcome: string) =>
  outcome === "success"
    ? badge("Success", "ok")
    : outcome === "failure"
    ? badge("Failure", "off")
    : outcome === "denied"
    ? badge("Denied", "off")
    : badge("Error", "warn")

const actionBadge = (action: string) => h("span", { class: "badge info" }, action)

/** Denials are aggregated per client IP, reason and minute: one row can stand for many requests. */
const countCell = (e: AuditEvent) => {
  const n = e.count ?? 1
  return n > 1 ? h("strong", { title: `${n} requests in this minute from this address` }, `× ${n}`) : "1"
}

export const auditListPage = async (ctx: Ctx) => {
  const values = Object.fromEntries(FILTERS.map((f) => [f, ctx.query.get(f) ?? ""])) as Record<Filter, string>
  // Paged by cursor on the server: any page costs the same, at a million events too.
  const cursor = ctx.query.get("cursor") ?? ""
  const params = { ...Object.fromEntries(Object.entries(values).filter(([, v]) => v !== "")), page_size: "25", cursor }
  const result = await api((c) => c.audit.list({ urlParams: params }))

  const search = h("input", {
    type: "search",
    name: "search",
    value: values.search,
    placeholder: "Search events (action, actor, IP, path, request id, …)"
  })
  const actions = h(
    "datalist",
    { id: "audit-actions" },
    Object.values(AuditActions).map((a) => h("option", { value: a }))
  )
  const action = h("input", { name: "action", value: values.action, list: "audit-actions", autocomplete: "off" })
  const outcome = h(
    "select",
    { name: "outcome" },
    h("option", { value: "" }, "Any outcome"),
    OUTCOMES.map((o) => h("option", { value: o, selected: o === values.outcome }, o))
  )
  const actor = h("input", { name: "actor", value: values.actor, autocomplete: "off" })
  const clientIp = h("input", { name: "client_ip", value: values.client_ip, autocomplete: "off" })
  const projectId = h("input", { name: "project_id", value: values.project_id, autocomplete: "off" })
  const start = h("input", {
    name: "start_time",
    type: "datetime-local",
    value: values.start_time ? toLocalInput(values.start_time) : ""
  })
  const end = h("input", {
    name: "end_time",
    type: "datetime-local",
    value: values.end_time ? toLocalInput(values.end_time) : ""
  })
  const current = (): Record<string, string | undefined> => ({
    search: search.value.trim(),
    action: action.value.trim(),
    outcome: outcome.value,
    actor: actor.value.trim(),
    client_ip: clientIp.value.trim(),
    project_id: projectId.value.trim(),
    token_id: values.token_id,
    start_time: start.value ? fromLocalInput(start.value) : undefined,
    end_time: end.value ? fromLocalInput(end.value) : undefined
  })
  const anyFilter = FILTERS.some((f) => values[f] !== "")
  const form = h(
    "form",
    {
      role: "search",
      class: "filters",
      onsubmit: (e: SubmitEvent) => {
        e.preventDefault()
        ctx.navigate(withQuery("/admin/audit", current()))
      }
    },
    field("Search", search),
    field("Action", action),
    actions,
    field("Outcome", outcome),
    field("Actor", actor),
    field("Client IP", clientIp),
    field("Project ID", projectId),
    field("From (your local time)", start),
    field("To (your local time)", end),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Search"),
      anyFilter ? buttonLink("/admin/audit", "Clear") : null
    )
  )
  const rows: Array<Array<Child>> = result.events.map((e) => [
    time(e.timestamp),
    actionBadge(e.action),
    e.actor,
    outcomeBadge(e.outcome),
    countCell(e),
    e.client_ip ?? "—",
    link(
      `/admin/audit/${encodeURIComponent(e.id)}`,
      "Details",
      h("span", { class: "visually-hidden" }, ` of ${e.action} at ${e.timestamp}`)
    )
  ])
  const p = result.pagination as CursorPagination
  return h(
    "div",
    null,
    pageHeader("Audit log"),
    form,
    rows.length === 0
      ? empty(anyFilter ? "No audit events match." : "No audit events yet.")
      : [
        table("Audit events", ["Time", "Action", "Actor", "Outcome", "Count", "IP address", "Actions"], rows),
        cursorPagination(
          p,
          (next) => withQuery("/admin/audit", { ...current(), cursor: next }),
          `${rows.length} events, newest first`
        )
      ]
  )
}

const metadataView = (e: AuditEvent) => {
  if (e.metadata === undefined) return h("p", { class: "muted" }, "None.")
  let text = e.metadata
  try {
    text = JSON.stringify(JSON.parse(e.metadata), null, 2)
  } catch {
    // shown as stored
  }
  return h("pre", { tabindex: "0", "aria-label": "Details as JSON" }, h("code", null, text))
}

export const auditDetailPage = async (ctx: Ctx) => {
  const id = decodeURIComponent(ctx.params[0]!)
  const e = await api((c) => c.audit.get({ path: { id } }))
  const section = (title: string, content: Child) => h("section", { class: "card" }, h("h2", null, title), content)
  return h(
    "div",
    { class: "stack" },
    pageHeader("Audit event", buttonLink("/admin/audit", "Back to list")),
    section(
      "Basic information",
      definitionList([
        ["Event ID", h("code", null, e.id)],
        ["Timestamp", time(e.timestamp)],
        ["Action", actionBadge(e.action)],
        ["Actor", e.actor],
        ["Outcome", outcomeBadge(e.outcome)],
        [
          "Requests",
          (e.count ?? 1) > 1 ? `${e.count} (aggregated: the fields below are those of the first request)` : "1"
        ]
      ])
    ),
    section(
      "Network information",
      definitionList([
        ["IP address", e.client_ip ?? "—"],
        ["User agent", e.user_agent ?? "—"],
        ["HTTP method", e.method ?? "—"],
        ["Endpoint", e.path ? h("code", null, e.path) : "—"]
      ])
    ),
    section(
      "Identifiers",
      definitionList([
        ["Project", e.project_id ? link(`/admin/projects/${e.project_id}`, h("code", null, e.project_id)) : "—"],
        ["Token", e.token_id ? link(`/admin/tokens/${e.token_id}`, h("code", null, e.token_id)) : "—"],
        ["Request ID", e.request_id ? h("code", null, e.request_id) : "—"],
        ["Correlation ID", e.correlation_id ? h("code", null, e.correlation_id) : "—"]
      ])
    ),
    e.reason ? section("Error information", h("p", null, e.reason)) : null,
    section("Additional details", metadataView(e))
  )
}
