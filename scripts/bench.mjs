// Runs the micro-benchmarks in test/bench/*.bench.ts (not part of `npm test`): each is bundled with esbuild into a
// temp directory and run with node, one at a time, from the repository root.
//   npm run bench                 all benchmarks
//   npm run bench -- token        only those whose file name contains "token"
//   npm run bench -- proxy        only proxy.bench.ts: a name that is a benchmark's whole name selects that one alone
import { build } from "esbuild"
import { spawnSync } from "node:child_process"
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from "node:fs"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const filters = process.argv.slice(2)
const all = readdirSync(join(root, "test/bench"))
const exact = (s) => all.includes(`${s}.bench.ts`)
const benches = all
  .filter((f) =>
    f.endsWith(".bench.ts") &&
    (filters.length === 0 || filters.some((s) => f === `${s}.bench.ts` || (!exact(s) && f.includes(s))))
  )
  .sort()
if (benches.length === 0) {
  console.error(`no benchmarks in test/bench${filters.length > 0 ? ` matching ${filters.join(", ")}` : ""}`)
  process.exit(1)
}

// Two levels below the repository root: bundled code that finds files relative to its own module
// (migrations/ is `../../migrations` from src/store and from dist/cli) finds them, and external packages
// (better-sqlite3, gpt-tokenizer) resolve from the repository's node_modules.
mkdirSync(join(root, ".bench-build"), { recursive: true })
const outdir = mkdtempSync(join(root, ".bench-build", "run-"))

let failed = 0
try {
  for (const file of benches) {
    const outfile = join(outdir, file.replace(/\.ts$/, ".mjs"))
    await build({
      entryPoints: [join(root, "test/bench", file)],
      outfile,
      bundle: true,
      platform: "node",
      format: "esm",
      target: "node20",
      external: ["better-sqlite3", "pg-native", "gpt-tokenizer"],
      banner: {
        js:
          "import { createRequire as __llmProxyCreateRequire } from 'node:module'; const require = __llmProxyCreateRequire(import.meta.url);"
      },
      logLevel: "warning"
    })
    console.log(`\n=== ${file} ===\n`)
    const run = spawnSync(process.execPath, [outfile], { cwd: root, stdio: "inherit" })
    if (run.status !== 0) {
      failed++
      console.error(`${file} failed (${run.signal ?? `exit code ${run.status}`})`)
    }
  }
} finally {
  rmSync(outdir, { recursive: true, force: true })
}
process.exitCode = failed > 0 ? 1 : 0
