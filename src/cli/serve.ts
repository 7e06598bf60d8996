/** `serve` (alias `server`), `migrate up|status` and `setup`: the programs that run or prepare a gateway. */
import { Command, Options } from "@effect/cli"
import { PlatformConfigProvider } from "@effect/platform"
import { Config, ConfigProvider, Console, Effect, Layer, Option } from "effect"
import { randomBytes } from "node:crypto"
import { chmodSync, existsSync, readFileSync, writeFileSync } from "node:fs"
import {
  appConfig,
  type AppConfigShape,
  GO_ENV_ALIASES,
  importEncryptionKey,
  resolveGoEnvAliases
} from "../config/AppConfig.js"
import { databaseLayer, dialectOf, loggerLayer, serveLayer } from "../Layers.js"
import { migrateUp, migrationStatus } from "../store/migrations.js"
import { CliFailure, describeError } from "./errors.js"
import { encryptOptions, importOptions, runEncrypt, runImport } from "./migrate.js"
import { show, table } from "./output.js"

const flag = (name: string, variable: string, description: string) =>
  Options.text(name).pipe(Options.withDescription(`${description} (env ${variable})`), Options.optional)

const envFile = Options.file("env").pipe(
  Options.withDescription("dotenv file read after the environment"),
  Options.withDefault(".env")
)

const databaseFlags = {
  db: flag("db", "DATABASE_PATH", "SQLite file"),
  databaseUrl: flag("database-url", "DATABASE_URL", "PostgreSQL URL; selects PostgreSQL"),
  env: envFile
}

/** Flags > environment > .env, as one ConfigProvider. */
export const configProvider = (flags: Record<string, Option.Option<string>>, dotenv: string) =>
  Effect.gen(function*() {
    const set = Object.entries(flags).flatMap(([k, v]) => (Option.isSome(v) ? [[k, v.value] as const] : []))
    const fromDotEnv = existsSync(dotenv)
      ? yield* PlatformConfigProvider.fromDotEnv(dotenv).pipe(
        Effect.mapError(() => new CliFailure({ message: `cannot read ${dotenv}` }))
      )
      : ConfigProvider.fromMap(new Map())
    const given = ConfigProvider.fromMap(new Map(set)).pipe(
      ConfigProvider.orElse(() => ConfigProvider.fromEnv()),
      ConfigProvider.orElse(() => fromDotEnv)
    )
    // The Go llm-proxy's names, last: a name of this gateway always wins.
    const seen = new Map<string, string>()
    for (const name of GO_ENV_ALIASES.flat()) {
      const v = yield* Effect.option(given.load(Config.string(name)))
      if (Option.isSome(v)) seen.set(name, v.value)
    }
    const aliases = resolveGoEnvAliases((name) => seen.get(name))
    yield* warnOnce(aliases.warnings)
    return aliases.values.size === 0
      ? given
      : given.pipe(ConfigProvider.orElse(() => ConfigProvider.fromMap(aliases.values)))
  })

const warned = new Set<string>()

/** Each warning once per process (the provider is built more than once by some commands). */
const warnOnce = (warnings: ReadonlyArray<string>) =>
  Effect.forEach(warnings, (w) => {
    if (warned.has(w)) return Effect.void
    warned.add(w)
    return Console.error(`llm-proxy: warning: ${w}`)
  }, { discard: true })

/** `--db` and `--database-url` name the database outright, whatever the environment says. */
const selectDatabase = (db: Option.Option<string>, url: Option.Option<string>) => ({
  DATABASE_PATH: db,
  DATABASE_URL: url,
  DB_DRIVER: Option.isSome(url) ? Option.some("postgres") : Option.isSome(db) ? Option.some("sqlite") : Option.none()
})

