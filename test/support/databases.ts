/**
 * Helpers for tests that need a real PostgreSQL / Redis server.
 *
 * CI (`.ci/run`) starts throwaway servers and exports `DATABASE_URL` and
 * `REDIS_URL`; locally, suites that need them should be wrapped in
 * `describe.skipIf(!postgresUrl)` / `describe.skipIf(!redisUrl)`.
 */
import { Redis } from "ioredis"
import { randomBytes } from "node:crypto"
import { createRequire } from "node:module"

// `pg` ships no type declarations and `@types/pg` is not installed, so a plain
// `import pg from "pg"` fails `tsc --noEmit` under `strict` (TS7016). Load it
// through `require` and describe the small surface used by tests instead.
export interface PgQueryResult<Row = Record<string, unknown>> {
  readonly rows: Array<Row>
  readonly rowCount: number | null
}

export interface PgClient {
  connect(): Promise<void>
  query<Row = Record<string, unknown>>(text: string, values?: ReadonlyArray<unknown>): Promise<PgQueryResult<Row>>
  end(): Promise<void>
  on(event: "error", listener: (error: Error) => void): unknown
}

export interface PgClientConfig {
  readonly connectionString: string
  readonly connectionTimeoutMillis?: number
}

export interface PgModule {
  readonly Client: new(config: PgClientConfig) => PgClient
}

export const pg: PgModule = createRequire(import.meta.url)("pg") as PgModule

const databaseUrl = process.env["DATABASE_URL"]

/** `DATABASE_URL` when it is a postgres:// or postgresql:// URL, else undefined. */
export const postgresUrl: string | undefined = databaseUrl !== undefined && /^postgres(?:ql)?:\/\//i.test(databaseUrl)
  ? databaseUrl
  : undefined

/** `REDIS_URL` when set (and non-empty), else undefined. */
export const redisUrl: string | undefined = process.env["REDIS_URL"] || undefined

const quoteIdent = (name: string): string => `"${name.replace(/"/g, "\"\"")}"`

/** Connects a `pg.Client` to `url`, runs `f` with it and always closes it. */
export async function withPgClient<A>(url: string, f: (client: PgClient) => Promise<A>): Promise<A> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 })
  // An idle client whose server goes away emits "error"; without a listener that
  // would crash the test worker.
  client.on("error", () => {})
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end().catch(() => {})
  }
}

export interface TestDatabase {
  /** Connection URL of the new database (same host, port, user and options as DATABASE_URL). */
  readonly url: string
  /** The database name, `llmproxy_test_<hex>`. */
  readonly name: string
  /** Drops the database, terminating remaining connections. Safe to call more than once. */
  readonly drop: () => Promise<void>
}

/**
 * Creates a fresh, empty database `llmproxy_test_<random hex>` on the server
 * `DATABASE_URL` points at, and returns its URL plus a `drop()` function.
 */
export async function createTestDatabase(): Promise<TestDatabase> {
  const adminUrl = postgresUrl
  if (adminUrl === undefined) {
    throw new Error(
      "createTestDatabase: DATABASE_URL is not set to a postgres:// or postgresql:// URL " +
        "(run the suite through .ci/run, or export DATABASE_URL=postgres://user@host:port/db)"
    )
  }
  const name = `llmproxy_test_${randomBytes(8).toString("hex")}`
  await withPgClient(adminUrl, (client) => client.query(`CREATE DATABASE ${quoteIdent(name)}`))

  const url = new URL(adminUrl)
  url.pathname = `/${name}`

  return {
    url: url.toString(),
    name,
    drop: async () => {
      await withPgClient(adminUrl, (client) => client.query(`DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`))
    }
  }
}

/** Escapes Redis glob metacharacters so `prefix` is matched literally. */
const escapeRedisGlob = (s: string): string => s.replace(/[*?[\]\\]/g, (c) => `\\${c}`)

/** Deletes every key starting with `prefix` (SCAN MATCH prefix*), in the database selected by `url`. */
export async function flushRedisPrefix(url: string, prefix: string): Promise<void> {
  if (prefix === "") {
    throw new Error("flushRedisPrefix: refusing to delete with an empty prefix")
  }
  const redis = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 3 })
  redis.on("error", () => {})
  await redis.connect()
  try {
    const pattern = `${escapeRedisGlob(prefix)}*`
    let cursor = "0"
    do {
      const [next, keys] = await redis.scan(cursor, "MATCH", pattern, "COUNT", 500)
      cursor = next
      if (keys.length > 0) {
        await redis.unlink(...keys)
      }
    } while (cursor !== "0")
  } finally {
    await redis.quit().catch(() => redis.disconnect())
  }
}
