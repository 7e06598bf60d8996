/**
 * `llm-proxy migrate import`: reads a database of the Go llm-proxy (SQLite file or PostgreSQL, any schema version it
 * shipped) and brings its projects, tokens and audit events into this one, in one transaction.
 *
 * - Projects keep their ids; provider keys are decrypted with the Go proxy's key (`enc:v1:` is the same AES-256-GCM
 *   format) and stored again under this ENCRYPTION_KEY (plaintext when none is set).
 * - Tokens keep their ids and stay valid: only the SHA-256 of the Go token is stored, in the imported namespace
 *   (`go:<hex>`, see src/crypto/ProxyToken.ts), so a Go-format token authenticates only against imported rows. Rows
 *   the Go proxy had already hashed (`migrate encrypt`) carry that same SHA-256 and import the same way.
 * - Audit events are copied as they are (insert-only).
 *
 * Idempotent: rows are matched by id; a second run with an unchanged source changes nothing. A later run copies
 * what changed in the Go database since (for a cut-over: import, keep the Go proxy serving, import again, switch):
 * names, keys, expiry and quotas from the source; counters never go down (the larger of both); a row deactivated on
 * either side stays deactivated (an import never re-activates anything).
 */
import { SqlClient } from "@effect/sql"
import { Data, Effect } from "effect"
import { createHash } from "node:crypto"
import type { KeyCipherService } from "../crypto/KeyCipher.js"
import { obfuscateApiKey } from "../crypto/obfuscate.js"
import { hashProxyToken, importedHashOfGoHash, isGoTokenFormat, tokenHint } from "../crypto/ProxyToken.js"
import { OUTCOMES } from "../domain/audit.js"
import { isUuid } from "../domain/validation.js"

type Dialect = "sqlite" | "postgres"
type Row = Record<string, unknown>

/** The import cannot proceed; nothing was written. `message` names what is wrong and never holds a secret. */
export class ImportError
  extends Data.TaggedError("ImportError")<{ readonly message: string; readonly cause?: unknown }>
{}

// ---- the Go database ----------------------------------------------------------------------------------------

export interface GoProject {
  readonly id: string
  readonly name: string
  /** As stored by the Go proxy: `enc:v1:…` or plaintext. */
  readonly apiKey: string
  readonly isActive: boolean
  readonly deactivatedAt: string | null
  readonly createdAt: string
  readonly updatedAt: string
}

export interface GoToken {
  /** null in SQLite files created before tokens had ids (the token itself was the key). */
  readonly id: string | null
  /** The token, or its hex SHA-256 when the Go proxy stored it hashed. */
  readonly token: string
  readonly projectId: string
  readonly expiresAt: string | null
  readonly isActive: boolean
  readonly deactivatedAt: string | null
  readonly requestCount: number
  readonly maxRequests: number | null
  readonly cacheHitCount: number
  readonly createdAt: string
  readonly lastUsedAt: string | null
}

export interface GoAuditEvent {
  readonly id: string
  readonly timestamp: string
  readonly action: string
  readonly actor: string
  readonly outcome: string
  readonly projectId: string | null
  readonly tokenId: string | null
  readonly requestId: string | null
  readonly correlationId: string | null
  readonly clientIp: string | null
  readonly method: string | null
  readonly path: string | null
  readonly userAgent: string | null
  readonly reason: string | null
  readonly metadata: string | null
}

export interface GoDatabase {
  readonly projects: ReadonlyArray<GoProject>
  readonly tokens: ReadonlyArray<GoToken>
  readonly audit: ReadonlyArray<GoAuditEvent>
}

const GO_TIME_RE =
  /^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*(Z|[+-]\d{2}:?\d{2})?(?:\s+[A-Z][A-Za-z]{0,5})?(?:\s+m=[+-][\d.]+)?$/

/**
 * A Go timestamp as ISO-8601 UTC with milliseconds. go-sqlite3 writes `2006-01-02 15:04:05.999999999-07:00`,
 * SQLite's CURRENT_TIMESTAMP `2006-01-02 15:04:05` (UTC), PostgreSQL's `timestamp` (read as text) has no zone: a
 * time without zone is UTC, as the Go proxy wrote it.
 */
