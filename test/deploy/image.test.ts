/**
 * The image without a container runtime: deploy/Dockerfile's final stage laid out in a temporary directory exactly
 * as its COPY / WORKDIR / ENV / RUN lines say (test/deploy/support.ts), made read-only but for its volume, and the
 * programs started from it with the image's environment, as an unprivileged user (nobody, when the tests run as
 * root). A file the image lacks — the admin UI, a migration, a native package — shows up here as a failure.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { randomUUID } from "node:crypto"
import {
  chmodSync,
  chownSync,
  existsSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync
} from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createTestDatabase, flushRedisPrefix, postgresUrl, redisUrl, type TestDatabase } from "../support/databases.js"
import { json, type MockUpstream, startMockUpstream } from "../support/mockUpstream.js"
import { stopProcess } from "../support/processes.js"
import {
  DEPLOY,
  dockerfile,
  freePort,
  type Image,
  makeReadOnly,
  readEnvFile,
  readYaml,
  readYamlDocuments,
  ROOT,
  stageImage,
  treeState
} from "./support.js"

const built = existsSync(join(ROOT, "dist/cli/main.js")) && existsSync(join(ROOT, "web/dist/index.html"))
const root = process.getuid?.() === 0
/** The user the image's processes run as: nobody when the tests run as root (root ignores file modes). */
const runAs = root ? { uid: 65534, gid: 65534 } : { uid: process.getuid!(), gid: process.getgid!() }

interface Running {
  readonly child: ChildProcess
  readonly output: () => string
}

/** Starts `command` (an image command line) with `env`, image paths mapped into the staged tree. */
const run = (
  image: Image,
  command: ReadonlyArray<string>,
  env: Record<string, string>,
  volume: string,
  ready?: RegExp
) =>
  new Promise<Running>((resolve, reject) => {
    const path = (v: string) => (v === "/data" || v.startsWith("/data/")
      ? volume + v.slice("/data".length)
      : v.startsWith("/")
      ? join(image.root, v)
      : v)
    const [exe, ...args] = command
    if (exe !== "node") {
      return reject(new Error(`the staging runs node commands only, not ${exe}`))
    }
    const child = spawn(process.execPath, args.map(path), {
      cwd: join(image.root, image.workdir),
      env: { PATH: process.env.PATH ?? "", ...Object.fromEntries(Object.entries(env).map(([k, v]) => [k, path(v)])) },
      uid: runAs.uid,
      gid: runAs.gid
    })
    let output = ""
    const onData = (d: Buffer) => {
      output += d.toString()
      if (ready?.test(output)) resolve({ child, output: () => output })
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => (ready === undefined
      ? resolve({
        child,
        output: () => output
      })
      : reject(new Error(`exited with ${code}: ${output}`))))
  })

const exitCode = (r: Running) =>
  new Promise<number | null>((
    resolve
  ) => (r.child.exitCode !== null ? resolve(r.child.exitCode) : r.child.on("exit", resolve)))

const poll = async <A>(f: () => A | undefined, what: string, ms = 10_000): Promise<A> => {
  const end = Date.now() + ms
  for (;;) {
    const v = f()
    if (v !== undefined) return v
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 100))
  }
}

/** A fresh /data for one container: owned by the image's user, as the image's `chown node:node /data` makes it. */
const volumeDir = (base: string, name: string) => {
  const dir = join(base, name)
  mkdirSync(dir)
  chownSync(dir, runAs.uid, runAs.gid)
  return dir
}

