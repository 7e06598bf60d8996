/**
 * The admin UI: a small single-page app under /admin with real URLs (history API). Each screen is a function that
 * loads what it shows through the typed API client and returns its DOM.
 */
import { api, setCsrfToken, whenUnauthorized } from "./api.js"
import { h, replace } from "./dom.js"
import { auditDetailPage, auditListPage } from "./pages/audit.js"
import { dashboardPage } from "./pages/dashboard.js"
import { loginPage } from "./pages/login.js"
import { projectDetailPage, projectEditPage, projectListPage, projectNewPage } from "./pages/projects.js"
import { tokenDetailPage, tokenEditPage, tokenListPage, tokenNewPage } from "./pages/tokens.js"
import { type Ctx, errorBox } from "./ui.js"

type Section = "dashboard" | "projects" | "tokens" | "audit"

interface Route {
  readonly pattern: RegExp
  readonly title: string
  readonly section?: Section
  readonly public?: boolean
  readonly render: (ctx: Ctx) => Promise<Node> | Node
}

const UUID = "([0-9a-fA-F-]{36})"

const routes: ReadonlyArray<Route> = [
  { pattern: /^\/admin\/login$/, title: "Sign in", public: true, render: (ctx) => loginPage(ctx, session) },
  { pattern: /^\/admin\/?$/, title: "Dashboard", section: "dashboard", render: dashboardPage },
  { pattern: /^\/admin\/projects$/, title: "Projects", section: "projects", render: projectListPage },
  { pattern: /^\/admin\/projects\/new$/, title: "New project", section: "projects", render: projectNewPage },
  {
    pattern: new RegExp(`^/admin/projects/${UUID}$`),
    title: "Project",
    section: "projects",
    render: projectDetailPage
  },
  {
    pattern: new RegExp(`^/admin/projects/${UUID}/edit$`),
    title: "Edit project",
    section: "projects",
    render: projectEditPage
  },
  { pattern: /^\/admin\/tokens$/, title: "Tokens", section: "tokens", render: tokenListPage },
  { pattern: /^\/admin\/tokens\/new$/, title: "Generate token", section: "tokens", render: tokenNewPage },
  { pattern: new RegExp(`^/admin/tokens/${UUID}$`), title: "Token", section: "tokens", render: tokenDetailPage },
  {
    pattern: new RegExp(`^/admin/tokens/${UUID}/edit$`),
    title: "Edit token",
    section: "tokens",
    render: tokenEditPage
  },
  { pattern: /^\/admin\/audit$/, title: "Audit log", section: "audit", render: auditListPage },
  { pattern: /^\/admin\/audit\/([^/]+)$/, title: "Audit event", section: "audit", render: auditDetailPage }
]

export interface SessionState {
  authenticated: boolean
  login: (csrf: string) => void
}

const session: SessionState = {
  authenticated: false,
  login: (csrf) => {
    session.authenticated = true
    setCsrfToken(csrf)
  }
}

const app = document.getElementById("app")!
let flash: string | undefined
let renderSeq = 0

const navigate = (path: string, options: { replace?: boolean; flash?: string } = {}) => {
  if (options.flash !== undefined) flash = options.flash
  if (options.replace) history.replaceState(null, "", path)
  else history.pushState(null, "", path)
  void render()
}

const logout = async () => {
  try {
    await api((c) => c.session.logout(), { login: true })
  } finally {
    session.authenticated = false
    setCsrfToken(undefined)
    navigate("/admin/login", { flash: "You are signed out." })
  }
}

const navLink = (href: string, text: string, section: Section, current: Section | undefined) =>
  h("a", { href, ...(section === current ? { "aria-current": "page" } : {}) }, text)

const shell = (current: Section | undefined, content: Node) =>
  h(
    "div",
    { class: "shell" },
    h(
      "header",
      { class: "topbar" },
      h("a", { href: "/admin/", class: "brand" }, "llm-proxy"),
      session.authenticated
        ? h(
          "nav",
          { "aria-label": "Main" },
          navLink("/admin/", "Dashboard", "dashboard", current),
          navLink("/admin/projects", "Projects", "projects", current),
          navLink("/admin/tokens", "Tokens", "tokens", current),
          navLink("/admin/audit", "Audit", "audit", current),
          h("button", {
            type: "button",
            class: "secondary small",
            id: "logout",
            onclick: () => void logout()
          }, "Sign out")
        )
        : null
    ),
    h("main", { id: "main", tabindex: "-1" }, content)
  )

const render = async () => {
  const seq = ++renderSeq
  const path = location.pathname
  const route = routes.find((r) => r.pattern.test(path))
  if (!route) {
    replace(
      app,
      shell(
        undefined,
        h(
          "div",
          null,
          h("h1", { tabindex: "-1" }, "Not found"),
          h("p", null, h("a", { href: "/admin/" }, "Go to the dashboard"))
        )
      )
    )
    return
  }
  if (!route.public && !session.authenticated) {
    navigate(`/admin/login?next=${encodeURIComponent(path + location.search)}`, { replace: true })
    return
  }
  if (route.public && session.authenticated) {
    navigate("/admin/", { replace: true })
    return
  }
  document.title = `${route.title} · llm-proxy admin`
  const message = flash
  flash = undefined
  const body = h("div", { class: "page", "aria-busy": "true" }, h("p", { class: "muted" }, "Loading…"))
  replace(app, shell(route.section, body))
  const ctx: Ctx = { params: route.pattern.exec(path)!.slice(1), query: new URLSearchParams(location.search), navigate }
  let content: Node
  try {
    content = await route.render(ctx)
  } catch (e) {
    if ((e as { status?: number }).status === 401) return // whenUnauthorized has moved on to the login screen
    content = h(
      "div",
      null,
      h("h1", { tabindex: "-1" }, route.title),
      errorBox(e instanceof Error ? e.message : String(e))
    )
  }
  if (seq !== renderSeq) return // a newer navigation won
  body.removeAttribute("aria-busy")
  replace(body, message ? h("div", { class: "alert ok", role: "status" }, message) : null, content)
  // Move focus to the new page's heading so keyboard and screen-reader users start there.
  const heading = body.querySelector<HTMLElement>("h1")
  heading?.focus({ preventScroll: true })
  body.dispatchEvent(new CustomEvent("page-ready", { bubbles: true }))
  document.documentElement.dataset.page = path
}

// Same-origin /admin links navigate inside the app.
document.addEventListener("click", (event) => {
  if (
    event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey
  ) return
  const a = (event.target as Element | null)?.closest?.("a")
  if (!a || a.target || a.hasAttribute("download")) return
  const url = new URL(a.href, location.href)
  if (url.origin !== location.origin || !url.pathname.startsWith("/admin")) return
  event.preventDefault()
  navigate(url.pathname + url.search)
})

window.addEventListener("popstate", () => void render())

whenUnauthorized(() => {
  if (!session.authenticated) return
  session.authenticated = false
  setCsrfToken(undefined)
  navigate(`/admin/login?next=${encodeURIComponent(location.pathname + location.search)}`, {
    replace: true,
    flash: "Your session has ended. Sign in again."
  })
})

const start = async () => {
  try {
    const current = await api((c) => c.session.current(), { login: true })
    if (current.authenticated && current.csrf_token) session.login(current.csrf_token)
  } catch {
    // Not signed in (or the server is unreachable): the login screen says so when it is used.
  }
  await render()
}

void start()
