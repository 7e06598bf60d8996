// Runs the micro-benchmarks in test/bench/*.bench.ts (not part of `npm test`): each is bundled with esbuild into a
// temp directory and run with node, one at a time, from the repository root.
//   npm run bench                 all benchmarks
//   npm run bench -- token        only those whose file name contains "token"
import { build } from "esbuild"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readdirSync, rmSync, symlinkSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

const root = fileURLToPath(new URL("..", import.meta.url))
const filters = process.argv.slice(2)
const benches = readdirSync(join(root, "test/bench"))
  .filter((f) => f.endsWith(".bench.ts") && (filters.length === 0 || filters.some((s) => f.includes(s))))
  .sort()
if (benches.length === 0) {
  console.error(`no benchmarks in test/bench${filters.length > 0 ? ` matching ${filters.join(", ")}` : ""}`)
  process.exit(1)
}

const outdir = mkdtempSync(join(tmpdir(), "llm-proxy-bench-build-"))
// External packages (better-sqlite3, pg-native) are resolved from the bundle's location: give it ours.
symlinkSync(join(root, "node_modules"), join(outdir, "node_modules"), "dir")

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
        js: "import { createRequire as __llmProxyCreateRequire } from 'node:module'; const require = __llmProxyCreateRequire(import.meta.url);"
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
