/**
 * Model scopes and the end user on /v1, as a client and the mock upstream see them: `allowed_models` of the project
 * and of the token (exact names, globs, both lists applying), refused with 403 `model_not_allowed` before the upstream
 * is called, `GET /v1/models/{id}` checked and `GET /v1/models` filtered; and a provider's `inject_user`, which adds
 * the token's `user` to a JSON request that has none and leaves every other request byte for byte as it was sent.
 */
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { json } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { call, createProject, eventually, type Stack, startStack } from "./stack.js"

const YAML = `
default_api: openai
apis:
  openai:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions, /v1/responses, /v1/embeddings, /v1/models, /v1/audio/transcriptions]
    allowed_methods: [GET, POST]
    inject_user: true
  plain:
    base_url: {{MOCK}}
    allowed_endpoints: [/v1/chat/completions]
    allowed_methods: [POST]
`

let backend: BackendInstance
let stack: Stack

beforeAll(async () => {
  backend = await backends[0]!.create()
  stack = await startStack(backend, {}, YAML)
})
afterAll(async () => {
  await stack.close()
  await backend.cleanup()
})
beforeEach(() => stack.mock.reset())

const mint = async (projectId: string, extra: Record<string, unknown> = {}) => {
  const r = await stack.manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60, ...extra })
  expect(r.status, r.text).toBe(201)
  return r.json.token as string
}

const scoped = async (project: ReadonlyArray<string> | null, token: ReadonlyArray<string> | null) => {
  const { projectId } = await createProject(stack.manage)
  if (project !== null) {
    const r = await stack.manage.patch(`/manage/projects/${projectId}`, { allowed_models: project })
    expect(r.status, r.text).toBe(200)
    expect(r.json.allowed_models).toEqual(project)
  }
  return mint(projectId, token === null ? {} : { allowed_models: token })
}

const chat = (token: string, model: unknown) =>
  call(stack.server.url, "/v1/chat/completions", {
    token,
    body: { model, messages: [{ role: "user", content: "Hi" }] }
  })

/** Asserts the request was refused for `model` and never reached the upstream. */
const expectRefused = async (reply: Promise<{ status: number; json: any }>, model: string) => {
  const r = await reply
  expect(r.status).toBe(403)
  const e = proxyError(r.json)
  expect(e.code).toBe("model_not_allowed")
  expect(e.message).toContain(`'${model}'`)
  expect(stack.mock.requests).toHaveLength(0)
}

