/**
 * How the management API's payload rules are written, and how a refused payload becomes its one message. The
 * payload Schemas themselves are in models.ts: they are what the handlers decode with (src/http/body.ts
 * `readPayload`), what `/manage/openapi.json` describes and what the CLI client encodes with.
 *
 * A rule carries the exact message a client gets as `error` (a `message` annotation). When a payload breaks several
 * rules, the answer names one (docs/management-api.md "Validation"): an unknown field first, then a field of the
 * wrong JSON type ("invalid request body"), then the first broken rule in the Schema's field order.
 */
import { Either, ParseResult, Schema } from "effect"

export const INVALID_BODY = "invalid request body"

/** UUIDs in any case (ids are stored lower-case). No `i` flag: the same pattern reads the same in JSON Schema. */
export const UUID_PATTERN = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/

// C0/C1 control characters make names unprintable in tables and logs.
const CONTROL_RE = /[\u0000-\u001f\u007f-\u009f]/
/** The same characters, as a JSON Schema `pattern` a whole value must match. */
export const NO_CONTROL_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"

// A lone UTF-16 surrogate is not text: PostgreSQL refuses it (a 500 instead of a 400) and SQLite stores mojibake.
const LONE_SURROGATE_RE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/

export const isUuid = (s: string): boolean => UUID_PATTERN.test(s)
export const hasControlCharacters = (s: string): boolean => CONTROL_RE.test(s)
/** False for a string holding a lone surrogate (JSON's `"\ud800"`). */
export const isUnicodeText = (s: string): boolean => !LONE_SURROGATE_RE.test(s)

/**
 * A name worth quoting back: letters, `_` and `-`, at most 40. Anything else a client sent as a name (a pasted API
 * key or token, typically long and with digits) is not repeated in errors, and so not in the audit log either.
 */
export const isPlainName = (name: string): boolean => /^[A-Za-z_-]{1,40}$/.test(name)

/** The annotation that makes `message` the answer when this schema (its type, or its rule) refuses a value. */
export const answer = (message: string) => ({ message: () => message })

/**
 * The annotation that makes `message` the answer to whatever is wrong anywhere inside this schema (its type, a
 * missing or extra key of a nested struct, a bound): for a field answered with one message, like `rate_limit`.
 */
export const oneAnswer = (message: string) => ({ message: () => ({ message, override: true }) })

/**
 * A rule on a value: refused with `message`; `jsonSchema` says the same in `/manage/openapi.json` where JSON
 * Schema can (a pattern, a bound), else the rule shows only in the field's description. (Without any `jsonSchema`
 * annotation the OpenAPI generator would skip this node, and the description put on it with it.)
 */
export const rule = <A>(predicate: (a: A) => boolean, message: string, jsonSchema: object = {}) =>
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a Schema's encoded type is invariant: any admits every encoding
<S extends Schema.Schema<A, any, never>>(self: S): Schema.filter<S> =>
  self.pipe(Schema.filter<S>(predicate, { ...answer(message), jsonSchema }))

/**
 * A whole number, refused with `message` (not JSON Schema's "integer" alone: 1e20 is whole, and is then refused by
 * the field's bound with that bound's message).
 */
export const wholeNumber =
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- a Schema's encoded type is invariant: any admits every encoding
  (message: string) => <S extends Schema.Schema<number, any, never>>(self: S): Schema.filter<S> =>
    self.pipe(Schema.filter<S>(Number.isInteger, { ...answer(message), jsonSchema: { type: "integer" } }))

/** A field that must be present, refused with `message` when it is not. */
export const required = <S extends Schema.Schema.Any>(self: S, message: string) =>
  Schema.propertySignature(self).annotations({ missingMessage: () => message })

/** The struct-level annotations of a payload: unknown fields refused, a body that is no object is `message`. */
export const closedPayload = (message = INVALID_BODY) => ({
  ...answer(message),
  parseOptions: { onExcessProperty: "error" as const }
})

const unknownField = (key: PropertyKey): string =>
  typeof key === "string" && isPlainName(key) ? `unknown field "${key}"` : "unknown field"

/** The one message a refused payload is answered with (see the module comment for which, when there are several). */
export const payloadMessage = (issue: ParseResult.ParseIssue): string => {
  const issues = ParseResult.ArrayFormatter.formatIssueSync(issue)
  // Excess properties are reported first by the parser, at the top level only (a nested struct's issues are its
  // field's message: see `rate_limit`).
  const unexpected = issues.find((i) => i._tag === "Unexpected")
  if (unexpected !== undefined) return unknownField(unexpected.path[0] ?? "")
  return (issues.find((i) => i.message === INVALID_BODY) ?? issues[0])?.message ?? INVALID_BODY
}

/** Decodes a parsed JSON body with a payload schema; a refusal is its message. */
export const decodePayload = <A, I>(schema: Schema.Schema<A, I, never>) => {
  const decode = Schema.decodeUnknownEither(schema, { errors: "all" })
  return (body: unknown): Either.Either<A, string> => Either.mapLeft(decode(body), (e) => payloadMessage(e.issue))
}

const RFC3339_RE = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$/i

/** RFC 3339 → canonical UTC ISO string (ms precision), or undefined. */
export const parseTimestamp = (s: string): string | undefined => {
  if (!RFC3339_RE.test(s)) return undefined
  const ms = Date.parse(s)
  if (Number.isNaN(ms)) return undefined
  const d = new Date(ms)
  // Years outside 1..9999 (after conversion to UTC) print as "-000001-…"/"+010000-…", which is not RFC 3339
  // and which PostgreSQL rejects.
  const year = d.getUTCFullYear()
  return year < 1 || year > 9999 ? undefined : d.toISOString()
}

/** `active_only` query values accepted by `GET /manage/tokens`. */
export const parseBooleanParam = (s: string | undefined): Either.Either<boolean, string> => {
  if (s === undefined || s === "") return Either.right(false)
  switch (s.toLowerCase()) {
    case "true":
    case "1":
    case "yes":
      return Either.right(true)
    case "false":
    case "0":
    case "no":
      return Either.right(false)
  }
  return Either.left("active_only must be true or false")
}

/** An integer query parameter within [min, max]; absent or empty → `fallback`. */
export const parsePageParam = (
  name: string,
  s: string | undefined,
  min: number,
  max: number,
  fallback: number
): Either.Either<number, string> => {
  if (s === undefined || s === "") return Either.right(fallback)
  const n = /^\d{1,10}$/.test(s) ? Number(s) : NaN
  return Number.isInteger(n) && n >= min && n <= max
    ? Either.right(n)
    : Either.left(`${name} must be an integer between ${min} and ${max}`)
}
