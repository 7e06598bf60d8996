/**
 * V8 doubles the young generation (new space) whenever a scavenge finds most of it still alive. Starting the
 * gateway — evaluating the bundle's modules, building the layers — is exactly that, every time: left alone the
 * young generation grows to its maximum (2 × 16 MB) during start-up, and an idle `serve` keeps those pages
 * resident, ~30 MB of its idle footprint (docs/performance.md). The entry point (src/cli/main.ts) holds it at its
 * initial size while starting; `serve` releases it once it listens, where traffic makes a large young generation
 * pay off again (fewer scavenges, fewer short-lived objects promoted), and every other command right away.
 *
 * The entry point also turns off V8's allocation-site pretenuring (`noPretenuring`, below).
 *
 * Node documents changing V8 flags at run time as "use with care" (it starts V8 with --no-freeze-flags-after-init
 * for `setFlagsFromString`'s sake); the growth factor is only read when new space grows, the pretenuring flag when a
 * scavenge decides what to pretenure (checked: set at start-up, it removes the slow processes described below).
 */
import { setFlagsFromString } from "node:v8"

/** V8's default `--semi-space-growth-factor`. */
const DEFAULT_GROWTH_FACTOR = 2

let held = false

/** Keeps new space at its current size until `releaseYoungGeneration`. */
export const holdYoungGeneration = (): void => {
  setFlagsFromString("--semi-space-growth-factor=1")
  held = true
}

/**
 * Turns off V8's allocation-site pretenuring: V8 allocates the objects of a site whose objects mostly survived
 * their first scavenges directly in the old generation. Under load every request's short-lived objects (its context,
 * its stream's state) survive one scavenge while the request is open; when V8 happened to pretenure their sites the
 * process stayed slow for good (old space filling with dead objects, scavenges ~4× longer, major collections):
 * measured on a saturated stream benchmark, 7 of 17 `serve` processes ran at 254–290 µs of CPU per stream against
 * 189–238 for the others; with pretenuring off, 27 of 28 ran at 175–232 (docs/performance.md).
 */
export const noPretenuring = (): void => {
  setFlagsFromString("--no-allocation-site-pretenuring")
}

/** Lets new space grow again (a no-op unless held: tests build `serve` in-process, nothing is held there). */
export const releaseYoungGeneration = (): void => {
  if (!held) return
  held = false
  setFlagsFromString(`--semi-space-growth-factor=${DEFAULT_GROWTH_FACTOR}`)
}
