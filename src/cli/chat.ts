/**
 * `llm-proxy chat`: an interactive, streaming chat through the proxy with a withering token — for a first try and
 * for demos. Each line typed is a user message; the answer is printed as its SSE deltas arrive. The conversation is
 * kept for the session (`/reset` forgets it, `/exit` or end of input quits). Works with piped input too.
 */
import { Command, Options } from "@effect/cli"
import { HttpClient, HttpClientRequest } from "@effect/platform"
import { Config, Effect, Option, Redacted, Stream } from "effect"
import { createInterface } from "node:readline"
import { CliFailure } from "./errors.js"

export interface ChatOptions {
  readonly baseUrl: string
  readonly token: Redacted.Redacted<string>
  readonly model: string
  readonly system: Option.Option<string>
}

interface Message {
  readonly role: "system" | "user" | "assistant"
  readonly content: string
}

export interface Usage {
  readonly prompt_tokens?: number
  readonly completion_tokens?: number
  readonly total_tokens?: number
}

const failure = (message: string) => new CliFailure({ message })

/** The text a `data:` line of an OpenAI chat stream adds, and its usage when it carries one. */
export const parseSseLine = (
  line: string
): { readonly delta?: string; readonly usage?: Usage; readonly done?: true } => {
  if (!line.startsWith("data:")) return {}
  const data = line.slice(5).trim()
  if (data === "[DONE]") return { done: true }
  try {
    const json = JSON.parse(data) as { choices?: Array<{ delta?: { content?: unknown } }>; usage?: Usage | null }
    const content = json.choices?.[0]?.delta?.content
    return {
      ...(typeof content === "string" && content !== "" ? { delta: content } : {}),
      ...(json.usage ? { usage: json.usage } : {})
    }
  } catch {
    return {}
  }
}

/** The proxy's (or provider's) JSON error as one line. */
const describeHttpError = (status: number, body: unknown): string => {
  const b = body as { error?: unknown; code?: unknown } | undefined
  // The proxy's and OpenAI's `{"error": {"message", "code"}}`, or a flat `{"error", "code"}`.
  const inner = b?.error !== null && typeof b?.error === "object"
    ? (b.error as { message?: unknown; code?: unknown })
    : undefined
  const error = typeof b?.error === "string"
    ? b.error
    : typeof inner?.message === "string"
    ? inner.message
    : `HTTP ${status}`
  const code = typeof inner?.code === "string" ? inner.code : typeof b?.code === "string" ? b.code : undefined
  return code !== undefined ? `${error} (${code}, HTTP ${status})` : `${error} (HTTP ${status})`
}

/** Sends the conversation, writes the answer as it streams, and returns it with the usage the stream reported. */
export const complete = (options: ChatOptions, messages: ReadonlyArray<Message>, write: (s: string) => void) =>
  Effect.gen(function*() {
    const client = yield* HttpClient.HttpClient
    const request = HttpClientRequest.post(`${options.baseUrl.replace(/\/+$/, "")}/v1/chat/completions`).pipe(
      HttpClientRequest.bearerToken(Redacted.value(options.token)),
      HttpClientRequest.acceptJson,
      HttpClientRequest.bodyUnsafeJson({
        model: options.model,
        stream: true,
        stream_options: { include_usage: true },
        messages
      })
    )
    const response = yield* client.execute(request).pipe(
      Effect.mapError((e) =>
        failure(
          e._tag === "RequestError"
            ? `cannot reach the proxy at ${options.baseUrl} (${e.reason})`
            : `unexpected response from the proxy`
        )
      )
    )
    if (response.status !== 200) {
      const body = yield* Effect.orElseSucceed(response.json, () => undefined)
      return yield* Effect.fail(failure(describeHttpError(response.status, body)))
    }
    let content = ""
    let usage: Usage | undefined
    const contentType = response.headers["content-type"] ?? ""
    if (!contentType.includes("text/event-stream")) {
      // A provider that ignored `stream: true` answers with one JSON completion.
      const body = (yield* Effect.orElseSucceed(response.json, () => ({}))) as {
        choices?: Array<{ message?: { content?: unknown } }>
        usage?: Usage
      }
      const text = body.choices?.[0]?.message?.content
      content = typeof text === "string" ? text : ""
      write(content)
      return { content, usage: body.usage }
    }
    yield* response.stream.pipe(
      Stream.decodeText(),
      Stream.splitLines,
      Stream.takeWhile((line) => parseSseLine(line).done !== true),
      Stream.runForEach((line) =>
        Effect.sync(() => {
          const parsed = parseSseLine(line)
          if (parsed.delta !== undefined) {
            content += parsed.delta
            write(parsed.delta)
          }
          if (parsed.usage !== undefined) usage = parsed.usage
        })
      ),
      Effect.mapError(() => failure("the stream from the proxy broke off"))
    )
    return { content, usage }
  }).pipe(Effect.scoped)

