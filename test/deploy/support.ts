/**
 * What the deployment tests need without a container runtime: the names AppConfig reads, loading a configuration
 * from a deployment's environment, a small Dockerfile parser, and the final stage of deploy/Dockerfile laid out as
 * a directory tree (its COPY, WORKDIR, ENV, RUN mkdir/chown and VOLUME lines interpreted as Docker would).
 */
import { Config, ConfigError, ConfigProvider, ConfigProviderPathPatch, Effect, Either, HashSet } from "effect"
import {
  chmodSync,
  chownSync,
  cpSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  statSync
} from "node:fs"
import { createServer } from "node:net"
import { basename, dirname, join, relative } from "node:path"
import { parse, parseAllDocuments } from "yaml"
import { appConfig, dispatcherConfig } from "../../src/config/AppConfig.js"

export const ROOT = join(import.meta.dirname, "../..")
export const DEPLOY = join(ROOT, "deploy")

// ---- configuration ------------------------------------------------------------------------------------------

/** A provider answering from `env`, recording every name asked for. */
const recording = (env: Record<string, string>, asked: Set<string>) =>
  ConfigProvider.fromFlat(ConfigProvider.makeFlat({
    load: (path, primitive) => {
      const name = path.join("_")
      asked.add(name)
      const v = env[name]
      if (v === undefined) return Effect.fail(ConfigError.MissingData([...path], `${name} is not set`))
      return Effect.map(primitive.parse(v), (a) => [a])
    },
    enumerateChildren: () => Effect.succeed(HashSet.empty()),
    patch: ConfigProviderPathPatch.empty
  }))

/** Every environment variable `serve` and `dispatcher` read (asked for by their Config, whatever is set). */
export const configNames = (): ReadonlySet<string> => {
  const asked = new Set<string>()
  Effect.runSync(Effect.either(Effect.withConfigProvider(appConfig, recording({}, asked))))
  Effect.runSync(
    Effect.either(
      Effect.withConfigProvider(dispatcherConfig, recording({ LLM_PROXY_EVENT_BUS: "redis-streams" }, asked))
    )
  )
  return asked
}

/** Loads `config` from exactly `env`: Right with the value, or Left with the first error as a line. */
export const loadFrom = <A>(config: Config.Config<A>, env: Record<string, string>): Either.Either<A, string> =>
  Either.mapLeft(
    Effect.runSync(Effect.either(Effect.withConfigProvider(config, recording(env, new Set())))),
    (e) => String(e)
  )

/** KEY=VALUE lines (comments and blank lines skipped), as Docker's --env-file and kustomize's envs read them. */
export const readEnvFile = (path: string): Record<string, string> =>
  Object.fromEntries(
    readFileSync(path, "utf8").split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#")).map(
      (l) => {
        const eq = l.indexOf("=")
        return [l.slice(0, eq), l.slice(eq + 1)]
      }
    )
  )

export const readYaml = (path: string): any => parse(readFileSync(path, "utf8"), { merge: true })
export const readYamlDocuments = (path: string): Array<any> =>
  parseAllDocuments(readFileSync(path, "utf8")).map((d) => {
    if (d.errors.length > 0) throw new Error(`${path}: ${d.errors[0]!.message}`)
    return d.toJS()
  })

// ---- Dockerfile ---------------------------------------------------------------------------------------------

export interface Instruction {
  readonly op: string
  /** The text after the instruction name (continuations joined). */
  readonly text: string
  /** The JSON (exec) form, when the text is one. */
  readonly json: ReadonlyArray<string> | undefined
}

export interface Stage {
  readonly base: string
  readonly name: string | undefined
  readonly instructions: ReadonlyArray<Instruction>
}

const jsonForm = (text: string): ReadonlyArray<string> | undefined => {
  if (!text.startsWith("[")) return undefined
  try {
    const v = JSON.parse(text) as unknown
    return Array.isArray(v) && v.every((x) => typeof x === "string") ? v : undefined
  } catch {
    return undefined
  }
}

