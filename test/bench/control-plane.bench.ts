/**
 * Benchmark: the control plane at a million tokens and a million audit events, on SQLite and on PostgreSQL.
 *
 * For each database: a fresh database migrated by the built `serve`, then seeded with bulk SQL (not through the
 * API; secondary indexes dropped while seeding and rebuilt after, then ANALYZE on PostgreSQL as autovacuum would),
 * then the built `serve` on it (pinned to core 1, the benchmark on core 0) measures over HTTP:
 *   - the first, a middle and the last page of every listing (tokens, a project's tokens, projects, audit), the
 *     filtered listings, the token counts, the capped array form, and a proxy request with an unknown token (a
 *     token lookup that misses the cache and the database): p50 / p95 of BENCH_SAMPLES requests each;
 *   - token creation through the API, 16 concurrent clients, auditing on (database + JSONL file, the default);
 *   - retention of 100,000 expired tokens (serve restarted with TOKEN_RETENTION_DAYS=30): how long it takes, and the
 *     latency of a listing and of an unknown-token proxy request while it runs.
 * And, once, what a commit costs on SQLite (better-sqlite3, WAL): one token per transaction or 16, `synchronous`
 * NORMAL or FULL.
 *
 * Run with `npm run build && npm run bench -- control-plane`. Not part of `npm test`. Environment: BENCH_TOKENS
 * (1000000), BENCH_AUDIT (1000000), BENCH_DATABASES (sqlite,postgres; postgres needs DATABASE_URL, on which a
 * database is created and dropped), BENCH_SAMPLES (21), BENCH_CREATE_SECONDS (10), BENCH_KEEP (keep the SQLite
 * file and PostgreSQL database for another look).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomBytes } from "node:crypto"
import { mkdtempSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import { loadavg, tmpdir } from "node:os"
import { join } from "node:path"
import { Agent, request } from "undici"
import { encodeCursor } from "../../src/http/cursor.js"
import { children, cpuMsOf, fmt, freePort, hasTaskset, pinSelfToCore0, root, runBench, waitFor } from "./harness.js"

const TOKENS = Number(process.env["BENCH_TOKENS"] ?? 1_000_000)
const AUDIT = Number(process.env["BENCH_AUDIT"] ?? 1_000_000)
const DATABASES = (process.env["BENCH_DATABASES"] ?? "sqlite,postgres").split(",").map((s) => s.trim())
const SAMPLES = Number(process.env["BENCH_SAMPLES"] ?? 21)
const CREATE_SECONDS = Number(process.env["BENCH_CREATE_SECONDS"] ?? 10)
const KEEP = process.env["BENCH_KEEP"] !== undefined
const PROJECTS = 1000
const RETENTION_DAYS = 30
const DAY_S = 86_400
const MANAGEMENT_TOKEN = "bench-management-token-" + randomBytes(8).toString("hex")

// better-sqlite3 and pg ship no declarations here: what we use of them.
interface SqliteDb {
  exec(sql: string): void
  prepare(sql: string): {
    readonly reader: boolean
    all(...p: ReadonlyArray<unknown>): Array<Record<string, unknown>>
    run(...p: ReadonlyArray<unknown>): unknown
  }
  pragma(s: string): unknown
  transaction<A>(f: () => A): () => A
  close(): void
}
interface PgClient {
  connect(): Promise<void>
  query(text: string, values?: ReadonlyArray<unknown>): Promise<{ rows: Array<Record<string, unknown>> }>
  end(): Promise<void>
}
const require = createRequire(import.meta.url)
const Sqlite = require("better-sqlite3") as new(path: string) => SqliteDb
const pg = require("pg") as { Client: new(o: { connectionString: string }) => PgClient }

const projectId = (i: number) => `00000000-0000-4000-8000-${String(i).padStart(12, "0")}`
const BIG = projectId(0)
const SMALL = projectId(123)

/** One database under test: a way to run SQL from the benchmark, and the settings `serve` needs to use it. */
interface Target {
  readonly name: "sqlite" | "postgres"
  readonly env: Record<string, string>
  readonly query: (sql: string) => Promise<Array<Record<string, unknown>>>
  readonly close: () => Promise<void>
}

