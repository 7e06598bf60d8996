/**
 * The deployment files kept honest without a container runtime: deploy/Dockerfile, deploy/compose.yaml and the
 * Kubernetes manifests in deploy/kubernetes. Every variable they set is one `serve` or `dispatcher` reads, and their
 * values load; every file the image copies exists after `npm run build`; the image's node_modules is exactly what
 * the bundle loads; probes and health checks name the routes and ports the programs serve.
 * (test/deploy/image.test.ts starts the programs from the image's file tree.)
 */
import { Either } from "effect"
import { execFileSync } from "node:child_process"
import { existsSync, readFileSync } from "node:fs"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { appConfig, dispatcherConfig, parseListenAddress } from "../../src/config/AppConfig.js"
import {
  configNames,
  copyOf,
  DEPLOY,
  dockerfile,
  envOf,
  loadFrom,
  readEnvFile,
  readYaml,
  readYamlDocuments,
  ROOT
} from "./support.js"

const names = configNames()
const stages = dockerfile()
const final = stages.at(-1)!
const build = stages[0]!
const imageEnv = Object.assign({}, ...final.instructions.filter((i) => i.op === "ENV").map(envOf)) as Record<
  string,
  string
>
const volumes = final.instructions.filter((i) => i.op === "VOLUME").flatMap((i) => i.json ?? i.text.split(" "))
const unknown = (env: Record<string, unknown>) => Object.keys(env).filter((k) => !names.has(k))
const listenPort = (env: Record<string, string>) =>
  Either.getOrThrow(parseListenAddress(env.LISTEN_ADDR ?? ":8080")).port

/** The routes `serve` answers on its listener for probes (src/http/App.ts) and the dispatcher's --metrics-addr. */
const SERVE_PROBES = new Set(["/live", "/ready", "/health"])
const DISPATCHER_PROBES = new Set(["/health"])

describe("configuration names", () => {
  it("the recorded names are AppConfig's (a sanity check of the recorder itself)", () => {
    for (
      const n of [
        "LISTEN_ADDR",
        "DATABASE_URL",
        "AUDIT_LOG_FILE",
        "MANAGEMENT_TOKEN_FILE",
        "DISPATCHER_ENDPOINT",
        "REDIS_STREAM_CLAIM_IDLE"
      ]
    ) {
      expect(names).toContain(n)
    }
    expect(names).not.toContain("NODE_ENV")
  })
})

