/**
 * Column schemas: what a column holds, decoded from what either SQL client returns for it, so a row schema is written
 * once for both dialects. better-sqlite3 (SQLite) gives INTEGER 0/1 for booleans and the TEXT that was written for
 * timestamps (ISO-8601 UTC) and JSON; node-postgres (PostgreSQL) gives booleans, `Date`s for TIMESTAMPTZ, text for
 * BIGINT and NUMERIC (so for COUNT and SUM of integers) and the TEXT of JSON columns.
 *
 * A column is a guard of what the drivers give and a decoder (`Column`), and a Schema of its own (`schema`). A row
 * schema (`sqlRow`) is one Schema step that runs its columns' guards and decoders in a loop: a `Schema.Struct` of
 * per-column transformations cost ten times the hand mapping it replaces (about 20 µs a token row against 2), and
 * a token listing decodes up to 100 rows a page, `getTokenAuth` one on every token-cache miss.
 *
 * A row that does not decode is a `StoreError` naming the columns at fault — never their values, which may be
 * secrets (`rowError`).
 */
import { Effect, Either, type Option, ParseResult, Predicate, Schema, type SchemaAST } from "effect"
import { StoreError } from "./Store.js"

/** What a driver may give for a column: a guard, typed, without decoding. */
const given = <A>(name: string, is: (u: unknown) => u is A) => Schema.declare(is, { identifier: name })

const anything = (_: unknown): _ is unknown => true

export interface Column<I, A> {
  /** What the column holds, for error messages (never its value). */
  readonly name: string
  /** What either driver may give for it. */
  readonly is: (u: unknown) => u is I
  /** Its value; undefined when the given value is not one (text that is not a timestamp). */
  readonly decode: (v: I) => A | undefined
  /** The column as a Schema of its own. */
  readonly schema: Schema.Schema<A, I>
}

const notA = (ast: SchemaAST.AST, name: string, v: unknown) => new ParseResult.Type(ast, v, `not a ${name}`)

export const column = <I, A>(
  name: string,
  is: (u: unknown) => u is I,
  decode: (v: I) => A | undefined
): Column<I, A> => ({
  name,
  is,
  decode,
  schema: Schema.transformOrFail(given(name, is), given(name, (_): _ is A => true), {
    strict: true,
    decode: (v, _, ast) => {
      const a = decode(v)
      return a === undefined ? ParseResult.fail(notA(ast, name, v)) : ParseResult.succeed(a)
    },
    encode: (a, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, a, "columns are only read"))
  })
})

/** The column, or NULL. */
export const nullable = <I, A>(c: Column<I, A>): Column<I | null, A | null> =>
  column(`${c.name} or null`, (u): u is I | null => u === null || c.is(u), (v) => (v === null ? null : c.decode(v)))

export const SqlText = column("text", Predicate.isString, (v) => v)

/** A boolean: PostgreSQL's, or SQLite's 0/1 (any other number is false, as it is to the queries' `= 1`). */
export const SqlBool = column(
  "boolean",
  (u): u is boolean | number => typeof u === "boolean" || typeof u === "number",
  (v) => v === true || v === 1
)

/** A timestamp, as an ISO-8601 UTC string with milliseconds: PostgreSQL's `Date`, or SQLite's text. */
export const SqlTimestamp = column(
  "timestamp",
  (u): u is Date | string => u instanceof Date || typeof u === "string",
  (v) => {
    const ms = v instanceof Date ? v.getTime() : Date.parse(v)
    return Number.isNaN(ms) ? undefined : new Date(ms).toISOString()
  }
)

/** A number: SQLite's, or PostgreSQL's BIGINT / NUMERIC, which node-postgres gives as text. */
export const SqlNumber = column(
  "number",
  (u): u is number | string => typeof u === "number" || typeof u === "string",
  (v) => {
    const n = typeof v === "number" ? v : v.trim() === "" ? Number.NaN : Number(v)
    return Number.isNaN(n) ? undefined : n
  }
)

/** One of `values` (a column with a CHECK constraint). */
export const oneOf = <const L extends ReadonlyArray<string>>(values: L): Column<string, L[number]> =>
  column(values.join(" | "), Predicate.isString, (v) => (values.includes(v) ? (v as L[number]) : undefined))

/**
 * `schema`'s value, or `fallback` when the value is anything else (missing included). For data written by hand: a
 * column, or a field of a JSON column, that is not what the store writes reads as the default instead of failing
 * the row.
 */
export const withFallback = <A>(schema: Schema.Schema<A>, fallback: A): Column<unknown, A> => {
  const is = Schema.is(schema)
  return column(String(schema.ast), anything, (v) => (is(v) ? v : fallback))
}

/**
 * A JSON column (TEXT on both dialects) of `schema`'s shape; null when it is NULL, not JSON, or JSON of another
 * shape: a row written by hand is not trusted, and does not fail the read either.
 */