const usageLine = (u: Usage | undefined) =>
  u === undefined ? "" : `[tokens: ${u.prompt_tokens ?? "?"} prompt, ${u.completion_tokens ?? "?"} completion]`

/**
 * The chat loop over any source of lines. A failed request is reported and the loop goes on (the conversation
 * keeps the question out, so it can be asked again), so one bad answer does not end a session.
 */
export const runChat = (
  options: ChatOptions,
  lines: AsyncIterable<string>,
  io: { readonly write: (s: string) => void; readonly error: (s: string) => void; readonly prompt: () => void }
) =>
  Effect.gen(function*() {
    let history: Array<Message> = Option.match(options.system, {
      onNone: () => [],
      onSome: (content) => [{ role: "system" as const, content }]
    })
    const initial = history
    let failures = 0
    io.prompt()
    yield* Stream.fromAsyncIterable(lines, () => failure("cannot read input")).pipe(
      Stream.map((line) => line.trim()),
      Stream.takeWhile((line) => line !== "/exit" && line !== "/quit"),
      Stream.runForEach((line) =>
        Effect.gen(function*() {
          if (line === "") return io.prompt()
          if (line === "/reset") {
            history = initial
            io.write("(conversation cleared)\n")
            return io.prompt()
          }
          const asked = [...history, { role: "user" as const, content: line }]
          const result = yield* Effect.either(complete(options, asked, io.write))
          if (result._tag === "Left") {
            failures++
            io.error(`llm-proxy: ${result.left.message}\n`)
          } else {
            history = [...asked, { role: "assistant", content: result.right.content }]
            const u = usageLine(result.right.usage)
            io.write(u === "" ? "\n" : `\n${u}\n`)
          }
          io.prompt()
        })
      )
    )
    return { failures }
  })

export const chat = Command.make(
  "chat",
  {
    model: Options.text("model").pipe(Options.withDescription("Model to ask"), Options.withDefault("gpt-4o-mini")),
    token: Options.redacted("token").pipe(
      Options.withDescription("Withering token (sk-…) to call the proxy with (env LLM_PROXY_TOKEN)"),
      Options.withFallbackConfig(Config.redacted("LLM_PROXY_TOKEN"))
    ),
    baseUrl: Options.text("base-url").pipe(
      Options.withDescription("Proxy base URL (env LLM_PROXY_URL, default http://localhost:8080)"),
      Options.withFallbackConfig(Config.string("LLM_PROXY_URL").pipe(Config.withDefault("http://localhost:8080")))
    ),
    system: Options.text("system").pipe(Options.withDescription("System prompt for the conversation"), Options.optional)
  },
  (options) =>
    Effect.gen(function*() {
      const tty = process.stdin.isTTY === true
      const rl = createInterface({ input: process.stdin, terminal: tty, ...(tty ? { output: process.stdout } : {}) })
      if (tty) process.stdout.write(`chatting with ${options.model} through ${options.baseUrl}; /reset, /exit\n`)
      const { failures } = yield* runChat(options, rl, {
        write: (s) => process.stdout.write(s),
        error: (s) => process.stderr.write(s),
        prompt: () => {
          if (tty) process.stdout.write("you> ")
        }
      }).pipe(Effect.ensuring(Effect.sync(() => rl.close())))
      if (failures > 0 && !tty) return yield* Effect.fail(failure(`${failures} request(s) failed`))
    })
).pipe(Command.withDescription("Interactive streaming chat through the proxy with a withering token"))
