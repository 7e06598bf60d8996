/**
 * Requests and answers of each provider shape the proxy forwards, as chat messages in the OpenAI chat format
 * (`role`, `content`, `tool_calls`, `tool_call_id`): what Lunary shows as a conversation (lunary-js does the same in
 * its OpenAI and Anthropic wrappers, src/openai.ts and src/anthropic.ts of lunary-ai/lunary-js). Pure.
 *
 * - OpenAI chat completions: `messages` as they are; the answer is `choices[0].message`.
 * - Anthropic messages: `system` becomes the first message; `tool_use` blocks become `tool_calls`, `tool_result`
 *   blocks `tool` messages, images `image_url` parts; the answer (`type: "message"`) one assistant message.
 * - Responses API: `instructions` becomes a system message, `input` (a string or items) user / assistant / tool
 *   messages; the answer's `output` items one assistant message.
 * - Legacy completions: `prompt` is a user message, `choices[0].text` the answer.
 * Other bodies (embeddings, images, audio …) are returned as they are.
 */

type Json = Record<string, unknown>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

export interface ToolCall {
  readonly id?: unknown
  readonly type: "function"
  readonly function: { readonly name: unknown; readonly arguments: string }
}

export interface ChatMessage {
  readonly role: string
  readonly content?: unknown
  readonly name?: unknown
  readonly tool_calls?: ReadonlyArray<unknown>
  readonly tool_call_id?: unknown
  readonly refusal?: unknown
  readonly function_call?: unknown
  readonly audio?: unknown
}

const str = (v: unknown): string => (typeof v === "string" ? v : JSON.stringify(v ?? null))

/** One content part in the chat format: text parts of every provider become `{type: "text"}`, images `image_url`. */
const part = (b: unknown): unknown => {
  if (!isObject(b)) return b
  switch (b["type"]) {
    case "text":
    case "input_text":
    case "output_text":
      return { type: "text", text: b["text"] }
    case "image": {
      const source = b["source"]
      if (!isObject(source)) return b
      if (source["type"] === "base64") {
        return {
          type: "image_url",
          image_url: { url: `data:${str(source["media_type"])};base64,${str(source["data"])}` }
        }
      }
      return source["type"] === "url" ? { type: "image_url", image_url: { url: source["url"] } } : b
    }
    case "input_image":
      return { type: "image_url", image_url: { url: b["image_url"] ?? b["file_id"] } }
  }
  return b
}

const isText = (p: unknown): p is { type: "text"; text: string } =>
  isObject(p) && p["type"] === "text" && typeof p["text"] === "string"

/** Content as a string when it is only text (what every viewer shows), else the list of parts. */
const content = (c: unknown): unknown => {
  if (!Array.isArray(c)) return c
  const parts = c.map(part)
  return parts.every(isText) ? parts.map((p) => p.text).join("\n") : parts
}

const toolCall = (id: unknown, name: unknown, args: unknown): ToolCall => ({
  id,
  type: "function",
  function: { name, arguments: typeof args === "string" ? args : JSON.stringify(args ?? {}) }
})

const withoutUndefined = (m: Record<string, unknown>): ChatMessage => {
  const out: Record<string, unknown> = {}
  for (const [k, v] of Object.entries(m)) if (v !== undefined) out[k] = v
  return out as unknown as ChatMessage
}

/**
 * One message of a `messages` list, OpenAI or Anthropic: Anthropic blocks that carry tool use or tool results
 * become the chat format's `tool_calls` and `tool` messages (so one input message may become several).
 */
const fromMessage = (m: unknown): Array<ChatMessage> => {
  if (!isObject(m)) return [{ role: "user", content: m }]
  const role = typeof m["role"] === "string" ? m["role"] : "user"
  const c = m["content"]
  if (Array.isArray(c) && c.some((b) => isObject(b) && (b["type"] === "tool_use" || b["type"] === "tool_result"))) {
    const out: Array<ChatMessage> = []
    const rest: Array<unknown> = []
    const calls: Array<ToolCall> = []
    for (const b of c) {
      if (isObject(b) && b["type"] === "tool_use") calls.push(toolCall(b["id"], b["name"], b["input"]))
      else if (isObject(b) && b["type"] === "tool_result") {
        out.push({ role: "tool", tool_call_id: b["tool_use_id"], content: content(b["content"]) })
      } else rest.push(b)
    }
    if (rest.length > 0 || calls.length > 0) {
      const message = withoutUndefined({
        role,
        content: rest.length > 0 ? content(rest) : null,
        tool_calls: calls.length > 0 ? calls : undefined
      })
      // tool results answer earlier calls; anything else the message said comes after them
      if (calls.length > 0) out.unshift(message)
      else out.push(message)
    }
    return out
  }
  return [
    withoutUndefined({
      role,
      content: content(c),
      name: m["name"],
      tool_calls: m["tool_calls"],
      tool_call_id: m["tool_call_id"],
      function_call: m["function_call"],
      refusal: m["refusal"],
      audio: m["audio"]
    })
  ]
}