export const parseGoTime = (v: unknown): string | null | undefined => {
  if (v === null || v === undefined || v === "") return null
  if (v instanceof Date) return Number.isNaN(v.getTime()) ? undefined : v.toISOString()
  if (typeof v === "number" || typeof v === "bigint") {
    const n = Number(v)
    const d = new Date(n > 1e11 ? n : n * 1000)
    return Number.isNaN(d.getTime()) ? undefined : d.toISOString()
  }
  const m = GO_TIME_RE.exec(String(v).trim())
  if (!m) return undefined
  const fraction = (m[3] ?? "").padEnd(3, "0").slice(0, 3)
  const zone = m[4] === undefined || m[4] === "Z"
    ? "Z"
    : m[4].length === 5
    ? `${m[4].slice(0, 3)}:${m[4].slice(3)}`
    : m[4]
  const d = new Date(`${m[1]}T${m[2]}.${fraction}${zone}`)
  return Number.isNaN(d.getTime()) ? undefined : d.toISOString()
}

const truthy = (v: unknown): boolean => v === true || v === 1 || v === 1n || v === "1" || v === "t" || v === "true"
const text = (v: unknown): string | null => (v === null || v === undefined ? null : String(v))
const count = (v: unknown): number => {
  const n = Number(v ?? 0)
  return Number.isFinite(n) && n > 0 ? Math.floor(n) : 0
}

const columnsOf = (sql: SqlClient.SqlClient, dialect: Dialect, table: string) =>
  Effect.map(
    dialect === "sqlite"
      ? sql<Row>`SELECT name FROM pragma_table_info(${table})`
      : sql<Row>`SELECT column_name AS name FROM information_schema.columns
          WHERE table_schema = current_schema() AND table_name = ${table}`,
    (rows) => new Set(rows.map((r) => String(r.name)))
  )

/**
 * Reads every project, token and audit event of a Go llm-proxy database (the SqlClient in context). Columns added
 * by later Go versions are optional; timestamps are normalised to ISO-8601 UTC.
 */
