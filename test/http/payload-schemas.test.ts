/**
 * One source of truth for request bodies: the payload Schemas the HttpApi declares — the ones `/manage/openapi.json`
 * is generated from and the CLI client encodes with — are what the server decodes with. Each payload below is
 * decoded through the Schema taken from the API definition and sent to a real server: what the Schema accepts the
 * server accepts, what it refuses the server refuses with the Schema's message.
 */
import { HttpApiEndpoint, OpenApi } from "@effect/platform"
import { Either, Option, type Schema } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ManagementApi } from "../../src/api/ManagementApi.js"
import { decodePayload } from "../../src/domain/validation.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type BackendInstance, backends, Client, providerKey, uniqueName } from "./harness.js"

/** The payload Schema of an endpoint, as the HttpApi (and so the OpenAPI document and the CLI client) has it. */
const payloadOf = (group: string, endpoint: string): Schema.Schema<unknown, unknown, never> => {
  const g = ManagementApi.groups[group as keyof typeof ManagementApi.groups] as {
    endpoints: Record<string, HttpApiEndpoint.HttpApiEndpoint.Any>
  }
  const e = g.endpoints[endpoint] as HttpApiEndpoint.HttpApiEndpoint.AnyWithProps
  return Option.getOrThrow(e.payloadSchema) as Schema.Schema<unknown, unknown, never>
}

const RATE_LIMIT = "rate_limit must be null or {\"requests\": 1..1000000000, \"tokens\": 1..1000000000000, " +
  "\"window_seconds\": 1..31536000} with requests, tokens or both"

