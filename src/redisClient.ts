/**
 * ioredis, loaded on first use: a deployment without Redis never evaluates it (part of the idle footprint of
 * `serve`, docs/performance.md). Every Redis client in src/ is made from this; files import its types only.
 */
import { Effect } from "effect"
import { importExport } from "./lazyImport.js"

/** `{ Redis }` of ioredis. */
export const ioredis = Effect.map(importExport(() => import("ioredis"), "Redis"), (Redis) => ({ Redis }))
