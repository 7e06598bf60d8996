import type { Project, Token, TokenCreated, TokenPage } from "../../../src/domain/models.js"
import { api } from "../api.js"
import { checkbox, field, h } from "../dom.js"
import { formatNumber, fromLocalInput, time, toLocalInput } from "../format.js"
import { budgetFields, spendRows } from "../spend.js"
import {
  buttonLink,
  confirmDialog,
  copyButton,
  type Ctx,
  cursorPagination,
  definitionList,
  empty,
  link,
  pageHeader,
  rateLimitFields,
  rateLimitText,
  type RateLimitValue,
  submitting,
  table,
  tokenBadge,
  tokenStatus,
  withQuery
} from "../ui.js"
import { usageCharts } from "./dashboard.js"

const listProjects = () => api((c) => c.projects.list({ urlParams: {} })) as Promise<ReadonlyArray<Project>>

const limitText = (t: Token) =>
  `${formatNumber(t.request_count)} / ${t.max_requests === null ? "∞" : formatNumber(t.max_requests)}`

const PAGE_SIZE = 25

/** A token's end user and name, as far as it has them (the list's search finds either exactly). */
const labelsCell = (t: Token) =>
  t.user === null && t.name === null
    ? "—"
    : h(
      "span",
      null,
      t.user ?? "",
      t.user !== null && t.name !== null ? " · " : "",
      t.name === null ? "" : h("span", { class: "muted" }, t.name)
    )

export const tokenListPage = async (ctx: Ctx) => {
  const projectId = ctx.query.get("project_id") ?? ""
  const status = ctx.query.get("status") ?? ""
  const search = ctx.query.get("search") ?? ""
  const cursor = ctx.query.get("cursor") ?? ""
  const filters = { project_id: projectId, status, search }
  // One page from the server (newest first, filtered there): the list never loads every token.
  const [projects, page] = await Promise.all([
    listProjects(),
    api((c) =>
      c.tokens.list({
        urlParams: {
          ...(projectId ? { project_id: projectId } : {}),
          ...(status ? { status } : {}),
          ...(search ? { search } : {}),
          ...(cursor ? { cursor } : {}),
          page_size: String(PAGE_SIZE)
        }
      })
    ) as Promise<TokenPage>
  ])
  const names = new Map(projects.map((p) => [p.id, p.name]))
  const projectSelect = h(
    "select",
    { name: "project_id" },
    h("option", { value: "" }, "All projects"),
    projects.map((p) => h("option", { value: p.id, selected: p.id === projectId }, p.name))
  )
  const statusSelect = h(
    "select",
    { name: "status" },
    [["", "Any status"], ["active", "Active"], ["expired", "Expired"], ["revoked", "Revoked"]].map(([v, label]) =>
      h("option", { value: v!, selected: v === status }, label!)
    )
  )
  const searchInput = h("input", {
    type: "search",
    name: "search",
    value: search,
    placeholder: "Start of the token ID, or a user or name",
    autocomplete: "off"
  })
  const apply = () =>
    ctx.navigate(
      withQuery("/admin/tokens", {
        project_id: projectSelect.value,
        status: statusSelect.value,
        search: searchInput.value.trim()
      })
    )
  const form = h(
    "form",
    { class: "filters", "aria-label": "Filter tokens", onsubmit: (e: SubmitEvent) => (e.preventDefault(), apply()) },
    field("Project", projectSelect),
    field("Status", statusSelect),
    field("Search", searchInput),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "secondary" }, "Filter"),
      projectId || status || search ? buttonLink("/admin/tokens", "Clear") : null
    )
  )
  const rows = page.tokens.map((t) => [
    link(`/admin/tokens/${t.id}`, h("code", null, t.token)),
    names.has(t.project_id) ? link(`/admin/projects/${t.project_id}`, names.get(t.project_id)!) : t.project_id,
    labelsCell(t),
    tokenBadge(t),
    h("span", { class: "nowrap" }, limitText(t)),
    formatNumber(t.cache_hit_count),
    time(t.expires_at, "Never"),
    time(t.last_used_at, "Never"),
    time(t.created_at)
  ])
  const p = page.pagination
  return h(
    "div",
    null,
    pageHeader(
      "Tokens",
      buttonLink(withQuery("/admin/tokens/new", { project_id: projectId }), "Generate token", "primary")
    ),
    projectId && names.has(projectId)
      ? h("p", null, "Showing tokens of project ", link(`/admin/projects/${projectId}`, names.get(projectId)!), ".")
      : null,
    form,
    rows.length === 0 && !p.has_prev && !p.has_next
      ? empty(
        "No tokens match.",
        buttonLink(withQuery("/admin/tokens/new", { project_id: projectId }), "Generate a token", "primary")
      )
      : [
        table("Tokens", [
          "Token",
          "Project",
          "User / name",
          "Status",
          "Requests / limit",
          "Cache hits",
          "Expires",
          "Last used",
          "Created"
        ], rows),
        cursorPagination(
          p,
          (next) => withQuery("/admin/tokens", { ...filters, cursor: next }),
          `${rows.length} ${rows.length === 1 ? "token" : "tokens"}, newest first`
        )
      ]
  )
}