/** Responses API `input` items → chat messages. */
const fromResponsesInput = (input: unknown): Array<ChatMessage> => {
  if (typeof input === "string") return [{ role: "user", content: input }]
  if (!Array.isArray(input)) return input === undefined ? [] : [{ role: "user", content: input }]
  const out: Array<ChatMessage> = []
  for (const item of input) {
    if (typeof item === "string") out.push({ role: "user", content: item })
    else if (!isObject(item)) continue
    else if (item["type"] === "function_call") {
      out.push({
        role: "assistant",
        content: null,
        tool_calls: [toolCall(item["call_id"], item["name"], item["arguments"])]
      })
    } else if (item["type"] === "function_call_output") {
      out.push({ role: "tool", tool_call_id: item["call_id"], content: content(item["output"]) })
    } else if (item["type"] === "reasoning") continue
    else if (typeof item["role"] === "string") out.push({ role: item["role"], content: content(item["content"]) })
    else out.push({ role: "user", content: item })
  }
  return out
}

const isResponsesPath = (path: string) => /\/responses$/.test(path)

/** The request as a conversation, or the body as it is when it is not a generation request. */
export const chatInput = (path: string, body: unknown): unknown => {
  if (!isObject(body)) return body
  if (Array.isArray(body["messages"])) {
    const system = body["system"]
    const head: Array<ChatMessage> = system === undefined || system === null
      ? []
      : [{ role: "system", content: content(system) }]
    return [...head, ...body["messages"].flatMap(fromMessage)]
  }
  if (isResponsesPath(path) || (body["input"] !== undefined && body["instructions"] !== undefined)) {
    const instructions = body["instructions"]
    const head: Array<ChatMessage> = typeof instructions === "string" ? [{ role: "system", content: instructions }] : []
    return [...head, ...fromResponsesInput(body["input"])]
  }
  const prompt = body["prompt"]
  if (typeof prompt === "string") return [{ role: "user", content: prompt }]
  if (Array.isArray(prompt) && prompt.every((p) => typeof p === "string")) {
    return [{ role: "user", content: prompt.join("\n") }]
  }
  return body
}

/** The answer as one assistant message, or the body as it is when it is not a generation answer. */
export const chatOutput = (body: unknown): unknown => {
  if (!isObject(body)) return body
  const choices = body["choices"]
  if (Array.isArray(choices) && isObject(choices[0])) {
    const choice = choices[0]
    if (isObject(choice["message"])) return fromMessage({ role: "assistant", ...choice["message"] })[0]
    if (typeof choice["text"] === "string") return { role: "assistant", content: choice["text"] }
  }
  // Anthropic messages
  if (body["type"] === "message" && Array.isArray(body["content"])) {
    const text: Array<string> = []
    const calls: Array<ToolCall> = []
    const other: Array<unknown> = []
    for (const b of body["content"]) {
      if (isText(b)) text.push(b.text)
      else if (isObject(b) && b["type"] === "tool_use") calls.push(toolCall(b["id"], b["name"], b["input"]))
      else if (isObject(b) && (b["type"] === "thinking" || b["type"] === "redacted_thinking")) continue
      else other.push(part(b))
    }
    return withoutUndefined({
      role: "assistant",
      content: other.length > 0
        ? [...text.map((t) => ({ type: "text", text: t })), ...other]
        : text.length > 0
        ? text.join("\n")
        : null,
      tool_calls: calls.length > 0 ? calls : undefined
    })
  }
  // Responses API
  if (Array.isArray(body["output"])) {
    const text: Array<string> = []
    const calls: Array<ToolCall> = []
    let refusal: string | undefined
    for (const item of body["output"]) {
      if (!isObject(item)) continue
      if (item["type"] === "function_call") calls.push(toolCall(item["call_id"], item["name"], item["arguments"]))
      else if (item["type"] === "message" && Array.isArray(item["content"])) {
        for (const p of item["content"]) {
          if (isObject(p) && p["type"] === "output_text" && typeof p["text"] === "string") text.push(p["text"])
          else if (isObject(p) && p["type"] === "refusal" && typeof p["refusal"] === "string") refusal = p["refusal"]
        }
      }
    }
    return withoutUndefined({
      role: "assistant",
      content: text.length > 0 ? text.join("\n") : null,
      tool_calls: calls.length > 0 ? calls : undefined,
      refusal
    })
  }
  return body
}