const sqliteTarget = (dir: string): Target => {
  const path = join(dir, "control-plane.db")
  let db: SqliteDb | undefined
  const open = () => (db ??= new Sqlite(path))
  return {
    name: "sqlite",
    env: { DATABASE_PATH: path },
    query: async (sql) => {
      const statement = open().prepare(sql)
      return statement.reader ? statement.all() : (statement.run(), [])
    },
    close: async () => {
      db?.close()
      db = undefined
    }
  }
}

const postgresTarget = async (adminUrl: string): Promise<Target & { readonly drop: () => Promise<void> }> => {
  const name = `llmproxy_bench_${randomBytes(6).toString("hex")}`
  const admin = new pg.Client({ connectionString: adminUrl })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(adminUrl)
  url.pathname = `/${name}`
  let client: PgClient | undefined
  const open = async () => {
    if (client === undefined) {
      client = new pg.Client({ connectionString: url.toString() })
      await client.connect()
    }
    return client
  }
  return {
    name: "postgres",
    env: { DATABASE_URL: url.toString(), DATABASE_POOL_SIZE: "10" },
    query: async (sql) => (await (await open()).query(sql)).rows,
    close: async () => {
      await client?.end()
      client = undefined
    },
    drop: async () => {
      const a = new pg.Client({ connectionString: adminUrl })
      await a.connect()
      await a.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await a.end()
    }
  }
}

// ---- serve ------------------------------------------------------------------------------------------------------

interface Serve {
  readonly url: string
  readonly pid: number
  readonly stop: () => Promise<void>
}

const startServe = async (target: Target, env: Record<string, string> = {}): Promise<Serve> => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cp-serve-"))
  const port = await freePort()
  const node = [process.execPath, join(root, "bin/llm-proxy.js"), "serve"]
  const argv = hasTaskset ? ["taskset", "-c", "1", ...node] : node
  const child: ChildProcess = spawn(argv[0]!, argv.slice(1), {
    cwd: dir,
    env: {
      PATH: process.env["PATH"] ?? "",
      LISTEN_ADDR: `127.0.0.1:${port}`,
      MANAGEMENT_TOKEN,
      OPENAI_API_URL: "http://127.0.0.1:9",
      LOG_LEVEL: "warn",
      LOG_FORMAT: "json",
      AUDIT_LOG_FILE: join(dir, "audit.log"),
      TOKEN_RETENTION_DAYS: "0",
      ...target.env,
      ...env
    },
    stdio: ["ignore", "ignore", "inherit"]
  })
  children.push(child)
  const url = `http://127.0.0.1:${port}`
  await waitFor(`${url}/live`, 120_000)
  return {
    url,
    pid: child.pid!,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once("exit", () => {
          rmSync(dir, { recursive: true, force: true })
          resolve()
        })
        child.kill("SIGTERM")
      })
  }
}

const agent = new Agent({ connections: 32, pipelining: 1 })
const auth = { authorization: `Bearer ${MANAGEMENT_TOKEN}` }

const get = async (url: string, headers: Record<string, string> = auth) => {
  const r = await request(url, { dispatcher: agent, headers })
  const body = await r.body.text()
  return { status: r.statusCode, body }
}

// ---- seeding ----------------------------------------------------------------------------------------------------

/**
 * Tokens created evenly over the last 60 days: the oldest tenth lived one day (so they expired more than 30 days
 * ago: what retention removes), the others 30 days; 5% of those created in the last 30 days were revoked an hour
 * after creation. Half the tokens belong to one big project, the rest to 999 others.
 */
