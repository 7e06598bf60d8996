/**
 * `llm-proxy manage …`: the management API from the shell, through the client derived from the same HttpApi
 * definition the server implements (never hand-written requests).
 */
import { Args, Command, Options } from "@effect/cli"
import { HttpApiClient, HttpClient, HttpClientRequest } from "@effect/platform"
import { Config, Console, Effect, Option, Redacted } from "effect"
import { readFileSync } from "node:fs"
import { ManagementApi } from "../api/ManagementApi.js"
import type { AuditEvent, AuditPage } from "../domain/audit.js"
import type { Project, ProjectKey, Token, TokenPage, UsageSeries } from "../domain/models.js"
import { CliFailure } from "./errors.js"
import { orDash, record, show, table } from "./output.js"

const common = {
  baseUrl: Options.text("manage-api-base-url").pipe(
    Options.withDescription("Management API base URL (env MANAGE_API_BASE_URL, default http://localhost:8080)"),
    Options.withFallbackConfig(Config.string("MANAGE_API_BASE_URL").pipe(Config.withDefault("http://localhost:8080")))
  ),
  managementToken: Options.redacted("management-token").pipe(
    Options.withDescription(
      "Management token, or a project key (lpk-…) for the token commands of its project (env MANAGEMENT_TOKEN, else " +
        "the file `serve` generated)"
    ),
    Options.optional
  ),
  json: Options.boolean("json").pipe(Options.withDescription("Print JSON instead of a table"))
}

interface Common {
  readonly baseUrl: string
  readonly managementToken: Option.Option<Redacted.Redacted<string>>
  readonly json: boolean
}

const tokenFromFile = Effect.gen(function*() {
  const file = yield* Config.string("MANAGEMENT_TOKEN_FILE").pipe(Config.withDefault("./data/management-token"))
  return yield* Effect.try({
    try: () => Redacted.make(readFileSync(file, "utf8").trim()),
    catch: () =>
      new CliFailure({
        message:
          `no management token: pass --management-token, set MANAGEMENT_TOKEN, or run where \`serve\` stored ${file}`
      })
  })
})

const resolveToken = (o: Common) =>
  Option.match(o.managementToken, {
    onSome: Effect.succeed,
    onNone: () =>
      Config.option(Config.redacted("MANAGEMENT_TOKEN")).pipe(
        Effect.orDie,
        Effect.flatMap(Option.match({ onSome: Effect.succeed, onNone: () => tokenFromFile }))
      )
  })

const client = (o: Common) =>
  Effect.gen(function*() {
    const token = yield* resolveToken(o)
    return yield* HttpApiClient.make(ManagementApi, {
      baseUrl: o.baseUrl.replace(/\/+$/, ""),
      transformClient: HttpClient.mapRequest(HttpClientRequest.bearerToken(Redacted.value(token)))
    })
  })

// ---- projects -------------------------------------------------------------------------------------------------

/** What a token or project spent (`spent_usd`, `tokens_used`) and its budget, as record lines. */
const spendEntries = (x: Project | Token): ReadonlyArray<readonly [string, string]> => [
  ["spent_usd", usd(x.spent_usd)],
  ["tokens_used", String(x.tokens_used)],
  ["max_cost_usd", x.max_cost_usd === null ? "-" : usd(x.max_cost_usd)],
  ["max_tokens", orDash(x.max_tokens)],
  ["budget_period", x.budget_period],
  ["period_spent_usd", usd(x.period_spent_usd)],
  ["period_tokens_used", String(x.period_tokens_used)]
]

/** Budget flags of create and update: a number, or `none` to remove the budget (update). */
const budgetFlags = {
  maxCostUsd: Options.text("max-cost-usd").pipe(
    Options.withDescription("USD budget per --budget-period (a number > 0; `none` removes it)"),
    Options.optional
  ),
  maxTokens: Options.text("max-tokens").pipe(
    Options.withDescription("Input + output token budget per --budget-period (an integer > 0; `none` removes it)"),
    Options.optional
  ),
  budgetPeriod: Options.choice("budget-period", ["total", "day", "month"]).pipe(
    Options.withDescription("What budgets count: total (default), day or month (UTC)"),
    Options.optional
  )
}

