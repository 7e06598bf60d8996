// Bundles the CLI (and with it the server) into one ESM file: a bundle starts faster and idles
// with less memory than loading hundreds of modules from node_modules (see docs/performance.md).
import { build } from "esbuild"
import { rmSync } from "node:fs"

rmSync("dist", { recursive: true, force: true })
await build({
  entryPoints: { "cli/main": "src/cli/main.ts" },
  outdir: "dist",
  bundle: true,
  platform: "node",
  format: "esm",
  target: "node20",
  sourcemap: "linked",
  // Native addons and optional drivers stay outside the bundle.
  external: ["better-sqlite3", "pg-native", "gpt-tokenizer"],
  banner: {
    js: "import { createRequire as __llmProxyCreateRequire } from 'node:module'; const require = __llmProxyCreateRequire(import.meta.url);"
  },
  logLevel: "warning"
})