const loadConfig = (flags: Record<string, Option.Option<string>>, dotenv: string) =>
  Effect.gen(function*() {
    const provider = yield* configProvider(flags, dotenv)
    return yield* Effect.withConfigProvider(appConfig, provider).pipe(
      Effect.mapError((e) => new CliFailure({ message: describeError(e) }))
    )
  })

const loadConfigOf = <A>(config: Config.Config<A>, flags: Record<string, Option.Option<string>>, dotenv: string) =>
  Effect.gen(function*() {
    const provider = yield* configProvider(flags, dotenv)
    return yield* Effect.withConfigProvider(config, provider).pipe(
      Effect.mapError((e) => new CliFailure({ message: describeError(e) }))
    )
  })

/** A layer failure (database unreachable, port taken) as one line, with the underlying reason when it is safe. */
const startupFailure = (e: unknown) => {
  const cause = (e as { cause?: { message?: unknown; cause?: { message?: unknown } } }).cause
  const reason = cause?.cause?.message ?? cause?.message
  const base = describeError(e)
  return new CliFailure({
    message: typeof reason === "string" && reason !== "" && !base.includes(reason) ? `${base}: ${reason}` : base
  })
}

const serveOptions = {
  addr: flag("addr", "LISTEN_ADDR", "Listen address, host:port or :port"),
  ...databaseFlags,
  logLevel: flag("log-level", "LOG_LEVEL", "debug, info, warn or error"),
  logFormat: flag("log-format", "LOG_FORMAT", "json or pretty"),
  fileEventLog: flag(
    "file-event-log",
    "FILE_EVENT_LOG",
    "Also write every instrumentation event to this JSONL file, in-process"
  )
}

const runServe = (o: {
  addr: Option.Option<string>
  db: Option.Option<string>
  databaseUrl: Option.Option<string>
  env: string
  logLevel: Option.Option<string>
  logFormat: Option.Option<string>
  fileEventLog: Option.Option<string>
}) =>
  Effect.gen(function*() {
    const config: AppConfigShape = yield* loadConfig(
      {
        LISTEN_ADDR: o.addr,
        ...selectDatabase(o.db, o.databaseUrl),
        LOG_LEVEL: o.logLevel,
        LOG_FORMAT: o.logFormat,
        FILE_EVENT_LOG: o.fileEventLog
      },
      o.env
    )
    if (Option.isNone(config.encryptionKey)) {
      yield* Effect.logWarning(
        "ENCRYPTION_KEY is not set: provider API keys are stored in plaintext (run `llm-proxy setup`)"
      )
        .pipe(Effect.provide(loggerLayer(config)))
    }
    return yield* Layer.launch(serveLayer(config)).pipe(
      Effect.provide(loggerLayer(config)),
      Effect.mapError(startupFailure)
    )
  })

export const serve = Command.make("serve", serveOptions, runServe).pipe(
  Command.withDescription("Run the gateway: proxy, management API, admin UI, health and metrics on one listener")
)

export const server = Command.make("server", serveOptions, runServe).pipe(Command.withDescription("Alias of serve"))

const withDatabase = <A, E, R>(
  o: { db: Option.Option<string>; databaseUrl: Option.Option<string>; env: string },
  f: (dialect: "sqlite" | "postgres") => Effect.Effect<A, E, R>
) =>
  Effect.gen(function*() {
    const config = yield* loadConfig(selectDatabase(o.db, o.databaseUrl), o.env)
    return yield* f(dialectOf(config.database)).pipe(
      Effect.provide(databaseLayer(config.database)),
      Effect.mapError(startupFailure)
    )
  })

const migrateUpCommand = Command.make(
  "up",
  databaseFlags,
  (o) =>
    withDatabase(
      o,
      (dialect) =>
        Effect.flatMap(migrateUp(dialect), (ran) =>
          Console.log(ran.length === 0 ? "database is up to date" : `applied: ${ran.join(", ")}`))
    )
).pipe(
  Command.withDescription("Apply pending migrations")
)