const budgetNumber = (flag: string, raw: string) => {
  if (raw === "none") return Effect.succeed(null)
  const n = Number(raw)
  return raw.trim() !== "" && Number.isFinite(n)
    ? Effect.succeed(n)
    : Effect.fail(new CliFailure({ message: `--${flag} must be a number or none` }))
}

/** The budget fields of a payload from the flags given (the server validates the values). */
const budgetPayload = (o: {
  maxCostUsd: Option.Option<string>
  maxTokens: Option.Option<string>
  budgetPeriod: Option.Option<"total" | "day" | "month">
}) =>
  Effect.gen(function*() {
    const out: { max_cost_usd?: number | null; max_tokens?: number | null; budget_period?: "total" | "day" | "month" } =
      {}
    if (Option.isSome(o.maxCostUsd)) out.max_cost_usd = yield* budgetNumber("max-cost-usd", o.maxCostUsd.value)
    if (Option.isSome(o.maxTokens)) out.max_tokens = yield* budgetNumber("max-tokens", o.maxTokens.value)
    if (Option.isSome(o.budgetPeriod)) out.budget_period = o.budgetPeriod.value
    return out
  })

const projectTable = (ps: ReadonlyArray<Project>) =>
  table(
    ["ID", "NAME", "PROVIDER", "API KEY", "ACTIVE", "CREATED"],
    ps.map((p) => [p.id, p.name, p.provider, p.api_key, p.is_active ? "yes" : "no", p.created_at])
  )

const projectRecord = (p: Project) =>
  record([
    ["id", p.id],
    ["name", p.name],
    ["provider", p.provider],
    ["api_key", p.api_key],
    ["active", p.is_active ? "yes" : "no"],
    ["deactivated_at", orDash(p.deactivated_at)],
    ["allowed_models", p.allowed_models === null ? "any" : p.allowed_models.join(", ")],
    ["max_token_minutes", orDash(p.max_token_minutes)],
    ["max_token_requests", orDash(p.max_token_requests)],
    ...spendEntries(p),
    ["created_at", p.created_at],
    ["updated_at", p.updated_at]
  ])

const id = Args.text({ name: "id" }).pipe(Args.withDescription("UUID"))

const allowedModel = Options.text("allowed-model").pipe(
  Options.withDescription(
    "A model name or glob the tokens may use (repeat for several; both the project's and the token's apply)"
  ),
  Options.repeated
)

/** Scope and delegation bounds of a project, as far as given. */
const projectScopeFlags = {
  allowedModel,
  anyModel: Options.boolean("any-model").pipe(Options.withDescription("Remove the model scope (any model)")),
  maxTokenMinutes: Options.integer("max-token-minutes").pipe(
    Options.withDescription("Longest lifetime a project key may give a token (minutes)"),
    Options.optional
  ),
  maxTokenRequests: Options.integer("max-token-requests").pipe(
    Options.withDescription("Largest max_requests a project key may give a token"),
    Options.optional
  )
}

const scopeFrom = (o: { allowedModel: ReadonlyArray<string>; anyModel: boolean }) =>
  o.anyModel && o.allowedModel.length > 0
    ? Effect.fail(new CliFailure({ message: "--any-model and --allowed-model cannot be combined" }))
    : Effect.succeed(
      o.anyModel ? { allowed_models: null } : o.allowedModel.length > 0 ? { allowed_models: o.allowedModel } : {}
    )

const projectBounds = (o: { maxTokenMinutes: Option.Option<number>; maxTokenRequests: Option.Option<number> }) => ({
  ...Option.match(o.maxTokenMinutes, { onNone: () => ({}), onSome: (max_token_minutes) => ({ max_token_minutes }) }),
  ...Option.match(o.maxTokenRequests, { onNone: () => ({}), onSome: (max_token_requests) => ({ max_token_requests }) })
})

const projectList = Command.make("list", common, (o) =>
  Effect.gen(function*() {
    const answer = yield* (yield* client(o)).projects.list({ urlParams: {} })
    // Without page parameters the server answers the plain array.
    const projects = Array.isArray(answer) ? answer : (answer as { projects: ReadonlyArray<Project> }).projects
    yield* show(o.json ? projects : projectTable(projects))
  })).pipe(Command.withDescription("List projects, sorted by name"))