const seedSqlite = (target: Target, nowS: number) => {
  const db = new Sqlite(target.env["DATABASE_PATH"]!)
  db.pragma("journal_mode = WAL")
  db.pragma("synchronous = OFF")
  const indexes = db.prepare(
    "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name IN ('tokens', 'audit_events') AND sql IS NOT NULL"
  ).all()
  for (const i of indexes) db.exec(`DROP INDEX ${String(i.name)}`)
  db.exec(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${PROJECTS - 1})
    INSERT INTO projects (id, name, api_key, api_key_hint, provider, is_active, created_at, updated_at)
    SELECT printf('00000000-0000-4000-8000-%012d', i), printf('project-%04d', i), 'sk-bench', 'sk-b...ench', 'openai', 1,
      '2024-01-01T00:00:00.000Z', '2024-01-01T00:00:00.000Z' FROM n`)
  db.exec(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${TOKENS - 1}),
    r AS (SELECT i, ${nowS} - 60 * ${DAY_S} + i * (60.0 * ${DAY_S} / ${TOKENS}) AS c, abs(random()) % 100 AS rnd FROM n)
    INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, is_active, deactivated_at, created_at)
    SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' || substr(hex(randomblob(2)), 2) || '-a' ||
        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
      lower(hex(randomblob(32))), 'sk-abcd****wxyz',
      CASE WHEN rnd < 50 THEN '${BIG}' ELSE printf('00000000-0000-4000-8000-%012d', 1 + abs(random()) % ${
    PROJECTS - 1
  }) END,
      strftime('%Y-%m-%dT%H:%M:%fZ', CASE WHEN i < ${
    TOKENS / 10
  } THEN c + ${DAY_S} ELSE c + 30 * ${DAY_S} END, 'unixepoch'),
      CASE WHEN c > ${nowS} - 30 * ${DAY_S} AND rnd % 20 = 7 THEN 0 ELSE 1 END,
      CASE WHEN c > ${nowS} - 30 * ${DAY_S} AND rnd % 20 = 7 THEN strftime('%Y-%m-%dT%H:%M:%fZ', c + 3600, 'unixepoch') END,
      strftime('%Y-%m-%dT%H:%M:%fZ', c, 'unixepoch')
    FROM r`)
  db.exec(`WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ${AUDIT - 1}),
    r AS (SELECT i, ${nowS} - 60 * ${DAY_S} + i * (60.0 * ${DAY_S} / ${AUDIT}) AS t, i % 10 AS kind FROM n)
    INSERT INTO audit_events (id, timestamp, action, actor, outcome, project_id, token_id, request_id, client_ip, method, path,
      reason, metadata)
    SELECT lower(hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-7' || substr(hex(randomblob(2)), 2) || '-8' ||
        substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6))),
      strftime('%Y-%m-%dT%H:%M:%fZ', t, 'unixepoch'),
      CASE kind WHEN 0 THEN 'token.create' WHEN 1 THEN 'token.create' WHEN 2 THEN 'token.create' WHEN 3 THEN 'token.create'
        WHEN 4 THEN 'token.list' WHEN 5 THEN 'project.read' WHEN 6 THEN 'management.auth' WHEN 7 THEN 'proxy_request'
        WHEN 8 THEN 'token.revoke' ELSE 'audit.list' END,
      CASE WHEN kind IN (6, 7) THEN 'anonymous' ELSE 'management_api' END,
      CASE WHEN kind IN (6, 7) THEN 'denied' ELSE 'success' END,
      CASE WHEN kind IN (6, 9) THEN NULL WHEN i % 2 = 0 THEN '${BIG}' ELSE printf('00000000-0000-4000-8000-%012d', 1 + i % ${
    PROJECTS - 1
  }) END,
      CASE WHEN kind IN (0, 1, 2, 3, 7, 8) THEN lower(hex(randomblob(16))) END,
      'req-' || i, '10.0.' || (i % 250) || '.' || (i % 7),
      CASE WHEN kind = 7 THEN 'POST' WHEN kind IN (0, 1, 2, 3) THEN 'POST' ELSE 'GET' END,
      CASE WHEN kind = 7 THEN '/v1/chat/completions' ELSE '/manage/tokens' END,
      CASE WHEN kind = 6 THEN 'invalid management token' WHEN kind = 7 THEN 'token not found' END,
      CASE WHEN kind < 4 THEN '{"duration_minutes":60}' END
    FROM r`)
  for (const i of indexes) db.exec(String(i.sql))
  db.exec("PRAGMA wal_checkpoint(TRUNCATE)")
  db.close()
}