describe("payload Schemas are the validators", () => {
  let backend: BackendInstance
  let server: TestServer
  let api: Client
  let projectId: string
  let tokenId: string

  beforeAll(async () => {
    backend = await backends[0]!.create()
    server = await startServer(testConfig(backend.database))
    api = new Client(server.url, server.token)
    projectId = (await api.post("/manage/projects", { name: uniqueName("schemas"), api_key: providerKey() })).json.id
    tokenId = (await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })).json.id
  })
  afterAll(async () => {
    await server?.close()
    await backend?.cleanup()
  })

  type Case = readonly [body: () => unknown, expected: "accepted" | string]
  const endpoints: ReadonlyArray<{
    readonly group: string
    readonly endpoint: string
    readonly send: (body: unknown) => ReturnType<Client["call"]>
    readonly cases: ReadonlyArray<Case>
  }> = [
    {
      group: "projects",
      endpoint: "create",
      send: (body) => api.post("/manage/projects", body),
      cases: [
        [() => ({ name: uniqueName("p"), api_key: providerKey() }), "accepted"],
        [() => ({ name: uniqueName("p"), api_key: providerKey(), provider: "openai", rate_limit: null }), "accepted"],
        [
          () => ({
            name: uniqueName("p"),
            api_key: providerKey(),
            rate_limit: { requests: 1, window_seconds: 31_536_000 }
          }),
          "accepted"
        ],
        [() => ({ name: "x".repeat(255).slice(0, 200) + uniqueName("p"), api_key: providerKey() }), "accepted"],
        [() => ({ name: "x" }), "name and api_key are required"],
        [() => ({ name: "", api_key: "k" }), "name and api_key are required"],
        [() => ({ name: " \t", api_key: "k" }), "name must not be empty"],
        [() => ({ name: "n".repeat(256), api_key: "k" }), "name must be at most 255 characters"],
        [() => ({ name: "a\u007fb", api_key: "k" }), "name must not contain control characters"],
        [() => ({ name: "a\ud800b", api_key: "k" }), "name must be valid Unicode text"],
        [
          () => ({ name: "p", api_key: "sk-a****b" }),
          "cannot save obfuscated API key - please provide the full API key"
        ],
        [() => ({ name: "p", api_key: "sk\tkey" }), "api_key must not contain whitespace or control characters"],
        [() => ({ name: "p", api_key: "sk-\udc00" }), "api_key must be valid Unicode text"],
        [() => ({ name: "p", api_key: "k", rate_limit: { requests: 1, window_seconds: 1, burst: 2 } }), RATE_LIMIT],
        [() => ({ name: "p", api_key: "k", rate_limit: { requests: 1.5, window_seconds: 1 } }), RATE_LIMIT],
        [() => ({ name: "p", api_key: "k", rate_limit: [] }), RATE_LIMIT],
        [() => ({ name: "p", api_key: "k", provider: null }), "invalid request body"],
        [() => ({ name: "p", api_key: "k", Name: "q" }), "unknown field \"Name\""],
        [() => ({ name: "p", api_key: "k", "x-1": "q" }), "unknown field"],
        [() => "name", "invalid request body"]
      ]
    },
    {
      group: "projects",
      endpoint: "update",
      send: (body) => api.patch(`/manage/projects/${projectId}`, body),
      cases: [
        [() => ({}), "accepted"],
        [() => ({ api_key: "" }), "accepted"],
        [() => ({ name: uniqueName("renamed"), rate_limit: { requests: 5, window_seconds: 60 } }), "accepted"],
        [() => ({ is_active: true }), "accepted"],
        [() => ({ name: "" }), "name must not be empty"],
        [() => ({ api_key: "sk-...x" }), "cannot save obfuscated API key - please provide the full API key"],
        [() => ({ revoke_tokens: true }), "revoke_tokens requires is_active=false"],
        [() => ({ revoke_tokens: true, is_active: true }), "revoke_tokens requires is_active=false"],
        [() => ({ is_active: "no" }), "invalid request body"],
        [() => ({ rate_limit: { requests: 0, window_seconds: 1 } }), RATE_LIMIT],
        [() => ({ deactivated_at: null }), "unknown field \"deactivated_at\""]
      ]
    },
    {
      group: "tokens",
      endpoint: "create",
      send: (body) => api.post("/manage/tokens", body),
      cases: [
        [() => ({ project_id: projectId, duration_minutes: 1 }), "accepted"],
        [
          () => ({ project_id: projectId.toUpperCase(), duration_minutes: 525_600, max_requests: 2_147_483_647 }),
          "accepted"
        ],
        [
          () => ({
            project_id: projectId,
            duration_minutes: 5,
            max_requests: null,
            rate_limit: { requests: 2, window_seconds: 2 }
          }),
          "accepted"
        ],
        [() => ({ project_id: projectId }), "project_id and duration_minutes are required"],
        [() => ({ project_id: projectId, duration_minutes: 0 }), "project_id and duration_minutes are required"],
        [() => ({ project_id: projectId, duration_minutes: null }), "project_id and duration_minutes are required"],
        [() => ({ project_id: projectId, duration_minutes: 525_601 }), "duration_minutes exceeds maximum allowed"],
        [() => ({ project_id: projectId, duration_minutes: 2.5 }), "duration_minutes must be an integer"],
        [() => ({ project_id: projectId, duration_minutes: "5" }), "invalid request body"],
        [() => ({ duration_minutes: 5 }), "project_id is required"],
        [() => ({ project_id: "", duration_minutes: 5 }), "project_id is required"],
        [() => ({ project_id: `${projectId}0`, duration_minutes: 5 }), "invalid project_id"],
        [() => ({ project_id: projectId, duration_minutes: 5, max_requests: -1 }), "max_requests must be >= 0"],
        [
          () => ({ project_id: projectId, duration_minutes: 5, max_requests: 2 ** 31 }),
          "max_requests must be <= 2147483647"
        ],
        [() => ({ project_id: projectId, duration_minutes: 5, max_requests: 0.5 }), "max_requests must be an integer"],
        [() => ({ project_id: projectId, duration_minutes: 5, rate_limit: { requests: 1 } }), RATE_LIMIT],
        [
          () => ({ project_id: projectId, duration_minutes: 5, expires_at: "2030-01-01T00:00:00Z" }),
          "unknown field \"expires_at\""
        ]
      ]
    },
    {
      group: "tokens",
      endpoint: "update",
      send: (body) => api.patch(`/manage/tokens/${tokenId}`, body),
      cases: [
        [() => ({ max_requests: 0 }), "accepted"],
        [() => ({ expires_at: "2030-06-01T12:00:00.5+02:00", is_active: true }), "accepted"],
        [() => ({ rate_limit: null }), "accepted"],
        [() => ({}), "no fields to update"],
        [() => ({ expires_at: "2030-06-01" }), "expires_at must be an RFC 3339 timestamp"],
        [() => ({ expires_at: "10000-01-01T00:00:00Z" }), "expires_at must be an RFC 3339 timestamp"],
        [() => ({ expires_at: null }), "invalid request body"],
        [() => ({ max_requests: 1e20 }), "max_requests must be <= 2147483647"],
        [() => ({ is_active: 1 }), "invalid request body"],
        [() => ({ project_id: projectId }), "unknown field \"project_id\""]
      ]
    },
    {
      group: "cache",
      endpoint: "purge",
      send: (body) => api.post("/manage/cache/purge", body),
      cases: [
        [() => ({ all: true }), "accepted"],
        [() => ({ all: true, project_id: projectId, note: "ignored" }), "accepted"],
        [() => ({ prefix: "ab", project_id: null }), "accepted"],
        [() => ({ method: "GET", url: "/v1/models", project_id: "" }), "accepted"],
        [() => null, "invalid JSON"],
        [() => ({ all: 1 }), "all must be true or false"],
        [() => ({ all: true, project_id: "p-1" }), "invalid project_id"],
        [() => ({ prefix: ["ab"] }), "prefix must be 1 to 80 hexadecimal characters (a prefix of X-PROXY-CACHE-KEY)"],
        [() => ({ method: "GET", url: 7 }), "method and url are required"]
      ]
    }
  ]

  for (const e of endpoints) {
    it(`${e.group}.${e.endpoint}: the server answers what the API's Schema says`, async () => {
      const decode = decodePayload(payloadOf(e.group, e.endpoint))
      const wrong: Array<string> = []
      for (const [make, expected] of e.cases) {
        const body = make()
        const verdict = Either.match(decode(body), { onLeft: (message) => message, onRight: () => "accepted" })
        const r = await e.send(body)
        const answer = r.status < 300
          ? "accepted"
          : r.status === 400
          ? r.json?.error
          : `HTTP ${r.status} ${r.text.slice(0, 100)}`
        if (verdict !== expected || answer !== expected) {
          wrong.push(`${JSON.stringify(body)}: Schema ${verdict}, server ${answer}, expected ${expected}`)
        }
      }
      expect(wrong).toEqual([])
    })
  }

  it("the payloads of a 400 change nothing and the refusal is audited with the Schema's message", async () => {
    const before = await api.snapshot()
    const r = await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 5, max_requests: -3 })
    expect(r.json).toEqual({ error: "max_requests must be >= 0" })
    expect(await api.snapshot()).toEqual(before)
    const events = await api.get("/manage/audit?action=token.create&outcome=failure&page_size=100")
    expect(
      events.json.events.some((ev: { reason?: string; metadata?: string }) =>
        ev.reason === "max_requests must be >= 0" &&
        JSON.parse(ev.metadata ?? "{}").validation_error === "max_requests must be >= 0"
      )
    ).toBe(true)
  })

  it("/manage/openapi.json states the Schemas' rules: required fields, bounds, patterns, no unknown fields", async () => {
    const doc = (await api.get("/manage/openapi.json", { auth: null })).json
    // The document the server serves is the one generated from the API definition.
    expect(doc.components.schemas).toEqual(
      JSON.parse(JSON.stringify(OpenApi.fromApi(ManagementApi).components.schemas))
    )
    const s = doc.components.schemas
    expect(s.CreateToken).toMatchObject({
      required: ["duration_minutes", "project_id"],
      additionalProperties: false,
      properties: {
        duration_minutes: { type: "integer", minimum: 1, maximum: 525_600 },
        project_id: { type: "string", minLength: 1, pattern: expect.stringContaining("[0-9a-fA-F]{8}") }
      }
    })
    expect(s.CreateToken.properties.max_requests.anyOf).toEqual(expect.arrayContaining([
      expect.objectContaining({ type: "integer", minimum: 0, maximum: 2_147_483_647 }),
      { type: "null" }
    ]))
    expect(s.UpdateToken).toMatchObject({ required: [], additionalProperties: false, minProperties: 1 })
    expect(s.UpdateToken.properties.expires_at).toMatchObject({ type: "string", format: "date-time" })
    expect(s.CreateProject).toMatchObject({
      required: ["name"],
      additionalProperties: false,
      properties: {
        name: { minLength: 1, maxLength: 255 },
        api_key: { minLength: 1, maxLength: 4096 },
        api_keys: { type: "array", minItems: 1, maxItems: 16 }
      }
    })
    expect(s.UpdateProject).toMatchObject({ required: [], additionalProperties: false })
    expect(s.RateLimitSetting).toMatchObject({
      required: ["window_seconds"],
      additionalProperties: false,
      properties: {
        requests: { type: "integer", minimum: 1, maximum: 1_000_000_000 },
        tokens: { type: "integer", minimum: 1, maximum: 1_000_000_000_000 },
        window_seconds: { type: "integer", minimum: 1, maximum: 31_536_000 }
      }
    })
    // The purge and the login ignore fields they do not know, and say so.
    expect(s.CachePurge.additionalProperties).toBe(true)
    expect(s.Login).toMatchObject({ required: ["token"], additionalProperties: true })
    // A body endpoint's request body is its payload Schema.
    expect(doc.paths["/manage/tokens"].post.requestBody.content["application/json"].schema).toEqual({
      $ref: "#/components/schemas/CreateToken"
    })
  })
})