/** Stages of a Dockerfile: comments dropped, `\` continuations joined, instructions kept in order. */
export const parseDockerfile = (text: string): ReadonlyArray<Stage> => {
  const logical: Array<string> = []
  let pending = ""
  for (const raw of text.split("\n")) {
    if (/^\s*#/.test(raw)) continue
    const line = raw.replace(/\s+$/, "")
    if (line.endsWith("\\")) {
      pending += line.slice(0, -1) + " "
      continue
    }
    const full = (pending + line).trim()
    pending = ""
    if (full !== "") logical.push(full)
  }
  const stages: Array<{ base: string; name: string | undefined; instructions: Array<Instruction> }> = []
  for (const l of logical) {
    const m = /^(\S+)\s*(.*)$/.exec(l)!
    const op = m[1]!.toUpperCase()
    const text = m[2]!.replace(/\s+/g, " ").trim()
    if (op === "FROM") {
      const f = /^(\S+)(?:\s+AS\s+(\S+))?$/i.exec(text)!
      stages.push({ base: f[1]!, name: f[2], instructions: [] })
      continue
    }
    stages.at(-1)!.instructions.push({ op, text, json: jsonForm(text) })
  }
  return stages
}

/** `ENV A=1 B=2` (and the old `ENV A 1`). */
export const envOf = (i: Instruction): Record<string, string> => {
  const pairs = i.text.match(/(\S+?)=("(?:[^"\\]|\\.)*"|\S*)/g)
  if (pairs === null) {
    const [k, ...v] = i.text.split(" ")
    return { [k!]: v.join(" ") }
  }
  return Object.fromEntries(pairs.map((p) => {
    const eq = p.indexOf("=")
    const v = p.slice(eq + 1)
    return [p.slice(0, eq), v.startsWith("\"") ? JSON.parse(v) as string : v]
  }))
}

export interface Copy {
  readonly from: string | undefined
  readonly sources: ReadonlyArray<string>
  readonly dest: string
}

export const copyOf = (i: Instruction): Copy => {
  const words = i.json ?? i.text.split(" ")
  const flags = words.filter((w) => w.startsWith("--"))
  const paths = words.filter((w) => !w.startsWith("--"))
  const from = flags.find((f) => f.startsWith("--from="))?.slice("--from=".length)
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! }
}

export const dockerfile = (): ReadonlyArray<Stage> => parseDockerfile(readFileSync(join(DEPLOY, "Dockerfile"), "utf8"))

/**
 * Where the build stage's files are on this machine: its WORKDIR is the repository (`COPY . .` into it, then
 * `npm ci` and `npm run build` there — what `npm run build` leaves in this checkout).
 */
export const buildStageRoot = (stage: Stage): string => {
  const workdir = stage.instructions.filter((i) => i.op === "WORKDIR").at(-1)?.text
  if (workdir === undefined) throw new Error("the build stage has no WORKDIR")
  return workdir
}

export interface Image {
  /** The staged root: image path /x is `${root}/x`. */
  readonly root: string
  readonly env: Record<string, string>
  readonly workdir: string
  readonly user: string | undefined
  readonly volumes: ReadonlyArray<string>
  readonly entrypoint: ReadonlyArray<string>
  readonly cmd: ReadonlyArray<string>
  readonly healthcheck: ReadonlyArray<string> | undefined
  readonly exposed: ReadonlyArray<string>
  /** Image paths the COPY lines wrote. */
  readonly copied: ReadonlyArray<string>
}

const imagePath = (workdir: string, p: string) => (p.startsWith("/") ? p : join(workdir, p))

/**
 * Lays out the final stage of `stages` under `root` as Docker builds it: COPY --from=<build stage> takes files from
 * this checkout, WORKDIR creates directories, ENV accumulates, RUN is interpreted only in the form
 * `mkdir -p DIR && chown U:G DIR` (`chown` becomes `owner`, the uid the test runs the image's processes as); any
 * other RUN fails the staging, so the test cannot silently diverge from the Dockerfile.
 */