const projectGet = Command.make("get", { ...common, id }, (o) =>
  Effect.gen(function*() {
    const project = yield* (yield* client(o)).projects.get({ path: { id: o.id } })
    yield* show(o.json ? project : projectRecord(project))
  })).pipe(Command.withDescription("Show one project"))

const projectCreate = Command.make(
  "create",
  {
    ...common,
    name: Options.text("name").pipe(Options.withDescription("Unique project name")),
    apiKey: Options.redacted("api-key").pipe(
      Options.withDescription("The provider API key (stored encrypted when ENCRYPTION_KEY is set)")
    ),
    provider: Options.text("provider").pipe(
      Options.withDescription("Provider name (default openai)"),
      Options.optional
    ),
    ...projectScopeFlags,
    ...budgetFlags
  },
  (o) =>
    Effect.gen(function*() {
      const scope = yield* scopeFrom(o)
      const budget = yield* budgetPayload(o)
      const project = yield* (yield* client(o)).projects.create({
        payload: {
          name: o.name,
          api_key: Redacted.value(o.apiKey),
          ...Option.match(o.provider, { onNone: () => ({}), onSome: (provider) => ({ provider }) }),
          ...scope,
          ...projectBounds(o),
          ...budget
        }
      })
      yield* show(o.json ? project : projectRecord(project))
    })
).pipe(Command.withDescription("Create a project"))

const activeFlags = {
  active: Options.boolean("active").pipe(Options.withDescription("Activate")),
  inactive: Options.boolean("inactive").pipe(Options.withDescription("Deactivate"))
}

const activeFrom = (o: { active: boolean; inactive: boolean }) =>
  o.active && o.inactive
    ? Effect.fail(new CliFailure({ message: "--active and --inactive cannot be combined" }))
    : Effect.succeed(o.active ? { is_active: true } : o.inactive ? { is_active: false } : {})

const projectUpdate = Command.make(
  "update",
  {
    ...common,
    id,
    name: Options.text("name").pipe(Options.optional),
    apiKey: Options.redacted("api-key").pipe(Options.withDescription("Rotate the provider key"), Options.optional),
    provider: Options.text("provider").pipe(Options.optional),
    ...activeFlags,
    revokeTokens: Options.boolean("revoke-tokens").pipe(
      Options.withDescription("With --inactive: revoke all its tokens")
    ),
    ...projectScopeFlags,
    ...budgetFlags
  },
  (o) =>
    Effect.gen(function*() {
      const active = yield* activeFrom(o)
      const scope = yield* scopeFrom(o)
      const payload = {
        ...scope,
        ...projectBounds(o),
        ...(yield* budgetPayload(o)),
        ...Option.match(o.name, { onNone: () => ({}), onSome: (name) => ({ name }) }),
        ...Option.match(o.apiKey, { onNone: () => ({}), onSome: (k) => ({ api_key: Redacted.value(k) }) }),
        ...Option.match(o.provider, { onNone: () => ({}), onSome: (provider) => ({ provider }) }),
        ...active,
        ...(o.revokeTokens ? { revoke_tokens: true } : {})
      }
      if (Object.keys(payload).length === 0) {
        return yield* new CliFailure({
          message: "nothing to update: pass --name, --api-key, --provider, --allowed-model, --any-model, " +
            "--max-token-minutes, --max-token-requests, a budget flag, --active or --inactive"
        })
      }
      const project = yield* (yield* client(o)).projects.update({ path: { id: o.id }, payload })
      yield* show(o.json ? project : projectRecord(project))
    })
).pipe(Command.withDescription("Update a project (rename, rotate key, activate/deactivate)"))

const projectRevokeTokens = Command.make("revoke-tokens", { ...common, id }, (o) =>
  Effect.gen(function*() {
    const result = yield* (yield* client(o)).projects.revokeTokens({ path: { id: o.id } })
    yield* show(
      o.json
        ? result
        : `revoked ${result.revoked_count} of ${result.total_tokens} tokens (${result.already_revoked_count} were already revoked)`
    )
  })).pipe(Command.withDescription("Revoke every token of a project"))

// ---- project keys ---------------------------------------------------------------------------------------------

const keyTable = (ks: ReadonlyArray<ProjectKey>) =>
  table(
    ["ID", "NAME", "KEY", "ACTIVE", "CREATED", "LAST USED"],
    ks.map((k) => [k.id, k.name, k.key, k.is_active ? "yes" : "no", k.created_at, orDash(k.last_used_at)])
  )

