/**
 * A tiny DOM builder. Text always goes in as text nodes (never innerHTML), so data from the API cannot inject
 * markup, and nothing here needs inline scripts or styles (the page's CSP forbids both).
 */
export type Child = Node | string | number | null | undefined | false | ReadonlyArray<Child>

/** A listener of any event type (a method's parameters are bivariant, so `(e: KeyboardEvent) => void` fits). */
type Handler = { handle(event: Event): void }["handle"]
export type Attrs = Record<string, string | number | boolean | Handler | null | undefined>

const append = (parent: Node, child: Child): void => {
  if (child === null || child === undefined || child === false) return
  if (Array.isArray(child)) {
    for (const c of child) append(parent, c)
    return
  }
  parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)))
}

const PROPS = new Set(["value", "checked", "disabled", "selected", "indeterminate"])

const apply = (el: Element, attrs: Attrs | undefined) => {
  if (!attrs) return
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) {
      if (PROPS.has(key)) (el as unknown as Record<string, unknown>)[key] = key === "value" ? "" : false
      continue
    }
    if (typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value)
    } else if (PROPS.has(key)) {
      ;(el as unknown as Record<string, unknown>)[key] = value
    } else {
      el.setAttribute(key, value === true ? "" : String(value))
    }
  }
}

export const h = <K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: ReadonlyArray<Child>
): HTMLElementTagNameMap[K] => {
  const el = document.createElement(tag)
  apply(el, attrs ?? undefined)
  append(el, children)
  return el
}

const SVG_NS = "http://www.w3.org/2000/svg"

export const svg = (tag: string, attrs?: Attrs | null, ...children: ReadonlyArray<Child>): SVGElement => {
  const el = document.createElementNS(SVG_NS, tag) as SVGElement
  apply(el, attrs ?? undefined)
  append(el, children)
  return el
}

export const replace = (parent: Element, ...children: ReadonlyArray<Child>) => {
  parent.replaceChildren()
  append(parent, children)
}

let ids = 0
/** A unique id for label/input pairs. */
export const uid = (prefix = "f") => `${prefix}-${++ids}`

/** A labelled form field. */
export const field = (
  label: string,
  input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement,
  hint?: string
): HTMLElement => {
  if (!input.id) input.id = uid()
  const hintEl = hint ? h("small", { id: `${input.id}-hint`, class: "hint" }, hint) : null
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id)
  return h("div", { class: "field" }, h("label", { for: input.id }, label), input, hintEl)
}

export const checkbox = (label: string, input: HTMLInputElement, hint?: string): HTMLElement => {
  if (!input.id) input.id = uid()
  input.type = "checkbox"
  const hintEl = hint ? h("small", { id: `${input.id}-hint`, class: "hint" }, hint) : null
  if (hintEl) input.setAttribute("aria-describedby", hintEl.id)
  return h("div", { class: "field check" }, input, h("label", { for: input.id }, label), hintEl)
}
