/**
 * Token-cache invalidations carried by PostgreSQL itself (LISTEN/NOTIFY): instances that share a database need
 * nothing else to see each other's revocations, deactivations and key rotations before their next request.
 *
 * - Sending is `SELECT pg_notify(…)` on the store's pool, so it works whatever state this instance's listening
 *   connection is in. PostgreSQL hands the notification to every listener when that statement commits, and
 *   `settled()` (awaited by the management API before it answers) resolves then.
 * - Receiving is one connection of its own (a pooled one is lent to other queries) that runs LISTEN. The token cache
 *   is trusted only while it listens. When it ends (server restart, `pg_terminate_backend`, network) it is opened
 *   again with backoff, and once it listens again the whole cache is dropped: notifications sent in the gap are lost.
 *   A ping every 10 s notices a connection that died without a word (no answer within 5 s: closed and reopened).
 * - Notifications are per database, so instances on different databases of one server never see each other's.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted, Runtime } from "effect"
import * as Pg from "pg"
import { AppConfig } from "../config/AppConfig.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { Store } from "../store/Store.js"
import { type Invalidation, type InvalidationChannel, make, pendingPublishes, TokenValidator } from "./TokenValidator.js"

/** The notification channel (one per database). */
export const CHANNEL = "llm_proxy_token_invalidations"

/** `application_name` of the listening connection, as `pg_stat_activity` shows it (with the process id). */
export const APPLICATION_NAME = "llm-proxy invalidations"

export interface ListenerOptions {
  /** How often the listening connection is pinged, ms. */
  readonly pingIntervalMs?: number
  /** A ping not answered within this long closes the connection (it is then reopened), ms. */
  readonly pingTimeoutMs?: number
  /** The longest wait between two attempts to reopen the listening connection, ms. */
  readonly maxBackoffMs?: number
}

interface Listener {
  readonly channel: InvalidationChannel
  /** Opens the listening connection; resolves after the first attempt (listening or not). */
  readonly start: () => Promise<void>
  readonly close: () => Promise<void>
}

const message = (e: unknown) => (e instanceof Error ? e.message : String(e))

const makeListener = (url: Redacted.Redacted<string>, options: ListenerOptions) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient.SqlClient
    const runtime = yield* Effect.runtime<never>()
    const runPromise = Runtime.runPromise(runtime)
    const log = (level: "warn" | "info", m: string) =>
      Runtime.runFork(runtime)(level === "warn" ? Effect.logWarning(m) : Effect.logInfo(m))
    const pingIntervalMs = options.pingIntervalMs ?? 10_000
    const pingTimeoutMs = options.pingTimeoutMs ?? 5_000
    const maxBackoffMs = options.maxBackoffMs ?? 2_000
    const instance = crypto.randomUUID()

    let handlers: { readonly apply: (m: Invalidation) => void; readonly reset: () => void } | undefined
    let client: Pg.Client | undefined
    let listening = false
    let everListened = false
    let closed = false
    let failures = 0
    let warned = false
    let retry: ReturnType<typeof setTimeout> | undefined

    const receive = (text: string) => {
      try {
        const m = JSON.parse(text) as Invalidation & { from?: string }
        if (m.from !== instance) handlers?.apply(m)
      } catch {
        // not ours
      }
    }

    /** The connection `c` is gone (or never opened): stop trusting the cache and open a new one after a pause. */
    const lost = (c: Pg.Client, e: unknown) => {
      if (client !== c) return // an earlier connection, already replaced
      client = undefined
      listening = false
      // With a query in flight (a ping) end() destroys the socket instead of waiting for it.
      void c.end().catch(() => {})
      if (closed) return
      if (!warned) {
        log("warn", `token invalidation channel (PostgreSQL LISTEN): ${message(e)}; the token cache is bypassed until it is back`)
      }
      warned = true
      const delay = Math.min(100 * 2 ** failures, maxBackoffMs)
      failures++
      retry = setTimeout(() => void connect(), delay)
    }

    const connect = (): Promise<void> => {
      retry = undefined
      if (closed) return Promise.resolve()
      const c = new Pg.Client({
        connectionString: Redacted.value(url),
        application_name: `${APPLICATION_NAME} pid ${process.pid}`,
        connectionTimeoutMillis: 5_000,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000
      })
      client = c
      // Every 'error' is handled (an unhandled one would end the process); both mean the connection is gone.
      c.on("error", (e) => lost(c, e))
      c.on("end", () => lost(c, new Error("connection closed")))
      c.on("notification", (n) => {
        if (client === c && n.channel === CHANNEL && n.payload !== undefined) receive(n.payload)
      })
      return c.connect().then(() => c.query(`LISTEN ${CHANNEL}`)).then(() => {
        if (client !== c || closed) return
        // Drop what was cached before trusting the cache again: changes made while we were not listening were
        // announced to nobody here. A load that started before this point does not cache (generation counter).
        if (everListened) {
          handlers?.reset()
          log("info", "token invalidation channel (PostgreSQL LISTEN) is back; token cache cleared")
        }
        everListened = true
        warned = false
        failures = 0
        listening = true
      }, (e: unknown) => lost(c, e))
    }

    const ping = setInterval(() => {
      const c = client
      if (c === undefined || !listening) return
      const timer = setTimeout(() => lost(c, new Error(`no answer to a ping within ${pingTimeoutMs} ms`)), pingTimeoutMs)
      c.query("SELECT 1").then(() => clearTimeout(timer), (e: unknown) => {
        clearTimeout(timer)
        lost(c, e)
      })
    }, pingIntervalMs)
    ping.unref()

    const pending = pendingPublishes()
    const channel: InvalidationChannel = {
      publish: (m) =>
        pending.add(
          runPromise(sql`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ ...m, from: instance })})`).catch((e: unknown) =>
            log(
              "warn",
              `token invalidation not sent to other instances (PostgreSQL NOTIFY failed: ${message(e)}); ` +
                "they apply it when their cache entry expires (TOKEN_CACHE_TTL)"
            )
          )
        ),
      subscribe: (apply, reset) => {
        handlers = { apply, reset }
      },
      live: () => listening,
      settled: pending.settled
    }

    const listener: Listener = {
      channel,
      start: connect,
      close: async () => {
        closed = true
        listening = false
        clearInterval(ping)
        if (retry !== undefined) clearTimeout(retry)
        const c = client
        client = undefined
        if (c !== undefined) {
          await Promise.race([c.end().catch(() => {}), new Promise<void>((r) => setTimeout(r, 1000).unref())])
        }
      }
    }
    return listener
  })

/**
 * Several instances on one PostgreSQL database: invalidations are announced with NOTIFY and applied by every other
 * instance when they arrive (milliseconds). The proxy keeps serving while the listening connection is down (every
 * request then reads the database) and logs the outage once.
 */
export const layerPostgres = (
  url: Redacted.Redacted<string>,
  options: ListenerOptions = {}
): Layer.Layer<TokenValidator, never, Store | KeyCipher | AppConfig | SqlClient.SqlClient> =>
  Layer.scoped(
    TokenValidator,
    Effect.gen(function*() {
      const listener = yield* Effect.acquireRelease(makeListener(url, options), (l) => Effect.promise(l.close))
      const validator = yield* make(listener.channel)
      // The first LISTEN is awaited (at most the 5 s connection timeout), so an instance starts with its cache
      // trusted; when it fails the instance starts anyway and keeps trying.
      yield* Effect.promise(listener.start)
      return validator
    })
  )
