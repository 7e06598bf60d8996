import type { Project, ProjectPage } from "../../../src/domain/models.js"
import { api } from "../api.js"
import { checkbox, field, h } from "../dom.js"
import { time } from "../format.js"
import { budgetFields, type BudgetValue, spendRows } from "../spend.js"
import {
  buttonLink,
  confirmDialog,
  copyButton,
  countText,
  type Ctx,
  definitionList,
  empty,
  link,
  pageHeader,
  pagination,
  projectBadge,
  rateLimitFields,
  rateLimitText,
  type RateLimitValue,
  submitting,
  table,
  withQuery
} from "../ui.js"
import { usageCharts } from "./dashboard.js"

const PAGE_SIZE = 20

export const projectListPage = async (ctx: Ctx) => {
  const search = ctx.query.get("search") ?? ""
  const page = Math.max(1, Number(ctx.query.get("page") ?? "1") || 1)
  const result =
    (await api((c) =>
      c.projects.list({ urlParams: { search, page: String(page), page_size: String(PAGE_SIZE) } })
    )) as ProjectPage
  const input = h("input", { type: "search", name: "search", value: search, placeholder: "Name or project id" })
  const form = h(
    "form",
    {
      role: "search",
      class: "filters",
      onsubmit: (e: SubmitEvent) => {
        e.preventDefault()
        ctx.navigate(withQuery("/admin/projects", { search: input.value.trim() }))
      }
    },
    field("Search projects", input),
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "secondary" }, "Search"),
      search ? buttonLink("/admin/projects", "Clear") : null
    )
  )
  const rows = result.projects.map((p) => [
    link(`/admin/projects/${p.id}`, p.name),
    p.provider,
    h("code", null, p.api_key),
    projectBadge(p.is_active),
    time(p.created_at)
  ])
  return h(
    "div",
    null,
    pageHeader("Projects", buttonLink("/admin/projects/new", "New project", "primary")),
    form,
    rows.length === 0
      ? empty(
        search ? `No project matches “${search}”.` : "No projects yet.",
        buttonLink("/admin/projects/new", "Create the first project", "primary")
      )
      : [
        table("Projects", ["Name", "Provider", "API key", "Status", "Created"], rows),
        pagination(result.pagination, (n) => withQuery("/admin/projects", { search, page: n }), "projects")
      ]
  )
}

const projectForm = (options: {
  project?: Project
  submitLabel: string
  onSubmit: (values: {
    name: string
    apiKey: string
    provider: string
    isActive: boolean
    revokeTokens: boolean
    rateLimit: RateLimitValue | null
    budget: BudgetValue
  }) => Promise<void>
}) => {
  const p = options.project
  const name = h("input", { name: "name", required: true, maxlength: 255, value: p?.name ?? "", autocomplete: "off" })
  const apiKey = h("input", {
    name: "api_key",
    type: "password",
    autocomplete: "off",
    maxlength: 4096,
    required: p === undefined
  })
  const provider = h("input", {
    name: "provider",
    value: p?.provider ?? "",
    placeholder: "openai",
    autocomplete: "off"
  })
  const active = h("input", { name: "is_active", checked: p?.is_active ?? true })
  const rateLimit = rateLimitFields(p?.rate_limit, "For all the project's tokens together. Blank: none.")
  const budget = budgetFields(p)
  const revoke = h("input", { name: "revoke_tokens" })
  const revokeField = checkbox(
    "Also revoke all its tokens",
    revoke,
    "Revoked tokens stay revoked when the project is activated again."
  )
  const syncRevoke = () => {
    revokeField.hidden = active.checked || !(p?.is_active ?? true)
    if (revokeField.hidden) revoke.checked = false
  }
  active.addEventListener("change", syncRevoke)
  const error = h("div")
  const form: HTMLFormElement = h(
    "form",
    {
      class: "card form",
      onsubmit: (e: SubmitEvent) => {
        e.preventDefault()
        void submitting(form, error, () =>
          options.onSubmit({
            name: name.value.trim(),
            apiKey: apiKey.value,
            provider: provider.value.trim(),
            isActive: active.checked,
            revokeTokens: revoke.checked,
            rateLimit: rateLimit.value(),
            budget: budget.value()
          }))
      }
    },
    field("Name", name),
    field(
      p ? "Provider API key (leave blank to keep the current one)" : "Provider API key",
      apiKey,
      p ? `Current key: ${p.api_key}` : "Stored encrypted when ENCRYPTION_KEY is set; never shown again in full."
    ),
    field("Provider", provider, "A provider name from the server's configuration; blank means the default (openai)."),
    rateLimit.element,
    budget.element,
    p
      ? [
        checkbox("Active", active, "Inactive projects refuse every proxy request and cannot get new tokens."),
        revokeField
      ]
      : null,
    error,
    h(
      "div",
      { class: "actions" },
      h("button", { type: "submit", class: "primary" }, options.submitLabel),
      buttonLink(p ? `/admin/projects/${p.id}` : "/admin/projects", "Cancel")
    )
  )
  syncRevoke()
  return form
}

export const projectNewPage = (ctx: Ctx) =>
  h(
    "div",
    null,
    pageHeader("New project"),
    projectForm({
      submitLabel: "Create project",
      onSubmit: async (v) => {
        const created = await api((c) =>
          c.projects.create({
            payload: {
              name: v.name,
              api_key: v.apiKey,
              ...(v.provider ? { provider: v.provider } : {}),
              rate_limit: v.rateLimit,
              ...v.budget
            }
          })
        )
        ctx.navigate(`/admin/projects/${created.id}`, { flash: `Project “${created.name}” created.` })
      }
    })
  )

