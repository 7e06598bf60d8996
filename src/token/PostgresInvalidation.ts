/**
 * Token-cache invalidations carried by PostgreSQL itself (LISTEN/NOTIFY): instances that share a database need
 * nothing else to see each other's revocations, deactivations and key rotations before their next request.
 *
 * - Sending is `SELECT pg_notify(…)` on the store's pool, so it works whatever state this instance's listening
 *   connection is in. PostgreSQL hands the notification to every listener when that statement commits.
 * - Every instance that applies an announcement acknowledges it (a NOTIFY on a second channel, addressed to the
 *   sender), and `settled()` — awaited by the management API before it answers — resolves once every instance that
 *   was listening on this database when the announcement was sent (their listening connections, named
 *   `llm-proxy invalidations pid <pid> <instance>` in `pg_stat_activity`) has acknowledged it, or after 1 s. So a
 *   client that calls another instance right after the management API answered cannot overtake the announcement.
 *   An instance that is not listening does not use its token cache at all, so it needs no acknowledgement.
 * - Receiving is one connection of its own (a pooled one is lent to other queries) that runs LISTEN. The token cache
 *   is trusted only while it listens. When it ends (server restart, `pg_terminate_backend`, network) it is opened
 *   again with backoff, and once it listens again the whole cache is dropped: notifications sent in the gap are lost.
 *   A ping every 10 s notices a connection that died without a word (no answer within 5 s: closed and reopened).
 * - Notifications are per database, so instances on different databases of one server never see each other's.
 */
import { SqlClient } from "@effect/sql"
import { Effect, Layer, Redacted, Runtime } from "effect"
import type * as Pg from "pg"
import { AppConfig } from "../config/AppConfig.js"
import { KeyCipher } from "../crypto/KeyCipher.js"
import { importExport } from "../lazyImport.js"
import { Store } from "../store/Store.js"
import {
  type Invalidation,
  type InvalidationChannel,
  make,
  pendingPublishes,
  TokenValidator
} from "./TokenValidator.js"

/** The notification channel (one per database). */
export const CHANNEL = "llm_proxy_token_invalidations"

/** The longest wait for other instances' acknowledgements of one announcement. */
const ACK_TIMEOUT_MS = 1_000