export const readGoDatabase = (dialect: Dialect) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const projectColumns = yield* columnsOf(sql, dialect, "projects")
    const tokenColumns = yield* columnsOf(sql, dialect, "tokens")
    const auditColumns = yield* columnsOf(sql, dialect, "audit_events")
    if (tokenColumns.has("token_hash")) {
      return yield* new ImportError({
        message: "the source is an llm-proxy database of this project, not the Go llm-proxy's"
      })
    }
    if (!projectColumns.has("id") || !projectColumns.has("name") || !tokenColumns.has("token")) {
      return yield* new ImportError({
        message: "the source is not a Go llm-proxy database (no projects and tokens tables)"
      })
    }
    const keyColumn = projectColumns.has("api_key")
      ? "api_key"
      : projectColumns.has("openai_api_key")
      ? "openai_api_key"
      : undefined
    if (keyColumn === undefined) {
      return yield* new ImportError({ message: "the source's projects table has no api_key column" })
    }
    // Column names come from the fixed lists below, never from the source: safe to splice into the query.
    const select = (
      columns: Set<string>,
      table: string,
      wanted: ReadonlyArray<string>,
      times: ReadonlyArray<string>,
      order: string
    ) =>
      sql.unsafe<Row>(
        `SELECT ${
          wanted.map((c) => {
            if (!columns.has(c)) return `NULL AS ${c}`
            // PostgreSQL `timestamp` and `uuid` as text: no time-zone guessing by the driver.
            return dialect === "postgres" && (times.includes(c) || c === "id") ? `${c}::text AS ${c}` : c
          }).join(", ")
        } FROM ${table} ORDER BY ${order}`
      )
    const projectRows = yield* sql.unsafe<Row>(
      `SELECT id${dialect === "postgres" ? "::text AS id" : ""}, name, ${keyColumn} AS api_key, ${
        ["is_active", "deactivated_at", "created_at", "updated_at"].map((c) =>
          projectColumns.has(c)
            ? (dialect === "postgres" && c !== "is_active" ? `${c}::text AS ${c}` : c)
            : `NULL AS ${c}`
        ).join(", ")
      } FROM projects ORDER BY created_at, id`
    )
    const tokenTimes = ["expires_at", "deactivated_at", "created_at", "last_used_at"]
    const tokenRows = yield* select(
      tokenColumns,
      "tokens",
      [
        "id",
        "token",
        "project_id",
        "expires_at",
        "is_active",
        "deactivated_at",
        "request_count",
        "max_requests",
        "cache_hit_count",
        "created_at",
        "last_used_at"
      ],
      tokenTimes,
      "created_at, token"
    )
    const auditWanted = [
      "id",
      "timestamp",
      "action",
      "actor",
      "outcome",
      "project_id",
      "token_id",
      "request_id",
      "correlation_id",
      "client_ip",
      "method",
      "path",
      "user_agent",
      "reason",
      "metadata"
    ]
    const auditRows = auditColumns.has("id") && auditColumns.has("timestamp")
      ? yield* select(auditColumns, "audit_events", auditWanted, ["timestamp"], "timestamp, id")
      : []

    const time = (
      table: string,
      column: string,
      id: unknown,
      v: unknown,
      fallback?: string
    ): Effect.Effect<string | null, ImportError> => {
      const t = parseGoTime(v)
      if (t === undefined) {
        return Effect.fail(
          new ImportError({ message: `cannot read the time "${String(v)}" in ${table}.${column} (row ${String(id)})` })
        )
      }
      return Effect.succeed(t ?? fallback ?? null)
    }
    const now = new Date().toISOString()

    const projects: Array<GoProject> = []
    for (const r of projectRows) {
      const createdAt = (yield* time("projects", "created_at", r.id, r.created_at, now))!
      projects.push({
        id: String(r.id),
        name: String(r.name),
        apiKey: String(r.api_key ?? ""),
        isActive: r.is_active === null || r.is_active === undefined ? true : truthy(r.is_active),
        deactivatedAt: yield* time("projects", "deactivated_at", r.id, r.deactivated_at),
        createdAt,
        updatedAt: (yield* time("projects", "updated_at", r.id, r.updated_at, createdAt))!
      })
    }
    const tokens: Array<GoToken> = []
    for (const r of tokenRows) {
      const ref = r.id ?? `for project ${String(r.project_id)}`
      const max = r.max_requests === null || r.max_requests === undefined ? null : Number(r.max_requests)
      tokens.push({
        id: text(r.id),
        token: String(r.token),
        projectId: String(r.project_id),
        expiresAt: yield* time("tokens", "expires_at", ref, r.expires_at),
        isActive: r.is_active === null || r.is_active === undefined ? true : truthy(r.is_active),
        deactivatedAt: yield* time("tokens", "deactivated_at", ref, r.deactivated_at),
        requestCount: count(r.request_count),
        // The Go proxy reads 0 (and NULL) as unlimited.
        maxRequests: max !== null && Number.isFinite(max) && max > 0 ? Math.floor(max) : null,
        cacheHitCount: count(r.cache_hit_count),
        createdAt: (yield* time("tokens", "created_at", ref, r.created_at, now))!,
        lastUsedAt: yield* time("tokens", "last_used_at", ref, r.last_used_at)
      })
    }
    const audit: Array<GoAuditEvent> = []
    for (const r of auditRows) {
      audit.push({
        id: String(r.id),
        timestamp: (yield* time("audit_events", "timestamp", r.id, r.timestamp, now))!,
        action: String(r.action ?? ""),
        actor: String(r.actor ?? ""),
        outcome: String(r.outcome ?? ""),
        projectId: text(r.project_id),
        tokenId: text(r.token_id),
        requestId: text(r.request_id),
        correlationId: text(r.correlation_id),
        clientIp: text(r.client_ip),
        method: text(r.method),
        path: text(r.path),
        userAgent: text(r.user_agent),
        reason: text(r.reason),
        metadata: text(r.metadata)
      })
    }
    return { projects, tokens, audit } satisfies GoDatabase
  }).pipe(
    Effect.catchTag("SqlError", (cause) =>
      Effect.fail(new ImportError({ message: "cannot read the Go llm-proxy database", cause })))
  )

// ---- the import ---------------------------------------------------------------------------------------------

export interface KindReport {
  imported: number
  updated: number
  unchanged: number
  skipped: number
}

export interface Skipped {
  readonly kind: "project" | "token" | "audit"
  readonly id: string
  readonly reason: string
}

export interface ImportReport {
  readonly dryRun: boolean
  readonly projects: KindReport
  readonly tokens: KindReport
  readonly audit: KindReport
  readonly skipped: ReadonlyArray<Skipped>
}

export interface ImportOptions {
  /** Decrypts the Go proxy's `enc:v1:` keys. */
  readonly sourceCipher: KeyCipherService
  /** Encrypts keys as this gateway stores them (ENCRYPTION_KEY; disabled = plaintext). */
  readonly targetCipher: KeyCipherService
  readonly dryRun: boolean
  /**
   * Run first, inside the import's transaction (the migrations): a dry run rolls it back too, so it leaves even an
   * empty database as it found it.
   */
  readonly prepare?: Effect.Effect<unknown, ImportError, SqlClient.SqlClient>
  readonly now?: string
}

