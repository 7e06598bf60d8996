import { api } from "../api.js"
import { h } from "../dom.js"
import type { SessionState } from "../main.js"
import { type Ctx, errorBox } from "../ui.js"

/** Only paths inside the app are followed after login (no open redirect). */
const safeNext = (
  next: string | null
) => (next && /^\/admin(\/|$|\?)/.test(next) && !next.startsWith("//") ? next : "/admin/")

export const loginPage = (ctx: Ctx, session: SessionState) => {
  const input = h("input", {
    id: "management_token",
    name: "management_token",
    type: "password",
    required: true,
    autocomplete: "off",
    spellcheck: "false",
    "aria-describedby": "token-hint"
  })
  const error = h("div", { "aria-live": "assertive" })
  const submit = h("button", { type: "submit", class: "primary" }, "Sign in")
  const form = h(
    "form",
    {
      class: "card login",
      novalidate: false,
      onsubmit: async (e: SubmitEvent) => {
        e.preventDefault()
        const token = input.value.trim()
        error.replaceChildren()
        if (token === "") {
          error.replaceChildren(errorBox("Enter the management token."))
          input.focus()
          return
        }
        submit.disabled = true
        try {
          const info = await api((c) => c.session.login({ payload: { token } }), { login: true })
          input.value = ""
          session.login(info.csrf_token ?? "")
          ctx.navigate(safeNext(ctx.query.get("next")), { replace: true })
        } catch (err) {
          const status = (err as { status?: number }).status
          error.replaceChildren(
            errorBox(
              status === 401
                ? "Invalid management token. Check it and try again."
                : status === 429
                ? "Too many failed sign-ins from your address. Wait a minute, then try again."
                : (err as Error).message
            )
          )
          input.select()
          input.focus()
        } finally {
          submit.disabled = false
        }
      }
    },
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("div", { class: "field" }, h("label", { for: "management_token" }, "Management token"), input),
    h(
      "small",
      { id: "token-hint", class: "hint" },
      "The MANAGEMENT_TOKEN of this server (or the file serve generated in ./data/management-token). It is exchanged for a session cookie and not kept in the browser."
    ),
    error,
    h("div", { class: "actions" }, submit)
  )
  return h("div", { class: "login-wrap" }, form)
}