const projectId = Args.text({ name: "project-id" }).pipe(Args.withDescription("UUID of the project"))

const keyCreate = Command.make(
  "create",
  {
    ...common,
    projectId,
    name: Options.text("name").pipe(Options.withDescription("What the key is for (the app backend holding it)"))
  },
  (o) =>
    Effect.gen(function*() {
      const created = yield* (yield* client(o)).projects.createKey({
        path: { id: o.projectId },
        payload: { name: o.name }
      })
      yield* show(
        o.json ? created : [
          record([
            ["key", created.key],
            ["id", created.id],
            ["name", created.name],
            ["project_id", created.project_id],
            ["created_at", created.created_at]
          ]),
          "",
          "Store the key now: it is not shown again. It may mint and manage this project's tokens, nothing else."
        ].join("\n")
      )
    })
).pipe(Command.withDescription("Create a project key for an app backend (shown once)"))

const keyList = Command.make("list", { ...common, projectId }, (o) =>
  Effect.gen(function*() {
    const keys = yield* (yield* client(o)).projects.listKeys({ path: { id: o.projectId } })
    yield* show(o.json ? keys : keyTable(keys))
  })).pipe(Command.withDescription("List a project's keys (obfuscated), newest first"))

const keyRevoke = Command.make(
  "revoke",
  { ...common, projectId, keyId: Args.text({ name: "key-id" }).pipe(Args.withDescription("UUID of the key")) },
  (o) =>
    Effect.gen(function*() {
      yield* (yield* client(o)).projects.revokeKey({ path: { id: o.projectId, key_id: o.keyId } })
      yield* show(o.json ? { revoked: o.keyId } : `revoked ${o.keyId}`)
    })
).pipe(Command.withDescription("Revoke a project key (idempotent; refused from its next request on)"))

const projectKey = Command.make("key").pipe(
  Command.withDescription("Manage project keys (delegated token minting)"),
  Command.withSubcommands([keyCreate, keyList, keyRevoke])
)

const project = Command.make("project").pipe(
  Command.withDescription("Manage projects"),
  Command.withSubcommands([projectList, projectGet, projectCreate, projectUpdate, projectRevokeTokens, projectKey])
)

// ---- tokens ---------------------------------------------------------------------------------------------------

const TOKEN_LIST_LIMIT = 10_000

const usage = (t: Token) => `${t.request_count}/${t.max_requests === null ? "∞" : t.max_requests}`

const tokenStatus = (t: Token, now = Date.now()) =>
  !t.is_active ? "revoked" : t.expires_at !== null && Date.parse(t.expires_at) <= now ? "expired" : "active"

const tokenTable = (ts: ReadonlyArray<Token>) =>
  table(
    ["ID", "PROJECT", "TOKEN", "STATUS", "EXPIRES", "REQUESTS", "LAST USED"],
    ts.map((t) => [t.id, t.project_id, t.token, tokenStatus(t), orDash(t.expires_at), usage(t), orDash(t.last_used_at)])
  )

const tokenRecord = (t: Token) =>
  record([
    ["id", t.id],
    ["project_id", t.project_id],
    ["token", t.token],
    ["name", orDash(t.name)],
    ["user", orDash(t.user)],
    ["metadata", t.metadata === null ? "-" : JSON.stringify(t.metadata)],
    ["allowed_models", t.allowed_models === null ? "any" : t.allowed_models.join(", ")],
    ["created_by", t.created_by],
    ["status", tokenStatus(t)],
    ["expires_at", orDash(t.expires_at)],
    ["deactivated_at", orDash(t.deactivated_at)],
    ["requests", usage(t)],
    ["cache_hits", String(t.cache_hit_count)],
    ["prompt_tokens", String(t.prompt_tokens)],
    ["completion_tokens", String(t.completion_tokens)],
    ...spendEntries(t),
    ["created_at", t.created_at],
    ["last_used_at", orDash(t.last_used_at)]
  ])

/** `key=value` pairs of `--metadata`, as the API's object. */
const metadataFrom = (pairs: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const out: Record<string, string> = {}
    for (const pair of pairs) {
      const eq = pair.indexOf("=")
      if (eq <= 0) return yield* new CliFailure({ message: `--metadata takes key=value, not "${pair.slice(0, 40)}"` })
      out[pair.slice(0, eq)] = pair.slice(eq + 1)
    }
    return out
  })

