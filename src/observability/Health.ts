/**
 * Health: per-dependency checks behind `GET /health` and `GET /ready`.
 *
 * Layers register a check for each dependency they bring (src/Layers.ts): the database always (required), Redis
 * when a Redis-backed layer is configured (required when rate limits fail closed), the event bus (required with
 * events on and the Redis bus) and the dispatcher lag when known (src/observability/eventChecks.ts). Checks run
 * concurrently with a 2 s timeout each, on request only (no background polling).
 *
 * - `/health`: 200 with every check's state and latency; 503 while a required dependency is down.
 * - `/ready`: 200 `ready`, or 503 `not ready` while a required dependency is down. An optional dependency being
 *   down (Redis for the cache, a slow dispatcher) leaves the instance ready but `degraded`: the proxy keeps serving.
 */
import { Clock, Context, Duration, Effect, Layer } from "effect"

export interface DependencyCheck {
  readonly name: string
  /** A required dependency that is down makes the instance not ready. */
  readonly required: boolean
  /** Succeeds (optionally with details to show) when the dependency is usable. Must not reveal secrets. */
  readonly check: Effect.Effect<Record<string, unknown> | void, unknown>
}

export interface CheckResult {
  readonly status: "up" | "down"
  readonly required: boolean
  readonly latency_ms: number
  readonly error?: string
  readonly [detail: string]: unknown
}

export interface HealthReport {
  readonly status: "ok" | "degraded" | "down"
  readonly ready: boolean
  readonly timestamp: string
  readonly version: string
  readonly uptime_seconds: number
  readonly checks: Record<string, CheckResult>
}

export interface HealthShape {
  readonly register: (check: DependencyCheck) => void
  readonly report: Effect.Effect<HealthReport>
}

export class Health extends Context.Tag("llm-proxy/Health")<Health, HealthShape>() {}

export const CHECK_TIMEOUT = Duration.seconds(2)

/** The one line of a failure we are willing to show: a tag or short message, never a stack or a URL with credentials. */
const describe = (e: unknown): string => {
  if (e !== null && typeof e === "object") {
    const tag = (e as { _tag?: unknown })._tag
    if (tag === "TimeoutException") return "timed out"
    const msg = (e as { message?: unknown }).message
    if (typeof msg === "string" && msg !== "") return msg.replace(/\w+:\/\/[^\s]*@/g, "<redacted>@").slice(0, 200)
    if (typeof tag === "string") return tag
  }
  return "unavailable"
}

export const make = (version: string) =>
  Effect.sync((): HealthShape => {
    const checks: Array<DependencyCheck> = []
    const startedAt = Date.now()
    const run = (c: DependencyCheck) =>
      Effect.gen(function*() {
        const start = yield* Clock.currentTimeMillis
        const r = yield* Effect.either(Effect.timeout(c.check, CHECK_TIMEOUT))
        const latency = (yield* Clock.currentTimeMillis) - start
        const result: CheckResult = r._tag === "Right"
          ? { status: "up", required: c.required, latency_ms: latency, ...(r.right ?? {}) }
          : { status: "down", required: c.required, latency_ms: latency, error: describe(r.left) }
        return [c.name, result] as const
      })
    return {
      register: (c) => {
        const i = checks.findIndex((x) => x.name === c.name)
        if (i >= 0) checks[i] = c
        else checks.push(c)
      },
      report: Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const results = yield* Effect.all(checks.map(run), { concurrency: "unbounded" })
        const down = results.filter(([, r]) => r.status === "down")
        const ready = !down.some(([, r]) => r.required)
        return {
          status: ready ? (down.length === 0 ? "ok" : "degraded") : "down",
          ready,
          timestamp: new Date(now).toISOString(),
          version,
          uptime_seconds: Math.round((now - startedAt) / 100) / 10,
          checks: Object.fromEntries(results)
        }
      })
    }
  })

export const layer = (version: string): Layer.Layer<Health> => Layer.effect(Health, make(version))
