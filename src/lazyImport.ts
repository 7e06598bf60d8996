/**
 * A named export of a CommonJS package loaded by `import()` when a feature is configured (not at start-up: the idle
 * footprint of `serve`, docs/performance.md). Node gives `import()` a CommonJS module's named exports; in the esbuild
 * bundle the module is its default export only, whose property of that name is the same value.
 */
import { Effect } from "effect"

export const importExport = <M extends object, K extends keyof M>(
  load: () => Promise<M>,
  name: K
): Effect.Effect<M[K]> =>
  Effect.map(Effect.promise(load), (m) => m[name] ?? ((m as { readonly default?: unknown }).default as M)[name])
