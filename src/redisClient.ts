/**
 * ioredis, loaded on first use: a deployment without Redis never evaluates it (part of the idle footprint of
 * `serve`, docs/performance.md). Every Redis client in src/ is made from this; files import its types only.
 */
import { Effect } from "effect"

/**
 * `{ Redis }` of ioredis. Node gives a CommonJS module's named exports to `import()`; in the esbuild bundle the
 * module is its default export only, whose `Redis` property is the same class.
 */
export const ioredis = Effect.promise(() => import("ioredis")).pipe(
  Effect.map((m) => ({ Redis: m.Redis ?? (m.default as unknown as Pick<typeof m, "Redis">).Redis }))
)
