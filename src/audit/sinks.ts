/**
 * The AuditLog's sinks: the `audit_events` table (through AuditRepo) and an append-only JSONL file, each batch
 * fsync'd before the writer takes the next one. Which of them run is decided in src/Layers.ts.
 */
import { Effect, Layer } from "effect"
import { open } from "node:fs/promises"
import { dirname } from "node:path"
import { ensurePrivateDir, tightenPrivateFile } from "../config/privateFiles.js"
import type { AuditRecord } from "../domain/audit.js"
import { type AuditSink, AuditSinkError, AuditSinks } from "./AuditLog.js"
import { AuditRepo } from "./AuditRepo.js"

export const databaseSink = Effect.map(AuditRepo, (repo): AuditSink => ({
  name: "database",
  queryable: true,
  write: (batch) =>
    repo.insert(batch).pipe(Effect.mapError((e) => new AuditSinkError({ message: e.message, cause: e.cause })))
}))

/**
 * One JSON object per line, in the file format of docs/audit.md ("The file"): `result` is the outcome and `details` the
 * action's facts as an object (the database stores them as the `metadata` text).
 */
export const fileLine = (r: AuditRecord): string =>
  JSON.stringify({
    id: r.id,
    timestamp: r.timestamp,
    action: r.action,
    actor: r.actor,
    result: r.outcome,
    project_id: r.projectId,
    token_id: r.tokenId,
    request_id: r.requestId,
    correlation_id: r.correlationId,
    client_ip: r.clientIp,
    method: r.method,
    path: r.path,
    user_agent: r.userAgent,
    reason: r.reason,
    details: r.details !== undefined && Object.keys(r.details).length > 0 ? r.details : undefined,
    // Only aggregated denials carry it (every other line stands for one event).
    count: r.count
  }) + "\n"

/**
 * Appends to `path` (created with mode 0600, missing directories 0700; looser modes found are tightened with a
 * warning); never truncates.
 */
export const fileSink = (path: string) =>
  Effect.gen(function*() {
    const warnings: Array<string> = []
    const handle = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          warnings.push(...ensurePrivateDir(dirname(path)), ...tightenPrivateFile(path))
          const h = await open(path, "a+", 0o600)
          // A previous process that died mid-write may have left a partial last line: start on a fresh one.
          const { size } = await h.stat()
          if (size > 0) {
            const last = Buffer.alloc(1)
            await h.read(last, 0, 1, size - 1)
            if (last[0] !== 0x0a) await h.appendFile("\n")
          }
          return h
        },
        catch: (cause) => new AuditSinkError({ message: `cannot open the audit log file ${path}`, cause })
      }),
      (h) => Effect.promise(() => h.close().catch(() => undefined))
    )
    for (const warning of warnings) yield* Effect.logWarning(warning)
    const sink: AuditSink = {
      name: "file",
      queryable: false,
      write: (batch) =>
        Effect.tryPromise({
          try: async () => {
            await handle.appendFile(batch.map(fileLine).join(""))
            await handle.sync()
          },
          catch: (cause) => new AuditSinkError({ message: `cannot write the audit log file ${path}`, cause })
        })
    }
    return sink
  })

/** The sinks for a configuration; `file` undefined = no file, `database` false = no rows. */
export const layer = (options: { readonly file: string | undefined; readonly database: boolean }) =>
  Layer.scoped(
    AuditSinks,
    Effect.gen(function*() {
      const sinks: Array<AuditSink> = []
      if (options.database) sinks.push(yield* databaseSink)
      if (options.file !== undefined) sinks.push(yield* fileSink(options.file))
      return sinks
    })
  )