/** A stable UUID for an id that is not one (or for a token row without id), so a re-run finds the same row. */
export const derivedUuid = (namespace: string, value: string): string => {
  const h = createHash("sha256").update(`${namespace}:${value}`, "utf8").digest()
  h[6] = (h[6]! & 0x0f) | 0x80 // version 8: custom
  h[8] = (h[8]! & 0x3f) | 0x80 // RFC 4122 variant
  const x = h.subarray(0, 16).toString("hex")
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20)}`
}

const idOf = (namespace: string, id: string) => (isUuid(id) ? id.toLowerCase() : derivedUuid(namespace, id))

const HEX64_RE = /^[0-9a-fA-F]{64}$/
const CHUNK = 200

const chunks = <A>(items: ReadonlyArray<A>, size = CHUNK): Array<ReadonlyArray<A>> => {
  const out: Array<ReadonlyArray<A>> = []
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size))
  return out
}

const iso = (v: unknown): string | null =>
  v === null || v === undefined ? null : (v instanceof Date ? v : new Date(String(v))).toISOString()
const later = (a: string | null, b: string | null): string | null => (a === null ? b : b === null ? a : a >= b ? a : b)

class DryRun extends Data.TaggedError("DryRun")<{ readonly report: ImportReport }> {}

const emptyKind = (): KindReport => ({ imported: 0, updated: 0, unchanged: 0, skipped: 0 })

/**
 * Imports `source` into the database of the SqlClient in context (migrated), in one transaction; with `dryRun`
 * the same work is done and rolled back, so the report says exactly what a real run would do.
 */
export const importGoDatabase = (dialect: Dialect, source: GoDatabase, options: ImportOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const b = (v: boolean): boolean | number => (dialect === "sqlite" ? (v ? 1 : 0) : v)
    const now = options.now ?? new Date().toISOString()
    const report = {
      dryRun: options.dryRun,
      projects: emptyKind(),
      tokens: emptyKind(),
      audit: emptyKind(),
      skipped: [] as Array<Skipped>
    }
    const skip = (kind: Skipped["kind"], id: string, reason: string) => {
      report[kind === "project" ? "projects" : kind === "token" ? "tokens" : "audit"].skipped++
      report.skipped.push({ kind, id, reason })
    }

    // Every key is decrypted before anything is written: a wrong key stops the import with nothing changed.
    const plainKeys = new Map<string, string>()
    for (const p of source.projects) {
      const plain = yield* options.sourceCipher.decrypt(p.apiKey).pipe(
        Effect.mapError(() =>
          new ImportError({
            message: `cannot decrypt the provider key of project "${p.name}" (${p.id}): set IMPORT_ENCRYPTION_KEY ` +
              "to the Go proxy's ENCRYPTION_KEY"
          })
        )
      )
      plainKeys.set(p.id, plain)
    }

    const byIds = (table: "projects" | "tokens" | "audit_events", ids: ReadonlyArray<string>, column = "id") =>
      Effect.map(
        Effect.forEach(
          chunks(ids),
          (part) => sql<Row>`SELECT * FROM ${sql(table)} WHERE ${sql(column)} IN ${sql.in(part)}`
        ),
        (parts) => parts.flat()
      )

    const work = Effect.gen(function*() {
      if (options.prepare !== undefined) yield* options.prepare
      // -- projects
      const projectIds = new Map<string, string>() // Go id → id here, for projects that exist here after the import
      const mapped = source.projects.map((p) => ({ p, id: idOf("project", p.id) }))
      const existing = new Map((yield* byIds("projects", mapped.map((m) => m.id))).map((r) => [String(r.id), r]))
      const named = new Map(
        (yield* byIds("projects", mapped.map((m) => m.p.name), "name")).map((r) => [String(r.name), String(r.id)])
      )
      for (const { id, p } of mapped) {
        const plain = plainKeys.get(p.id)!
        const owner = named.get(p.name)
        if (owner !== undefined && owner !== id) {
          skip("project", p.id, `a project named "${p.name}" already exists here (${owner})`)
          continue
        }
        const current = existing.get(id)
        projectIds.set(p.id, id)
        if (current === undefined) {
          yield* sql`INSERT INTO projects ${
            sql.insert({
              id,
              name: p.name,
              api_key: options.targetCipher.encrypt(plain),
              api_key_hint: obfuscateApiKey(plain),
              provider: "openai",
              is_active: b(p.isActive),
              deactivated_at: p.isActive ? null : p.deactivatedAt ?? p.updatedAt,
              rate_limit_requests: null,
              rate_limit_window_seconds: null,
              created_at: p.createdAt,
              updated_at: p.updatedAt
            })
          }`
          named.set(p.name, id)
          report.projects.imported++
          continue
        }
        const currentKey = yield* options.targetCipher.decrypt(String(current.api_key)).pipe(
          Effect.mapError(() =>
            new ImportError({
              message:
                `cannot decrypt the provider key of project ${id} here: is ENCRYPTION_KEY the one it was stored with?`
            })
          )
        )
        const wasActive = truthy(current.is_active)
        const isActive = wasActive && p.isActive
        const changes: Row = {}
        if (String(current.name) !== p.name) changes.name = p.name
        if (currentKey !== plain) {
          changes.api_key = options.targetCipher.encrypt(plain)
          changes.api_key_hint = obfuscateApiKey(plain)
          // The imported key replaces the project's whole list (api_keys NULL: the one key in api_key).
          changes.api_keys = null
        }
        if (wasActive && !isActive) {
          changes.is_active = b(false)
          changes.deactivated_at = p.deactivatedAt ?? now
        }
        if (Object.keys(changes).length === 0) {
          report.projects.unchanged++
          continue
        }
        yield* sql`UPDATE projects SET ${sql.update({ ...changes, updated_at: now })} WHERE id = ${id}`
        if (changes.name !== undefined) named.set(p.name, id)
        report.projects.updated++
      }

      // -- tokens
      interface Candidate {
        readonly t: GoToken
        readonly id: string
        readonly projectId: string
        readonly hash: string
        readonly hint: string
      }
      const candidates: Array<Candidate> = []
      const goProjects = new Set(source.projects.map((p) => p.id))
      for (const t of source.tokens) {
        const label = t.id ?? "(a token without id)"
        const projectId = projectIds.get(t.projectId)
        if (projectId === undefined) {
          const why = goProjects.has(t.projectId) ? "was skipped" : "does not exist"
          skip("token", label, `its project ${t.projectId} ${why}`)
          continue
        }
        const plain = isGoTokenFormat(t.token)
        if (!plain && !HEX64_RE.test(t.token)) {
          skip("token", label, "not a Go llm-proxy token (nor its SHA-256)")
          continue
        }
        const hash = plain ? hashProxyToken(t.token) : importedHashOfGoHash(t.token)
        candidates.push({
          t,
          id: t.id === null ? derivedUuid("token", hash) : idOf("token", t.id),
          projectId,
          hash,
          // A token the Go proxy kept only hashed has nothing left to show.
          hint: plain ? tokenHint(t.token) : "sk-****"
        })
      }
      const tokensById = new Map((yield* byIds("tokens", candidates.map((c) => c.id))).map((r) => [String(r.id), r]))
      const tokensByHash = new Map(
        (yield* byIds("tokens", candidates.map((c) => c.hash), "token_hash")).map((
          r
        ) => [String(r.token_hash), String(r.id)])
      )
      for (const c of candidates) {
        const { t } = c
        const current = tokensById.get(c.id)
        if (current === undefined) {
          const holder = tokensByHash.get(c.hash)
          if (holder !== undefined) {
            skip("token", c.id, `already imported as token ${holder}`)
            continue
          }
          yield* sql`INSERT INTO tokens ${
            sql.insert({
              id: c.id,
              token_hash: c.hash,
              token_hint: c.hint,
              project_id: c.projectId,
              expires_at: t.expiresAt,
              is_active: b(t.isActive),
              deactivated_at: t.isActive ? null : t.deactivatedAt ?? t.createdAt,
              request_count: t.requestCount,
              max_requests: t.maxRequests,
              rate_limit_requests: null,
              rate_limit_window_seconds: null,
              cache_hit_count: t.cacheHitCount,
              prompt_tokens: 0,
              completion_tokens: 0,
              created_at: t.createdAt,
              last_used_at: t.lastUsedAt
            })
          }`
          tokensByHash.set(c.hash, c.id)
          report.tokens.imported++
          continue
        }
        if (String(current.token_hash) !== c.hash || String(current.project_id) !== c.projectId) {
          skip("token", c.id, "a different token with this id exists here")
          continue
        }
        const wasActive = truthy(current.is_active)
        const changes: Row = {}
        if (wasActive && !t.isActive) {
          changes.is_active = b(false)
          changes.deactivated_at = t.deactivatedAt ?? now
        }
        if (iso(current.expires_at) !== t.expiresAt) changes.expires_at = t.expiresAt
        const max = current.max_requests === null || current.max_requests === undefined
          ? null
          : Number(current.max_requests)
        if (max !== t.maxRequests) changes.max_requests = t.maxRequests
        if (t.requestCount > Number(current.request_count)) changes.request_count = t.requestCount
        if (t.cacheHitCount > Number(current.cache_hit_count)) changes.cache_hit_count = t.cacheHitCount
        const lastUsed = iso(current.last_used_at)
        if (later(lastUsed, t.lastUsedAt) !== lastUsed) changes.last_used_at = t.lastUsedAt
        if (Object.keys(changes).length === 0) {
          report.tokens.unchanged++
          continue
        }
        yield* sql`UPDATE tokens SET ${sql.update(changes)} WHERE id = ${c.id}`
        report.tokens.updated++
      }

      // -- audit events (insert-only)
      const events = source.audit.flatMap((e) => {
        if (!(OUTCOMES as ReadonlyArray<string>).includes(e.outcome)) {
          skip("audit", e.id, `unknown outcome "${e.outcome}"`)
          return []
        }
        if (e.action === "" || e.actor === "") {
          skip("audit", e.id, "no action or actor")
          return []
        }
        return [{ e, id: idOf("audit", e.id) }]
      })
      const present = new Set((yield* byIds("audit_events", events.map((x) => x.id))).map((r) => String(r.id)))
      const fresh = events.filter((x) => {
        if (present.has(x.id)) {
          report.audit.unchanged++
          return false
        }
        present.add(x.id)
        return true
      })
      for (const part of chunks(fresh)) {
        yield* sql`INSERT INTO audit_events ${
          sql.insert(part.map(({ e, id }) => ({
            id,
            timestamp: e.timestamp,
            action: e.action,
            actor: e.actor,
            outcome: e.outcome,
            project_id: e.projectId === null ? null : projectIds.get(e.projectId) ?? e.projectId,
            token_id: e.tokenId,
            request_id: e.requestId,
            correlation_id: e.correlationId,
            client_ip: e.clientIp,
            method: e.method,
            path: e.path,
            user_agent: e.userAgent,
            reason: e.reason,
            metadata: e.metadata
          })))
        }`
        report.audit.imported += part.length
      }
      if (options.dryRun) return yield* new DryRun({ report })
      return report as ImportReport
    })

    return yield* sql.withTransaction(work).pipe(
      Effect.catchTag("DryRun", (d) => Effect.succeed(d.report)),
      Effect.catchTag(
        "SqlError",
        (cause) => Effect.fail(new ImportError({ message: "the import failed; nothing was written", cause }))
      )
    )
  })

// ---- migrate encrypt ----------------------------------------------------------------------------------------

export interface EncryptReport {
  readonly dryRun: boolean
  readonly encrypted: number
  readonly alreadyEncrypted: number
}

/**
 * Encrypts every plaintext provider key with `cipher` (ENCRYPTION_KEY), in one transaction. Keys already in the
 * `enc:v1:` form are left alone, so running it again changes nothing.
 */
export const encryptProviderKeys = (cipher: KeyCipherService, dryRun: boolean) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const work = Effect.gen(function*() {
      const rows = yield* sql<Row>`SELECT id, api_key FROM projects ORDER BY id`
      let encrypted = 0
      let alreadyEncrypted = 0
      for (const r of rows) {
        const stored = String(r.api_key)
        const next = cipher.encrypt(stored)
        if (next === stored) {
          alreadyEncrypted++
          continue
        }
        if (!dryRun) yield* sql`UPDATE projects SET api_key = ${next} WHERE id = ${String(r.id)}`
        encrypted++
      }
      return { dryRun, encrypted, alreadyEncrypted } satisfies EncryptReport
    })
    return yield* sql.withTransaction(work).pipe(
      Effect.catchTag("SqlError", (cause) =>
        Effect.fail(new ImportError({ message: "encrypting the provider keys failed; nothing was written", cause })))
    )
  })