export const SqlJson = <A, I>(schema: Schema.Schema<A, I>): Column<unknown, A | null> => {
  const decode = Schema.decodeUnknownEither(schema)
  return column(`JSON of ${String(schema.ast)}`, anything, (v) => {
    if (v === null) return null
    let json: unknown
    try {
      json = typeof v === "string" ? JSON.parse(v) : v
    } catch {
      return null
    }
    return Either.getOrNull(decode(json))
  })
}

/** Any column (what a row's columns have in common). */
interface SomeColumn {
  readonly name: string
  readonly is: (u: unknown) => boolean
  readonly decode: (v: never) => unknown
}
type Columns = Readonly<Record<string, SomeColumn>>

/** What the drivers give for a row of `C`. */
export type RowEncoded<C extends Columns> = {
  readonly [K in keyof C]: C[K] extends { readonly is: (u: unknown) => u is infer I } ? I : never
}
/** The decoded columns of a row of `C`. */
export type RowColumns<C extends Columns> = {
  readonly [K in keyof C]: C[K] extends { readonly decode: (v: never) => infer A } ? Exclude<A, undefined> : never
}

/** `columns` with `prefix` before each name: a group of columns selected under aliases (`t_max_tokens`). */
export type Prefixed<P extends string, C> = { readonly [K in keyof C & string as `${P}${K}`]: C[K] }

export const prefixed = <P extends string, C extends Columns>(prefix: P, columns: C): Prefixed<P, C> =>
  Object.fromEntries(Object.keys(columns).map((k) => [prefix + k, columns[k]])) as Prefixed<P, C>

/** The decoded group of `columns` selected under `prefix`, by the columns' own names. */
export const unprefixed = <P extends string, C extends Columns>(
  row: Prefixed<P, RowColumns<C>>,
  prefix: P,
  columns: C
): RowColumns<C> => {
  const out: Record<string, unknown> = {}
  for (const k of Object.keys(columns)) out[k] = (row as Record<string, unknown>)[prefix + k]
  return out as RowColumns<C>
}

/**
 * A row schema: each column decoded (a column that does not is an issue at its name), then the row shaped into the
 * store's row type by `make`, whose result the compiler checks. One way only — rows are written by the store's own
 * statements, never encoded from these.
 */
export const sqlRow = <C extends Columns, A>(
  identifier: string,
  columns: C,
  make: (row: RowColumns<C>) => A
): Schema.Schema<A, RowEncoded<C>> => {
  const entries = Object.entries(columns)
  return Schema.transformOrFail(
    given(`${identifier} columns`, (u): u is RowEncoded<C> => typeof u === "object" && u !== null),
    given(identifier, (_): _ is A => true),
    {
      strict: true,
      decode: (row, _, ast) => {
        const out: Record<string, unknown> = {}
        for (const [name, c] of entries) {
          const v = (row as Record<string, unknown>)[name]
          // `is` narrowed the value to what `decode` takes.
          const a = c.is(v) ? (c.decode as (v: unknown) => unknown)(v) : undefined
          if (a === undefined) return ParseResult.fail(new ParseResult.Pointer(name, row, notA(ast, c.name, v)))
          out[name] = a
        }
        return ParseResult.succeed(make(out as RowColumns<C>))
      },
      encode: (a, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, a, "rows are only read"))
    }
  )
}

/** Decodes every row of a result. */
export const decodeRows = <A, I>(row: Schema.Schema<A, I>) => {
  const decode = Schema.decodeUnknown(Schema.Array(row))
  return (rows: ReadonlyArray<unknown>): Effect.Effect<ReadonlyArray<A>, ParseResult.ParseError> => decode(rows)
}

/** Decodes the first row of a result, if any. */
export const decodeFirst = <A, I>(row: Schema.Schema<A, I>) => {
  const decode = Schema.decodeUnknown(row)
  return (rows: ReadonlyArray<unknown>): Effect.Effect<Option.Option<A>, ParseResult.ParseError> =>
    rows.length === 0 ? Effect.succeedNone : Effect.asSome(decode(rows[0]))
}

/** `COUNT(*) AS n`. */
export const CountRow = sqlRow("CountRow", { n: SqlNumber }, (r) => r.n)

/**
 * The span of one store operation (the store's, the audit repository's, the session store's wrappers). Without a
 * stack trace: the one captured would name the wrapper, not its caller, and capturing it cost ~2 µs per operation
 * (an Error with a stack).
 */
export const withStoreSpan = (name: string) => Effect.withSpan(name, { captureStackTrace: false })

/**
 * The StoreError of a row that does not decode: which columns, not what they held (a provider key or a token hash
 * may be among them).
 */
export const rowError = (message: string, error: ParseResult.ParseError): StoreError => {
  const columns = ParseResult.ArrayFormatter.formatErrorSync(error).map((issue) => issue.path.join(".") || "(row)")
  return new StoreError({ message, cause: new Error(`a row does not decode: ${[...new Set(columns)].join(", ")}`) })
}