const seedPostgres = async (target: Target, nowS: number) => {
  const q = target.query
  const indexes = await q(
    "SELECT indexname, indexdef FROM pg_indexes WHERE tablename IN ('tokens', 'audit_events') AND indexname LIKE 'idx_%'"
  )
  for (const i of indexes) await q(`DROP INDEX ${String(i.indexname)}`)
  const now = `to_timestamp(${nowS})`
  await q(`INSERT INTO projects (id, name, api_key, api_key_hint, provider, is_active, created_at, updated_at)
    SELECT '00000000-0000-4000-8000-' || lpad(i::text, 12, '0'), 'project-' || lpad(i::text, 4, '0'), 'sk-bench', 'sk-b...ench',
      'openai', true, '2024-01-01', '2024-01-01' FROM generate_series(0, ${PROJECTS - 1}) i`)
  // Milliseconds, as the application writes them.
  await q(
    `INSERT INTO tokens (id, token_hash, token_hint, project_id, expires_at, is_active, deactivated_at, created_at)
    SELECT gen_random_uuid()::text, md5(random()::text) || md5(random()::text), 'sk-abcd****wxyz',
      CASE WHEN rnd < 50 THEN '${BIG}' ELSE '00000000-0000-4000-8000-' || lpad((1 + floor(random() * ${
      PROJECTS - 1
    }))::int::text, 12, '0') END,
      c + CASE WHEN i < ${TOKENS / 10} THEN interval '1 day' ELSE interval '30 days' END,
      NOT (c > ${now} - interval '30 days' AND rnd % 20 = 7),
      CASE WHEN c > ${now} - interval '30 days' AND rnd % 20 = 7 THEN c + interval '1 hour' END,
      c
    FROM (SELECT i, date_trunc('milliseconds', ${now} - interval '60 days' + i * (interval '60 days' / ${TOKENS})) AS c,
      floor(random() * 100)::int AS rnd FROM generate_series(0, ${TOKENS - 1}) i) s`
  )
  await q(
    `INSERT INTO audit_events (id, timestamp, action, actor, outcome, project_id, token_id, request_id, client_ip, method,
      path, reason, metadata)
    SELECT gen_random_uuid()::text, t,
      (ARRAY['token.create','token.create','token.create','token.create','token.list','project.read','management.auth',
        'proxy_request','token.revoke','audit.list'])[kind + 1],
      CASE WHEN kind IN (6, 7) THEN 'anonymous' ELSE 'management_api' END,
      CASE WHEN kind IN (6, 7) THEN 'denied' ELSE 'success' END,
      CASE WHEN kind IN (6, 9) THEN NULL WHEN i % 2 = 0 THEN '${BIG}'
        ELSE '00000000-0000-4000-8000-' || lpad((1 + i % ${PROJECTS - 1})::text, 12, '0') END,
      CASE WHEN kind IN (0, 1, 2, 3, 7, 8) THEN md5(random()::text) END,
      'req-' || i, '10.0.' || (i % 250) || '.' || (i % 7),
      CASE WHEN kind IN (0, 1, 2, 3, 7) THEN 'POST' ELSE 'GET' END,
      CASE WHEN kind = 7 THEN '/v1/chat/completions' ELSE '/manage/tokens' END,
      CASE WHEN kind = 6 THEN 'invalid management token' WHEN kind = 7 THEN 'token not found' END,
      CASE WHEN kind < 4 THEN '{"duration_minutes":60}' END
    FROM (SELECT i, i % 10 AS kind,
      date_trunc('milliseconds', ${now} - interval '60 days' + i * (interval '60 days' / ${AUDIT})) AS t
      FROM generate_series(0, ${AUDIT - 1}) i) s`
  )
  for (const i of indexes) await q(String(i.indexdef))
  await q("VACUUM ANALYZE")
}

