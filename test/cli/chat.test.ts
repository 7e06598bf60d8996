/**
 * `llm-proxy chat` against an OpenAI-compatible endpoint on loopback: the answer is printed delta by delta, the
 * conversation is kept between lines, errors are one line and do not end the session.
 */
import { NodeHttpClient } from "@effect/platform-node"
import { Effect, Option, Redacted } from "effect"
import { execFile } from "node:child_process"
import { existsSync } from "node:fs"
import { createServer, type IncomingMessage, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { join } from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { parseSseLine, runChat } from "../../src/cli/chat.js"

interface Seen {
  readonly authorization: string | undefined
  readonly body: { model: string; stream: boolean; messages: Array<{ role: string; content: string }> }
}

let server: Server
let base: string
const seen: Array<Seen> = []

const readBody = (req: IncomingMessage) =>
  new Promise<string>((resolve) => {
    const parts: Array<Buffer> = []
    req.on("data", (c: Buffer) => parts.push(c))
    req.on("end", () => resolve(Buffer.concat(parts).toString()))
  })

beforeAll(async () => {
  server = createServer(async (req, res) => {
    const body = JSON.parse(await readBody(req)) as Seen["body"]
    seen.push({ authorization: req.headers.authorization, body })
    if (req.headers.authorization !== "Bearer sk-good") {
      res.writeHead(401, { "content-type": "application/json" })
      res.end(
        JSON.stringify({
          error: { message: "Token not found", type: "authentication_error", code: "token_not_found", param: null }
        })
      )
      return
    }
    const last = body.messages[body.messages.length - 1]!.content
    if (last === "json please") {
      res.writeHead(200, { "content-type": "application/json" })
      res.end(
        JSON.stringify({
          choices: [{ message: { role: "assistant", content: "one piece" } }],
          usage: { prompt_tokens: 3, completion_tokens: 2 }
        })
      )
      return
    }
    res.writeHead(200, { "content-type": "text/event-stream" })
    const words = ["Hel", "lo ", "you"]
    for (const w of words) {
      res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: w } }] })}\n\n`)
      await new Promise((r) => setTimeout(r, 5))
    }
    res.write(
      `data: ${
        JSON.stringify({ choices: [], usage: { prompt_tokens: 9, completion_tokens: 3, total_tokens: 12 } })
      }\n\n`
    )
    res.end("data: [DONE]\n\n")
  })
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r))
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`
})

afterAll(() => new Promise<void>((r) => server.close(() => r())))

async function* linesOf(...lines: Array<string>) {
  for (const l of lines) yield l
}

const run = (token: string, lines: Array<string>, system: Option.Option<string> = Option.none()) => {
  const out: Array<string> = []
  const err: Array<string> = []
  let prompts = 0
  return Effect.runPromise(
    runChat({ baseUrl: base, token: Redacted.make(token), model: "gpt-test", system }, linesOf(...lines), {
      write: (s) => out.push(s),
      error: (s) => err.push(s),
      prompt: () => prompts++
    }).pipe(Effect.provide(NodeHttpClient.layerUndici))
  ).then((r) => ({ ...r, out, err, prompts }))
}

describe("llm-proxy chat", () => {
  it("parses OpenAI stream lines", () => {
    expect(parseSseLine(`data: {"choices":[{"delta":{"content":"x"}}]}`)).toEqual({ delta: "x" })
    expect(parseSseLine("data: [DONE]")).toEqual({ done: true })
    expect(parseSseLine(`data: {"choices":[],"usage":{"prompt_tokens":1}}`)).toEqual({ usage: { prompt_tokens: 1 } })
    expect(parseSseLine(": keep-alive")).toEqual({})
    expect(parseSseLine("data: {not json")).toEqual({})
  })

  it("streams the answer delta by delta, keeps the conversation, and shows the usage", async () => {
    seen.length = 0
    const r = await run("sk-good", ["hi", "", "and again"], Option.some("be brief"))
    expect(r.failures).toBe(0)
    expect(r.err).toEqual([])
    // each delta written on its own, as it arrived
    expect(r.out.slice(0, 3)).toEqual(["Hel", "lo ", "you"])
    expect(r.out.join("")).toContain("[tokens: 9 prompt, 3 completion]")
    expect(seen).toHaveLength(2)
    expect(seen[0]!.authorization).toBe("Bearer sk-good")
    expect(seen[0]!.body).toMatchObject({ model: "gpt-test", stream: true })
    expect(seen[1]!.body.messages).toEqual([
      { role: "system", content: "be brief" },
      { role: "user", content: "hi" },
      { role: "assistant", content: "Hello you" },
      { role: "user", content: "and again" }
    ])
    expect(r.prompts).toBe(4)
  })

  it("/reset forgets the conversation and /exit stops reading", async () => {
    seen.length = 0
    await run("sk-good", ["first", "/reset", "second", "/exit", "never sent"])
    expect(seen.map((s) => s.body.messages)).toEqual([
      [{ role: "user", content: "first" }],
      [{ role: "user", content: "second" }]
    ])
  })

  it("prints a JSON answer when the provider does not stream", async () => {
    const r = await run("sk-good", ["json please"])
    expect(r.out.join("")).toContain("one piece")
    expect(r.out.join("")).toContain("[tokens: 3 prompt, 2 completion]")
  })

  it("reports a rejected token as one line with the proxy's code and goes on", async () => {
    const r = await run("sk-bad", ["hi", "again"])
    expect(r.failures).toBe(2)
    expect(r.err[0]).toBe("llm-proxy: Token not found (token_not_found, HTTP 401)\n")
    expect(r.err.join("")).not.toContain("sk-bad")
  })

  it("reports an unreachable proxy as one line", async () => {
    const out: Array<string> = []
    const err: Array<string> = []
    const r = await Effect.runPromise(
      runChat(
        { baseUrl: "http://127.0.0.1:1", token: Redacted.make("sk-good"), model: "m", system: Option.none() },
        linesOf("hi"),
        {
          write: (s) => out.push(s),
          error: (s) => err.push(s),
          prompt: () => {}
        }
      ).pipe(Effect.provide(NodeHttpClient.layerUndici))
    )
    expect(r.failures).toBe(1)
    expect(err[0]).toMatch(/^llm-proxy: cannot reach the proxy at http:\/\/127\.0\.0\.1:1/)
  })

  const bin = join(import.meta.dirname, "../../bin/llm-proxy.js")
  it.skipIf(!existsSync(join(import.meta.dirname, "../../dist/cli/main.js")))(
    "the built binary chats over piped input and exits 0",
    async () => {
      const { stdout, code } = await new Promise<{ stdout: string; code: number | null }>((resolve) => {
        const child = execFile(
          process.execPath,
          [bin, "chat", "--base-url", base, "--model", "gpt-test"],
          { env: { PATH: process.env["PATH"] ?? "", LLM_PROXY_TOKEN: "sk-good" }, timeout: 20_000 },
          (error, stdout) => resolve({ stdout, code: error ? (error as { code?: number }).code ?? 1 : 0 })
        )
        child.stdin!.end("hello\n")
      })
      expect(code).toBe(0)
      expect(stdout).toContain("Hello you")
    }
  )
})