const migrateStatusCommand = Command.make(
  "status",
  databaseFlags,
  (o) =>
    withDatabase(o, (dialect) =>
      Effect.flatMap(migrationStatus(dialect), (states) =>
        show(
          table(["VERSION", "NAME", "APPLIED AT"], states.map((s) => [s.version, s.name, s.appliedAt ?? "pending"]))
        )))
).pipe(
  Command.withDescription("Show applied and pending migrations")
)

const migrateImportCommand = Command.make(
  "import",
  { ...databaseFlags, ...importOptions },
  (o) =>
    Effect.gen(function*() {
      const flags = selectDatabase(o.db, o.databaseUrl)
      const config = yield* loadConfig(flags, o.env)
      const sourceKey = yield* loadConfigOf(importEncryptionKey, flags, o.env)
      return yield* runImport(o, config, sourceKey).pipe(
        Effect.provide(databaseLayer(config.database)),
        Effect.mapError(startupFailure)
      )
    })
).pipe(
  Command.withDescription(
    "Import projects, tokens (they stay valid), counters and audit events from a Go llm-proxy database " +
      "(SQLite file or postgres:// URL); idempotent. IMPORT_ENCRYPTION_KEY: the Go proxy's key, if not ENCRYPTION_KEY"
  )
)

const migrateEncryptCommand = Command.make(
  "encrypt",
  { ...databaseFlags, ...encryptOptions },
  (o) =>
    Effect.gen(function*() {
      const config = yield* loadConfig(selectDatabase(o.db, o.databaseUrl), o.env)
      return yield* runEncrypt(o, config).pipe(
        Effect.provide(databaseLayer(config.database)),
        Effect.mapError(startupFailure)
      )
    })
).pipe(Command.withDescription("Encrypt plaintext provider keys with ENCRYPTION_KEY (idempotent)"))

export const migrate = Command.make("migrate").pipe(
  Command.withDescription("Database migrations (SQLite and PostgreSQL), import from the Go llm-proxy, key encryption"),
  Command.withSubcommands([migrateUpCommand, migrateStatusCommand, migrateImportCommand, migrateEncryptCommand])
)

/** Adds MANAGEMENT_TOKEN and ENCRYPTION_KEY to a dotenv file; existing values are never replaced. */
export const writeSetup = (file: string): ReadonlyArray<string> => {
  const existing = existsSync(file) ? readFileSync(file, "utf8") : ""
  const has = (name: string) => new RegExp(`^\\s*(export\\s+)?${name}\\s*=`, "m").test(existing)
  const added: Array<string> = []
  let text = existing
  const add = (name: string, value: string) => {
    if (has(name)) return
    text += `${text === "" || text.endsWith("\n") ? "" : "\n"}${name}=${value}\n`
    added.push(name)
  }
  add("MANAGEMENT_TOKEN", randomBytes(32).toString("base64url"))
  add("ENCRYPTION_KEY", randomBytes(32).toString("base64"))
  writeFileSync(file, text, { mode: 0o600 })
  chmodSync(file, 0o600)
  return added
}

export const setup = Command.make(
  "setup",
  { file: Options.file("file").pipe(Options.withDescription("dotenv file to write"), Options.withDefault(".env")) },
  ({ file }) =>
    Effect.gen(function*() {
      const added = yield* Effect.try({
        try: () => writeSetup(file),
        catch: (e) => new CliFailure({ message: `cannot write ${file}: ${(e as Error).message}` })
      })
      yield* Console.log(
        added.length === 0
          ? `${file} already has MANAGEMENT_TOKEN and ENCRYPTION_KEY; nothing changed`
          : `wrote ${
            added.join(" and ")
          } to ${file} (mode 0600). Keep this file secret; start with: npx llm-proxy serve`
      )
    })
).pipe(Command.withDescription("Write a .env with a fresh MANAGEMENT_TOKEN and ENCRYPTION_KEY (mode 0600)"))