describe("deploy/Dockerfile", () => {
  it("has a build stage and a final stage; the final stage runs as a non-root user with /data as its volume", () => {
    expect(stages).toHaveLength(2)
    expect(build.name).toBe("build")
    const user = final.instructions.filter((i) => i.op === "USER").at(-1)?.text
    expect(user).toBeDefined()
    expect(["root", "0"]).not.toContain(user)
    expect(volumes).toEqual(["/data"])
    expect(final.instructions.find((i) => i.op === "ENTRYPOINT")?.json).toEqual(["node", "/app/bin/llm-proxy.js"])
    expect(final.instructions.find((i) => i.op === "CMD")?.json).toEqual(["serve"])
  })

  it("sets only variables the gateway reads, with values it accepts", () => {
    expect(unknown(imageEnv)).toEqual([])
    expect(Either.isRight(loadFrom(appConfig, imageEnv))).toBe(true)
  })

  it("every path the gateway writes by default is under the volume (a read-only root file system works)", () => {
    const config = Either.getOrThrow(loadFrom(appConfig, imageEnv))
    const written = [
      config.database._tag === "sqlite" ? config.database.path : undefined,
      config.managementTokenFile,
      config.audit.file._tag === "Some" ? config.audit.file.value : undefined
    ].filter((p): p is string => p !== undefined)
    expect(written).toHaveLength(3)
    for (const p of written) expect(volumes.some((v) => p.startsWith(`${v}/`)), p).toBe(true)
  })

  it("exposes the port LISTEN_ADDR listens on, and its HEALTHCHECK asks /live there", () => {
    expect(final.instructions.find((i) => i.op === "EXPOSE")?.text).toBe(String(listenPort(imageEnv)))
    const hc = final.instructions.find((i) => i.op === "HEALTHCHECK")!.text
    expect(hc).toMatch(/CMD \[/)
    expect(hc).toContain("process.env.LISTEN_ADDR")
    expect([...hc.matchAll(/'(\/[a-z]+)'/g)].map((m) => m[1])).toEqual(["/live"])
  })

  it("builds from the repository with npm ci and npm run build, in the WORKDIR its COPY --from lines read", () => {
    const ops = build.instructions.map((i) => `${i.op} ${i.text}`)
    expect(ops).toContain("WORKDIR /src")
    expect(ops).toContain("COPY . .")
    expect(ops.some((o) => /^RUN npm ci\b/.test(o))).toBe(true)
    expect(ops).toContain("RUN npm run build")
    // And the build context keeps local state out (else the host's node_modules would replace npm ci's).
    const ignored = readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n").map((l) => l.trim())
    for (const p of ["node_modules", "dist", "web/dist", ".env", "**/.env", ".git"]) expect(ignored).toContain(p)
  })

  const copies = final.instructions.filter((i) => i.op === "COPY").map(copyOf)

  it("every file it copies exists after `npm run build` (the bundle, the admin UI, migrations, the runtime packages)", () => {
    expect(copies.length).toBeGreaterThan(0)
    for (const c of copies) {
      expect(c.from).toBe("build")
      for (const s of c.sources) {
        expect(s.startsWith("/src/"), s).toBe(true)
        expect(existsSync(join(ROOT, s.slice("/src/".length))), s).toBe(true)
      }
    }
    const sources = copies.flatMap((c) => c.sources)
    // The bundle is a directory (the entry point and the chunks it loads on demand).
    expect(existsSync(join(ROOT, "dist/cli/main.js"))).toBe(true)
    for (const needed of ["/src/dist/cli", "/src/web/dist", "/src/migrations", "/src/bin", "/src/package.json"]) {
      expect(sources).toContain(needed)
    }
    // What is not made by the build comes from the repository as committed (and is not docker-ignored).
    const tracked = new Set(execFileSync("git", ["ls-files"], { cwd: ROOT, encoding: "utf8" }).split("\n"))
    for (const s of sources.map((s) => s.slice("/src/".length))) {
      if (/^(dist|web\/dist|node_modules)(\/|$)/.test(s)) continue
      expect([...tracked].some((t) => t === s || t.startsWith(`${s}/`)), s).toBe(true)
    }
  })

  it("node_modules holds exactly the bundle's externals and what they load at run time, never the whole tree", () => {
    const packages = new Set(
      copies.flatMap((c) => c.sources).flatMap((s) => {
        const m = /^\/src\/node_modules\/((?:@[^/]+\/)?[^/]+)(\/|$)/.exec(s)
        if (s === "/src/node_modules") throw new Error("the image copies all of node_modules")
        return m ? [m[1]!] : []
      })
    )
    const externals = /external:\s*\[([^\]]*)\]/.exec(readFileSync(join(ROOT, "scripts/build.mjs"), "utf8"))![1]!
      .split(",").map((s) => s.trim().replace(/^"|"$/g, "")).filter((s) => s !== "")
    // pg-native is optional: pg falls back to its JavaScript client when it is absent (it is not installed here either).
    expect(existsSync(join(ROOT, "node_modules/pg-native"))).toBe(false)
    for (const e of externals.filter((e) => e !== "pg-native")) expect(packages, e).toContain(e)
    // Each copied package's dependencies are copied too, except prebuild-install (better-sqlite3's install step).
    const installOnly = new Set(["prebuild-install"])
    for (const p of packages) {
      const deps = Object.keys(
        (JSON.parse(readFileSync(join(ROOT, "node_modules", p, "package.json"), "utf8")) as { dependencies?: object })
          .dependencies ?? {}
      )
      for (const d of deps.filter((d) => !installOnly.has(d))) expect(packages, `${p} needs ${d}`).toContain(d)
    }
    expect([...packages].sort()).toEqual(["better-sqlite3", "bindings", "file-uri-to-path", "gpt-tokenizer"])
  })
})