const labelFlags = {
  name: Options.text("name").pipe(
    Options.withDescription("What the token is for (1..100 characters)"),
    Options.optional
  ),
  user: Options.text("user").pipe(
    Options.withDescription("The end user it is for (1..256 characters)"),
    Options.optional
  ),
  metadata: Options.text("metadata").pipe(
    Options.withDescription("A label key=value (repeat, at most 16)"),
    Options.repeated
  ),
  allowedModel
}

const labelsFrom = (o: {
  name: Option.Option<string>
  user: Option.Option<string>
  metadata: ReadonlyArray<string>
  allowedModel: ReadonlyArray<string>
}) =>
  Effect.map(metadataFrom(o.metadata), (metadata) => ({
    ...Option.match(o.name, { onNone: () => ({}), onSome: (name) => ({ name }) }),
    ...Option.match(o.user, { onNone: () => ({}), onSome: (user) => ({ user }) }),
    ...(o.metadata.length > 0 ? { metadata } : {}),
    ...(o.allowedModel.length > 0 ? { allowed_models: o.allowedModel } : {})
  }))

const tokenGenerate = Command.make(
  "generate",
  {
    ...common,
    projectId: Options.text("project-id"),
    duration: Options.integer("duration").pipe(
      Options.withDescription("Lifetime in minutes (1..525600)"),
      Options.withDefault(1440)
    ),
    maxRequests: Options.integer("max-requests").pipe(
      Options.withDescription("Request quota (0 = unlimited)"),
      Options.optional
    ),
    ...labelFlags,
    ...budgetFlags
  },
  (o) =>
    Effect.gen(function*() {
      const labels = yield* labelsFrom(o)
      const budget = yield* budgetPayload(o)
      const created = yield* (yield* client(o)).tokens.create({
        payload: {
          project_id: o.projectId,
          duration_minutes: o.duration,
          ...Option.match(o.maxRequests, { onNone: () => ({}), onSome: (max_requests) => ({ max_requests }) }),
          ...labels,
          ...budget
        }
      })
      yield* show(
        o.json ? created : [
          record([
            ["token", created.token],
            ["id", created.id],
            ["project_id", created.project_id],
            ["expires_at", created.expires_at],
            ["max_requests", orDash(created.max_requests)],
            ["user", orDash(created.user)]
          ]),
          "",
          "Store the token now: it is not shown again."
        ].join("\n")
      )
    })
).pipe(Command.withDescription("Generate a withering token for a project (shown once)"))

const tokenList = Command.make(
  "list",
  {
    ...common,
    projectId: Options.text("project-id").pipe(Options.optional),
    activeOnly: Options.boolean("active-only").pipe(Options.withDescription("Only active, unexpired tokens")),
    status: Options.choice("status", ["active", "expired", "revoked"]).pipe(Options.optional),
    search: Options.text("search").pipe(
      Options.withDescription("The start of the token id, or exactly its user or name"),
      Options.optional
    ),
    user: Options.text("user").pipe(Options.withDescription("Only the tokens of this end user"), Options.optional),
    name: Options.text("name").pipe(Options.withDescription("Only the tokens of this name"), Options.optional),
    limit: Options.integer("limit").pipe(
      Options.withDescription("Most tokens to list (default 10000)"),
      Options.withDefault(TOKEN_LIST_LIMIT)
    )
  },
  (o) =>
    Effect.gen(function*() {
      if (o.limit < 1) return yield* new CliFailure({ message: "--limit must be at least 1" })
      const api = yield* client(o)
      const filters = {
        ...Option.match(o.projectId, { onNone: () => ({}), onSome: (project_id) => ({ project_id }) }),
        ...(o.activeOnly ? { active_only: "true" } : {}),
        ...Option.match(o.status, { onNone: () => ({}), onSome: (status) => ({ status }) }),
        ...Option.match(o.search, { onNone: () => ({}), onSome: (search) => ({ search }) }),
        ...Option.match(o.user, { onNone: () => ({}), onSome: (user) => ({ user }) }),
        ...Option.match(o.name, { onNone: () => ({}), onSome: (name) => ({ name }) })
      }
      // Page by page (newest first), so a large installation never sends one huge answer.
      const tokens: Array<Token> = []
      let cursor: string | undefined
      let more = true
      while (more && tokens.length < o.limit) {
        const page = (yield* api.tokens.list({
          urlParams: { ...filters, page_size: "100", ...(cursor !== undefined ? { cursor } : {}) }
        })) as TokenPage
        tokens.push(...page.tokens.slice(0, o.limit - tokens.length))
        more = page.pagination.has_next
        cursor = page.pagination.next_cursor ?? undefined
        if (cursor === undefined) more = false
      }
      yield* show(o.json ? tokens : tokenTable(tokens))
      if (more) yield* Console.error(`more tokens match; raise --limit (listed ${tokens.length})`)
    })
).pipe(Command.withDescription("List tokens, newest first"))

