/**
 * docs/untrusted-clients.md as a reader runs it: its Node program, copied from the page, mints a token for an end
 * user with a project key against a real server and revokes that user's tokens; the refusal the page shows for a
 * token longer than the project allows is the server's answer, word for word.
 */
import { execFile } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Client, providerKey, uniqueName } from "../http/harness.js"
import { startServer, testConfig, type TestServer } from "../support/server.js"

const run = promisify(execFile)
const page = readFileSync(join(import.meta.dirname, "../../docs/untrusted-clients.md"), "utf8")
const blocks = (lang: string) =>
  [...page.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]!)

describe("docs/untrusted-clients.md", () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-untrusted-"))
  let server: TestServer
  let admin: Client
  let projectId = ""
  let key = ""

  beforeAll(async () => {
    server = await startServer(testConfig({ _tag: "sqlite", path: join(dir, "db.sqlite") }))
    admin = new Client(server.url, server.token)
    // Step 1 of the page, with its values.
    const p = await admin.post("/manage/projects", {
      name: uniqueName("chat-app"),
      api_key: providerKey(),
      allowed_models: ["gpt-4o-mini", "gpt-4.1-*"],
      max_token_minutes: 60,
      max_token_requests: 200
    })
    expect(p.status, p.text).toBe(201)
    projectId = p.json.id
    key = (await admin.post(`/manage/projects/${projectId}/keys`, { name: "chat-app backend" })).json.key
  })
  afterAll(() => server?.close())

  it("the Node program mints a token for a user, and revokeUser revokes that user's tokens", async () => {
    const [program] = blocks("js")
    expect(program).toContain("export async function mintToken")
    const file = join(dir, "mint-token.mjs")
    writeFileSync(file, program!)
    const env = { ...process.env, PROXY: server.url, PROJECT_KEY: key }
    const { stdout } = await run(process.execPath, [file, "user-8812"], { env })
    const token = /token: '(sk-[A-Za-z0-9_-]{43})'/.exec(stdout)?.[1]
    expect(token, stdout).toBeDefined()
    const listed = (await admin.get(`/manage/tokens?user=user-8812`)).json
    expect(listed).toHaveLength(1)
    expect(listed[0]).toMatchObject({
      project_id: projectId,
      allowed_models: ["gpt-4o-mini"],
      max_requests: 200,
      is_active: true
    })

    const revoke = join(dir, "revoke.mjs")
    writeFileSync(revoke, `import { revokeUser } from ${JSON.stringify(file)}\nawait revokeUser("user-8812")\n`)
    await run(process.execPath, [revoke], { env })
    expect((await admin.get(`/manage/tokens?user=user-8812`)).json[0].is_active).toBe(false)
  })

  it("a project key asking for more than the project allows gets the 400 the page shows", async () => {
    const shown = /# → 400 (\{.*\})/.exec(page)?.[1]
    const r = await new Client(server.url, key).post("/manage/tokens", { duration_minutes: 600 })
    expect(r.status).toBe(400)
    expect(r.json).toEqual(JSON.parse(shown!))
  })
})