const DURATIONS: ReadonlyArray<readonly [number, string]> = [
  [15, "15 minutes"],
  [60, "1 hour"],
  [6 * 60, "6 hours"],
  [24 * 60, "1 day"],
  [7 * 24 * 60, "7 days"],
  [30 * 24 * 60, "30 days"],
  [90 * 24 * 60, "90 days"],
  [365 * 24 * 60, "1 year"]
]

const snippets = (token: string) => {
  const base = `${location.origin}/v1`
  const body = `{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hello"}]}`
  return [
    [
      "curl",
      `curl ${base}/chat/completions \\\n  -H "Authorization: Bearer ${token}" \\\n  -H "Content-Type: application/json" \\\n  -d '${body}'`
    ],
    [
      "Python",
      `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}", api_key="${token}")\nreply = client.chat.completions.create(\n    model="gpt-4o-mini",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(reply.choices[0].message.content)`
    ],
    [
      "Node.js",
      `import OpenAI from "openai"\n\nconst client = new OpenAI({ baseURL: "${base}", apiKey: "${token}" })\nconst reply = await client.chat.completions.create({\n  model: "gpt-4o-mini",\n  messages: [{ role: "user", content: "Hello" }],\n})\nconsole.log(reply.choices[0].message.content)`
    ]
  ] as const
}

const createdView = (
  created: TokenCreated,
  project: Project | undefined,
  rateLimit: RateLimitValue | null
) => {
  const tokenInput = h("input", {
    id: "new-token",
    readonly: true,
    value: created.token,
    class: "mono",
    "aria-describedby": "once-hint"
  })
  return h(
    "div",
    null,
    pageHeader("Token created"),
    h(
      "div",
      { class: "card" },
      h(
        "div",
        { class: "alert warn", id: "once-hint" },
        "Copy the token now: it is shown only this once and cannot be recovered."
      ),
      h(
        "div",
        { class: "field" },
        h("label", { for: "new-token" }, "Token"),
        h("div", { class: "inline" }, tokenInput, copyButton("Copy token", () => created.token, () => tokenInput))
      ),
      definitionList([
        ["Project", project ? link(`/admin/projects/${project.id}`, project.name) : "—"],
        ["Expires", time(created.expires_at)],
        ["Request limit", created.max_requests === undefined ? "Unlimited" : formatNumber(created.max_requests)],
        ["Rate limit", rateLimitText(rateLimit)]
      ]),
      h("h2", null, "Use it"),
      snippets(created.token).map(([name, code]) => {
        const pre = h("pre", { tabindex: "0", "aria-label": `${name} example` }, h("code", null, code))
        return h(
          "div",
          { class: "snippet" },
          h("div", { class: "snippet-head" }, h("h3", null, name), copyButton(`Copy ${name}`, () => code, () => pre)),
          pre
        )
      }),
      h(
        "div",
        { class: "actions" },
        buttonLink(`/admin/tokens/${created.id}`, "View token", "primary"),
        buttonLink("/admin/tokens", "All tokens")
      )
    )
  )
}