describe.skipIf(!built)("the image's file tree (deploy/Dockerfile's final stage, staged)", () => {
  const base = mkdtempSync(join(tmpdir(), "llm-proxy-image-"))
  const tree = join(base, "image")
  let image: Image
  let before: Map<string, string>
  const children: Array<ChildProcess> = []

  beforeAll(() => {
    chmodSync(base, 0o755)
    mkdirSync(tree)
    image = stageImage(dockerfile(), tree, runAs)
    makeReadOnly(tree, image.volumes.map((v) => join(tree, v)))
    before = treeState(tree, image.volumes.map((v) => join(tree, v)))
  })
  afterAll(async () => {
    await Promise.all(children.map((c) => stopProcess(c, { graceMs: 5_000 })))
    makeWritable(base)
    rmSync(base, { recursive: true, force: true })
  })

  it("holds the bundle, the admin UI, the migrations and only the runtime packages", () => {
    for (
      const p of [
        "app/bin/llm-proxy.js",
        "app/dist/cli/main.js",
        "app/web/dist/index.html",
        "app/migrations/sqlite",
        "app/migrations/postgres"
      ]
    ) {
      expect(existsSync(join(tree, p)), p).toBe(true)
    }
    expect(existsSync(join(tree, "app/node_modules/effect"))).toBe(false)
    expect(image.user).toBe("node")
  })

  it(
    "serve starts with the image's environment on a read-only tree: /ready, /live, /admin/ with the UI, writes only /data",
    async () => {
      const port = await freePort()
      const data = join(tree, "data")
      const env = { ...image.env, LISTEN_ADDR: `127.0.0.1:${port}` }
      const serve = await run(image, [...image.entrypoint, ...image.cmd], env, data, /listening on http:/)
      children.push(serve.child)
      const url = `http://127.0.0.1:${port}`
      expect([(await fetch(`${url}/ready`)).status, (await fetch(`${url}/live`)).status]).toEqual([200, 200])

      const admin = await fetch(`${url}/admin/`)
      expect(admin.status).toBe(200)
      expect(admin.headers.get("content-type")).toMatch(/^text\/html/)
      const html = await admin.text()
      const assets = [...html.matchAll(/(?:src|href)="(\/admin\/assets\/[^"]+)"/g)].map((m) => m[1]!)
      expect(assets.length).toBeGreaterThanOrEqual(2)
      for (const a of assets) expect((await fetch(`${url}${a}`)).status, a).toBe(200)

      // The generated management token, the SQLite database and the audit file: all in /data.
      const token = readFileSync(join(data, "management-token"), "utf8").trim()
      const created = await fetch(`${url}/manage/projects`, {
        method: "POST",
        headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
        body: JSON.stringify({ name: "from-the-image", api_key: "sk-image-test-key-123456" })
      })
      expect(created.status).toBe(201)
      const audit = await poll(() => {
        const f = join(data, "audit.log")
        return existsSync(f) && readFileSync(f, "utf8").includes("project.create") ? readFileSync(f, "utf8") : undefined
      }, "the audit line in /data/audit.log")
      expect(audit).not.toContain("sk-image-test-key-123456")
      expect(existsSync(join(data, "llm-proxy.db"))).toBe(true)

      // The image's HEALTHCHECK command, run as Docker would inside the container.
      const check = await run(image, image.healthcheck!, env, data)
      expect([await exitCode(check), check.output()]).toEqual([0, ""])

      // Every HTTP probe the deployments configure for serve answers 200 here.
      const k8s =
        readYamlDocuments(join(DEPLOY, "kubernetes/serve-deployment.yaml"))[0]!.spec.template.spec.containers[0]
      for (const probe of [k8s.readinessProbe, k8s.livenessProbe, k8s.startupProbe]) {
        expect((await fetch(`${url}${probe.httpGet.path}`)).status, probe.httpGet.path).toBe(200)
      }

      expect((await stopProcess(serve.child)).code).toBe(0)
      expect(treeState(tree, image.volumes.map((v) => join(tree, v)))).toEqual(before)
    },
    90_000
  )

  it(
    "the bundle's external packages load from the image's node_modules (better-sqlite3's addon, gpt-tokenizer)",
    async () => {
      const load = await run(
        image,
        [
          "node",
          "-e",
          [
            "const { createRequire } = require('node:module')",
            "const r = createRequire(process.argv[1])",
            "const db = new (r('better-sqlite3'))(':memory:'); db.prepare('select 1').get(); db.close()",
            "for (const e of ['o200k_base', 'cl100k_base']) if (!(r('gpt-tokenizer/encoding/' + e).countTokens('hello world') > 0)) process.exit(2)",
            "process.stdout.write('ok')"
          ].join(";"),
          "/app/dist/cli/main.js"
        ],
        {},
        join(tree, "data")
      )
      expect([await exitCode(load), load.output()]).toEqual([0, "ok"])
    },
    60_000
  )

  describe.skipIf(!postgresUrl || !redisUrl)(
    "deploy/compose.yaml's services from the image's tree (PostgreSQL, Redis)",
    () => {
      let db: TestDatabase
      let mock: MockUpstream
      const prefix = `llm-proxy-image-test:${randomUUID()}:`
      beforeAll(async () => {
        db = await createTestDatabase()
        mock = await startMockUpstream()
      })
      afterAll(async () => {
        await mock?.close()
        await db?.drop()
        await flushRedisPrefix(redisUrl!, prefix)
      })

      it(
        "serve and the dispatcher run with compose's environment; an event reaches the dispatcher's /data, counted by the image's tokenizer",
        async () => {
          const compose = readYaml(join(DEPLOY, "compose.yaml"))
          const example = readEnvFile(join(DEPLOY, "compose.env.example"))
          // compose.env.example with real secrets, and the test's servers instead of the compose service names.
          const secrets = {
            ...example,
            MANAGEMENT_TOKEN: `image-test-${randomUUID()}`,
            ENCRYPTION_KEY: Buffer.alloc(32, 7).toString("base64")
          }
          const servers = {
            DATABASE_URL: db.url,
            REDIS_URL: redisUrl!,
            REDIS_STREAM_KEY: `${prefix}events`,
            REDIS_CACHE_KEY_PREFIX: `${prefix}cache:`
          }
          const envFor = (service: string, extra: Record<string, string> = {}) => ({
            ...image.env,
            ...secrets,
            ...compose.services[service].environment,
            ...servers,
            ...extra
          })
          const port = await freePort()
          const metricsPort = await freePort()
          const serve = await run(
            image,
            [...image.entrypoint, ...compose.services.serve.command],
            envFor("serve", {
              LISTEN_ADDR: `127.0.0.1:${port}`,
              OPENAI_API_URL: mock.url
            }),
            volumeDir(base, "serve-data"),
            /listening on http:/
          )
          children.push(serve.child)
          const command = (compose.services.dispatcher.command as Array<string>).map((a) =>
            a.replace(/:9464$/, `:${metricsPort}`)
          )
          const dispatcherData = volumeDir(base, "dispatcher-data")
          const dispatcher = await run(
            image,
            [...image.entrypoint, ...command],
            envFor("dispatcher"),
            dispatcherData,
            /metrics and health on http:/
          )
          children.push(dispatcher.child)

          const url = `http://127.0.0.1:${port}`
          expect((await fetch(`${url}/ready`)).status).toBe(200)
          const manage = { authorization: `Bearer ${secrets.MANAGEMENT_TOKEN}`, "content-type": "application/json" }
          const post = async (path: string, body: unknown) =>
            (await fetch(`${url}${path}`, { method: "POST", headers: manage, body: JSON.stringify(body) })).json()
          const project = await post("/manage/projects", { name: "compose", api_key: "sk-compose-upstream-1" }) as {
            id: string
          }
          const token = await post("/manage/tokens", { project_id: project.id, duration_minutes: 5 }) as {
            token: string
          }
          // An answer without `usage`: the dispatcher counts the tokens itself.
          const message = { role: "assistant", content: "hello there" }
          mock.enqueue(
            json({ id: "c1", model: "gpt-4o-mini", choices: [{ index: 0, message, finish_reason: "stop" }] })
          )
          const r = await fetch(`${url}/v1/chat/completions`, {
            method: "POST",
            headers: { authorization: `Bearer ${token.token}`, "content-type": "application/json" },
            body: JSON.stringify({ model: "gpt-4o-mini", messages: [{ role: "user", content: "hi there" }] })
          })
          expect(r.status).toBe(200)
          const line = await poll(
            () => {
              const f = join(dispatcherData, "events.jsonl")
              return existsSync(f)
                ? readFileSync(f, "utf8").split("\n").find((l) => l.includes("/v1/chat/completions"))
                : undefined
            },
            "the event in the dispatcher's /data/events.jsonl",
            20_000
          )
          expect(JSON.parse(line)).toMatchObject({
            status: 200,
            usage_source: "tokenizer",
            usage: { completion_tokens: expect.any(Number) }
          })

          // The dispatcher's compose health check (on the port the test gave it) and its Kubernetes readiness path.
          const hc = (compose.services.dispatcher.healthcheck.test as Array<string>).slice(1).map((a) =>
            a.replace(":9464/", `:${metricsPort}/`)
          )
          const check = await run(image, hc, {}, dispatcherData)
          expect([await exitCode(check), check.output()]).toEqual([0, ""])
          const k8s = readYamlDocuments(join(DEPLOY, "kubernetes/dispatcher-deployment.yaml"))[0]!.spec.template.spec
            .containers[0]
          expect((await fetch(`http://127.0.0.1:${metricsPort}${k8s.readinessProbe.httpGet.path}`)).status).toBe(200)

          expect((await stopProcess(serve.child)).code).toBe(0)
          expect((await stopProcess(dispatcher.child)).code).toBe(0)
          expect(treeState(tree, image.volumes.map((v) => join(tree, v)))).toEqual(before)
        },
        120_000
      )
    }
  )
})

/** Undoes makeReadOnly so the directory can be removed when the tests do not run as root. */
const makeWritable = (dir: string) => {
  if (root) return
  const walk = (p: string) => {
    const s = lstatSync(p)
    if (s.isSymbolicLink()) return
    chmodSync(p, s.isDirectory() ? 0o755 : 0o644)
    if (s.isDirectory()) { for (const name of readdirSync(p)) walk(join(p, name)) }
  }
  walk(dir)
}