export const projectEditPage = async (ctx: Ctx) => {
  const id = ctx.params[0]!
  const project = await api((c) => c.projects.get({ path: { id } }))
  return h(
    "div",
    null,
    pageHeader(`Edit ${project.name}`),
    projectForm({
      project,
      submitLabel: "Save",
      onSubmit: async (v) => {
        // is_active is always sent: unticking "Active" must deactivate (docs/admin.md).
        await api((c) =>
          c.projects.update({
            path: { id },
            payload: {
              ...(v.name !== project.name ? { name: v.name } : {}),
              ...(v.apiKey !== "" ? { api_key: v.apiKey } : {}),
              ...(v.provider !== "" && v.provider !== project.provider ? { provider: v.provider } : {}),
              is_active: v.isActive,
              rate_limit: v.rateLimit,
              ...v.budget,
              ...(v.revokeTokens && !v.isActive ? { revoke_tokens: true } : {})
            }
          })
        )
        ctx.navigate(`/admin/projects/${id}`, { flash: "Project saved." })
      }
    })
  )
}

export const projectDetailPage = async (ctx: Ctx) => {
  const id = ctx.params[0]!
  const [project, counts, usage] = await Promise.all([
    api((c) => c.projects.get({ path: { id } })),
    api((c) => c.tokens.counts({ urlParams: { project_id: id } })),
    usageCharts({ project_id: id })
  ])
  const reload = (flash: string) => ctx.navigate(`/admin/projects/${id}`, { replace: true, flash })
  // Revoking takes every token not yet revoked; the dialog names the active (unexpired) ones.
  const activeTokens = countText(counts.active)
  const revocable = counts.active.count + counts.expired.count

  const toggle = h("button", {
    type: "button",
    class: project.is_active ? "danger" : "primary",
    onclick: async () => {
      if (project.is_active) {
        const revoke = h("input", { name: "revoke_tokens" })
        const ok = await confirmDialog({
          title: `Deactivate ${project.name}?`,
          message: "Every proxy request with this project's tokens is refused until the project is activated again.",
          confirm: "Deactivate",
          danger: true,
          extra: checkbox(`Also revoke all ${activeTokens} active tokens`, revoke)
        })
        if (!ok) return
        await api((c) =>
          c.projects.update({
            path: { id },
            payload: { is_active: false, ...(revoke.checked ? { revoke_tokens: true } : {}) }
          })
        )
        reload(revoke.checked ? "Project deactivated and its tokens revoked." : "Project deactivated.")
      } else {
        await api((c) => c.projects.update({ path: { id }, payload: { is_active: true } }))
        reload("Project activated.")
      }
    }
  }, project.is_active ? "Deactivate" : "Activate")

  const revokeAll = h("button", {
    type: "button",
    class: "danger",
    disabled: revocable === 0,
    onclick: async () => {
      const ok = await confirmDialog({
        title: "Revoke all tokens?",
        message:
          `Are you sure you want to revoke ALL tokens for project “${project.name}”? Applications using them stop working at once.`,
        confirm: "Revoke all tokens",
        danger: true
      })
      if (!ok) return
      const r = await api((c) => c.projects.revokeTokens({ path: { id } }))
      const n = (k: number, one: string, many: string) => `${k} ${k === 1 ? one : many}`
      reload(
        `${n(r.revoked_count, "token", "tokens")} revoked (${
          n(r.already_revoked_count, "was", "were")
        } already revoked).`
      )
    }
  }, "Revoke all tokens")

  const idCode = h("code", null, project.id)
  return h(
    "div",
    null,
    pageHeader(
      project.name,
      project.is_active
        ? buttonLink(`/admin/tokens/new?project_id=${id}`, "Generate token", "primary")
        : h("button", { type: "button", class: "primary", disabled: true }, "Generate token (project inactive)"),
      buttonLink(`/admin/projects/${id}/edit`, "Edit"),
      toggle
    ),
    h(
      "div",
      { class: "card" },
      definitionList([
        ["Project ID", h("span", null, idCode, " ", copyButton("Copy ID", () => project.id, () => idCode))],
        [
          "Status",
          h(
            "span",
            null,
            projectBadge(project.is_active),
            " ",
            project.is_active
              ? "The project and its tokens are active."
              : "The project is inactive: every API request with its tokens is refused."
          )
        ],
        ["Provider", project.provider],
        ["Rate limit", rateLimitText(project.rate_limit)],
        ...spendRows(project),
        ["API key", h("code", null, project.api_key)],
        ["Created", time(project.created_at)],
        ["Last updated", time(project.updated_at)],
        ...(project.deactivated_at ? [["Deactivated", time(project.deactivated_at)] as const] : [])
      ])
    ),
    h(
      "section",
      { "aria-label": "Tokens" },
      h("h2", null, "Tokens"),
      h(
        "p",
        null,
        `${activeTokens} active, ${countText(counts.expired)} expired, ${countText(counts.revoked)} revoked. `,
        link(`/admin/tokens?project_id=${id}`, "View this project's tokens")
      ),
      h("div", { class: "actions" }, revokeAll)
    ),
    h("section", { "aria-label": "Usage" }, h("h2", null, "Usage"), usage.charts)
  )
}
