/**
 * Local stand-ins for Lunary and Helicone that apply the services' own ingestion rules, read from their public
 * source (the repository and file of each rule are named where it is applied). They keep what each service would
 * store — runs, logged requests — so tests can assert what a user of the service would see, not only what was sent.
 */
import { createServer, type IncomingHttpHeaders, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"

type Json = Record<string, any>
const isObject = (v: unknown): v is Json => typeof v === "object" && v !== null && !Array.isArray(v)

interface Listener {
  readonly url: string
  close(): Promise<void>
}

const listen = async (
  handle: (
    req: { method: string; url: string; headers: IncomingHttpHeaders; body: Buffer },
    res: ServerResponse
  ) => void
): Promise<Listener> => {
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (c: Buffer) => chunks.push(c))
    req.on(
      "end",
      () =>
        handle({ method: req.method ?? "", url: req.url ?? "", headers: req.headers, body: Buffer.concat(chunks) }, res)
    )
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}

const json = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) =>
  res.writeHead(status, { "content-type": "application/json", ...headers }).end(
    typeof body === "string" ? body : JSON.stringify(body)
  )

const bearer = (headers: IncomingHttpHeaders) => headers.authorization?.split(" ")[1]

// =============================================================================================================
// Lunary (lunary-ai/lunary, packages/backend)

/** What Lunary keeps of a run (the `run` table written by registerRunEvent, src/api/v1/runs/ingest.ts). */
export interface LunaryRun {
  id: string
  projectId: string
  type: string
  name?: string
  status: "started" | "success" | "error"
  createdAt: string
  endedAt?: string
  input?: unknown
  output?: unknown
  params?: unknown
  metadata?: Json
  tags?: Array<string>
  externalUserId?: string
  promptTokens?: number
  completionTokens?: number
  cachedPromptTokens?: number
  cost?: number | null
  error?: unknown
}

