/** The three backends: file (JSONL), lunary and helicone (their ingestion APIs, by their rules: formats.ts). */
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { Effect, Layer, Redacted } from "effect"
import { open } from "node:fs/promises"
import { dirname } from "node:path"
import { ensurePrivateDir, tightenPrivateFile } from "../config/privateFiles.js"
import type { DeliveredEvent } from "../domain/ProxyEvent.js"
import { accepted, Backend, type Outcome, outcomeOfStatus, retry } from "./Backend.js"
import {
  heliconeBase,
  heliconeLog,
  heliconeOutcome,
  LUNARY_MAX_BODY_BYTES,
  lunaryOutcomes,
  lunaryRequests
} from "./formats.js"

export const DEFAULT_LUNARY_ENDPOINT = "https://api.lunary.ai/v1/runs/ingest"
/** Helicone's worker: logs go to `<base>/oai/v1/log` or `<base>/anthropic/v1/log` by provider. */
export const DEFAULT_HELICONE_ENDPOINT = "https://api.worker.helicone.ai"

/**
 * Lunary's answers to a project key it does not accept: 401 (unknown key), 402 (no project id in it, runs/ingest.ts),
 * 403, and 404 (no such project on that server).
 */
export const LUNARY_CREDENTIAL_STATUSES: ReadonlyArray<number> = [401, 402, 403, 404]

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
    }).pipe(
      Effect.tap(({ warnings }) => Effect.forEach(warnings, (w) => Effect.logWarning(w))),
      Effect.map(({ handle }) => handle)
    ),
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

/** One POST; `judge` reads the answer. Network errors and timeouts are transient; the error text never has the key. */
const post = <A>(
  client: HttpClient.HttpClient,
  url: string,
  apiKey: Redacted.Redacted<string>,
  body: string,
  judge: (status: number, text: string) => A,
  onFailure: (reason: string) => A
) =>
  HttpClientRequest.post(url).pipe(
    HttpClientRequest.bearerToken(Redacted.value(apiKey)),
    HttpClientRequest.bodyText(body, "application/json"),
    client.execute,
    Effect.flatMap((res) => Effect.map(Effect.orElseSucceed(res.text, () => ""), (text) => judge(res.status, text))),
    Effect.scoped,
    Effect.timeoutFail({ duration: "30 seconds", onTimeout: () => "timed out after 30 s" }),
    Effect.catchAll((e) => Effect.succeed(onFailure(`POST ${url}: ${typeof e === "string" ? e : e._tag}`)))
  )

const parseJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return undefined
  }
}

/**
 * Lunary: the batch as `{"events": [...]}`, split into POSTs of at most `maxBytes` (its body limit), one after the
 * other; each event's outcome is read from Lunary's per-event `results`.
 */
export const lunaryBackend = (endpoint: string, apiKey: Redacted.Redacted<string>, maxBytes = LUNARY_MAX_BODY_BYTES) =>
  Layer.effect(
    Backend,
    Effect.map(HttpClient.HttpClient, (client) =>
      Backend.of({
        name: "lunary",
        batched: true,
        send: (batch) =>
          Effect.gen(function*() {
            const outcomes = new Array<Outcome>(batch.length)
            for (const request of lunaryRequests(batch, maxBytes)) {
              const got = yield* post(
                client,
                endpoint,
                apiKey,
                request.body,
                (status, text): ReadonlyArray<Outcome> =>
                  status >= 200 && status < 300
                    ? lunaryOutcomes(request, parseJson(text))
                    : request.indexes.map(() => outcomeOfStatus(status, text, LUNARY_CREDENTIAL_STATUSES)),
                (reason) => request.indexes.map(() => retry(reason))
              )
              request.indexes.forEach((i, k) => (outcomes[i] = got[k] ?? retry("no outcome")))
            }
            return outcomes
          })
      }))
  )

/**
 * Helicone: one log per event on its provider's route, 4 at a time; each event gets its own outcome, so a retry
 * never resends accepted ones. `endpoint` is the worker's base URL.
 */
export const heliconeBackend = (endpoint: string, apiKey: Redacted.Redacted<string>) =>
  Layer.effect(
    Backend,
    Effect.map(HttpClient.HttpClient, (client) => {
      const base = heliconeBase(endpoint)
      return Backend.of({
        name: "helicone",
        batched: false,
        send: (batch: ReadonlyArray<DeliveredEvent>) =>
          Effect.forEach(batch, (e) => {
            const log = heliconeLog(e)
            return post(
              client,
              `${base}${log.route}`,
              apiKey,
              JSON.stringify(log.body),
              (status, text) => (status >= 200 && status < 300 ? heliconeOutcome(text) : outcomeOfStatus(status, text)),
              retry
            )
          }, { concurrency: 4 })
      })
    })
  )