const tokenGet = Command.make("get", { ...common, id }, (o) =>
  Effect.gen(function*() {
    const token = yield* (yield* client(o)).tokens.get({ path: { id: o.id } })
    yield* show(o.json ? token : tokenRecord(token))
  })).pipe(Command.withDescription("Show one token (never the secret)"))

const tokenUpdate = Command.make(
  "update",
  {
    ...common,
    id,
    maxRequests: Options.integer("max-requests").pipe(
      Options.withDescription("New quota (0 = unlimited)"),
      Options.optional
    ),
    expiresAt: Options.text("expires-at").pipe(Options.withDescription("New expiry, RFC 3339"), Options.optional),
    ...activeFlags,
    ...labelFlags,
    ...budgetFlags
  },
  (o) =>
    Effect.gen(function*() {
      const active = yield* activeFrom(o)
      const labels = yield* labelsFrom(o)
      const payload = {
        ...active,
        ...labels,
        ...(yield* budgetPayload(o)),
        ...Option.match(o.maxRequests, { onNone: () => ({}), onSome: (n) => ({ max_requests: n }) }),
        ...Option.match(o.expiresAt, { onNone: () => ({}), onSome: (expires_at) => ({ expires_at }) })
      }
      if (Object.keys(payload).length === 0) {
        return yield* new CliFailure({
          message:
            "nothing to update: pass --max-requests, --expires-at, --name, --user, --metadata, --allowed-model, " +
            "a budget flag, --active or --inactive"
        })
      }
      const token = yield* (yield* client(o)).tokens.update({ path: { id: o.id }, payload })
      yield* show(o.json ? token : tokenRecord(token))
    })
).pipe(Command.withDescription("Update a token (quota, expiry, budget, reactivate/deactivate)"))

const tokenRevoke = Command.make("revoke", { ...common, id }, (o) =>
  Effect.gen(function*() {
    yield* (yield* client(o)).tokens.revoke({ path: { id: o.id } })
    yield* show(o.json ? { revoked: o.id } : `revoked ${o.id}`)
  })).pipe(Command.withDescription("Revoke a token (idempotent)"))

const token = Command.make("token").pipe(
  Command.withDescription("Manage withering tokens"),
  Command.withSubcommands([tokenGenerate, tokenList, tokenGet, tokenUpdate, tokenRevoke])
)

// ---- cache ----------------------------------------------------------------------------------------------------

const cachePurge = Command.make(
  "purge",
  {
    ...common,
    method: Options.text("method").pipe(
      Options.withDescription("With --url: HTTP method of the cached request"),
      Options.optional
    ),
    url: Options.text("url").pipe(
      Options.withDescription("Path (and query) of the cached request, e.g. /v1/models"),
      Options.optional
    ),
    prefix: Options.text("prefix").pipe(
      Options.withDescription("Purge keys starting with this (from X-PROXY-CACHE-KEY)"),
      Options.optional
    ),
    all: Options.boolean("all").pipe(Options.withDescription("Purge every entry (of --project-id, when given)")),
    projectId: Options.text("project-id").pipe(
      Options.withDescription("Only entries of this project"),
      Options.optional
    )
  },
  (o) =>
    Effect.gen(function*() {
      const forms =
        [Option.isSome(o.url) || Option.isSome(o.method), Option.isSome(o.prefix), o.all].filter(Boolean).length
      if (forms !== 1) {
        return yield* new CliFailure({ message: "pass exactly one of --method with --url, --prefix, or --all" })
      }
      const payload = {
        ...Option.match(o.method, { onNone: () => ({}), onSome: (method) => ({ method }) }),
        ...Option.match(o.url, { onNone: () => ({}), onSome: (url) => ({ url }) }),
        ...Option.match(o.prefix, { onNone: () => ({}), onSome: (prefix) => ({ prefix }) }),
        ...(o.all ? { all: true } : {}),
        ...Option.match(o.projectId, { onNone: () => ({}), onSome: (project_id) => ({ project_id }) })
      }
      const result = yield* (yield* client(o)).cache.purge({ payload })
      const text = typeof result.deleted === "boolean"
        ? result.deleted ? "Cache entry deleted successfully" : "Cache entry was not found"
        : `deleted ${result.deleted} cache ${result.deleted === 1 ? "entry" : "entries"}`
      yield* show(o.json ? result : text)
    })
).pipe(Command.withDescription("Delete response-cache entries: one request (--method --url), by key prefix, or all"))