/** Acknowledgements: `{"to": sender, "n": announcement, "from": acknowledging instance}`. */
export const ACK_CHANNEL = "llm_proxy_token_invalidation_acks"

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
    // pg is loaded here, when PostgreSQL is configured: a SQLite deployment never evaluates it.
    const Client = yield* importExport(() => import("pg"), "Client")
    const sql = yield* SqlClient.SqlClient
    const runtime = yield* Effect.runtime<never>()
    const runPromise = Runtime.runPromise(runtime)
    const log = (level: "warn" | "info", m: string) =>
      Runtime.runFork(runtime)(level === "warn" ? Effect.logWarning(m) : Effect.logInfo(m))
    const pingIntervalMs = options.pingIntervalMs ?? 10_000
    const pingTimeoutMs = options.pingTimeoutMs ?? 5_000
    const maxBackoffMs = options.maxBackoffMs ?? 2_000
    // Short: application_name holds at most 63 bytes.
    const instance = crypto.randomUUID().replaceAll("-", "").slice(0, 12)
    const applicationName = `${APPLICATION_NAME} pid ${process.pid} ${instance}`

    let handlers: { readonly apply: (m: Invalidation) => void; readonly reset: () => void } | undefined
    let client: Pg.Client | undefined
    let listening = false
    let everListened = false
    let closed = false
    let failures = 0
    let warned = false
    let retry: ReturnType<typeof setTimeout> | undefined

    /** Announcements of ours waiting for acknowledgements: nonce → who still has to answer, and what to call then. */
    const awaiting = new Map<string, { readonly missing: Set<string>; readonly done: () => void }>()
    let nonces = 0

    const receive = (c: Pg.Client, channelName: string, text: string) => {
      let m: (Invalidation & { from?: string; n?: string; to?: string }) | undefined
      try {
        m = JSON.parse(text) as typeof m
      } catch {
        return // not ours
      }
      if (m === undefined || typeof m.from !== "string") return
      if (channelName === ACK_CHANNEL) {
        if (m.to !== instance || m.n === undefined) return
        const w = awaiting.get(m.n)
        if (w !== undefined && w.missing.delete(m.from) && w.missing.size === 0) w.done()
        return
      }
      if (m.from === instance) return
      handlers?.apply(m)
      // Applied: tell the sender, on the listening connection itself (idle but for pings).
      if (m.n !== undefined) {
        c.query("SELECT pg_notify($1, $2)", [ACK_CHANNEL, JSON.stringify({ to: m.from, n: m.n, from: instance })])
          .catch(() => {}) // the connection's own error handling reconnects; the sender stops waiting after 1 s
      }
    }

    /** The other instances listening on this database now (their listening connections' names). */
    const peers = (): Promise<Set<string>> =>
      runPromise(
        sql<{ name: string }>`SELECT application_name AS name FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE ${`${APPLICATION_NAME} pid %`}`
      ).then((rows) => {
        const ids = new Set<string>()
        for (const r of rows) {
          const id = r.name.split(" ").at(-1)
          if (id !== undefined && id !== instance) ids.add(id)
        }
        return ids
      })

    /** The connection `c` is gone (or never opened): stop trusting the cache and open a new one after a pause. */
    const lost = (c: Pg.Client, e: unknown) => {
      if (client !== c) return // an earlier connection, already replaced
      client = undefined
      listening = false
      // With a query in flight (a ping) end() destroys the socket instead of waiting for it.
      void c.end().catch(() => {})
      if (closed) return
      if (!warned) {
        log(
          "warn",
          `token invalidation channel (PostgreSQL LISTEN): ${message(e)}; the token cache is bypassed until it is back`
        )
      }
      warned = true
      const delay = Math.min(100 * 2 ** failures, maxBackoffMs)
      failures++
      retry = setTimeout(() => void connect(), delay)
    }

    const connect = (): Promise<void> => {
      retry = undefined
      if (closed) return Promise.resolve()
      const c = new Client({
        connectionString: Redacted.value(url),
        application_name: applicationName,
        connectionTimeoutMillis: 5_000,
        keepAlive: true,
        keepAliveInitialDelayMillis: 10_000
      })
      client = c
      // Every 'error' is handled (an unhandled one would end the process); both mean the connection is gone.
      c.on("error", (e) => lost(c, e))
      c.on("end", () => lost(c, new Error("connection closed")))
      c.on("notification", (n) => {
        if (client === c && (n.channel === CHANNEL || n.channel === ACK_CHANNEL) && n.payload !== undefined) {
          receive(c, n.channel, n.payload)
        }
      })
      return c.connect().then(() => c.query(`LISTEN ${CHANNEL}; LISTEN ${ACK_CHANNEL}`)).then(() => {
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
      const timer = setTimeout(
        () => lost(c, new Error(`no answer to a ping within ${pingTimeoutMs} ms`)),
        pingTimeoutMs
      )
      c.query("SELECT 1").then(() => clearTimeout(timer), (e: unknown) => {
        clearTimeout(timer)
        lost(c, e)
      })
    }, pingIntervalMs)
    ping.unref()

    const pending = pendingPublishes()
    const channel: InvalidationChannel = {
      publish: (m) => {
        const n = String(++nonces)
        const sent = peers().then((missing) => {
          // Registered before sending: an acknowledgement cannot arrive before it is awaited.
          const acked = missing.size === 0 ? Promise.resolve() : new Promise<void>((resolve) => {
            // An instance that does not answer within ACK_TIMEOUT_MS (hung, or gone since it was listed) is not
            // waited for any longer.
            const timer = setTimeout(done, ACK_TIMEOUT_MS)
            timer.unref()
            function done() {
              clearTimeout(timer)
              resolve()
            }
            awaiting.set(n, { missing, done })
          })
          return runPromise(sql`SELECT pg_notify(${CHANNEL}, ${JSON.stringify({ ...m, from: instance, n })})`).then(
            () => acked
          )
        })
        pending.add(
          sent.catch((e: unknown) =>
            log(
              "warn",
              `token invalidation not sent to other instances (PostgreSQL NOTIFY failed: ${message(e)}); ` +
                "they apply it when their cache entry expires (TOKEN_CACHE_TTL)"
            )
          ).finally(() => awaiting.delete(n))
        )
      },
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
