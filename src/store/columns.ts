/**
 * Column schemas: what a column holds, decoded from what either SQL client returns for it, so a row schema is written
 * once for both dialects. better-sqlite3 (SQLite) gives INTEGER 0/1 for booleans and the TEXT that was written for
 * timestamps (ISO-8601 UTC) and JSON; node-postgres (PostgreSQL) gives booleans, `Date`s for TIMESTAMPTZ, text for
 * BIGINT and NUMERIC (so for COUNT and SUM of integers) and the TEXT of JSON columns.
 *
 * A row that does not decode is a `StoreError` naming the columns at fault — never their values, which may be
 * secrets (`rowError`).
 */
import { Effect, Either, Option, ParseResult, Schema } from "effect"
import { StoreError } from "./Store.js"

/** A boolean: PostgreSQL's, or SQLite's 0/1 (any other number is false, as it is to the queries' `= 1`). */
export const SqlBool = Schema.transform(Schema.Union(Schema.Boolean, Schema.Number), Schema.Boolean, {
  strict: true,
  decode: (v) => v === true || v === 1,
  encode: (b) => b
})

/** A timestamp, as an ISO-8601 UTC string with milliseconds: PostgreSQL's `Date`, or SQLite's text. */
export const SqlTimestamp = Schema.transformOrFail(Schema.Union(Schema.DateFromSelf, Schema.String), Schema.String, {
  strict: true,
  decode: (v, _, ast) => {
    const ms = v instanceof Date ? v.getTime() : Date.parse(v)
    return Number.isNaN(ms)
      ? ParseResult.fail(new ParseResult.Type(ast, v, "not a timestamp"))
      : ParseResult.succeed(new Date(ms).toISOString())
  },
  encode: ParseResult.succeed
})

/** A number: SQLite's, or PostgreSQL's BIGINT / NUMERIC, which node-postgres gives as text. */
export const SqlNumber = Schema.Union(Schema.Number, Schema.NumberFromString)

/**
 * `schema`'s value, or `fallback` when the value is anything else (missing included). For data written by hand: a
 * JSON column, or a field in one, that is not what the store writes reads as "none" instead of failing the row.
 */
export const withFallback = <A, I>(schema: Schema.Schema<A, I>, fallback: A): Schema.Schema<A, unknown> => {
  const decode = Schema.decodeUnknownEither(schema)
  return Schema.transform(Schema.Unknown, Schema.typeSchema(schema), {
    strict: true,
    decode: (v) => Either.getOrElse(decode(v), () => fallback),
    encode: (a) => a
  })
}

/** JSON text as its value; text that is not JSON as undefined (which no JSON column schema accepts). */
const JsonText = Schema.transform(Schema.Unknown, Schema.Unknown, {
  strict: true,
  decode: (v) => {
    if (typeof v !== "string") return v
    try {
      return JSON.parse(v) as unknown
    } catch {
      return undefined
    }
  },
  encode: (v) => (v === null || v === undefined ? null : JSON.stringify(v))
})

/**
 * A JSON column (TEXT on both dialects) of `schema`'s shape; null when it is NULL, not JSON, or JSON of another
 * shape: a row written by hand is not trusted, and does not fail the read either.
 */
export const SqlJson = <A, I>(schema: Schema.Schema<A, I>): Schema.Schema<A | null, unknown> =>
  Schema.compose(JsonText, withFallback(Schema.NullOr(schema), null))

/** `fields` with `prefix` before each name: a group of columns selected under aliases (`t_max_tokens`). */
export type Prefixed<P extends string, F> = { readonly [K in keyof F & string as `${P}${K}`]: F[K] }

export const prefixed = <P extends string, F extends Schema.Struct.Fields>(prefix: P, fields: F): Prefixed<P, F> =>
  Object.fromEntries(Object.keys(fields).map((k) => [prefix + k, fields[k]])) as Prefixed<P, F>

/** The decoded group of `fields` selected under `prefix`, by the fields' own names. */
export const unprefixed = <P extends string, F extends Schema.Struct.Fields>(
  row: Prefixed<P, Schema.Struct.Type<F>>,
  prefix: P,
  fields: F
): Schema.Struct.Type<F> => {
  const out: Record<string, unknown> = {}
  for (const k of Object.keys(fields)) out[k] = (row as Record<string, unknown>)[prefix + k]
  return out as Schema.Struct.Type<F>
}

/**
 * A row schema: the columns, decoded, then shaped into the store's row type by `make` (whose result the compiler
 * checks, so the target side checks nothing again). One way only — rows are written by the store's own statements,
 * never encoded from these.
 */
export const sqlRow = <F extends Schema.Struct.Fields, A>(
  identifier: string,
  columns: F,
  make: (row: Schema.Schema.Type<Schema.Struct<F>>) => A
): Schema.Schema<A, Schema.Schema.Encoded<Schema.Struct<F>>, Schema.Schema.Context<Schema.Struct<F>>> =>
  Schema.transformOrFail(
    Schema.Struct(columns),
    Schema.declare((_: unknown): _ is A => true, { identifier }),
    {
      strict: true,
      decode: (row) => ParseResult.succeed(make(row)),
      encode: (a, _, ast) => ParseResult.fail(new ParseResult.Forbidden(ast, a, "rows are only read"))
    }
  )

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
 * The StoreError of a row that does not decode: which columns, not what they held (a provider key or a token hash
 * may be among them).
 */
export const rowError = (message: string, error: ParseResult.ParseError): StoreError => {
  const columns = ParseResult.ArrayFormatter.formatErrorSync(error).map((issue) => issue.path.join(".") || "(row)")
  return new StoreError({ message, cause: new Error(`a row does not decode: ${[...new Set(columns)].join(", ")}`) })
}
