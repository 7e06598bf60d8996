/**
 * Management request bodies as node:http delivers them (src/http/body.ts): split in chunks, with a byte-order mark,
 * cut off by a client that goes away — parsed, or refused without harm, and the server keeps serving.
 */
import { mkdtempSync, rmSync } from "node:fs"
import { connect } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startServer, testConfig, type TestServer } from "../support/server.js"
import { Client, providerKey, uniqueName } from "./harness.js"

describe("management request bodies", () => {
  const dir = mkdtempSync(join(tmpdir(), "llm-proxy-body-"))
  let server: TestServer
  let api: Client
  let projectId: string

  beforeAll(async () => {
    server = await startServer(testConfig({ _tag: "sqlite", path: join(dir, "body.db") }))
    api = new Client(server.url, server.token)
    projectId = (await api.post("/manage/projects", { name: uniqueName("body"), api_key: providerKey() })).json.id
  })
  afterAll(async () => {
    await server?.close()
    rmSync(dir, { recursive: true, force: true })
  })

  const count = async () => ((await api.get(`/manage/tokens?project_id=${projectId}`)).json as Array<unknown>).length

  it("a body sent in small chunks, and one starting with a UTF-8 byte-order mark, are read whole", async () => {
    const json = JSON.stringify({ project_id: projectId, duration_minutes: 5 })
    const chunked = await api.raw("POST", "/manage/tokens", { chunks: json.match(/.{1,7}/g)! })
    expect(chunked.status, chunked.text).toBe(201)
    const bom = await api.post("/manage/tokens", `\ufeff${json}`)
    expect(bom.status, bom.text).toBe(201)
    expect(await count()).toBe(2)
  })

  it("a client that goes away in the middle of a body changes nothing, and the server keeps answering", async () => {
    const before = await count()
    const url = new URL(server.url)
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(url.port), url.hostname, () => {
        socket.write(
          `POST /manage/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${server.token}\r\n` +
            `Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{"project_id": "${projectId}", "dura`
        )
        setTimeout(() => {
          socket.destroy()
          resolve()
        }, 100)
      })
      socket.on("error", reject)
    })
    await new Promise((resolve) => setTimeout(resolve, 100))
    expect(await count()).toBe(before)
    expect((await api.post("/manage/tokens", { project_id: projectId, duration_minutes: 5 })).status).toBe(201)
  })
})