export const stageImage = (stages: ReadonlyArray<Stage>, root: string, owner: { uid: number; gid: number }): Image => {
  const final = stages.at(-1)!
  const builds = new Map(
    stages.slice(0, -1).flatMap((s) => (s.name === undefined ? [] : [[s.name, buildStageRoot(s)] as const]))
  )
  const env: Record<string, string> = {}
  const volumes: Array<string> = []
  const copied: Array<string> = []
  const exposed: Array<string> = []
  let workdir = "/"
  let user: string | undefined
  let entrypoint: ReadonlyArray<string> = []
  let cmd: ReadonlyArray<string> = []
  let healthcheck: ReadonlyArray<string> | undefined
  const at = (p: string) => join(root, p)
  for (const i of final.instructions) {
    switch (i.op) {
      case "ENV":
        Object.assign(env, envOf(i))
        break
      case "WORKDIR":
        workdir = imagePath(workdir, i.text)
        mkdirSync(at(workdir), { recursive: true })
        break
      case "COPY": {
        const c = copyOf(i)
        if (c.from === undefined || !builds.has(c.from)) throw new Error(`COPY without a build stage: ${i.text}`)
        const base = builds.get(c.from)!
        const dest = imagePath(workdir, c.dest)
        for (const s of c.sources) {
          if (!s.startsWith(base + "/")) throw new Error(`COPY source outside the build stage's WORKDIR: ${s}`)
          const local = join(ROOT, relative(base, s))
          if (!existsSync(local)) throw new Error(`COPY source missing after npm run build: ${s} (${local})`)
          // Docker: a directory's contents go into dest; a file goes to dest, or into it when dest ends with "/".
          const target = statSync(local).isDirectory() || !c.dest.endsWith("/") ? at(dest) : at(join(dest, basename(s)))
          mkdirSync(dirname(target), { recursive: true })
          cpSync(local, target, { recursive: true, dereference: true })
          copied.push(dest)
        }
        break
      }
      case "RUN": {
        const m = /^mkdir -p (\S+) && chown \S+ (\S+)(?: && chmod ([0-7]{3,4}) (\S+))?$/.exec(i.text)
        if (m === null || m[1] !== m[2] || (m[4] !== undefined && m[4] !== m[1])) {
          throw new Error(`the staging does not interpret RUN ${i.text}`)
        }
        mkdirSync(at(m[1]!), { recursive: true })
        chownSync(at(m[1]!), owner.uid, owner.gid)
        if (m[3] !== undefined) chmodSync(at(m[1]!), parseInt(m[3], 8))
        break
      }
      case "USER":
        user = i.text
        break
      case "VOLUME":
        volumes.push(...(i.json ?? i.text.split(" ")))
        break
      case "EXPOSE":
        exposed.push(...i.text.split(" "))
        break
      case "ENTRYPOINT":
        entrypoint = i.json ?? ["/bin/sh", "-c", i.text]
        break
      case "CMD":
        cmd = i.json ?? ["/bin/sh", "-c", i.text]
        break
      case "HEALTHCHECK": {
        const h = /(?:^|\s)CMD (.*)$/.exec(i.text)
        healthcheck = h === null ? undefined : jsonForm(h[1]!) ?? ["/bin/sh", "-c", h[1]!]
        break
      }
      case "STOPSIGNAL":
      case "LABEL":
        break
      default:
        throw new Error(`the staging does not interpret ${i.op}`)
    }
  }
  return { root, env, workdir, user, volumes, entrypoint, cmd, healthcheck, exposed, copied }
}

/** Makes every file and directory under `dir` read-only for everyone, except the `keep` directories. */
export const makeReadOnly = (dir: string, keep: ReadonlyArray<string>) => {
  const walk = (p: string) => {
    if (keep.includes(p)) return
    const s = lstatSync(p)
    if (s.isDirectory()) {
      for (const name of readdirSync(p)) walk(join(p, name))
      chmodSync(p, 0o555)
    } else if (!s.isSymbolicLink()) {
      chmodSync(p, s.mode & 0o111 ? 0o555 : 0o444)
    }
  }
  walk(dir)
}

/** Every path under `dir` with its size and mtime (outside `skip`), to prove nothing was written there. */
export const treeState = (dir: string, skip: ReadonlyArray<string>): Map<string, string> => {
  const out = new Map<string, string>()
  const walk = (p: string) => {
    if (skip.includes(p)) return
    const s = lstatSync(p)
    out.set(relative(dir, p), `${s.size}:${s.mtimeMs}`)
    if (s.isDirectory()) { for (const name of readdirSync(p)) walk(join(p, name)) }
  }
  walk(dir)
  return out
}

export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const s = createServer()
    s.once("error", reject)
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as { port: number }).port
      s.close(() => resolve(port))
    })
  })