describe("deploy/compose.yaml", () => {
  const compose = readYaml(join(DEPLOY, "compose.yaml"))
  const services = compose.services as Record<string, any>
  const ours = Object.entries(services).filter(([, s]) => s.image === "llm-proxy:local")
  const example = readEnvFile(join(DEPLOY, "compose.env.example"))
  const interpolated = new Set(
    [...readFileSync(join(DEPLOY, "compose.yaml"), "utf8").matchAll(/\$\{([A-Z_]+)/g)].map((m) => m[1]!)
  )
  /** Compose's ${VAR} and ${VAR:?message} with the example file's values. */
  const interpolate = (v: string) => v.replace(/\$\{([A-Z_]+)(?::\?[^}]*)?\}/g, (_, n: string) => example[n] ?? "")

  it("runs serve and a dispatcher from the image, PostgreSQL and Redis, all health-checked", () => {
    expect(Object.keys(services).sort()).toEqual(["dispatcher", "postgres", "redis", "serve"])
    expect(ours.map(([n]) => n).sort()).toEqual(["dispatcher", "serve"])
    for (const s of ["postgres", "redis", "dispatcher"]) expect(services[s].healthcheck?.test, s).toBeDefined()
    expect(services.postgres.healthcheck.test).toContain("pg_isready")
    expect(services.redis.healthcheck.test).toEqual(["CMD", "redis-cli", "ping"])
    expect(services.serve.build).toEqual({ context: "..", dockerfile: "deploy/Dockerfile" })
    expect(services.serve.depends_on).toEqual({
      postgres: { condition: "service_healthy" },
      redis: { condition: "service_healthy" }
    })
  })

  it("the image's services run read-only, unprivileged, writing only their /data volume; secrets come from the env file", () => {
    for (const [name, s] of ours) {
      expect([name, s.read_only, s.cap_drop, s.env_file]).toEqual([name, true, ["ALL"], [".env"]])
      expect(s.volumes.map((v: string) => v.split(":")[1]), name).toEqual(["/data"])
      expect(s.volumes[0].split(":")[0] in compose.volumes, name).toBe(true)
    }
    // No secret is written into compose.yaml itself.
    for (const [, s] of ours) {
      for (const k of Object.keys(s.environment ?? {})) {
        expect(["MANAGEMENT_TOKEN", "ENCRYPTION_KEY"]).not.toContain(k)
      }
    }
    expect(readFileSync(join(ROOT, ".gitignore"), "utf8").split("\n")).toContain(".env")
  })

  it("sets only variables the gateway reads; the example env file holds those and what compose.yaml interpolates", () => {
    for (const [name, s] of ours) expect(unknown(s.environment ?? {}), name).toEqual([])
    expect(Object.keys(example).filter((k) => !names.has(k) && !interpolated.has(k))).toEqual([])
    expect([...interpolated]).toEqual(["POSTGRES_PASSWORD"])
  })

  it("serve's and the dispatcher's environment (image + env file + compose) load, as PostgreSQL and Redis Streams", () => {
    const envOfService = (s: any) => ({
      ...imageEnv,
      ...example,
      ...Object.fromEntries(Object.entries(s.environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]))
    })
    const serve = Either.getOrThrow(
      loadFrom(appConfig, { ...envOfService(services.serve), ENCRYPTION_KEY: Buffer.alloc(32).toString("base64") })
    )
    expect(serve.database._tag).toBe("postgres")
    expect([serve.rateLimitBackend, serve.invalidationBackend, serve.cache.backend, serve.events.bus, serve.redisUrl])
      .toEqual(["redis", "postgres", "redis", "redis-streams", "redis://redis:6379"])
    const dispatcher = Either.getOrThrow(loadFrom(dispatcherConfig, envOfService(services.dispatcher)))
    expect(dispatcher.redisUrl).toBe("redis://redis:6379")
  })

  it("serve publishes the port it listens on; the dispatcher's health check asks its --metrics-addr /health", () => {
    expect(services.serve.ports).toEqual([`${listenPort(imageEnv)}:${listenPort(imageEnv)}`])
    const command = services.dispatcher.command as Array<string>
    const addr = command[command.indexOf("--metrics-addr") + 1]!
    const test = (services.dispatcher.healthcheck.test as Array<string>).join(" ")
    const url = /http:\/\/([\d.]+:\d+)(\/\w+)/.exec(test)!
    expect(url[1]).toBe(addr)
    expect(DISPATCHER_PROBES).toContain(url[2])
  })
})