export const tokenNewPage = async (ctx: Ctx) => {
  const projects = await listProjects()
  const preselected = ctx.query.get("project_id") ?? ""
  const projectSelect = h(
    "select",
    { name: "project_id", required: true },
    h("option", { value: "" }, "Choose a project"),
    projects.map((p) =>
      h(
        "option",
        { value: p.id, disabled: !p.is_active, selected: p.id === preselected && p.is_active },
        p.is_active ? p.name : `${p.name} — inactive`
      )
    )
  )
  const duration = h(
    "select",
    { name: "duration_minutes" },
    DURATIONS.map(([m, label]) => h("option", { value: String(m), selected: m === 24 * 60 }, label))
  )
  const maxRequests = h("input", {
    name: "max_requests",
    type: "number",
    min: 1,
    step: 1,
    inputmode: "numeric",
    placeholder: "Unlimited"
  })
  const rateLimit = rateLimitFields(
    null,
    "Blank: none. Above it the proxy answers 429 with Retry-After; a project limit applies as well."
  )
  const budget = budgetFields(undefined)
  const error = h("div")
  const page = h("div")
  const form: HTMLFormElement = h(
    "form",
    {
      class: "card form",
      onsubmit: (e: SubmitEvent) => {
        e.preventDefault()
        void submitting(form, error, async () => {
          const limit = maxRequests.value.trim()
          const limitValue = rateLimit.value()
          const created = await api((c) =>
            c.tokens.create({
              payload: {
                project_id: projectSelect.value,
                duration_minutes: Number(duration.value),
                ...(limit !== "" ? { max_requests: Number(limit) } : {}),
                rate_limit: limitValue,
                ...budget.value()
              }
            })
          )
          // The secret is rendered here and nowhere else: not in the URL, history or storage.
          page.replaceChildren(createdView(created, projects.find((p) => p.id === created.project_id), limitValue))
          page.querySelector("h1")?.focus()
        })
      }
    },
    field("Project", projectSelect, "Inactive projects cannot get new tokens."),
    field("Valid for", duration),
    field(
      "Request limit",
      maxRequests,
      "Blank: unlimited. The token is refused (429) once it has made this many requests."
    ),
    rateLimit.element,
    budget.element,
    error,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Generate token"),
      buttonLink("/admin/tokens", "Cancel")
    )
  )
  page.append(pageHeader("Generate token"), form)
  return page
}

export const tokenDetailPage = async (ctx: Ctx) => {
  const id = ctx.params[0]!
  const [token, usage] = await Promise.all([api((c) => c.tokens.get({ path: { id } })), usageCharts({ token_id: id })])
  const project = await api((c) => c.projects.get({ path: { id: token.project_id } })).catch(() => undefined)
  const status = tokenStatus(token)
  const reload = (flash?: string) => ctx.navigate(`/admin/tokens/${id}`, { replace: true, ...(flash ? { flash } : {}) })

  const revoke = h("button", {
    type: "button",
    class: "danger",
    onclick: async () => {
      const ok = await confirmDialog({
        title: "Revoke this token?",
        message: `Are you sure you want to revoke token ${token.token}? Requests with it are refused from now on.`,
        confirm: "Revoke token",
        danger: true
      })
      if (!ok) return
      await api((c) => c.tokens.revoke({ path: { id } }))
      reload("Token revoked.")
    }
  }, "Revoke")
  const reactivate = h("button", {
    type: "button",
    class: "primary",
    onclick: async () => {
      const ok = await confirmDialog({
        title: "Reactivate this token?",
        message: `Reactivate token ${token.token}? Its request limit and expiry stay as they are.`,
        confirm: "Reactivate"
      })
      if (!ok) return
      // Only is_active is sent, so the token keeps its max_requests (docs/admin.md: Reactivate keeps the request limit).
      await api((c) => c.tokens.update({ path: { id }, payload: { is_active: true } }))
      reload("Token reactivated.")
    }
  }, "Reactivate")

  const idCode = h("code", null, token.id)
  return h(
    "div",
    null,
    pageHeader(
      h("span", null, "Token ", h("code", null, token.token)),
      buttonLink(`/admin/tokens/${id}/edit`, "Edit"),
      status === "revoked" ? reactivate : revoke,
      h("button", { type: "button", class: "secondary", onclick: () => reload() }, "Refresh")
    ),
    h(
      "div",
      { class: "card" },
      definitionList([
        ["Token ID", h("span", null, idCode, " ", copyButton("Copy ID", () => token.id, () => idCode))],
        ["Project", project ? link(`/admin/projects/${project.id}`, project.name) : token.project_id],
        ["Name", token.name ?? "—"],
        ["User", token.user ?? "—"],
        [
          "Metadata",
          token.metadata === null ? "—" : Object.entries(token.metadata).map(([k, v]) => `${k}: ${v}`).join(", ")
        ],
        ["Models", token.allowed_models === null ? "Any the project allows" : token.allowed_models.join(", ")],
        ["Created by", token.created_by === "management_api" ? "Management token" : token.created_by],
        [
          "Status",
          h(
            "span",
            null,
            tokenBadge(token),
            status === "expired" ? " Expired: extend it under Edit to use it again." : ""
          )
        ],
        ["Requests", h("span", { id: "request-count" }, `${formatNumber(token.request_count)} requests made`)],
        ["Request limit", token.max_requests === null ? "Unlimited" : formatNumber(token.max_requests)],
        ["Rate limit", rateLimitText(token.rate_limit)],
        ["Cache hits", formatNumber(token.cache_hit_count)],
        [
          "Tokens used",
          `${formatNumber(token.prompt_tokens)} prompt + ${formatNumber(token.completion_tokens)} completion`
        ],
        ...spendRows(token),
        ["Expires", time(token.expires_at, "Never")],
        ["Created", time(token.created_at)],
        ["Last used", time(token.last_used_at, "Never")],
        ...(token.deactivated_at ? [["Revoked", time(token.deactivated_at)] as const] : [])
      ])
    ),
    h("section", { "aria-label": "Usage" }, h("h2", null, "Usage"), usage.charts)
  )
}

