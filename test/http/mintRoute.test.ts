/**
 * `POST /manage/tokens` has two routes: the direct one (src/http/mintRoute.ts), taken when no traces are exported,
 * and the HttpApi handler, taken when they are (so the request keeps its server span). Both must answer alike and
 * audit alike: the same requests go to a server of each kind and their answers and `token.create` events are compared,
 * with ids, secrets and times masked.
 */
import { ConfigProvider, Effect, type Option } from "effect"
import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { appConfig, type OtlpConfig } from "../../src/config/AppConfig.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { type BackendInstance, backends, Client, providerKey, type Reply, type Row, uniqueName } from "./harness.js"

const sqlite = backends.find((b) => b.name === "sqlite")!

/** An OTLP receiver that accepts everything: only there so that the second server exports traces. */
const startReceiver = async () => {
  const server: Server = createServer((req, res) => {
    req.resume()
    req.on("end", () => res.writeHead(200, { "content-type": "application/json" }).end("{}"))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve()))
  }
}

const otlpTo = (endpoint: string): Option.Option<OtlpConfig> =>
  Effect.runSync(
    Effect.withConfigProvider(
      appConfig,
      ConfigProvider.fromMap(new Map([["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint]]))
    )
  ).otlp

const UUID = /[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi
const SECRET = /\b(sk|lpk)-[A-Za-z0-9_-]{43}\b/g
const TIME = /\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z/g

/** Ids, secrets and times masked: what is left must be the same on both routes. */
const masked = (value: unknown): unknown =>
  JSON.parse(JSON.stringify(value ?? null).replace(UUID, "<id>").replace(SECRET, "<$1-secret>").replace(TIME, "<time>"))

interface Side {
  readonly name: string
  readonly instance: BackendInstance
  readonly server: TestServer
  readonly api: Client
  readonly projectId: string
  readonly inactiveId: string
  readonly otherId: string
  readonly projectKey: string
  readonly session: { readonly cookie: string; readonly csrf: string }
}

/** One request of the comparison: what it sends, against a side's projects. */
interface Case {
  readonly name: string
  /** The status docs/management-api.md gives it. */
  readonly status: number
  readonly send: (side: Side, requestId: string) => Promise<Reply>
  /** Refused by authentication, before the handler: no `token.create` event. */
  readonly refusedBeforeHandler?: true
}

const post = (
  side: Side,
  requestId: string,
  body: unknown,
  headers: Record<string, string> = {},
  auth?: string | null
) =>
  side.api.call("POST", "/manage/tokens", {
    body,
    ...(auth !== undefined ? { auth } : {}),
    headers: { "x-request-id": requestId, ...headers }
  })

const CASES: ReadonlyArray<Case> = [
  { name: "created", status: 201, send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 60 }) },
  {
    name: "created with labels, quota and budget",
    status: 201,
    send: (s, id) =>
      post(s, id, {
        project_id: s.projectId.toUpperCase(),
        duration_minutes: 5,
        max_requests: 7,
        name: "checkout",
        user: "user-42",
        metadata: { plan: "pro" },
        allowed_models: ["gpt-4o-mini"],
        max_cost_usd: 1.5,
        budget_period: "day"
      })
  },
  { name: "malformed JSON", status: 400, send: (s, id) => post(s, id, "{\"project_id\":") },
  { name: "not an object", status: 400, send: (s, id) => post(s, id, [1, 2]) },
  { name: "missing duration", status: 400, send: (s, id) => post(s, id, { project_id: s.projectId }) },
  {
    name: "unknown field",
    status: 400,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 5, scope: 1 })
  },
  {
    name: "duration too long",
    status: 400,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 1e9 })
  },
  {
    name: "unknown project",
    status: 404,
    send: (s, id) => post(s, id, { project_id: "3f1c2a4e-9b7d-4c2e-8f00-123456789abc", duration_minutes: 5 })
  },
  {
    name: "inactive project",
    status: 403,
    send: (s, id) => post(s, id, { project_id: s.inactiveId, duration_minutes: 5 })
  },
  {
    name: "body over 2 MiB",
    status: 413,
    send: (s, id) => post(s, id, JSON.stringify({ project_id: s.projectId, pad: "x".repeat(2 * 1024 * 1024) }))
  },
  {
    name: "no Authorization",
    status: 401,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 5 }, {}, null)
  },
  {
    name: "empty bearer",
    status: 401,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 5 }, {}, "Bearer ")
  },
  {
    name: "project key, its own project implied",
    status: 201,
    send: (s, id) => post(s, id, { duration_minutes: 5 }, {}, `Bearer ${s.projectKey}`)
  },
  {
    name: "project key, another project",
    status: 403,
    send: (s, id) => post(s, id, { project_id: s.otherId, duration_minutes: 5 }, {}, `Bearer ${s.projectKey}`)
  },
  {
    name: "project key beyond the project's bounds",
    status: 400,
    send: (s, id) => post(s, id, { duration_minutes: 120 }, {}, `Bearer ${s.projectKey}`)
  },
  {
    name: "admin session without its CSRF token",
    status: 403,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 5 }, { cookie: s.session.cookie }, null)
  },
  {
    name: "admin session with its CSRF token",
    status: 201,
    send: (s, id) =>
      post(s, id, { project_id: s.projectId, duration_minutes: 5 }, {
        cookie: s.session.cookie,
        "x-csrf-token": s.session.csrf,
        "x-admin-origin": "1"
      }, null)
  },
  // MANAGEMENT_AUTH_MAX_FAILURES is 3 here: the empty bearer, wrong token 1 and the wrong project key are the three
  // failed attempts; from then on every request waits, the right token's too.
  {
    name: "wrong token 1",
    status: 401,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, {}, {}, "Bearer wrong-1")
  },
  {
    name: "wrong project key",
    status: 401,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, {}, {}, `Bearer lpk-${"A".repeat(43)}`)
  },
  {
    name: "wrong token 2",
    status: 429,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, {}, {}, "Bearer wrong-2")
  },
  {
    name: "right token, throttled",
    status: 429,
    refusedBeforeHandler: true,
    send: (s, id) => post(s, id, { project_id: s.projectId, duration_minutes: 5 })
  }
]