// ---- measuring --------------------------------------------------------------------------------------------------

const quantile = (sorted: ReadonlyArray<number>, q: number) =>
  sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!

/** p50 / p95 (ms) of SAMPLES requests after 3 warm-up ones; every answer must be 200 (401 for `expect`). */
const timeRequests = async (url: string, headers: Record<string, string> = auth, expect = 200) => {
  const times: Array<number> = []
  let bytes = 0
  for (let i = 0; i < SAMPLES + 3; i++) {
    const start = performance.now()
    const r = await get(url, headers)
    const ms = performance.now() - start
    if (r.status !== expect) throw new Error(`${url}: ${r.status} ${r.body.slice(0, 200)}`)
    bytes = r.body.length
    if (i >= 3) times.push(ms)
  }
  times.sort((a, b) => a - b)
  return { p50: quantile(times, 0.5), p95: quantile(times, 0.95), bytes }
}

const unknownTokenHeaders = () => ({
  authorization: `Bearer sk-${randomBytes(32).toString("base64url")}`,
  "content-type": "application/json"
})

/** The key text of the `n`-th row (0-based) of a listing's order, for a middle-page cursor. */
const keyAt = async (target: Target, table: string, time: string, where: string, n: number) => {
  const [row] = await target.query(
    `SELECT CAST(${time} AS TEXT) AS t, id FROM ${table} ${where} ORDER BY ${time} DESC, id DESC LIMIT 1 OFFSET ${n}`
  )
  return encodeCursor("after", { time: String(row!.t), id: String(row!.id) })
}

interface Line {
  readonly db: string
  readonly what: string
  readonly p50: number
  readonly p95: number
  readonly note?: string
}

