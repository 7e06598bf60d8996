/**
 * Project keys on a real SQLite store (src/token/ProjectKeys.ts): a live key authenticates as its project, a revoked
 * or malformed one does not, and each check is one `ProjectKeys.authenticate` span over its store calls.
 */
import { describe, expect, layer } from "@effect/vitest"
import { Effect, Layer, Option, Tracer } from "effect"
import { generateProjectKey, hashProjectKey, projectKeyHint } from "../../src/crypto/ProjectKey.js"
import { Store } from "../../src/store/Store.js"
import * as ProjectKeys from "../../src/token/ProjectKeys.js"
import { freshStore } from "../store/backends.js"

const keys = ProjectKeys.layer.pipe(Layer.provideMerge(freshStore("sqlite")))

/** A project with one project key, written through the store. */
const projectWithKey = Effect.gen(function*() {
  const store = yield* Store
  const now = new Date().toISOString()
  const projectId = crypto.randomUUID()
  yield* store.createProject({
    id: projectId,
    name: `p-${projectId}`,
    apiKeys: [{ id: crypto.randomUUID(), key: "sk-key", hint: "sk-...", weight: 1, provider: null }],
    provider: "openai",
    now
  })
  const key = generateProjectKey()
  const keyId = crypto.randomUUID()
  yield* store.createProjectKey({
    id: keyId,
    projectId,
    name: "ci",
    keyHash: hashProjectKey(key),
    keyHint: projectKeyHint(key),
    now
  })
  return { projectId, keyId, key }
})

/** Runs `self` with a tracer that records each span's name and its parent's (SQL statement spans left out). */
const traced = <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const spans: Array<{ name: string; parent: string | undefined }> = []
    const native = yield* Effect.tracer
    const recording = Tracer.make({
      span: (name, parent, ...rest) => {
        if (!name.startsWith("sql.")) {
          spans.push({
            name,
            parent: parent._tag === "Some" && parent.value._tag === "Span" ? parent.value.name : undefined
          })
        }
        return native.span(name, parent, ...rest)
      },
      context: (f, fiber) => native.context(f, fiber)
    })
    const result = yield* Effect.withTracer(self, recording)
    return { result, spans }
  })

describe("ProjectKeys", () => {
  layer(keys, { excludeTestServices: true })((it) => {
    it.effect("a live key authenticates as its project: one ProjectKeys.authenticate span over the lookup and the touch", () =>
      Effect.gen(function*() {
        const projectKeys = yield* ProjectKeys.ProjectKeys
        const { key, keyId, projectId } = yield* projectWithKey
        const { result, spans } = yield* traced(projectKeys.authenticate(key))
        expect(result).toEqual(Option.some({ keyId, projectId }))
        expect(spans).toEqual([
          { name: "ProjectKeys.authenticate", parent: undefined },
          { name: "Store.getProjectKeyByHash", parent: "ProjectKeys.authenticate" },
          { name: "Store.touchProjectKey", parent: "ProjectKeys.authenticate" }
        ])
      }))

    it.effect("a revoked key, an unknown one and a malformed one do not authenticate; a malformed one reads nothing", () =>
      Effect.gen(function*() {
        const projectKeys = yield* ProjectKeys.ProjectKeys
        const store = yield* Store
        const { key, keyId, projectId } = yield* projectWithKey
        yield* store.revokeProjectKey(projectId, keyId, new Date().toISOString())
        expect(yield* projectKeys.authenticate(key)).toEqual(Option.none())
        expect(yield* projectKeys.authenticate(generateProjectKey())).toEqual(Option.none())
        const { result, spans } = yield* traced(projectKeys.authenticate("sk-not-a-project-key"))
        expect(result).toEqual(Option.none())
        expect(spans).toEqual([{ name: "ProjectKeys.authenticate", parent: undefined }])
      }))
  })
})