export const tokenEditPage = async (ctx: Ctx) => {
  const id = ctx.params[0]!
  const token = await api((c) => c.tokens.get({ path: { id } }))
  const active = h("input", { name: "is_active", checked: token.is_active })
  const maxRequests = h("input", {
    name: "max_requests",
    type: "number",
    min: 1,
    step: 1,
    inputmode: "numeric",
    placeholder: "Unlimited",
    value: token.max_requests === null ? "" : String(token.max_requests)
  })
  const expires = h("input", {
    name: "expires_at",
    type: "datetime-local",
    value: token.expires_at ? toLocalInput(token.expires_at) : ""
  })
  const rateLimit = rateLimitFields(token.rate_limit, "Blank: none.")
  const budget = budgetFields(token)
  const error = h("div")
  const form: HTMLFormElement = h(
    "form",
    {
      class: "card form",
      onsubmit: (e: SubmitEvent) => {
        e.preventDefault()
        void submitting(form, error, async () => {
          const limit = maxRequests.value.trim()
          const newExpiry = expires.value === "" ? undefined : fromLocalInput(expires.value)
          const changedExpiry = newExpiry !== undefined &&
            (token.expires_at === null || toLocalInput(token.expires_at) !== expires.value)
          // Every field is sent explicitly: unticking "Active" revokes; a blank limit means unlimited.
          await api((c) =>
            c.tokens.update({
              path: { id },
              payload: {
                is_active: active.checked,
                max_requests: limit === "" ? null : Number(limit),
                rate_limit: rateLimit.value(),
                ...budget.value(),
                ...(changedExpiry ? { expires_at: newExpiry } : {})
              }
            })
          )
          ctx.navigate(`/admin/tokens/${id}`, { flash: "Token saved." })
        })
      }
    },
    definitionList([
      ["Token", h("code", null, token.token)],
      ["Requests made", formatNumber(token.request_count)]
    ]),
    checkbox("Active", active, "Unticking revokes the token; ticking reactivates it with its limits."),
    field("Request limit", maxRequests, "Blank: unlimited."),
    rateLimit.element,
    budget.element,
    field("Expires (your local time)", expires),
    error,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, "Save"),
      buttonLink(`/admin/tokens/${id}`, "Cancel")
    )
  )
  return h("div", null, pageHeader("Edit token"), form)
}