const listings = async (target: Target, serve: Serve): Promise<Array<Line>> => {
  const lines: Array<Line> = []
  const add = async (what: string, path: string, note?: string) => {
    const r = await timeRequests(serve.url + path)
    lines.push({ db: target.name, what, p50: r.p50, p95: r.p95, note: note ?? `${(r.bytes / 1024).toFixed(0)} KiB` })
  }
  const T = "/manage/tokens?page_size=100"
  const middleAll = await keyAt(target, "tokens", "created_at", "", Math.floor(TOKENS / 2))
  const middleBig = await keyAt(target, "tokens", "created_at", `WHERE project_id = '${BIG}'`, Math.floor(TOKENS / 4))
  const [someToken] = await target.query("SELECT id FROM tokens ORDER BY created_at DESC LIMIT 1 OFFSET 777")
  const id = String(someToken!.id)
  await add("tokens: first page", T)
  await add("tokens: middle page (cursor)", `${T}&cursor=${middleAll}`)
  await add("tokens: last page", `${T}&cursor=last`)
  await add("tokens of the big project (500k): first page", `${T}&project_id=${BIG}`)
  await add("tokens of the big project: middle page", `${T}&project_id=${BIG}&cursor=${middleBig}`)
  await add("tokens of the big project: last page", `${T}&project_id=${BIG}&cursor=last`)
  await add("tokens of a small project (~500): first page", `${T}&project_id=${SMALL}`)
  await add("tokens of a small project: last page", `${T}&project_id=${SMALL}&cursor=last`)
  for (const status of ["active", "expired", "revoked"]) {
    await add(`tokens, status=${status}: first page`, `${T}&status=${status}`)
    await add(`tokens, status=${status}: last page`, `${T}&status=${status}&cursor=last`)
  }
  await add("tokens, search by 1-character id prefix", `${T}&search=${id.slice(0, 1)}`)
  await add("tokens, search by 4-character id prefix", `${T}&search=${id.slice(0, 4)}`)
  await add("tokens, search by full id", `${T}&search=${id}`)
  await add("tokens, big project + 8-character id prefix", `${T}&project_id=${BIG}&search=${id.slice(0, 8)}`)
  await add("token counts (dashboard)", "/manage/tokens/counts")
  await add("token counts of the big project", `/manage/tokens/counts?project_id=${BIG}`)
  await add("unpaged array (10,000 newest, X-Truncated)", "/manage/tokens")
  await add("projects: first page (20)", "/manage/projects?page=1&page_size=20")
  await add("projects: middle page", `/manage/projects?page=${PROJECTS / 40}&page_size=20`)
  await add("projects: last page", `/manage/projects?page=${PROJECTS / 20}&page_size=20`)
  await add("projects: search", "/manage/projects?page_size=20&search=project-04")
  const A = "/manage/audit?page_size=100"
  const middleAudit = await keyAt(target, "audit_events", "\"timestamp\"", "", Math.floor(AUDIT / 2))
  await add("audit: first page (cursor)", `${A}&cursor=`)
  await add("audit: middle page (cursor)", `${A}&cursor=${middleAudit}`)
  await add("audit: last page (cursor)", `${A}&cursor=last`)
  await add("audit: page 1 by number (with its count)", `${A}&page=1`)
  await add(
    "audit: page 5,000 by number (OFFSET 499,900)",
    `${A}&page=${Math.floor(AUDIT / 200)}`,
    "not a target: page by cursor"
  )
  await add("audit, action=token.revoke (10%)", `${A}&cursor=&action=token.revoke`)
  await add("audit, project_id of the big project", `${A}&cursor=&project_id=${BIG}`)
  await add("audit, outcome=denied (20%)", `${A}&cursor=&outcome=denied`)
  await add(
    "audit, one day (start_time/end_time)",
    `${A}&cursor=&start_time=${new Date(Date.now() - 20 * DAY_S * 1000).toISOString()}&end_time=${
      new Date(Date.now() - 19 * DAY_S * 1000).toISOString()
    }`
  )
  await add("audit, search a common word (token.create)", `${A}&cursor=&search=token.create`)
  await add(
    "audit, search a rare text (one request id)",
    `${A}&cursor=&search=req-${Math.floor(AUDIT / 3)}`,
    "scans every event: no index"
  )
  const miss = await (async () => {
    const times: Array<number> = []
    for (let i = 0; i < SAMPLES + 3; i++) {
      const start = performance.now()
      const r = await request(`${serve.url}/v1/chat/completions`, {
        dispatcher: agent,
        method: "POST",
        headers: unknownTokenHeaders(),
        body: "{}"
      })
      await r.body.dump()
      if (r.statusCode !== 401) throw new Error(`unknown token: ${r.statusCode}`)
      if (i >= 3) times.push(performance.now() - start)
    }
    times.sort((a, b) => a - b)
    return { p50: quantile(times, 0.5), p95: quantile(times, 0.95) }
  })()
  lines.push({ db: target.name, what: "proxy request with an unknown token (lookup miss)", ...miss, note: "401" })
  return lines
}

/** Token creations per second through the API: CONCURRENCY clients for CREATE_SECONDS, and server CPU per token. */
const createRate = async (serve: Serve, concurrency = 16) => {
  const body = JSON.stringify({ project_id: projectId(7), duration_minutes: 60 })
  const post = async () => {
    const r = await request(`${serve.url}/manage/tokens`, {
      dispatcher: agent,
      method: "POST",
      headers: { ...auth, "content-type": "application/json" },
      body
    })
    await r.body.dump()
    if (r.statusCode !== 201) throw new Error(`create: ${r.statusCode}`)
  }
  for (let i = 0; i < 50; i++) await post()
  const cpu0 = cpuMsOf(serve.pid)
  const start = performance.now()
  const end = start + CREATE_SECONDS * 1000
  let n = 0
  await Promise.all(Array.from({ length: concurrency }, async () => {
    while (performance.now() < end) {
      await post()
      n++
    }
  }))
  const seconds = (performance.now() - start) / 1000
  return { rate: n / seconds, cpuUs: ((cpuMsOf(serve.pid) - cpu0) * 1000) / n }
}

