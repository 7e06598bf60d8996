// Builds the admin UI (web/src) into web/dist: one hashed, minified JS bundle (the app with its typed management
// API client) and one hashed CSS file, referenced from index.html. Nothing is loaded from elsewhere at run time.
import { build } from "esbuild"
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs"
import { basename, join } from "node:path"
import { pathToFileURL } from "node:url"

export const buildWeb = async (outdir = "web/dist") => {
  rmSync(outdir, { recursive: true, force: true })
  const result = await build({
    entryPoints: { app: "web/src/main.ts", styles: "web/src/styles.css" },
    outdir: join(outdir, "assets"),
    entryNames: "[name]-[hash]",
    bundle: true,
    minify: true,
    format: "esm",
    platform: "browser",
    target: ["chrome110", "firefox115", "safari16"],
    // No source maps: they would be ~8 MB held in memory by `serve`; the source is in web/src.
    sourcemap: false,
    legalComments: "none",
    metafile: true,
    logLevel: "warning"
  })
  const output = (entry) => {
    const found = Object.entries(result.metafile.outputs).find(([, o]) => o.entryPoint === entry)
    if (!found) throw new Error(`no output for ${entry}`)
    return { file: `assets/${basename(found[0])}`, bytes: found[1].bytes }
  }
  const js = output("web/src/main.ts")
  const css = output("web/src/styles.css")
  const html = readFileSync("web/index.html", "utf8")
    .replace("%APP_JS%", `/admin/${js.file}`)
    .replace("%STYLES_CSS%", `/admin/${css.file}`)
  mkdirSync(outdir, { recursive: true })
  writeFileSync(join(outdir, "index.html"), html)
  copyFileSync("web/public/favicon.svg", join(outdir, "favicon.svg"))
  return { js, css }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? "").href) {
  const { js, css } = await buildWeb()
  console.log(`web/dist: ${js.file} ${js.bytes} B, ${css.file} ${css.bytes} B`)
}
