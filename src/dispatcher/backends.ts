/** The three backends of CONTRACT §6: file (JSONL), lunary and helicone (their ingestion formats). */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { Effect, Layer, Redacted } from "effect"
import { open } from "node:fs/promises"
import { dirname } from "node:path"
import { ensurePrivateDir, tightenPrivateFile } from "../config/privateFiles.js"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"
import { accepted, Backend, type Outcome, outcomeOfStatus, retry } from "./Backend.js"
import { heliconeLog, lunaryBody } from "./formats.js"

export const DEFAULT_LUNARY_ENDPOINT = "https://api.lunary.ai/v1/runs/ingest"
export const DEFAULT_HELICONE_ENDPOINT = "https://api.worker.helicone.ai/custom/v1/log"

/**
 * Appends one JSON line per event; the batch is fsync'ed before it counts as accepted. Events hold whole prompts and
 * answers: the file is created 0600 in a 0700 directory, looser modes found are tightened with a warning.
 */
export const makeJsonlWriter = (path: string) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const warnings = [...ensurePrivateDir(dirname(path)), ...tightenPrivateFile(path)]
        return { handle: await open(path, "a", 0o600), warnings }
      },
      catch: (e) => new Error(`cannot open ${path}: ${(e as Error).message}`)
    }).pipe(Effect.tap(({ warnings }) => Effect.forEach(warnings, (w) => Effect.logWarning(w))), Effect.map(({ handle }) => handle)),
    (handle) => Effect.promise(() => handle.close().catch(() => {}))
  ).pipe(
    Effect.map((handle) => (lines: ReadonlyArray<unknown>) =>
      Effect.tryPromise({
        try: async () => {
          await handle.write(lines.map((l) => JSON.stringify(l)).join("\n") + "\n")
          await handle.sync()
        },
        catch: (e) => (e as Error).message
      })
    )
  )

export const fileBackend = (path: string) =>
  Layer.scoped(
    Backend,
    Effect.map(makeJsonlWriter(path), (write) =>
      Backend.of({
        name: "file",
        batched: true,
        send: (batch) =>
          write(batch).pipe(
            Effect.as(batch.map((): Outcome => accepted)),
            Effect.catchAll((reason) => Effect.succeed(batch.map(() => retry(`write ${path}: ${reason}`))))
          )
      }))
  )

const post = (client: HttpClient.HttpClient, url: string, apiKey: Redacted.Redacted<string>, body: unknown) =>
  HttpClientRequest.post(url).pipe(
    HttpClientRequest.bearerToken(Redacted.value(apiKey)),
    HttpClientRequest.bodyUnsafeJson(body),
    client.execute,
    Effect.flatMap((res) => Effect.map(Effect.orElseSucceed(res.text, () => ""), (text) => outcomeOfStatus(res.status, text))),
    Effect.scoped,
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => "timed out after 30 s" }),
    // network errors and timeouts are transient; the error text never includes the key
    Effect.catchAll((e) => Effect.succeed(retry(`POST ${url}: ${typeof e === "string" ? e : e._tag}`)))
  )

/** Lunary: the whole batch in one POST `{"events": [...]}`. */
export const lunaryBackend = (endpoint: string, apiKey: Redacted.Redacted<string>) =>
  Layer.effect(
    Backend,
    Effect.map(HttpClient.HttpClient, (client) =>
      Backend.of({
        name: "lunary",
        batched: true,
        send: (batch) => Effect.map(post(client, endpoint, apiKey, lunaryBody(batch)), (o) => batch.map(() => o))
      }))
  )

/** Helicone: one POST per event; each event gets its own outcome, so a retry never resends accepted ones. */
export const heliconeBackend = (endpoint: string, apiKey: Redacted.Redacted<string>) =>
  Layer.effect(
    Backend,
    Effect.map(HttpClient.HttpClient, (client) =>
      Backend.of({
        name: "helicone",
        batched: false,
        send: (batch: ReadonlyArray<DeliveredEvent>) =>
          Effect.forEach(batch, (e) => post(client, endpoint, apiKey, heliconeLog(e)), { concurrency: 4 })
      }))
  )