/** Restarts serve with TOKEN_RETENTION_DAYS=30 and times the removal of the tokens that fell out of it. */
const retention = async (target: Target) => {
  const cutoff = `'${new Date(Date.now() - RETENTION_DAYS * DAY_S * 1000).toISOString()}'`
  const due = async () => {
    const [row] = await target.query(
      `SELECT COUNT(*) AS n FROM tokens WHERE expires_at < ${cutoff} OR (is_active = ${
        target.name === "sqlite" ? 0 : "false"
      } AND deactivated_at < ${cutoff})`
    )
    return Number(row!.n)
  }
  const before = await due()
  const started = performance.now()
  const serve = await startServe(target, { TOKEN_RETENTION_DAYS: String(RETENTION_DAYS) })
  const listing: Array<number> = []
  const lookups: Array<number> = []
  let done = false
  const probe = (async () => {
    while (!done) {
      let t = performance.now()
      await get(`${serve.url}/manage/tokens?page_size=100`)
      listing.push(performance.now() - t)
      t = performance.now()
      const r = await request(`${serve.url}/v1/chat/completions`, {
        dispatcher: agent,
        method: "POST",
        headers: unknownTokenHeaders(),
        body: "{}"
      })
      await r.body.dump()
      lookups.push(performance.now() - t)
      await new Promise((resolve) => setTimeout(resolve, 20))
    }
  })()
  let left = before
  while (left > 0) {
    await new Promise((resolve) => setTimeout(resolve, 500))
    left = await due()
  }
  const seconds = (performance.now() - started) / 1000
  done = true
  await probe
  await serve.stop()
  const stats = (xs: Array<number>) => {
    const s = [...xs].sort((a, b) => a - b)
    return { p50: quantile(s, 0.5), p99: quantile(s, 0.99), max: s[s.length - 1] ?? NaN, n: s.length }
  }
  return { deleted: before, seconds, listing: stats(listing), lookup: stats(lookups) }
}

/** What one commit costs on SQLite (WAL): a token per transaction or 16 per transaction, NORMAL or FULL. */
const commitCost = () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cp-commit-"))
  const rows: Array<string> = []
  try {
    for (const sync of ["NORMAL", "FULL"]) {
      const db = new Sqlite(join(dir, `${sync}.db`))
      db.pragma("journal_mode = WAL")
      db.pragma(`synchronous = ${sync}`)
      db.exec(
        `CREATE TABLE tokens (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL UNIQUE, project_id TEXT, created_at TEXT);
        CREATE INDEX t1 ON tokens(created_at, id); CREATE INDEX t2 ON tokens(project_id, created_at, id)`
      )
      const insert = db.prepare("INSERT INTO tokens VALUES (?, ?, ?, ?)")
      const one = () =>
        insert.run(randomBytes(16).toString("hex"), randomBytes(32).toString("hex"), "p", new Date().toISOString())
      for (const perTx of [1, 16]) {
        const n = sync === "FULL" && perTx === 1 ? 400 : 4000
        const batch = db.transaction(() => {
          for (let i = 0; i < perTx; i++) one()
        })
        const cpu0 = process.cpuUsage()
        const start = performance.now()
        for (let i = 0; i < n / perTx; i++) batch()
        const ms = performance.now() - start
        const cpu = process.cpuUsage(cpu0)
        rows.push(
          `| ${sync} | ${perTx} | ${fmt((ms * 1000) / n, 0)} | ${fmt((cpu.user + cpu.system) / n, 0)} | ${
            fmt(n / (ms / 1000), 0)
          } |`
        )
      }
      db.close()
    }
  } finally {
    rmSync(dir, { recursive: true, force: true })
  }
  return rows
}

const load = () => loadavg().map((l) => l.toFixed(1)).join(" / ")