describe("allowed_models", () => {
  it("an exact name: that model passes to the upstream, any other is 403 model_not_allowed before the upstream", async () => {
    const { projectId } = await createProject(stack.manage)
    const minted = await stack.manage.post("/manage/tokens", {
      project_id: projectId,
      duration_minutes: 60,
      allowed_models: ["gpt-4o-mini"],
      user: "user-77"
    })
    const token = minted.json.token as string
    await expectRefused(chat(token, "gpt-4o"), "gpt-4o")
    // The refusal is an audit event of the token, with its end user.
    await eventually(async () => {
      const r = await stack.manage.get(`/manage/audit?action=proxy_request&token_id=${minted.json.id}`)
      return r.json.events.length === 1
    })
    const audited =
      (await stack.manage.get(`/manage/audit?action=proxy_request&token_id=${minted.json.id}`)).json.events[0]
    expect(audited).toMatchObject({
      outcome: "denied",
      reason: "model_not_allowed",
      actor: "proxy",
      project_id: projectId
    })
    expect(JSON.parse(audited.metadata)).toMatchObject({ user: "user-77", status: 403 })
    await expectRefused(chat(token, "gpt-4o-mini-2024"), "gpt-4o-mini-2024")
    const ok = await chat(token, "gpt-4o-mini")
    expect(ok.status).toBe(200)
    expect(stack.mock.requests).toHaveLength(1)
    expect(JSON.parse(stack.mock.requests[0]!.body).model).toBe("gpt-4o-mini")
  })

  it("a glob: claude-3-5-* admits every claude-3-5 model and nothing else", async () => {
    const token = await scoped(["claude-3-5-*"], null)
    for (const model of ["claude-3-5-sonnet", "claude-3-5-haiku-20241022"]) {
      expect((await chat(token, model)).status).toBe(200)
    }
    expect(stack.mock.requests).toHaveLength(2)
    stack.mock.reset()
    await expectRefused(chat(token, "claude-3-opus"), "claude-3-opus")
    await expectRefused(chat(token, "claude-3-5-x/y"), "claude-3-5-x/y")
  })

  it("both lists apply: a model must be in the project's and in the token's", async () => {
    const token = await scoped(["gpt-4o*"], ["gpt-4o-mini", "o1"])
    expect((await chat(token, "gpt-4o-mini")).status).toBe(200)
    stack.mock.reset()
    await expectRefused(chat(token, "gpt-4o"), "gpt-4o") // the project's, not the token's
    await expectRefused(chat(token, "o1"), "o1") // the token's, not the project's
  })

  it("a request whose model cannot be told is refused when a scope applies; without a scope nothing is checked", async () => {
    const token = await scoped(null, ["gpt-4o-mini"])
    const noModel = await call(stack.server.url, "/v1/chat/completions", { token, body: { messages: [] } })
    expect(noModel.status).toBe(403)
    expect(proxyError(noModel.json).code).toBe("model_not_allowed")
    const twice = await call(stack.server.url, "/v1/chat/completions", {
      token,
      body: "{\"model\":\"gpt-4o-mini\",\"messages\":[],\"model\":\"gpt-4o\"}"
    })
    expect(twice.status).toBe(403)
    expect((await chat(token, 42)).status).toBe(403)
    const upload = await call(stack.server.url, "/v1/audio/transcriptions", {
      token,
      body: "--x\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--x--\r\n",
      headers: { "content-type": "multipart/form-data; boundary=x" }
    })
    expect(upload.status).toBe(403)
    expect(stack.mock.requests).toHaveLength(0)

    const { projectId } = await createProject(stack.manage)
    const free = await mint(projectId)
    expect((await chat(free, "anything-at-all")).status).toBe(200)
  })

  it("PATCH of a token's allowed_models applies to its next request", async () => {
    const { projectId } = await createProject(stack.manage)
    const created = await stack.manage.post("/manage/tokens", { project_id: projectId, duration_minutes: 60 })
    const token = created.json.token as string
    expect((await chat(token, "gpt-4o")).status).toBe(200)
    const r = await stack.manage.patch(`/manage/tokens/${created.json.id}`, { allowed_models: ["gpt-4o-mini"] })
    expect(r.status, r.text).toBe(200)
    expect(r.json.allowed_models).toEqual(["gpt-4o-mini"])
    stack.mock.reset()
    await expectRefused(chat(token, "gpt-4o"), "gpt-4o")
    const back = await stack.manage.patch(`/manage/tokens/${created.json.id}`, { allowed_models: null })
    expect(back.json.allowed_models).toBeNull()
    expect((await chat(token, "gpt-4o")).status).toBe(200)
  })

  it("PATCH of a project's allowed_models applies to the next request of its warm tokens", async () => {
    const { projectId } = await createProject(stack.manage)
    const token = await mint(projectId)
    expect((await chat(token, "gpt-4o")).status).toBe(200)
    expect((await stack.manage.patch(`/manage/projects/${projectId}`, { allowed_models: ["o1*"] })).status).toBe(200)
    stack.mock.reset()
    await expectRefused(chat(token, "gpt-4o"), "gpt-4o")
    expect((await chat(token, "o1-mini")).status).toBe(200)
  })

  it("GET /v1/models/{id} is checked like a request naming that model", async () => {
    const token = await scoped(null, ["gpt-4o-mini"])
    stack.mock.route("/v1/models/gpt-4o-mini", json({ id: "gpt-4o-mini", object: "model" }))
    const ok = await call(stack.server.url, "/v1/models/gpt-4o-mini", { token })
    expect(ok.status).toBe(200)
    expect(ok.json.id).toBe("gpt-4o-mini")
    stack.mock.reset()
    await expectRefused(call(stack.server.url, "/v1/models/gpt-4o", { token }), "gpt-4o")
  })

  it("GET /v1/models lists only the allowed models; the rest of the answer is as the upstream sent it", async () => {
    const list = {
      object: "list",
      data: [
        { id: "gpt-4o", object: "model", owned_by: "openai" },
        { id: "gpt-4o-mini", object: "model", owned_by: "openai" },
        { id: "claude-3-5-sonnet", object: "model", owned_by: "anthropic" },
        { id: "o1", object: "model", owned_by: "openai" }
      ],
      has_more: false
    }
    stack.mock.route("/v1/models", json(list))
    const token = await scoped(["gpt-4o-mini", "claude-3-5-*", "o1"], ["gpt-4o*", "claude-*"])
    const r = await call(stack.server.url, "/v1/models", { token })
    expect(r.status).toBe(200)
    expect(r.json).toEqual({ ...list, data: [list.data[1], list.data[2]] })
    expect(Number(r.headers["content-length"])).toBe(Buffer.byteLength(r.text))

    const { projectId } = await createProject(stack.manage)
    const unscoped = await call(stack.server.url, "/v1/models", { token: await mint(projectId) })
    expect(unscoped.json).toEqual(list)
  })

  it("a scoped model list the proxy cannot read whole is not sent (502); an upstream error passes as it came", async () => {
    const token = await scoped(null, ["gpt-4o-mini"])
    const huge = { object: "list", data: [{ id: "gpt-4o", pad: "x".repeat(9 * 1024 * 1024) }] }
    stack.mock.route("/v1/models", json(huge))
    const tooBig = await call(stack.server.url, "/v1/models", { token })
    expect(tooBig.status).toBe(502)
    expect(proxyError(tooBig.json).code).toBe("upstream_error")
    expect(tooBig.text).not.toContain("gpt-4o")
    const refused = { error: { message: "nope", type: "invalid_request_error" } }
    stack.mock.route("/v1/models", json(refused, { status: 401 }))
    const r = await call(stack.server.url, "/v1/models", { token })
    expect({ status: r.status, body: r.json }).toEqual({ status: 401, body: refused })
    const other = { models: ["gpt-4o", "gpt-4o-mini"] }
    stack.mock.route("/v1/models", json(other))
    expect((await call(stack.server.url, "/v1/models", { token })).json).toEqual(other)
  })

  it("allowed_models is validated: 400 with a clear message, nothing created", async () => {
    const { projectId } = await createProject(stack.manage)
    const bad = async (allowed: unknown, message: string) => {
      const r = await stack.manage.post("/manage/tokens", {
        project_id: projectId,
        duration_minutes: 5,
        allowed_models: allowed
      })
      expect(r.status).toBe(400)
      expect(r.json.error).toBe(message)
    }
    await bad([], "allowed_models must list at least one model (null: any model)")
    await bad([""], "allowed_models entries must not be empty")
    await bad(
      ["gpt-[4"],
      "allowed_models entries must be model names or globs (* and ? do not match /; [...] must be closed)"
    )
    await bad("gpt-4o", "allowed_models must be null or a list of model names or globs")
    await bad([7], "allowed_models must be null or a list of model names or globs")
    const tokens = await stack.manage.get(`/manage/tokens?project_id=${projectId}`)
    expect(tokens.json).toEqual([])
  })
})