const setUp = async (name: string, otlp: Option.Option<OtlpConfig> | undefined): Promise<Side> => {
  const instance = await sqlite.create()
  const server = await startServer(
    testConfig(instance.database, { managementAuthMaxFailures: 3, ...(otlp !== undefined ? { otlp } : {}) })
  )
  const api = new Client(server.url, server.token)
  const project = async (body: Record<string, unknown> = {}) => {
    const r = await api.post("/manage/projects", { name: uniqueName("mint"), api_key: providerKey(), ...body })
    expect(r.status, r.text).toBe(201)
    return r.json.id as string
  }
  const projectId = await project({ max_token_minutes: 60 })
  const inactiveId = await project()
  expect((await api.patch(`/manage/projects/${inactiveId}`, { is_active: false })).status).toBe(200)
  const otherId = await project()
  const key = await api.post(`/manage/projects/${projectId}/keys`, { name: "backend" })
  expect(key.status, key.text).toBe(201)
  const login = await api.post("/manage/session", { token: server.token }, { auth: null })
  expect(login.status, login.text).toBe(200)
  const cookie = (login.headers.get("set-cookie") ?? "").split(";")[0]!
  return {
    name,
    instance,
    server,
    api,
    projectId,
    inactiveId,
    otherId,
    projectKey: key.json.key as string,
    session: { cookie, csrf: login.json.csrf_token as string }
  }
}

/** What a user sees of an answer. */
const seen = (r: Reply, requestId: string) => ({
  status: r.status,
  contentType: r.headers.get("content-type"),
  requestId: r.headers.get("x-request-id") === requestId,
  correlationId: r.headers.get("x-correlation-id") === requestId,
  retryAfter: r.headers.get("retry-after") !== null,
  body: masked(r.json)
})

/** A `token.create` event as the audit log shows it, with ids and times masked. */
const event = (row: Row) => ({
  request_id: row["request_id"],
  outcome: row["outcome"],
  actor: masked(row["actor"]),
  project_id: row["project_id"] === null ? null : "<id>",
  token_id: row["token_id"] === null ? null : "<id>",
  reason: row["reason"],
  method: row["method"],
  path: row["path"],
  details: masked(typeof row["metadata"] === "string" ? JSON.parse(row["metadata"]) : row["metadata"])
})

describe("POST /manage/tokens: the direct route and the HttpApi handler answer and audit alike", () => {
  let receiver: Awaited<ReturnType<typeof startReceiver>>
  let direct: Side
  let viaApi: Side
  const answers = new Map<string, Array<ReturnType<typeof seen>>>()

  beforeAll(async () => {
    receiver = await startReceiver()
    direct = await setUp("direct", undefined)
    viaApi = await setUp("HttpApi", otlpTo(receiver.url))
    for (const [i, c] of CASES.entries()) {
      const requestId = `mint-case-${i}`
      answers.set(c.name, [
        seen(await c.send(direct, requestId), requestId),
        seen(await c.send(viaApi, requestId), requestId)
      ])
    }
    // Closing a server writes every audit event it accepted.
    await direct.server.close()
    await viaApi.server.close()
  }, 60_000)

  afterAll(async () => {
    await direct.instance.cleanup()
    await viaApi.instance.cleanup()
    await receiver.close()
  })

  it.each(CASES.map((c) => c.name))("%s", (name) => {
    const [a, b] = answers.get(name)!
    expect(a!.requestId && a!.correlationId).toBe(true)
    expect(a).toEqual(b)
  })

  it("the answers are the ones documented", () => {
    expect(CASES.map((c) => [c.name, answers.get(c.name)![0]!.status])).toEqual(CASES.map((c) => [c.name, c.status]))
    expect(answers.get("right token, throttled")![0]).toMatchObject({ retryAfter: true })
  })

  it("each request's token.create event is the same on both routes", async () => {
    const events = async (side: Side) =>
      (await side.instance.rows("audit_events"))
        .filter((r) => r["action"] === "token.create")
        .map(event)
        .sort((x, y) => String(x.request_id).localeCompare(String(y.request_id)))
    const [a, b] = [await events(direct), await events(viaApi)]
    // Every request that got as far as the handler, and none that authentication refused.
    expect(a.map((e) => e.request_id)).toEqual(
      CASES.flatMap((c, i) => c.refusedBeforeHandler ? [] : [`mint-case-${i}`]).sort()
    )
    expect(a).toEqual(b)
  })
})