const main = async () => {
  pinSelfToCore0()
  console.log(
    `control plane at ${TOKENS.toLocaleString("en-US")} tokens and ${AUDIT.toLocaleString("en-US")} audit events`
  )
  console.log(`load average at start: ${load()}`)
  console.log("\nWhat a commit costs on SQLite (WAL), the benchmark process alone:\n")
  console.log("| synchronous | tokens per transaction | wall µs per token | CPU µs per token | tokens/s |")
  console.log("|---|---|---|---|---|")
  for (const row of commitCost()) console.log(row)

  const all: Array<Line> = []
  const creations: Array<string> = []
  const retentions: Array<string> = []
  for (const db of DATABASES) {
    if (db === "postgres" && !process.env["DATABASE_URL"]?.startsWith("postgres")) {
      console.log("\npostgres skipped: DATABASE_URL is not a postgres:// URL")
      continue
    }
    const dir = mkdtempSync(join(tmpdir(), "llm-proxy-cp-"))
    const target = db === "sqlite" ? sqliteTarget(dir) : await postgresTarget(process.env["DATABASE_URL"]!)
    try {
      // serve applies the migrations, then stops; the seed goes in with bulk SQL.
      await (await startServe(target)).stop()
      const nowS = Math.floor(Date.now() / 1000)
      let start = performance.now()
      if (target.name === "sqlite") seedSqlite(target, nowS)
      else await seedPostgres(target, nowS)
      console.log(`\n${db}: seeded in ${fmt((performance.now() - start) / 1000, 0)} s (load ${load()})`)

      let serve = await startServe(target)
      all.push(...await listings(target, serve))
      console.log(`${db}: listings measured (load ${load()})`)
      const created = await createRate(serve)
      creations.push(
        `| ${db} | ${target.name === "sqlite" ? "normal (default)" : "—"} | ${fmt(created.rate, 0)} | ${
          fmt(created.cpuUs, 0)
        } | ${load()} |`
      )
      await serve.stop()
      if (target.name === "sqlite") {
        serve = await startServe(target, { SQLITE_SYNCHRONOUS: "full" })
        const full = await createRate(serve)
        creations.push(`| ${db} | full | ${fmt(full.rate, 0)} | ${fmt(full.cpuUs, 0)} | ${load()} |`)
        await serve.stop()
      }
      await target.close()
      start = performance.now()
      const r = await retention(target)
      retentions.push(
        `| ${db} | ${r.deleted.toLocaleString("en-US")} | ${fmt(r.seconds, 1)} | ${fmt(r.listing.p50, 1)} / ${
          fmt(r.listing.p99, 1)
        } / ${fmt(r.listing.max, 1)} | ${fmt(r.lookup.p50, 1)} / ${fmt(r.lookup.p99, 1)} / ${
          fmt(r.lookup.max, 1)
        } | ${load()} |`
      )
    } finally {
      await target.close()
      if (KEEP) console.log(`${db}: kept ${JSON.stringify(target.env)}`)
      else {
        if ("drop" in target) await (target as { drop: () => Promise<void> }).drop()
        rmSync(dir, { recursive: true, force: true })
      }
    }
  }

  console.log(
    `\nListings over HTTP (page_size 100 unless said; p50 / p95 of ${SAMPLES} requests; target: every listing page ≤ 20 ms p50):\n`
  )
  console.log("| listing | database | p50 ms | p95 ms | |")
  console.log("|---|---|---|---|---|")
  for (const l of all) console.log(`| ${l.what} | ${l.db} | ${fmt(l.p50, 1)} | ${fmt(l.p95, 1)} | ${l.note ?? ""} |`)
  console.log(
    `\nToken creation through the API, 16 concurrent clients, auditing on (database + file) (target: ≥ 2,000/s on SQLite):\n`
  )
  console.log("| database | SQLITE_SYNCHRONOUS | tokens/s | server CPU µs per token | load average (1/5/15 min) |")
  console.log("|---|---|---|---|---|")
  for (const c of creations) console.log(c)
  console.log(
    `\nRetention (TOKEN_RETENTION_DAYS=${RETENTION_DAYS}) at start-up, while a listing and an unknown-token request are timed every 20 ms:\n`
  )
  console.log(
    "| database | tokens deleted | seconds | listing p50 / p99 / max ms | lookup miss p50 / p99 / max ms | load average |"
  )
  console.log("|---|---|---|---|---|---|")
  for (const r of retentions) console.log(r)
  console.log(`\nload average at the end: ${load()}`)
}

runBench(main)