describe("deploy/kubernetes", () => {
  const dir = join(DEPLOY, "kubernetes")
  const kustomization = readYaml(join(dir, "kustomization.yaml"))
  const resources = (kustomization.resources as Array<string>).flatMap((f) => readYamlDocuments(join(dir, f)))
  const byKind = (kind: string) => resources.filter((r) => r.kind === kind)
  const deployments = byKind("Deployment")
  const serve = deployments.find((d) => d.metadata.name === "llm-proxy")!
  const dispatcher = deployments.find((d) => d.metadata.name === "llm-proxy-dispatcher")!
  const container = (d: any) => d.spec.template.spec.containers[0]
  const secret = readYamlDocuments(join(dir, "secret.example.yaml"))[0]
  const generator = kustomization.configMapGenerator[0]
  const config = readEnvFile(join(dir, generator.envs[0]))

  it("kustomization lists a serve Deployment, its Service and PodDisruptionBudget, and a dispatcher Deployment", () => {
    for (const f of kustomization.resources as Array<string>) expect(existsSync(join(dir, f)), f).toBe(true)
    expect(resources.map((r) => `${r.kind}/${r.metadata.name}`).sort()).toEqual([
      "Deployment/llm-proxy",
      "Deployment/llm-proxy-dispatcher",
      "PodDisruptionBudget/llm-proxy",
      "Service/llm-proxy"
    ])
    expect(secret).toMatchObject({ kind: "Secret", metadata: { name: "llm-proxy" } })
    // The example is applied on its own (edited), never through the kustomization.
    expect(kustomization.resources).not.toContain("secret.example.yaml")
    for (const d of deployments) {
      expect(d.spec.selector.matchLabels).toEqual(d.spec.template.metadata.labels)
      expect(container(d).image).toBe(kustomization.images[0].name)
      expect(container(d).envFrom).toEqual([{ configMapRef: { name: generator.name } }, {
        secretRef: { name: secret.metadata.name }
      }])
    }
  })

  it("every variable they set is one the gateway reads, and serve's and the dispatcher's environments load", () => {
    expect(unknown(config)).toEqual([])
    expect(unknown(secret.stringData)).toEqual([])
    for (const d of deployments) {
      expect(unknown(Object.fromEntries((container(d).env ?? []).map((e: any) => [e.name, e.value])))).toEqual([])
    }
    const env = (d: any) => ({
      ...imageEnv,
      ...config,
      ...secret.stringData,
      ENCRYPTION_KEY: Buffer.alloc(32).toString("base64"),
      ...Object.fromEntries((container(d).env ?? []).map((e: any) => [e.name, e.value]))
    })
    const s = Either.getOrThrow(loadFrom(appConfig, env(serve)))
    expect([s.database._tag, s.rateLimitBackend, s.invalidationBackend, s.events.bus, s.audit.file._tag]).toEqual([
      "postgres",
      "redis",
      "postgres",
      "redis-streams",
      "None"
    ])
    expect(Either.isRight(loadFrom(dispatcherConfig, env(dispatcher)))).toBe(true)
  })

  it("serve: readiness on /ready, liveness (and start-up) on /live, on the named port LISTEN_ADDR listens on", () => {
    const c = container(serve)
    const port = c.ports.find((p: any) => p.name === c.readinessProbe.httpGet.port)
    const listen = c.env.find((e: any) => e.name === "LISTEN_ADDR").value as string
    expect(port.containerPort).toBe(listenPort({ LISTEN_ADDR: listen }))
    expect(c.readinessProbe.httpGet.path).toBe("/ready")
    expect(c.livenessProbe.httpGet.path).toBe("/live")
    expect(c.startupProbe.httpGet.path).toBe("/live")
    for (const p of [c.readinessProbe, c.livenessProbe, c.startupProbe]) {
      expect(SERVE_PROBES).toContain(p.httpGet.path)
      expect(p.httpGet.port).toBe(port.name)
    }
  })

  it("the dispatcher's readiness asks /health on its --metrics-addr port", () => {
    const c = container(dispatcher)
    const addr = c.args[c.args.indexOf("--metrics-addr") + 1] as string
    const port = c.ports.find((p: any) => p.name === c.readinessProbe.httpGet.port)
    expect(port.containerPort).toBe(Number(addr.split(":").pop()))
    expect(addr.startsWith("0.0.0.0:")).toBe(true)
    expect(DISPATCHER_PROBES).toContain(c.readinessProbe.httpGet.path)
    expect(c.livenessProbe).toBeUndefined()
  })

  it("the Service and the PodDisruptionBudget select the serve pods; the Service targets the named port", () => {
    const [service] = byKind("Service")
    const [pdb] = byKind("PodDisruptionBudget")
    const labels = serve.spec.template.metadata.labels
    expect(service.spec.selector).toEqual(labels)
    expect(pdb.spec.selector.matchLabels).toEqual(labels)
    expect(pdb.spec.minAvailable).toBeLessThan(serve.spec.replicas)
    expect(container(serve).ports.map((p: any) => p.name)).toContain(service.spec.ports[0].targetPort)
    // The dispatcher's pods are not the Service's.
    expect(dispatcher.spec.template.metadata.labels).not.toEqual(labels)
  })

  it("pods run as the image's unprivileged user on a read-only root file system, writable only at /data (and /tmp)", () => {
    for (const d of deployments) {
      const pod = d.spec.template.spec
      expect(pod.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 })
      expect(container(d).securityContext).toMatchObject({
        readOnlyRootFilesystem: true,
        allowPrivilegeEscalation: false,
        capabilities: { drop: ["ALL"] }
      })
      expect(container(d).volumeMounts.map((m: any) => m.mountPath).sort()).toEqual(["/data", "/tmp"])
      expect(pod.terminationGracePeriodSeconds).toBeGreaterThanOrEqual(15)
    }
    // uid 1000 is the node user of the image (node:*-bookworm-slim).
    expect(final.instructions.find((i) => i.op === "USER")?.text).toBe("node")
  })

  it("keeps secrets out of git: secret.yaml is ignored by git and docker", () => {
    expect(readFileSync(join(ROOT, ".gitignore"), "utf8").split("\n")).toContain("deploy/kubernetes/secret.yaml")
    expect(readFileSync(join(ROOT, ".dockerignore"), "utf8").split("\n")).toContain("deploy/kubernetes/secret.yaml")
    expect(
      [secret.stringData.MANAGEMENT_TOKEN, secret.stringData.ENCRYPTION_KEY].every((v: string) =>
        v.startsWith("change-me")
      )
    ).toBe(true)
  })
})

describe("deploy/llm-proxy.env.example and the systemd units", () => {
  const example = readEnvFile(join(DEPLOY, "llm-proxy.env.example"))
  const unitEnv = (unit: string) =>
    Object.fromEntries(
      [...readFileSync(join(DEPLOY, unit), "utf8").matchAll(/^Environment=(\w+)=(\S*)$/gm)].map((m) => [m[1]!, m[2]!])
    )

  it("set only variables the gateway reads, with values it accepts", () => {
    expect(unknown(example)).toEqual([])
    for (const unit of ["llm-proxy@.service", "llm-proxy-dispatcher@.service"]) {
      expect(unknown(unitEnv(unit)), unit).toEqual([])
    }
    const env: Record<string, string> = {
      ...example,
      ENCRYPTION_KEY: Buffer.alloc(32).toString("base64"),
      ...unitEnv("llm-proxy@.service")
    }
    expect(env.LISTEN_ADDR).toBe("127.0.0.1:%i")
    expect(Either.isRight(loadFrom(appConfig, { ...env, LISTEN_ADDR: "127.0.0.1:8081" }))).toBe(true)
    expect(Either.isRight(loadFrom(dispatcherConfig, env))).toBe(true)
  })
})