const cache = Command.make("cache").pipe(
  Command.withDescription("Manage the response cache"),
  Command.withSubcommands([cachePurge])
)

// ---- audit ----------------------------------------------------------------------------------------------------

const auditFilters = {
  action: Options.text("action").pipe(Options.withDescription("Exact action, e.g. token.create"), Options.optional),
  actor: Options.text("actor").pipe(Options.withDescription("Exact actor"), Options.optional),
  outcome: Options.text("outcome").pipe(Options.withDescription("success, failure, denied or error"), Options.optional),
  projectId: Options.text("project-id").pipe(Options.optional),
  tokenId: Options.text("token-id").pipe(Options.optional),
  clientIp: Options.text("client-ip").pipe(Options.optional),
  requestId: Options.text("request-id").pipe(Options.optional),
  correlationId: Options.text("correlation-id").pipe(Options.optional),
  method: Options.text("method").pipe(Options.withDescription("HTTP method"), Options.optional),
  path: Options.text("path").pipe(Options.withDescription("Exact request path"), Options.optional),
  search: Options.text("search").pipe(
    Options.withDescription("Substring of ids, IP, action, actor, method, path, reason or metadata"),
    Options.optional
  ),
  startTime: Options.text("start-time").pipe(Options.withDescription("RFC 3339; events at or after"), Options.optional),
  endTime: Options.text("end-time").pipe(Options.withDescription("RFC 3339; events at or before"), Options.optional),
  page: Options.integer("page").pipe(Options.withDescription("Page, from 1"), Options.optional),
  pageSize: Options.integer("page-size").pipe(
    Options.withDescription("Events per page, 1..100 (default 20)"),
    Options.optional
  ),
  cursor: Options.text("cursor").pipe(
    Options.withDescription("Page by cursor instead of number: a cursor printed by an earlier page, or `last`"),
    Options.optional
  )
}

const AUDIT_PARAMS = {
  action: "action",
  actor: "actor",
  outcome: "outcome",
  projectId: "project_id",
  tokenId: "token_id",
  clientIp: "client_ip",
  requestId: "request_id",
  correlationId: "correlation_id",
  method: "method",
  path: "path",
  search: "search",
  startTime: "start_time",
  endTime: "end_time",
  page: "page",
  pageSize: "page_size",
  cursor: "cursor"
} as const

const auditTable = (page: AuditPage) => {
  const p = page.pagination
  const rows = page.events.map((e) => [
    e.timestamp,
    e.action,
    e.actor,
    e.outcome,
    String(e.count ?? 1),
    orDash(e.client_ip),
    orDash(e.project_id),
    orDash(e.reason),
    e.id
  ])
  const footer = "page" in p
    ? p.total_exact === false
      ? `page ${p.page} (more than ${p.total_count} events)${p.has_next ? `; next: --page ${p.page + 1}` : ""}`
      : `page ${p.page} of ${Math.max(p.total_pages, 1)} (${p.total_count} events)${
        p.has_next ? `; next: --page ${p.page + 1}` : ""
      }`
    : `${page.events.length} events${p.next_cursor !== null ? `; older: --cursor ${p.next_cursor}` : ""}${
      p.prev_cursor !== null ? `; newer: --cursor ${p.prev_cursor}` : ""
    }`
  return [
    table(["TIME", "ACTION", "ACTOR", "OUTCOME", "COUNT", "CLIENT IP", "PROJECT", "REASON", "ID"], rows),
    "",
    footer
  ].join("\n")
}