export interface LunaryOptions {
  /** API key → project id (checkApiKey, src/api/v1/auth/utils.ts); change it to "rotate" keys */
  readonly keys: Map<string, string>
  /** koa-bodyparser `jsonLimit` (src/index.ts): 20 MB */
  readonly maxBodyBytes?: number
  /** an error thrown while storing this event (a database failure in registerRunEvent) */
  readonly failEvent?: (event: Json) => string | undefined
  /** store the events of this POST (by index) and then never answer: an answer lost on the way back */
  readonly storeThenHang?: (index: number) => boolean
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i

/** recursiveToCamel (src/utils/ingest.ts): every key of the event, at every depth, becomes camelCase. */
const toCamel = (item: unknown): unknown => {
  if (Array.isArray(item)) return item.map(toCamel)
  if (!isObject(item)) return item
  return Object.fromEntries(
    Object.entries(item).map((
      [k, v]
    ) => [k.replace(/([-_][a-z])/gi, (c) => c.toUpperCase().replace(/[-_]/g, "")), toCamel(v)])
  )
}

/** cleanMetadata (src/utils/ingest.ts): only first-level strings, numbers, booleans and arrays of those. */
const cleanMetadata = (m: unknown): Json | undefined => {
  if (!isObject(m)) return undefined
  const primitive = (v: unknown) => ["string", "number", "boolean"].includes(typeof v)
  return Object.fromEntries(
    Object.entries(m).filter(([, v]) => primitive(v) || (Array.isArray(v) && v.every(primitive)))
  )
}

/**
 * Per-million-token prices of the test's own model mapping (Lunary prices runs from its `model_mapping` table,
 * calcRunCost in src/utils/cost.ts; these numbers are only this test's).
 */
export const LUNARY_TEST_PRICES: Record<string, { input: number; output: number; cachedReduction: number }> = {
  "gpt-4o-mini": { input: 0.15, output: 0.6, cachedReduction: 0.075 },
  "claude-3-5-haiku": { input: 0.8, output: 4, cachedReduction: 0.72 }
}

/** calcRunCost (src/utils/cost.ts): no cost under 10 ms (cached calls) or without a name; by tokens otherwise. */
const costOf = (run: LunaryRun): number | null => {
  const duration = Date.parse(run.endedAt ?? "") - Date.parse(run.createdAt)
  if (!duration || duration < 10 || run.type !== "llm" || !run.name) return null
  const price = Object.entries(LUNARY_TEST_PRICES).find(([pattern]) => new RegExp(pattern).test(run.name!))?.[1]
  if (price === undefined) return null
  return ((run.promptTokens ?? 0) * price.input - (run.cachedPromptTokens ?? 0) * price.cachedReduction +
    (run.completionTokens ?? 0) * price.output) /
    1_000_000
}

export interface Lunary extends Listener {
  readonly runs: Map<string, LunaryRun>
  /** every POST: status answered, events carried, body bytes */
  readonly posts: Array<{ status: number | "hung"; events: number; bytes: number; results?: Array<Json> }>
}

export const startLunary = async (options: LunaryOptions): Promise<Lunary> => {
  const runs = new Map<string, LunaryRun>()
  const posts: Lunary["posts"] = []
  const maxBody = options.maxBodyBytes ?? 20 * 1024 * 1024
  let index = 0

  /** registerRunEvent (src/api/v1/runs/ingest.ts) for the llm events the dispatcher sends. */
  const register = (projectId: string, event: Json) => {
    const failure = options.failEvent?.(event)
    if (failure !== undefined) throw new Error(failure)
    const { runId, event: name } = event
    if (name === "start") {
      if (runs.has(runId)) throw new Error("Run with this ID already exists in the database.")
      runs.set(runId, {
        id: runId,
        projectId,
        type: event.type,
        name: event.name,
        status: "started",
        createdAt: event.timestamp,
        input: event.input,
        params: event.params ?? event.extra,
        metadata: event.metadata,
        tags: event.tags,
        ...(typeof event.userId === "string" ? { externalUserId: event.userId } : {})
      })
    } else if (name === "end") {
      const run = runs.get(runId)
      // an end without its run is dropped silently (after one 5 s retry in Lunary)
      if (run === undefined) return
      Object.assign(run, {
        endedAt: event.timestamp,
        output: event.output,
        status: "success",
        promptTokens: event.tokensUsage?.prompt,
        completionTokens: event.tokensUsage?.completion,
        cachedPromptTokens: event.tokensUsage?.promptCached ?? 0,
        metadata: { ...run.metadata, ...event.metadata }
      })
      run.cost = costOf(run)
    } else if (name === "error") {
      const run = runs.get(runId)
      if (run !== undefined) Object.assign(run, { endedAt: event.timestamp, status: "error", error: event.error })
    }
  }

  const listener = await listen((req, res) => {
    const i = index++
    // koa-bodyparser answers 413 past jsonLimit, before the route runs
    if (req.body.length > maxBody) {
      posts.push({ status: 413, events: 0, bytes: req.body.length })
      return json(res, 413, { message: "request entity too large" })
    }
    if (req.method !== "POST" || req.url !== "/v1/runs/ingest") return json(res, 404, { message: "Not Found" })
    // authMiddleware / checkApiKey: a UUID key must be a known key (or project id); anything else is not one
    const key = bearer(req.headers)
    const projectId = key !== undefined && UUID.test(key) ? options.keys.get(key) : undefined
    if (key !== undefined && projectId === undefined) {
      posts.push({ status: 401, events: 0, bytes: req.body.length })
      return json(res, 401, { message: "Invalid API key" })
    }
    // runs/ingest: the project id must be a UUID
    if (projectId === undefined || !UUID.test(projectId)) {
      posts.push({ status: 402, events: 0, bytes: req.body.length })
      return json(res, 402, { message: "Incorrect project id format" })
    }
    const events = (JSON.parse(req.body.toString("utf8")) as Json).events
    if (!events) return json(res, 500, { message: "Missing events payload." })
    // processEventsIngestion: sorted by timestamp (a stable sort), one result per event, in that order
    const sorted = (Array.isArray(events) ? [...events] : [events]).sort((a, b) =>
      Date.parse(a.timestamp) - Date.parse(b.timestamp)
    )
    const results: Array<Json> = []
    for (const raw of sorted) {
      try {
        const cleaned = toCamel(raw) as Json
        cleaned.metadata = cleanMetadata(cleaned.metadata)
        register(projectId, cleaned)
        results.push({ id: raw.runId, success: true })
      } catch (e) {
        results.push({ id: raw.runId, success: false, error: (e as Error).message })
      }
    }
    if (options.storeThenHang?.(i)) {
      posts.push({ status: "hung", events: sorted.length, bytes: req.body.length, results })
      return
    }
    posts.push({ status: 200, events: sorted.length, bytes: req.body.length, results })
    json(res, 200, { results })
  })
  return { ...listener, runs, posts }
}

// =============================================================================================================
// Helicone (Helicone/helicone, worker/src)

export interface HeliconeRequest {
  id: string
  provider: "OPENAI" | "ANTHROPIC" | "CUSTOM"
  path: string
  userId: string | null
  properties: Record<string, string>
  status: number
  model?: string
  isStream: boolean
  promptTokens?: number
  completionTokens?: number
  timeToFirstToken: number | null
  latencyMs: number
  requestBody: Json
  /** what the dashboard shows as the response: the parsed answer, or the parse error */
  responseBody: unknown
  parseError?: string
  /** Helicone prices a request from its provider, model and tokens; the custom route has no provider */
  costed: boolean
}

export interface HeliconeOptions {
  /** accepted API keys (requestWrapper.auth()); change it to "rotate" keys */
  readonly keys: Set<string>
  /** storing this log fails (AsyncLogManager.ts: loggable.log returned an error → 200 {"error"}) */
  readonly storeFails?: (log: Json) => string | undefined
  /** store the log of this POST (by index) and then never answer */
  readonly storeThenHang?: (index: number) => boolean
}

export interface Helicone extends Listener {
  /** by Helicone-Request-Id: what the dashboard lists */
  readonly requests: Map<string, HeliconeRequest>
  readonly posts: Array<{ route: string; status: number | "hung"; id?: string; body?: Json }>
}

/** The log routes and the provider each stands for (worker/src/routers/api/apiRouter.ts `logAsync(…, provider)`). */
const ROUTES: Record<string, HeliconeRequest["provider"]> = {
  "/oai/v1/log": "OPENAI",
  "/anthropic/v1/log": "ANTHROPIC",
  "/custom/v1/log": "CUSTOM"
}

/** validateAsyncLogModel (worker/src/lib/models/AsyncLog.ts). */
const validate = (m: Json): string | undefined => {
  if (!m.providerRequest || !m.providerResponse || !m.timing) {
    return "One of the required fields is missing, providerRequest, providerResponse, or timing"
  }
  if (typeof m.providerRequest.url !== "string") return "Invalid providerRequest: 'url' should be a string"
  if (typeof m.providerRequest.meta !== "object") return "Invalid providerRequest: 'meta' should be an object"
  if (m.providerRequest.json === undefined) return "Invalid providerRequest: 'json' is undefined"
  if (m.providerResponse.json === undefined) return "Invalid providerResponse: 'json' is undefined"
  if (typeof m.providerResponse.status !== "number") return "Invalid providerResponse: 'status' should be a number"
  if (typeof m.providerResponse.headers !== "object") return "Invalid providerResponse: 'headers' should be an object"
  for (const t of ["startTime", "endTime"]) {
    for (const f of ["seconds", "milliseconds"]) {
      if (typeof m.timing[t]?.[f] !== "number") return `Invalid timing: '${t}.${f}' should be a number`
    }
  }
  const start = m.timing.startTime.seconds * 1000 + m.timing.startTime.milliseconds
  const end = m.timing.endTime.seconds * 1000 + m.timing.endTime.milliseconds
  if (start > end) return "startTime cannot be greater than endTime"
  return undefined
}

/** getValidUUID (worker/src/lib/models/HeliconeHeaders.ts): anything else gets a random id. */
const validUuid = (v: string | null) =>
  v !== null && /^[0-9a-f]{8}-[0-9a-f]{4}-[1-5][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/i.test(v)
    ? v
    : crypto.randomUUID()

/** getUsage (worker/src/lib/dbLogger/DBLoggable.ts): OpenAI or Anthropic names. */
const usageOf = (parsed: unknown) => {
  const u = isObject(parsed) && isObject(parsed.usage) ? parsed.usage : {}
  return { prompt: u.prompt_tokens ?? u.input_tokens, completion: u.completion_tokens ?? u.output_tokens }
}

/**
 * parseOpenAIStream (worker/src/lib/dbLogger/streamParsers/openAIStreamParser.ts): the body split in lines, the last
 * line dropped (it is `data: [DONE]` in a real stream), each other line parsed after removing "data:"; the usage is
 * the one a chunk carried.
 */
const parseOpenAiStream = (body: string) => {
  const lines = body.split("\n").filter((l) => l !== "")
  const data = lines.map((line, i) => {
    if (i === lines.length - 1) return {}
    try {
      return JSON.parse(line.replace("data:", "")) as Json
    } catch {
      return {}
    }
  })
  const withUsage = data.find((d) => isObject(d.usage))
  return {
    streamed_data: data,
    model: data.find((d) => typeof d.model === "string")?.model,
    ...(withUsage ? { usage: withUsage.usage } : {})
  }
}

export const startHelicone = async (options: HeliconeOptions): Promise<Helicone> => {
  const requests = new Map<string, HeliconeRequest>()
  const posts: Helicone["posts"] = []
  let index = 0
  const listener = await listen((req, res) => {
    const i = index++
    const provider = ROUTES[req.url]
    // apiRouter.ts (worker/src/routers/api): the log routes; anything else is "invalid path"
    if (req.method !== "POST" || provider === undefined) {
      posts.push({ route: req.url, status: 400 })
      return res.writeHead(400).end("invalid path")
    }
    const model = JSON.parse(req.body.toString("utf8")) as Json
    // logAsync (worker/src/lib/managers/AsyncLogManager.ts), in its order
    if (JSON.stringify(model).length > 10 * 1024 * 1024) {
      posts.push({ route: req.url, status: 400 })
      return res.writeHead(400).end("Payload too large")
    }
    if (!req.headers.authorization) {
      posts.push({ route: req.url, status: 401 })
      return res.writeHead(401).end("Unauthorized")
    }
    const invalid = validate(model)
    if (invalid !== undefined) {
      posts.push({ route: req.url, status: 400 })
      return json(res, 400, { error: invalid })
    }
    // the meta becomes request headers; a value that is not a header value throws (the worker answers 500)
    let headers: Headers
    try {
      headers = new Headers(model.providerRequest.meta)
    } catch (e) {
      posts.push({ route: req.url, status: 500 })
      return res.writeHead(500).end(String(e))
    }
    if (!options.keys.has(bearer(req.headers) ?? "")) {
      posts.push({ route: req.url, status: 401 })
      return json(res, 401, { error: "Invalid API key" })
    }
    const id = validUuid(headers.get("Helicone-Request-Id"))
    const storeError = options.storeFails?.(model)
    if (storeError !== undefined) {
      posts.push({ route: req.url, status: 200, id })
      return json(res, 200, { error: storeError })
    }
    // dbLoggableRequestFromAsyncLogModel (DBLoggable.ts): the stream flag of the request picks the parser; the body
    // is textBody, else `streamed_data` as "data:" lines, else the JSON
    const isStream = model.providerRequest.json?.stream == true
    const response = model.providerResponse
    const body: string = response.textBody ??
      (response.json.streamed_data
        ? (response.json.streamed_data as Array<unknown>).map((d) => "data: " + JSON.stringify(d)).join("\n")
        : JSON.stringify(response.json))
    let parsed: unknown
    let parseError: string | undefined
    try {
      // parseResponse: error statuses and plain answers are JSON; a stream goes through the stream parser
      parsed = response.status >= 300 && response.status < 600
        ? JSON.parse(body)
        : isStream && provider !== "ANTHROPIC"
        ? parseOpenAiStream(body)
        : JSON.parse(body)
    } catch (e) {
      parseError = `error parsing response, ${String(e)}, ${body}`
    }
    const usage = usageOf(parsed)
    const properties: Record<string, string> = {}
    for (const [k, v] of headers) {
      if (k.startsWith("helicone-property-") && k.length > "helicone-property-".length) {
        properties[k.slice("helicone-property-".length)] = v
      }
    }
    const start = model.timing.startTime.seconds * 1000 + model.timing.startTime.milliseconds
    const end = model.timing.endTime.seconds * 1000 + model.timing.endTime.milliseconds
    const modelName = (isObject(parsed) && typeof parsed.model === "string" ? parsed.model : undefined) ??
      model.providerRequest.json?.model
    requests.set(id, {
      id,
      provider,
      path: model.providerRequest.url,
      userId: headers.get("Helicone-User-Id"),
      properties,
      status: response.status,
      model: modelName,
      isStream,
      promptTokens: usage.prompt,
      completionTokens: usage.completion,
      // DBLoggable.useKafka: Number(timing.timeToFirstToken), NaN (absent) → none
      timeToFirstToken: Number.isNaN(Number(model.timing.timeToFirstToken))
        ? null
        : Number(model.timing.timeToFirstToken),
      latencyMs: end - start,
      requestBody: model.providerRequest.json,
      responseBody: parseError === undefined
        ? parsed
        : { helicone_error: "error parsing response", parse_response_error: parseError },
      ...(parseError !== undefined ? { parseError } : {}),
      costed: provider !== "CUSTOM" && typeof modelName === "string" && typeof usage.prompt === "number" &&
        typeof usage.completion === "number"
    })
    if (options.storeThenHang?.(i)) {
      posts.push({ route: req.url, status: "hung", id, body: model })
      return
    }
    posts.push({ route: req.url, status: 200, id, body: model })
    res.writeHead(200, { "helicone-id": id }).end("ok")
  })
  return { ...listener, requests, posts }
}
