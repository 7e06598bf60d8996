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
  // The histogram records the time between its own 10 ms timer ticks; the lag is what exceeds the 10 ms.
  const RESOLUTION = 10
  const lag = monitorEventLoopDelay({ resolution: RESOLUTION })
  lag.enable()
  const started = Date.now()
  setInterval(() => {
    const ms = (ns) => Math.max(0, ns / 1e6 - RESOLUTION)
    const sample = {
      t: (Date.now() - started) / 1000,
      lagP50: ms(lag.percentile(50)),
      lagP99: ms(lag.percentile(99)),
      lagMax: ms(lag.max)
    }
    gc()
    const m = process.memoryUsage()
    appendFileSync(file, JSON.stringify({ ...sample, rss: m.rss, heapUsed: m.heapUsed, external: m.external }) + "\n")
    lag.reset()
  }, every).unref()
}