const auditRecord = (e: AuditEvent) =>
  record([
    ["id", e.id],
    ["timestamp", e.timestamp],
    ["action", e.action],
    ["actor", e.actor],
    ["outcome", e.outcome],
    ["count", String(e.count ?? 1)],
    ["reason", orDash(e.reason)],
    ["project_id", orDash(e.project_id)],
    ["token_id", orDash(e.token_id)],
    ["request_id", orDash(e.request_id)],
    ["correlation_id", orDash(e.correlation_id)],
    ["client_ip", orDash(e.client_ip)],
    ["method", orDash(e.method)],
    ["path", orDash(e.path)],
    ["user_agent", orDash(e.user_agent)],
    ["metadata", orDash(e.metadata)]
  ])

const auditList = Command.make("list", { ...common, ...auditFilters }, (o) =>
  Effect.gen(function*() {
    const urlParams: Record<string, string> = {}
    for (const [key, param] of Object.entries(AUDIT_PARAMS)) {
      const value: Option.Option<string | number> = o[key as keyof typeof AUDIT_PARAMS]
      if (Option.isSome(value)) urlParams[param] = String(value.value)
    }
    const page = yield* (yield* client(o)).audit.list({ urlParams })
    yield* show(o.json ? page : auditTable(page))
  })).pipe(Command.withDescription("List audit events, newest first, with filters"))

const auditShow = Command.make("show", { ...common, id }, (o) =>
  Effect.gen(function*() {
    const event = yield* (yield* client(o)).audit.get({ path: { id: o.id } })
    yield* show(o.json ? event : auditRecord(event))
  })).pipe(Command.withDescription("Show one audit event"))

const audit = Command.make("audit").pipe(
  Command.withDescription("Read the audit log"),
  Command.withSubcommands([auditList, auditShow])
)

// ---- usage ----------------------------------------------------------------------------------------------------

/** USD with enough digits for small answers (a cent is not the smallest amount worth seeing). */
export const usd = (n: number): string => `$${n >= 100 ? n.toFixed(2) : n >= 1 ? n.toFixed(4) : n.toFixed(6)}`

const usageTable = (u: UsageSeries) => {
  const row = (label: string, h: UsageSeries["totals"]) => [
    label,
    String(h.requests),
    String(h.cache_hits),
    String(h.errors),
    String(h.prompt_tokens),
    String(h.completion_tokens),
    usd(h.cost_usd)
  ]
  return [
    table(
      ["HOUR", "REQUESTS", "CACHE HITS", "ERRORS", "PROMPT TOKENS", "COMPLETION TOKENS", "COST"],
      [...u.hours.map((h) => row(h.hour, h)), row("total", u.totals)]
    ),
    "",
    `from ${u.since} to ${u.until}`
  ].join("\n")
}

const usageList = Command.make(
  "usage",
  {
    ...common,
    since: Options.text("since").pipe(
      Options.withDescription("RFC 3339 (default: 24 hours before --until)"),
      Options.optional
    ),
    until: Options.text("until").pipe(Options.withDescription("RFC 3339 (default: now)"), Options.optional),
    projectId: Options.text("project-id").pipe(Options.withDescription("Only this project's tokens"), Options.optional),
    tokenId: Options.text("token-id").pipe(Options.withDescription("Only this token"), Options.optional)
  },
  (o) =>
    Effect.gen(function*() {
      const urlParams = {
        ...Option.match(o.since, { onNone: () => ({}), onSome: (since) => ({ since }) }),
        ...Option.match(o.until, { onNone: () => ({}), onSome: (until) => ({ until }) }),
        ...Option.match(o.projectId, { onNone: () => ({}), onSome: (project_id) => ({ project_id }) }),
        ...Option.match(o.tokenId, { onNone: () => ({}), onSome: (token_id) => ({ token_id }) })
      }
      const series = yield* (yield* client(o)).usage.series({ urlParams })
      yield* show(o.json ? series : usageTable(series))
    })
).pipe(Command.withDescription("Usage per hour and in total: requests, errors, tokens and cost (USD)"))

export const manage = Command.make("manage").pipe(
  Command.withDescription(
    "Manage projects, tokens and the response cache, read usage and the audit log, through the management API"
  ),
  Command.withSubcommands([project, token, cache, usageList, audit])
)
