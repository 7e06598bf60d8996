/**
 * Model scopes and the end user on the data plane, as pure functions over request and response bytes (no I/O):
 *
 * - `modelScopeOf`: the project's and the token's `allowed_models` (names or globs, null = any) compiled once per
 *   token load into one test; both lists apply. A token and project without lists get null, and the proxy then does
 *   nothing at all for them.
 * - `requestModel`: the `model` a JSON request body names, read with jsonBody.ts (never a parse of the whole body),
 *   or why it cannot be told (named twice, not a string, no model, not a JSON object).
 * - `filterModelList`: `GET /v1/models` answered with only the models the scope admits — a splice of the `data`
 *   array, everything else of the answer byte for byte as the upstream sent it.
 * - `injectUser`: the token's end user as the request's `user` (`safety_identifier` for the Responses API) when the
 *   client did not set one — a splice too.
 */
import { compileGlob } from "./glob.js"
import { insertMember, membersNamed, parseMember, type ScanMemo, scanObject, scanOnce, splice } from "./jsonBody.js"

export interface ModelScope {
  /** Whether a request may name this model. */
  readonly allows: (model: string) => boolean
}

const GLOB_CHARS = /[*?[\\]/

/** One list as a test: exact names in a set, globs compiled (a malformed glob, refused at write time, matches nothing). */
const listTest = (patterns: ReadonlyArray<string>): (model: string) => boolean => {
  const exact = new Set<string>()
  const globs: Array<{ readonly test: (value: string) => boolean }> = []
  for (const p of patterns) {
    if (!GLOB_CHARS.test(p)) exact.add(p)
    else {
      const g = compileGlob(p)
      if (g !== null) globs.push(g)
    }
  }
  if (globs.length === 0) return (m) => exact.has(m)
  return (m) => exact.has(m) || globs.some((g) => g.test(m))
}

/** The scope of a project's and a token's lists together; null when neither has one (any model). */
export const modelScopeOf = (
  project: ReadonlyArray<string> | null,
  token: ReadonlyArray<string> | null
): ModelScope | null => {
  if (project === null && token === null) return null
  const p = project === null ? undefined : listTest(project)
  const t = token === null ? undefined : listTest(token)
  return { allows: (m) => (p === undefined || p(m)) && (t === undefined || t(m)) }
}

/** The longest model name read from a request (longer ones are refused as not checkable). */
export const MODEL_NAME_MAX_BYTES = 1024

export type RequestModel =
  | { readonly _tag: "model"; readonly model: string }
  /**
   * Why the model cannot be told: the request is refused when a scope applies. `named`: the body does name a model
   * (twice, or not as a string), so an upstream may read one.
   */
  | { readonly _tag: "unchecked"; readonly why: string; readonly named: boolean }

/** The `model` member of a JSON request body (see the module comment). */
export const requestModel = (body: Buffer, memo?: ScanMemo): RequestModel => {
  const scan = scanOnce(body, memo)
  if (scan === undefined || scan.close === -1) {
    return { _tag: "unchecked", why: "its body is not a JSON object", named: false }
  }
  const found = membersNamed(scan, "model")
  if (found.length === 0) return { _tag: "unchecked", why: "it names no model", named: false }
  // Parsers disagree on which of two keys wins: never guess which one the upstream reads.
  if (found.length > 1) return { _tag: "unchecked", why: "it names the model more than once", named: true }
  const value = parseMember(body, found[0]!, MODEL_NAME_MAX_BYTES, 0)
  return typeof value === "string"
    ? { _tag: "model", model: value }
    : { _tag: "unchecked", why: "its model is not a string", named: true }
}

/** The model a JSON request names as the upstream reads it (top level, once, a string), else undefined. */
export const namedModel = (body: Buffer | undefined): string | undefined => {
  if (body === undefined) return undefined
  const m = requestModel(body)
  return m._tag === "model" ? m.model : undefined
}

/** The model id of `/v1/models/{id}` (one segment, percent-decoded), or undefined for any other path. */
export const modelOfPath = (path: string): string | undefined => {
  const prefix = "/v1/models/"
  if (!path.startsWith(prefix) || path.length === prefix.length) return undefined
  const segment = path.slice(prefix.length)
  if (segment.includes("/")) return undefined
  try {
    return decodeURIComponent(segment)
  } catch {
    return segment
  }
}

/** The largest model list read for filtering; a larger one is answered as it came (see ProxyHandler). */
export const MODEL_LIST_MAX_BYTES = 8 * 1024 * 1024

/**
 * A model list answer (`{"data": [{"id": …}, …], …}`: OpenAI's and Anthropic's shape) with only the entries whose `id`
 * the scope admits, spliced in place of `data`; undefined when the body is not of that shape (the caller then sends
 * what it has: it lists nothing a request could use without passing the model check).
 */
export const filterModelList = (body: Buffer, scope: ModelScope): Buffer | undefined => {
  const scan = scanObject(body)
  if (scan === undefined || scan.close === -1) return undefined
  const found = membersNamed(scan, "data")
  if (found.length !== 1) return undefined
  const member = found[0]!
  const data = parseMember(body, member, MODEL_LIST_MAX_BYTES, 64)
  if (!Array.isArray(data)) return undefined
  const kept = data.filter((entry: unknown) => {
    const id = typeof entry === "object" && entry !== null ? (entry as { id?: unknown }).id : undefined
    return typeof id === "string" && scope.allows(id)
  })
  return splice(body, member.valueStart, member.valueEnd, JSON.stringify(kept))
}

/** Where a provider's `inject_user` puts the end user: `user`, or `safety_identifier` for the Responses API. */
export const USER_FIELDS: ReadonlyMap<string, "user" | "safety_identifier"> = new Map([
  ["/v1/chat/completions", "user"],
  ["/v1/completions", "user"],
  ["/v1/embeddings", "user"],
  ["/v1/images/generations", "user"],
  ["/v1/responses", "safety_identifier"]
])

/**
 * `body` with `"<field>": user` added when it is a JSON object without that field; otherwise `body` itself (the
 * client's own value, even null, is kept; a body that is not a JSON object is not touched).
 */
export const injectUser = (body: Buffer, field: string, user: string): Buffer => {
  const scan = scanObject(body)
  if (scan === undefined || scan.close === -1) return body
  if (membersNamed(scan, field).length > 0) return body
  return insertMember(body, scan, field, JSON.stringify(user))
}
