/**
 * `llm-proxy migrate import` (a Go llm-proxy database → this one) and `llm-proxy migrate encrypt` (plaintext provider
 * keys → `enc:v1:`). The commands themselves are assembled in serve.ts with the other `migrate` subcommands.
 */
import { Options } from "@effect/cli"
import type { SqlClient } from "@effect/sql"
import { SqliteClient } from "@effect/sql-sqlite-node"
import { Cause, Console, Effect, Layer, Option, Redacted } from "effect"
import { existsSync } from "node:fs"
import { resolve } from "node:path"
import type { AppConfigShape } from "../config/AppConfig.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { dialectOf } from "../Layers.js"
import {
  encryptProviderKeys,
  type EncryptReport,
  ImportError,
  importGoDatabase,
  type ImportReport,
  readGoDatabase
} from "../store/goImport.js"
import { migrateUp } from "../store/migrations.js"
import { CliFailure } from "./errors.js"
import { table } from "./output.js"

export const importOptions = {
  from: Options.text("from").pipe(
    Options.withDescription("The Go llm-proxy's database: its SQLite file, or a postgres:// URL")
  ),
  dryRun: Options.boolean("dry-run").pipe(Options.withDescription("Report what an import would do; write nothing")),
  json: Options.boolean("json").pipe(Options.withDescription("Print the report as JSON"))
}

export const encryptOptions = {
  dryRun: Options.boolean("dry-run").pipe(Options.withDescription("Count the plaintext keys; write nothing")),
  json: Options.boolean("json").pipe(Options.withDescription("Print the report as JSON"))
}

const isPostgresUrl = (s: string) => /^postgres(ql)?:\/\//i.test(s)

/** The Go database, read through its own short-lived client (read-only for a SQLite file). */
const readSource = (from: string) => {
  const postgres = isPostgresUrl(from)
  if (!postgres && !existsSync(from)) return Effect.fail(new ImportError({ message: `no such file: ${from}` }))
  const client: Layer.Layer<SqlClient.SqlClient, unknown> = postgres
    ? Layer.unwrapEffect(
      Effect.promise(() => import("@effect/sql-pg")).pipe(
        Effect.map(({ PgClient }) =>
          PgClient.layer({ url: Redacted.make(from), maxConnections: 2, applicationName: "llm-proxy-import" })
        )
      )
    )
    : SqliteClient.layer({ filename: from, readonly: true, disableWAL: true })
  // The URL may hold a password: the message names the kind of source only.
  const cannotOpen = postgres
    ? "cannot connect to the Go llm-proxy's PostgreSQL (--from)"
    : `cannot open ${from} as a SQLite database`
  return Effect.scoped(
    Effect.flatMap(
      Layer.build(client).pipe(
        Effect.catchAllCause((cause) =>
          Cause.isInterruptedOnly(cause)
            ? Effect.failCause(cause as Cause.Cause<never>)
            : Effect.fail(new ImportError({ message: cannotOpen, cause: Cause.squash(cause) }))
        )
      ),
      (ctx) => Effect.provide(readGoDatabase(postgres ? "postgres" : "sqlite"), ctx)
    )
  )
}

const sameDatabase = (from: string, config: AppConfigShape): boolean =>
  config.database._tag === "sqlite"
    ? !isPostgresUrl(from) && resolve(from) === resolve(config.database.path)
    : isPostgresUrl(from) && from === Redacted.value(config.database.url)

const cipherOf = (key: AppConfigShape["encryptionKey"]) => Effect.provide(KeyCipher, KeyCipher.layer(key))

export const showImportReport = (r: ImportReport, json: boolean): string => {
  if (json) return JSON.stringify(r, null, 2)
  const kinds = [["projects", r.projects], ["tokens", r.tokens], ["audit events", r.audit]] as const
  return [
    table(
      ["KIND", "IMPORTED", "UPDATED", "UNCHANGED", "SKIPPED"],
      kinds.map(([k, c]) => [k, String(c.imported), String(c.updated), String(c.unchanged), String(c.skipped)])
    ),
    ...r.skipped.map((s) => `skipped ${s.kind} ${s.id}: ${s.reason}`),
    ...(r.dryRun ? ["dry run: nothing was written"] : [])
  ].join("\n")
}

/** `migrate import` against the database of the SqlClient in context. */
export const runImport = (
  o: { readonly from: string; readonly dryRun: boolean; readonly json: boolean },
  config: AppConfigShape,
  sourceKey: AppConfigShape["encryptionKey"]
) =>
  Effect.gen(function*() {
    if (sameDatabase(o.from, config)) {
      return yield* new CliFailure({ message: "--from names this gateway's own database" })
    }
    if (Option.isNone(config.encryptionKey)) {
      yield* Console.error(
        "llm-proxy: warning: ENCRYPTION_KEY is not set: imported provider keys are stored in plaintext"
      )
    }
    const source = yield* readSource(o.from)
    const dialect = dialectOf(config.database)
    const report = yield* importGoDatabase(dialect, source, {
      sourceCipher: yield* cipherOf(Option.orElse(sourceKey, () => config.encryptionKey)),
      targetCipher: yield* cipherOf(config.encryptionKey),
      dryRun: o.dryRun,
      prepare: migrateUp(dialect).pipe(Effect.mapError((e) => new ImportError({ message: e.message, cause: e.cause })))
    })
    yield* Console.log(showImportReport(report, o.json))
  }).pipe(Effect.mapError((e) => (e instanceof ImportError ? new CliFailure({ message: e.message }) : e)))

export const showEncryptReport = (r: EncryptReport, json: boolean): string =>
  json
    ? JSON.stringify(r, null, 2)
    : r.dryRun
    ? `${r.encrypted} provider key(s) would be encrypted; ${r.alreadyEncrypted} already encrypted. Dry run: nothing was written`
    : `encrypted ${r.encrypted} provider key(s); ${r.alreadyEncrypted} already encrypted`

/** `migrate encrypt` against the database of the SqlClient in context. */
export const runEncrypt = (o: { readonly dryRun: boolean; readonly json: boolean }, config: AppConfigShape) =>
  Effect.gen(function*() {
    if (Option.isNone(config.encryptionKey)) {
      return yield* new CliFailure({ message: "ENCRYPTION_KEY is required (generate one with `llm-proxy setup`)" })
    }
    const report = yield* encryptProviderKeys(yield* cipherOf(config.encryptionKey), o.dryRun)
    yield* Console.log(showEncryptReport(report, o.json))
  }).pipe(Effect.mapError((e) => (e instanceof ImportError ? new CliFailure({ message: e.message }) : e)))
