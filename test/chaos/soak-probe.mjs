// Preloaded into the soak's `serve` (node --import): every SOAK_PROBE_MS it writes one JSON line to SOAK_PROBE_FILE
// with the event-loop delay of the interval (p50/p99/max, ms), then — after a full GC, so heap figures are live
// data, not garbage not yet collected — RSS and heap. Nothing else of the process is touched.
import { appendFileSync } from "node:fs"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"

const file = process.env.SOAK_PROBE_FILE
if (file) {
  setFlagsFromString("--expose-gc")
  const gc = runInNewContext("gc")
  const every = Number(process.env.SOAK_PROBE_MS ?? 10_000)
  const lag = monitorEventLoopDelay({ resolution: 10 })
  lag.enable()
  const started = Date.now()
  setInterval(() => {
    const sample = { t: (Date.now() - started) / 1000, lagP50: lag.percentile(50) / 1e6, lagP99: lag.percentile(99) / 1e6, lagMax: lag.max / 1e6 }
    gc()
    const m = process.memoryUsage()
    appendFileSync(file, JSON.stringify({ ...sample, rss: m.rss, heapUsed: m.heapUsed, external: m.external }) + "\n")
    lag.reset()
  }, every).unref()
}
