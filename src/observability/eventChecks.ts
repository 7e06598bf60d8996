/**
 * The event bus and the dispatcher on /metrics and /health: what `serve` and the standalone `dispatcher` read from
 * them at scrape / health time (never per request). Wired in src/Layers.ts (`busObservabilityLayer`,
 * `dispatcherEndpointLayer`).
 */
import { Effect } from "effect"
import type { DispatcherInfoShape } from "../dispatcher/Dispatcher.js"
import type { Backlog, BusError, EventBus } from "../eventbus/EventBus.js"
import type { HealthShape } from "./Health.js"
import type { BusStatsLike, DispatcherStatsLike, StatsSource } from "./Metrics.js"

type Bus = EventBus["Type"]

/** A bus round trip gets this long at scrape time; the counters never wait for it. */
const LAG_TIMEOUT = "500 millis"

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString())

/** The publisher's counters with the bus's backlog (absent when the bus cannot be read right now). */
export const busStats = (bus: Bus): StatsSource<BusStatsLike> =>
  Effect.gen(function*() {
    const stats = yield* bus.stats
    const backlog = yield* Effect.option(Effect.timeout(bus.backlog, LAG_TIMEOUT))
    return {
      published: stats.published,
      dropped: stats.dropped,
      lag: backlog._tag === "Some" ? backlog.value.lag : null,
      groups: backlog._tag === "Some" ? backlog.value.groups.map((g) => ({ group: g.group, lag: g.lag })) : []
    }
  })

/** A running dispatcher's counters (always) and its group's lag (when the bus answers in time). */
export const dispatcherStats = (d: DispatcherInfoShape): StatsSource<DispatcherStatsLike> =>
  Effect.map(Effect.option(Effect.timeout(d.lag, LAG_TIMEOUT)), (lag) => ({
    backend: d.backend,
    group: d.group,
    delivered: d.stats.delivered,
    retries: d.stats.retries,
    deadLettered: d.stats.deadLettered,
    batches: d.stats.batches,
    lastDeliveryAt: d.stats.lastDeliveryAt,
    lag: lag._tag === "Some" ? lag.value.lag : null,
    credentialFailures: d.stats.credentialFailures,
    paused: d.stats.pausedSince !== null,
    bodiesTooLarge: d.stats.bodiesTooLarge
  }))

/**
 * `event_bus`: reachable (Redis: the backlog probe answered) with what is waiting. `required` decides whether the
 * bus being down makes the instance not ready (docs/observability.md "Health and readiness").
 */
export const registerBusCheck = (
  health: HealthShape,
  options: {
    readonly required: boolean
    readonly kind: string
    readonly stream?: string
    readonly backlog: Effect.Effect<Backlog, BusError>
    readonly stats?: Bus["stats"]
  }
) =>
  health.register({
    name: "event_bus",
    required: options.required,
    check: Effect.gen(function*() {
      const backlog = yield* options.backlog
      const stats = options.stats === undefined ? undefined : yield* options.stats
      return {
        kind: options.kind,
        ...(options.stream === undefined ? {} : { stream: options.stream }),
        lag: backlog.lag,
        length: backlog.length,
        ...(stats === undefined ? {} : { published: stats.published, dropped: stats.dropped, buffered: stats.buffered })
      }
    })
  })

/**
 * `dispatcher`: each consumer group's lag (Redis: every group of the stream, as the bus sees it; in-process: the
 * dispatcher's own) and, for dispatchers running in this process, their counters and last successful delivery.
 * `lag` is the largest known group lag. Never required: a slow or absent dispatcher does not stop the proxy.
 */
export const registerDispatcherCheck = (
  health: HealthShape,
  options: {
    /** the stream's consumer groups (Redis), when this process can read them */
    readonly backlog?: Effect.Effect<Backlog, BusError>
    /** only these groups (the standalone dispatcher shows its own) */
    readonly onlyGroup?: string
    readonly dispatchers: ReadonlyArray<DispatcherInfoShape>
  }
) =>
  health.register({
    name: "dispatcher",
    required: false,
    check: Effect.gen(function*() {
      const groups: Record<string, { lag: number | null; pending: number; consumers?: number }> = {}
      if (options.backlog !== undefined) {
        for (const g of (yield* options.backlog).groups) {
          if (options.onlyGroup === undefined || g.group === options.onlyGroup) {
            groups[g.group] = { lag: g.lag, pending: g.pending, consumers: g.consumers }
          }
        }
      }
      const backends: Record<string, unknown> = {}
      for (const d of options.dispatchers) {
        if (!(d.group in groups)) {
          const l = yield* d.lag
          groups[d.group] = { lag: l.lag, pending: l.pending }
        }
        backends[d.backend] = {
          group: d.group,
          delivered: d.stats.delivered,
          retries: d.stats.retries,
          dead_lettered: d.stats.deadLettered,
          last_delivery_at: iso(d.stats.lastDeliveryAt),
          // the backend refuses our API key: delivery waits (docs/events.md "Failures")
          paused_since: iso(d.stats.pausedSince),
          credential_failures: d.stats.credentialFailures
        }
      }
      const known = Object.values(groups).flatMap((g) => (g.lag === null ? [] : [g.lag]))
      return {
        lag: known.length === 0 ? null : Math.max(...known),
        groups,
        ...(options.dispatchers.length === 0 ? {} : { backends })
      }
    })
  })
