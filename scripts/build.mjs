// Bundles the CLI (and with it the server) into ESM files under dist/cli: a bundle starts faster and idles
// with less memory than loading hundreds of modules from node_modules (see docs/performance.md). Code only some
// configurations use (Swagger UI, Redis, PostgreSQL, tracing, the dispatcher's backends, …) is reached through
// `import()` and split into chunks of its own, loaded when configured: every byte of source `serve` loads costs
// memory for as long as it runs.
import { build } from "esbuild"
import { readFileSync, rmSync } from "node:fs"
import { pathToFileURL } from "node:url"
import { buildWeb } from "./build-web.mjs"

// A module re-exported by a package's index is placed by esbuild in the chunk every entry shares as soon as one
// `import()`ed module uses it, even through its own path. These re-exports are dropped from the bundle's copy of the
// index, so the module stays in the chunk of the code that loads it on demand (src/http/swaggerDocs.ts).
const lazyOnly = { "@effect/platform/dist/esm/index.js": ["HttpApiSwagger", "HttpApiScalar"] }
const dropReExports = {
  name: "drop-re-exports",
  setup(b) {
    b.onLoad({ filter: /[\\/]node_modules[\\/]@effect[\\/]platform[\\/]dist[\\/]esm[\\/]index\.js$/ }, ({ path }) => {
      const names = lazyOnly["@effect/platform/dist/esm/index.js"]
      const contents = readFileSync(path, "utf8").split("\n")
        .filter((line) => !names.some((n) => line.startsWith(`export * as ${n} from`)))
        .join("\n")
      return { contents, loader: "js" }
    })
  }
}

/**
 * The CLI bundle into `outdir` (which must sit directly under the repository root: the bundle finds migrations/ and
 * web/dist at `../../` from `outdir/cli`). `readable` (benchmarks that map CPU profiles to modules) keeps one
 * unminified file with esbuild's `// path` module markers.
 */
export const buildCli = async (outdir = "dist", { readable = false } = {}) => {
  rmSync(outdir, { recursive: true, force: true })
  await build({
    entryPoints: { "cli/main": "src/cli/main.ts" },
    outdir,
    bundle: true,
    splitting: !readable,
    // Next to main.js, so `import.meta.url`-relative paths (migrations, web/dist) are the same from every chunk.
    chunkNames: "cli/[name]-[hash]",
    platform: "node",
    format: "esm",
    target: "node20",
    sourcemap: "linked",
    // Comments and whitespace out: V8 keeps the source of every loaded module in memory, twice as large when one
    // comment holds a non-ASCII character. Names are kept, so stack traces stay readable without the source map.
    minifyWhitespace: !readable,
    minifySyntax: !readable,
    legalComments: "none",
    // Native addons and optional drivers stay outside the bundle.
    external: ["better-sqlite3", "pg-native", "gpt-tokenizer"],
    banner: {
      js:
        "import { createRequire as __llmProxyCreateRequire } from 'node:module'; const require = __llmProxyCreateRequire(import.meta.url);"
    },
    plugins: [dropReExports],
    logLevel: "warning"
  })
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  await buildCli()
  // The admin UI, served by `serve` under /admin (src/http/AdminUi.ts).
  await buildWeb()
}