describe("inject_user", () => {
  const minted = async (provider: string, user: string | undefined) => {
    const { projectId } = await createProject(stack.manage, { provider })
    return mint(projectId, user === undefined ? {} : { user })
  }

  it("sets user to the token's user on a chat request without one, the rest of the body byte for byte", async () => {
    const token = await minted("openai", "end-user-42")
    const body =
      "{ \"model\": \"gpt-4o-mini\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"héllo\"}] , \"temperature\":0.50}"
    expect((await call(stack.server.url, "/v1/chat/completions", { token, body })).status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe(
      "{\"user\":\"end-user-42\", \"model\": \"gpt-4o-mini\",\n  \"messages\": [{\"role\":\"user\",\"content\":\"héllo\"}] , \"temperature\":0.50}"
    )
    expect(stack.mock.requests[0]!.headers["content-length"]).toBe(
      String(Buffer.byteLength(stack.mock.requests[0]!.body))
    )
  })

  it("sets safety_identifier on the Responses API", async () => {
    const token = await minted("openai", "u-7")
    const body = "{\"model\":\"gpt-4o-mini\",\"input\":\"hi\"}"
    expect((await call(stack.server.url, "/v1/responses", { token, body })).status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe(
      "{\"safety_identifier\":\"u-7\",\"model\":\"gpt-4o-mini\",\"input\":\"hi\"}"
    )
  })

  it("a request that sets user itself reaches the upstream byte-identical", async () => {
    const token = await minted("openai", "end-user-42")
    const body = "{\"model\":\"gpt-4o-mini\", \"user\" : \"client-chosen\",\t\"messages\":[]}"
    expect((await call(stack.server.url, "/v1/chat/completions", { token, body })).status).toBe(200)
    expect(stack.mock.requests[0]!.body).toBe(body)
    const responses = "{\"safety_identifier\":null,\"model\":\"gpt-4o-mini\",\"input\":\"x\"}"
    expect((await call(stack.server.url, "/v1/responses", { token, body: responses })).status).toBe(200)
    expect(stack.mock.requests[1]!.body).toBe(responses)
  })

  it("nothing is injected for a token without user, nor where the provider does not say inject_user", async () => {
    const body = "{\"model\":\"gpt-4o-mini\",\"messages\":[]}"
    const anonymous = await minted("openai", undefined)
    await call(stack.server.url, "/v1/chat/completions", { token: anonymous, body })
    const plain = await minted("plain", "end-user-42")
    await call(stack.server.url, "/v1/chat/completions", { token: plain, body })
    expect(stack.mock.requests.map((r) => r.body)).toEqual([body, body])
  })
})
