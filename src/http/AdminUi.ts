/**
 * The admin UI's static files (web/dist, built by `npm run build`) under /admin. Files are read once at start-up
 * and gzipped in memory. Hashed assets (/admin/assets/*) are immutable for a year; every other /admin path is the
 * single-page app's index.html, never cached. Every answer carries a strict Content-Security-Policy: nothing but
 * this origin's own scripts, styles and API, no inline code, no framing.
 */
import { HttpServerRequest, HttpServerResponse } from "@effect/platform"
import { Context, Effect, Layer } from "effect"
import { createHash } from "node:crypto"
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs"
import { extname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { gzipSync } from "node:zlib"

export const ADMIN_CSP = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "font-src 'self'",
  "manifest-src 'self'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'"
].join("; ")

const SECURITY_HEADERS = {
  "content-security-policy": ADMIN_CSP,
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
  "x-frame-options": "DENY",
  "cross-origin-opener-policy": "same-origin"
}

const sha256 = (text: string) => `'sha256-${createHash("sha256").update(text, "utf8").digest("base64")}'`

/**
 * The policy of a page whose only code is inline (the Swagger UI page of `/manage/docs`, which the platform renders
 * as one document): ADMIN_CSP with its inline scripts and styles admitted by their hashes — nothing else inline, no
 * eval, no other origin. Data blocks (`<script type="application/json">`) are not scripts and need no hash.
 */
export const inlinePageCsp = (html: string): string => {
  const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map((m) => sha256(m[1]!))
  const styles = [...html.matchAll(/<style>([\s\S]*?)<\/style>/g)].map((m) => sha256(m[1]!))
  return ADMIN_CSP
    .replace("script-src 'self'", `script-src ${["'self'", ...scripts].join(" ")}`)
    .replace("style-src 'self'", `style-src ${["'self'", ...styles].join(" ")}`)
}

let docsPage: { readonly html: string; readonly csp: string } | undefined

/**
 * `/manage/docs` with the headers of /admin; its policy is computed once from the page itself. The page also gets the
 * admin UI's icon, so the browser does not ask for a /favicon.ico that does not exist.
 */
export const secureDocs = (response: HttpServerResponse.HttpServerResponse): HttpServerResponse.HttpServerResponse => {
  const body = response.body
  if (response.status !== 200 || body._tag !== "Uint8Array") return response
  if (docsPage === undefined) {
    const html = new TextDecoder().decode(body.body)
      .replace("<head>", `<head>\n  <link rel="icon" href="/admin/favicon.svg" type="image/svg+xml" />`)
    docsPage = { html, csp: inlinePageCsp(html) }
  }
  return HttpServerResponse.html(docsPage.html).pipe(
    HttpServerResponse.setHeaders({
      ...SECURITY_HEADERS,
      "content-security-policy": docsPage.csp,
      "cache-control": "no-cache"
    })
  )
}

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".svg": "image/svg+xml",
  ".map": "application/json; charset=utf-8",
  ".json": "application/json; charset=utf-8",
  ".png": "image/png"
}

interface Asset {
  readonly body: Uint8Array
  readonly gzip: Uint8Array | undefined
  readonly type: string
  readonly immutable: boolean
}

export interface AdminAssetsShape {
  /** False when web/dist has not been built. */
  readonly built: boolean
  readonly files: ReadonlyMap<string, Asset>
}

export class AdminAssets extends Context.Tag("llm-proxy/AdminAssets")<AdminAssets, AdminAssetsShape>() {}

// Same depth from src/http/ and from the bundle in dist/cli/.
export const defaultDistDir = fileURLToPath(new URL("../../web/dist/", import.meta.url))

const walk = (dir: string, prefix = ""): Array<string> =>
  readdirSync(dir).flatMap((name) =>
    statSync(join(dir, name)).isDirectory() ? walk(join(dir, name), `${prefix}${name}/`) : [`${prefix}${name}`]
  )

export const loadAdminAssets = (dir: string = defaultDistDir): AdminAssetsShape => {
  if (!existsSync(join(dir, "index.html"))) return { built: false, files: new Map() }
  const files = new Map<string, Asset>()
  for (const rel of walk(dir)) {
    const body = readFileSync(join(dir, rel))
    const type = TYPES[extname(rel)] ?? "application/octet-stream"
    const compressible = type.startsWith("text/") || type.includes("json") || type.includes("svg")
    files.set(rel, {
      body,
      gzip: compressible && body.byteLength > 1024 ? gzipSync(body, { level: 9 }) : undefined,
      type,
      immutable: rel.startsWith("assets/")
    })
  }
  return { built: true, files }
}

/**
 * Read (and gzipped) on the first request under /admin, not at start-up: an instance nobody administers through
 * the browser does not keep the UI's ~0.8 MB in memory.
 */
export const layer = (dir?: string) =>
  Layer.sync(AdminAssets, (): AdminAssetsShape => {
    let loaded: AdminAssetsShape | undefined
    const assets = () => (loaded ??= loadAdminAssets(dir))
    return {
      get built() {
        return assets().built
      },
      get files() {
        return assets().files
      }
    }
  })

const send = (asset: Asset, request: HttpServerRequest.HttpServerRequest, status = 200) => {
  const gzip = asset.gzip !== undefined && /\bgzip\b/.test(request.headers["accept-encoding"] ?? "")
  return HttpServerResponse.uint8Array(gzip ? asset.gzip! : asset.body, {
    status,
    contentType: asset.type,
    headers: {
      ...SECURITY_HEADERS,
      "cache-control": asset.immutable ? "public, max-age=31536000, immutable" : "no-cache",
      vary: "accept-encoding",
      ...(gzip ? { "content-encoding": "gzip" } : {})
    }
  })
}

const plain = (status: number, text: string) =>
  HttpServerResponse.text(text, { status, headers: { ...SECURITY_HEADERS, "cache-control": "no-store" } })

/** Answers a request whose path is /admin or below. */
export const serveAdmin = (path: string) =>
  Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const assets = yield* AdminAssets
    if (request.method !== "GET" && request.method !== "HEAD") {
      return HttpServerResponse.setHeader(plain(405, "method not allowed"), "allow", "GET, HEAD")
    }
    if (path === "/admin") return HttpServerResponse.redirect("/admin/", { status: 301, headers: SECURITY_HEADERS })
    if (!assets.built) return plain(503, "the admin UI is not built: run `npm run build`")
    const rel = path.slice("/admin/".length)
    const file = assets.files.get(rel)
    if (file !== undefined && rel !== "index.html") return send(file, request)
    // A missing hashed asset is a real 404 (an old page asking for a replaced bundle), not the app.
    if (rel.startsWith("assets/")) return plain(404, "not found")
    return send(assets.files.get("index.html")!, request)
  })
