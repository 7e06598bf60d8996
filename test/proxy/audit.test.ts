/**
 * The data plane's audit events (docs/behaviour.md scenarios 66 and 121): a /v1 request refused because
 * its project is inactive is recorded once as `proxy_request` / `denied` / `project_inactive`, one refused for its
 * token as `token.validate` / `denied`, with the token's id, the project, the request and correlation ids and the
 * client IP; forwarded requests are not audit events.
 */
import { randomBytes, randomUUID } from "node:crypto"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type BackendInstance, backends } from "../http/harness.js"
import { json } from "../support/mockUpstream.js"
import { proxyError } from "../support/proxyErrors.js"
import { call, chatBody, projectAndToken, type Stack, startStack } from "./stack.js"

for (const backend of backends) {
  describe(`proxy audit events on ${backend.name}`, () => {
    let instance: BackendInstance
    let stack: Stack

    beforeAll(async () => {
      instance = await backend.create()
      stack = await startStack(instance, { trustedProxies: ["127.0.0.1"] })
    })
    afterAll(async () => {
      await stack?.close()
      await instance?.cleanup()
    })

    const eventsOf = async (requestId: string) => {
      const r = await stack.manage.get(`/manage/audit?request_id=${requestId}`)
      expect(r.status).toBe(200)
      return r.json.events as Array<Record<string, unknown>>
    }

    it("a request for an inactive project is denied and audited once, with ids and the client IP", async () => {
      const t = await projectAndToken(stack.manage)
      expect((await stack.manage.patch(`/manage/projects/${t.projectId}`, { is_active: false })).status).toBe(200)
      const requestId = `proxy-${randomUUID()}`
      const r = await call(stack.server.url, "/v1/chat/completions", {
        token: t.token,
        body: chatBody(),
        headers: {
          "x-request-id": requestId,
          "x-correlation-id": "flow-42",
          "x-forwarded-for": "198.51.100.7",
          "user-agent": "sdk/1"
        }
      })
      expect(r.status).toBe(403)
      expect(proxyError(r.json).code).toBe("project_inactive")
      const events = await eventsOf(requestId)
      expect(events).toHaveLength(1)
      expect(events[0]).toMatchObject({
        action: "proxy_request",
        actor: "proxy",
        outcome: "denied",
        reason: "project_inactive",
        project_id: t.projectId,
        token_id: t.tokenId,
        request_id: requestId,
        correlation_id: "flow-42",
        client_ip: "198.51.100.7",
        method: "POST",
        path: "/v1/chat/completions",
        user_agent: "sdk/1"
      })
      expect(JSON.parse(String(events[0]!.metadata))).toMatchObject({ status: 403 })
      expect(JSON.stringify(await instance.rows("audit_events"))).not.toContain(t.token)
    })

    it("a refused proxy token is audited as token.validate / denied with its code, never the token (scenario 121)", async () => {
      const t = await projectAndToken(stack.manage)
      await stack.manage.delete(`/manage/tokens/${t.tokenId}`)
      const cases = [
        { token: t.token, code: "token_inactive", tokenId: t.tokenId },
        { token: `sk-${"A".repeat(43)}`, code: "token_not_found", tokenId: undefined },
        { token: "not-a-token", code: "invalid_token", tokenId: undefined }
      ]
      for (const c of cases) {
        const requestId = `proxy-${randomUUID()}`
        const r = await call(stack.server.url, "/v1/chat/completions", {
          token: c.token,
          body: chatBody(),
          headers: { "x-request-id": requestId }
        })
        expect(r.status).toBe(401)
        const events = await eventsOf(requestId)
        expect(events).toHaveLength(1)
        expect(events[0]).toMatchObject({
          action: "token.validate",
          actor: "proxy",
          outcome: "denied",
          reason: c.code,
          client_ip: "127.0.0.1"
        })
        expect(events[0]!.token_id).toBe(c.tokenId)
        expect(JSON.stringify(events[0])).not.toContain(c.token)
      }
      const none = `proxy-${randomUUID()}`
      expect(
        (await call(stack.server.url, "/v1/chat/completions", {
          token: null,
          body: chatBody(),
          headers: { "x-request-id": none }
        })).status
      ).toBe(401)
      expect((await eventsOf(none))[0]).toMatchObject({ action: "token.validate", reason: "invalid_token" })
    })

    it("a flood of refused requests is aggregated: one event per client IP, reason and minute, with the count", async () => {
      const attackers = ["198.51.100.101", "198.51.100.102", "198.51.100.103"]
      const before = (await instance.rows("audit_events")).length
      const send = (ip: string, i: number) =>
        call(stack.server.url, "/v1/chat/completions", {
          token: `sk-${randomBytes(32).toString("base64url")}`,
          body: chatBody(),
          headers: { "x-forwarded-for": ip, "x-request-id": `flood-${ip}-${i}` }
        })
      for (let round = 0; round < 20; round++) {
        const replies = await Promise.all(
          attackers.flatMap((ip, a) => Array.from({ length: 10 * (a + 1) }, (_, i) => send(ip, round * 100 + i)))
        )
        expect(replies.filter((r) => r.status !== 401).map((r) => [r.status, r.text])).toEqual([])
      }
      // Listing writes the events counted so far; a request whose completion is counted after that starts a new one.
      const eventsOfIp = async (ip: string) => {
        const r = await stack.manage.get(`/manage/audit?client_ip=${ip}&action=token.validate`)
        return r.json.events as Array<{ count: number; reason: string; request_id: string }>
      }
      for (const [a, ip] of attackers.entries()) {
        let events = await eventsOfIp(ip)
        for (let i = 0; i < 50 && events.reduce((sum, e) => sum + e.count, 0) < 200 * (a + 1); i++) {
          await new Promise((r) => setTimeout(r, 50))
          events = await eventsOfIp(ip)
        }
        expect(events.reduce((sum, e) => sum + e.count, 0)).toBe(200 * (a + 1))
        // One event, or a few when the flood crossed a minute boundary or a listing.
        expect(events.length).toBeLessThanOrEqual(4)
        expect(events.filter((e) => e.reason !== "token_not_found" || !e.request_id.startsWith(`flood-${ip}-`)))
          .toEqual([])
      }
      // 1,200 refused requests added a handful of rows (their events and the listings' own audit.list events).
      const added = (await instance.rows("audit_events")).length - before
      expect(added).toBeLessThan(30)
    })

    it("a forwarded request is not an audit event", async () => {
      stack.mock.reset()
      stack.mock.enqueue(
        json({ id: "x", choices: [], usage: { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 } })
      )
      const t = await projectAndToken(stack.manage)
      const requestId = `proxy-${randomUUID()}`
      const r = await call(stack.server.url, "/v1/chat/completions", {
        token: t.token,
        body: chatBody(),
        headers: { "x-request-id": requestId }
      })
      expect(r.status).toBe(200)
      expect(await eventsOf(requestId)).toEqual([])
    })
  })
}
