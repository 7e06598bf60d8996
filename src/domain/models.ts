/**
 * What the management API returns and accepts. Field names are those of the Go llm-proxy (snake_case) so its
 * clients keep working (docs/management-api.md). Timestamps are RFC 3339 strings in UTC.
 *
 * The payload Schemas (CreateProject, UpdateProject, CreateToken, UpdateToken, CachePurge, Login) are the
 * validators: the handlers decode request bodies with them, `/manage/openapi.json` is generated from them and the
 * CLI client encodes with them. Each rule carries the message a client gets (validation.ts explains how one is
 * picked). Adding a validated field is one entry in its struct, e.g.
 *
 *   name: Schema.optional(Text.pipe(Schema.maxLength(NAME_MAX, answer(`name must be at most ${NAME_MAX} characters`))))
 *
 * with `Text`/`Numeric`/`Flag` (a wrong JSON type is "invalid request body"), the filters of effect/Schema or
 * `rule(predicate, message, jsonSchema?)` for the rules, `required(schema, message)` for a field that must be there,
 * and `oneAnswer(message)` for a field whose every problem has one message (like `rate_limit`). Unknown fields are
 * refused by `closedPayload()` on the struct; OpenAPI and the CLI follow by themselves.
 */
import { Schema } from "effect"
import { compileGlob } from "../proxy/glob.js"
import {
  answer,
  closedPayload,
  hasControlCharacters,
  INVALID_BODY,
  isUnicodeText,
  isUuid,
  NO_CONTROL_PATTERN,
  oneAnswer,
  parseTimestamp,
  required,
  rule,
  UUID_PATTERN,
  wholeNumber
} from "./validation.js"

export const Timestamp = Schema.String.annotations({ description: "RFC 3339 timestamp (UTC)", format: "date-time" })

export const NAME_MAX = 255
export const API_KEY_MAX = 4096
export const DURATION_MAX_MINUTES = 525_600
export const MAX_REQUESTS_MAX = 2_147_483_647

export const RATE_LIMIT_REQUESTS_MAX = 1_000_000_000
export const RATE_LIMIT_TOKENS_MAX = 1_000_000_000_000
export const RATE_LIMIT_WINDOW_MAX = 31_536_000

export const RateLimit = Schema.Struct({
  requests: Schema.optional(
    Schema.Number.annotations({
      description: `requests allowed per window, 1..${RATE_LIMIT_REQUESTS_MAX}; absent = not limited by count`
    })
  ),
  tokens: Schema.optional(
    Schema.Number.annotations({
      description:
        `LLM tokens (input + output) allowed per window, 1..${RATE_LIMIT_TOKENS_MAX}; absent = not limited by tokens`
    })
  ),
  window_seconds: Schema.Number.annotations({ description: `window length in seconds, 1..${RATE_LIMIT_WINDOW_MAX}` })
}).annotations({ identifier: "RateLimit", description: "Window rate limit (requests, tokens or both); null = none" })
export type RateLimit = typeof RateLimit.Type

// ---- building blocks of the payloads ----------------------------------------------------------------------------

/** A JSON string, number or boolean; any other JSON type is "invalid request body". */
const Text = Schema.String.annotations(answer(INVALID_BODY))
const Numeric = Schema.Number.annotations(answer(INVALID_BODY))
const Flag = Schema.Boolean.annotations(answer(INVALID_BODY))

export const RATE_LIMIT_INVALID = `rate_limit must be null or {"requests": 1..${RATE_LIMIT_REQUESTS_MAX}, "tokens": ` +
  `1..${RATE_LIMIT_TOKENS_MAX}, "window_seconds": 1..${RATE_LIMIT_WINDOW_MAX}} with requests, tokens or both`
// Whatever is wrong inside `rate_limit` (type, missing or extra key, bound), the answer is this one message.
const rateLimitRefused = oneAnswer(RATE_LIMIT_INVALID)

/** `rate_limit` in a payload: null (none), or a window with a request count, a token count or both. */
export const RateLimitSetting = Schema.NullOr(
  Schema.Struct({
    requests: Schema.optional(
      Schema.Number.pipe(Schema.int(), Schema.between(1, RATE_LIMIT_REQUESTS_MAX)).annotations({
        description: "requests allowed per window"
      })
    ),
    tokens: Schema.optional(
      Schema.Number.pipe(Schema.int(), Schema.between(1, RATE_LIMIT_TOKENS_MAX)).annotations({
        description: "LLM tokens (input + output) allowed per window, debited when an answer's usage is known"
      })
    ),
    window_seconds: Schema.Number.pipe(Schema.int(), Schema.between(1, RATE_LIMIT_WINDOW_MAX)).annotations({
      description: "window length in seconds"
    })
  }).annotations({ identifier: "RateLimitSetting", parseOptions: { onExcessProperty: "error" }, ...rateLimitRefused })
    .pipe(
      rule(
        (
          r: {
            readonly requests?: number | undefined
            readonly tokens?: number | undefined
            readonly window_seconds: number
          }
        ) => r.requests !== undefined || r.tokens !== undefined,
        RATE_LIMIT_INVALID,
        { minProperties: 2 }
      )
    ).annotations(rateLimitRefused)
).annotations({ description: "Window rate limit (requests, tokens or both); null = none", ...rateLimitRefused })

// ---- budgets ---------------------------------------------------------------------------------------------------

export const MAX_COST_USD_MAX = 1_000_000_000
export const MAX_TOKENS_MAX = 1_000_000_000_000_000
export const BUDGET_PERIODS = ["total", "day", "month"] as const
export type BudgetPeriod = (typeof BUDGET_PERIODS)[number]

export const MAX_COST_USD_INVALID = `max_cost_usd must be null or a number > 0 and <= ${MAX_COST_USD_MAX}`
export const MAX_TOKENS_INVALID = `max_tokens must be null or an integer from 1 to ${MAX_TOKENS_MAX}`
export const BUDGET_PERIOD_INVALID = "budget_period must be total, day or month"

/** `max_cost_usd` in a payload: USD the token or project may spend per period; null = no USD budget. */
const MaxCostUsd = Schema.NullOr(
  Numeric.pipe(
    Schema.greaterThan(0, answer(MAX_COST_USD_INVALID)),
    Schema.lessThanOrEqualTo(MAX_COST_USD_MAX, answer(MAX_COST_USD_INVALID))
  )
).annotations({ description: "USD that may be spent per budget_period; null = none" })

/** `max_tokens` in a payload: input + output tokens per period; null = no token budget. */
const MaxTokens = Schema.NullOr(
  Numeric.pipe(
    wholeNumber(MAX_TOKENS_INVALID),
    Schema.greaterThanOrEqualTo(1, answer(MAX_TOKENS_INVALID)),
    Schema.lessThanOrEqualTo(MAX_TOKENS_MAX, answer(MAX_TOKENS_INVALID))
  )
).annotations({ description: "Input + output tokens that may be used per budget_period; null = none" })

const BudgetPeriodSetting = Schema.Literal(...BUDGET_PERIODS).annotations({
  ...oneAnswer(BUDGET_PERIOD_INVALID),
  description: "What the budget counts: total (since creation, the default), day or month (UTC calendar)"
})

/** The budget fields of create and PATCH payloads. */
const budgetFields = {
  max_cost_usd: Schema.optional(MaxCostUsd),
  max_tokens: Schema.optional(MaxTokens),
  budget_period: Schema.optional(BudgetPeriodSetting)
}

/** What a token or project spent and may spend, as every read shows it. */
const spendFields = {
  max_cost_usd: Schema.NullOr(Schema.Number).annotations({ description: "USD budget per budget_period; null = none" }),
  max_tokens: Schema.NullOr(Schema.Number).annotations({ description: "Token budget per budget_period; null = none" }),
  budget_period: Schema.Literal(...BUDGET_PERIODS),
  spent_usd: Schema.Number.annotations({
    description: "USD spent since creation (answers of models without a price count 0)"
  }),
  tokens_used: Schema.Number.annotations({ description: "Input + output tokens used since creation" }),
  period_spent_usd: Schema.Number.annotations({ description: "USD spent in the current budget_period" }),
  period_tokens_used: Schema.Number.annotations({ description: "Tokens used in the current budget_period" }),
  period_ends_at: Schema.NullOr(Timestamp).annotations({
    description: "When the current day or month ends (UTC); null for total"
  })
}

export const NAME_AND_KEY_REQUIRED = "name and api_key are required"
export const OBFUSCATED_KEY = "cannot save obfuscated API key - please provide the full API key"

const isObfuscated = (key: string) => key.includes("...") || key.includes("****")

/** A project name's rules, in the order they are reported. */
const projectName = (self: Schema.Schema<string>) =>
  self.pipe(
    rule((s: string) => s.trim() !== "", "name must not be empty", { pattern: "\\S" }),
    Schema.maxLength(NAME_MAX, answer(`name must be at most ${NAME_MAX} characters`)),
    rule((s: string) => !hasControlCharacters(s), "name must not contain control characters", {
      pattern: NO_CONTROL_PATTERN
    }),
    rule(isUnicodeText, "name must be valid Unicode text")
  ).annotations({ description: `1..${NAME_MAX} characters, not blank, no control characters` })

/** A provider key's rules, in the order they are reported; `field` names it in the messages. */
const providerKey = (self: Schema.Schema<string>, field = "api_key") =>
  self.pipe(
    Schema.maxLength(API_KEY_MAX, answer(`${field} must be at most ${API_KEY_MAX} characters`)),
    rule((k: string) => !isObfuscated(k), OBFUSCATED_KEY),
    rule(
      (k: string) => !/\s/.test(k) && !hasControlCharacters(k),
      `${field} must not contain whitespace or control characters`,
      { pattern: "^[^\\s\\u0000-\\u001f\\u007f-\\u009f]*$" }
    ),
    rule(isUnicodeText, `${field} must be valid Unicode text`)
  )

// ---- scopes and labels (docs/untrusted-clients.md) ---------------------------------------------------------------

export const MODELS_MAX = 100
export const MODEL_PATTERN_MAX = 128
export const ALLOWED_MODELS_INVALID = "allowed_models must be null or a list of model names or globs"

const modelPattern = Schema.String.annotations(answer(ALLOWED_MODELS_INVALID)).pipe(
  Schema.minLength(1, answer("allowed_models entries must not be empty")),
  Schema.maxLength(MODEL_PATTERN_MAX, answer(`allowed_models entries must be at most ${MODEL_PATTERN_MAX} characters`)),
  rule((s: string) => !hasControlCharacters(s), "allowed_models entries must not contain control characters", {
    pattern: NO_CONTROL_PATTERN
  }),
  rule(isUnicodeText, "allowed_models entries must be valid Unicode text"),
  rule(
    (s: string) => compileGlob(s) !== null,
    "allowed_models entries must be model names or globs (* and ? do not match /; [...] must be closed)"
  )
)

/** `allowed_models` in a payload: null (any model) or 1..MODELS_MAX names or globs. */
export const AllowedModels = Schema.NullOr(
  Schema.Array(modelPattern).annotations(answer(ALLOWED_MODELS_INVALID)).pipe(
    Schema.minItems(1, answer("allowed_models must list at least one model (null: any model)")),
    Schema.maxItems(MODELS_MAX, answer(`allowed_models must list at most ${MODELS_MAX} models`))
  )
).annotations({
  description:
    "Model names or globs (`gpt-4o-mini`, `claude-3-5-*`; `*` and `?` do not match `/`) a request may name; " +
    "null = any. A project's and its token's lists both apply."
})

/** The models a project or token admits, as the API shows them. */
const ModelList = Schema.NullOr(Schema.Array(Schema.String)).annotations({ description: "null = any model" })

export const TOKEN_NAME_MAX = 100
export const USER_MAX = 256
export const METADATA_KEYS_MAX = 16
export const METADATA_TEXT_MAX = 256

/** A token's label (`name`, `user`): 1..max characters of printable text; null removes it. */
const label = (field: string, max: number, description: string) =>
  Schema.NullOr(
    Text.pipe(
      Schema.minLength(1, answer(`${field} must not be empty (null removes it)`)),
      Schema.maxLength(max, answer(`${field} must be at most ${max} characters`)),
      rule((s: string) => !hasControlCharacters(s), `${field} must not contain control characters`, {
        pattern: NO_CONTROL_PATTERN
      }),
      rule(isUnicodeText, `${field} must be valid Unicode text`)
    )
  ).annotations({ description })

const TokenName = label("name", TOKEN_NAME_MAX, `What the token is for, 1..${TOKEN_NAME_MAX} characters; null = none`)
const TokenUser = label(
  "user",
  USER_MAX,
  `The end user the token is for (your own id for them), 1..${USER_MAX} characters; null = none. Carried on events, ` +
    "audit events and the access log; sent upstream as the OpenAI `user` where the provider sets `inject_user`"
)

export const METADATA_INVALID =
  `metadata must be null or an object of at most ${METADATA_KEYS_MAX} string keys with string values`

/** `metadata`: at most 16 keys, keys and values strings of at most 256 characters. */
const TokenMetadata = Schema.NullOr(
  Schema.Record({
    // Keys are checked by rules on the object: a key refused by a key Schema is reported like an unknown field.
    key: Schema.String,
    value: Schema.String.annotations(answer("metadata values must be strings")).pipe(
      Schema.maxLength(METADATA_TEXT_MAX, answer(`metadata values must be at most ${METADATA_TEXT_MAX} characters`))
    )
  }).annotations(answer(METADATA_INVALID)).pipe(
    rule(
      (o: { readonly [x: string]: string }) => Object.keys(o).length <= METADATA_KEYS_MAX,
      `metadata must have at most ${METADATA_KEYS_MAX} keys`,
      {
        maxProperties: METADATA_KEYS_MAX
      }
    ),
    rule((o: { readonly [x: string]: string }) => !Object.hasOwn(o, ""), "metadata keys must not be empty", {
      propertyNames: { minLength: 1, maxLength: METADATA_TEXT_MAX }
    }),
    rule(
      (o: { readonly [x: string]: string }) => Object.keys(o).every((k) => k.length <= METADATA_TEXT_MAX),
      `metadata keys must be at most ${METADATA_TEXT_MAX} characters`
    )
  )
).annotations({
  description: `Your own key/value labels: at most ${METADATA_KEYS_MAX} keys, keys and values strings of at most ` +
    `${METADATA_TEXT_MAX} characters; null = none (PATCH replaces the whole object)`
})

const ShownMetadata = Schema.NullOr(Schema.Record({ key: Schema.String, value: Schema.String }))

export const MAX_TOKEN_MINUTES_INVALID =
  `max_token_minutes must be null or an integer between 1 and ${DURATION_MAX_MINUTES}`
export const MAX_TOKEN_REQUESTS_INVALID =
  `max_token_requests must be null or an integer between 1 and ${MAX_REQUESTS_MAX}`

const MaxTokenMinutes = Schema.NullOr(
  Schema.Number.pipe(Schema.int(), Schema.between(1, DURATION_MAX_MINUTES))
).annotations({
  ...oneAnswer(MAX_TOKEN_MINUTES_INVALID),
  description:
    "The longest lifetime (minutes) a project key may give a token of this project; null = no bound but the global one"
})

const MaxTokenRequests = Schema.NullOr(
  Schema.Number.pipe(Schema.int(), Schema.between(1, MAX_REQUESTS_MAX))
).annotations({
  ...oneAnswer(MAX_TOKEN_REQUESTS_INVALID),
  description: "The largest max_requests a project key may give a token of this project (its tokens then cannot be " +
    "unlimited); null = no bound"
})

export const API_KEYS_MAX = 16
export const KEY_WEIGHT_MAX = 1_000
export const KEY_OR_KEYS = "give api_key or api_keys, not both"
export const API_KEYS_INVALID =
  `api_keys must be a list of 1 to ${API_KEYS_MAX} keys, each {"key": "...", "weight": 1..${KEY_WEIGHT_MAX}, "provider": "..."} (weight and provider optional)`
export const KEY_WEIGHT_INVALID = `api_keys weight must be an integer from 1 to ${KEY_WEIGHT_MAX}`

/** One entry of `api_keys` in a payload. */
export const UpstreamKeyInput = Schema.Struct({
  key: required(
    providerKey(Text.pipe(Schema.minLength(1, answer(API_KEYS_INVALID))), "api_keys key").annotations({
      description: `The provider key, 1..${API_KEY_MAX} characters without whitespace`
    }),
    API_KEYS_INVALID
  ),
  weight: Schema.optional(
    Numeric.pipe(wholeNumber(KEY_WEIGHT_INVALID), Schema.between(1, KEY_WEIGHT_MAX, answer(KEY_WEIGHT_INVALID)))
      .annotations({
        description: `Share of the requests, relative to the other keys of its provider (default 1)`
      })
  ),
  provider: Schema.optional(
    Text.annotations({
      description: "Provider of this key (default: the project's); keys of other providers take requests only while " +
        "every key of the project's provider is cooling down"
    })
  )
}).annotations({
  identifier: "UpstreamKeyInput",
  parseOptions: { onExcessProperty: "error" },
  ...answer(API_KEYS_INVALID)
})
export type UpstreamKeyInput = typeof UpstreamKeyInput.Type

const ApiKeysInput = Schema.Array(UpstreamKeyInput).annotations(answer(API_KEYS_INVALID)).pipe(
  Schema.minItems(1, answer(API_KEYS_INVALID)),
  Schema.maxItems(API_KEYS_MAX, answer(API_KEYS_INVALID))
).annotations({
  description: `1..${API_KEYS_MAX} provider keys; requests are spread over them by weight, and retried on the next ` +
    "one when a key fails (docs/proxy.md)"
})

/** A key as answers show it: obfuscated, with its place, weight, provider and this instance's view of its state. */
export const UpstreamKey = Schema.Struct({
  index: Schema.Number,
  key: Schema.String.annotations({ description: "Obfuscated; never returned whole" }),
  weight: Schema.Number,
  provider: Schema.String,
  state: Schema.Literal("ok", "cooling_down", "circuit_open").annotations({
    description: "On the instance that answers: ok, cooling_down (after a 429, 401, 403, 5xx or connection failure) " +
      "or circuit_open (its circuit breaker)"
  }),
  until: Schema.optional(
    Timestamp.annotations({ description: "When a cooling key (or open breaker) takes requests again" })
  )
}).annotations({ identifier: "UpstreamKey" })
export type UpstreamKey = typeof UpstreamKey.Type

export const Project = Schema.Struct({
  id: Schema.String.annotations({ description: "UUID" }),
  name: Schema.String,
  api_key: Schema.String.annotations({
    description: "The provider key (the first of api_keys), obfuscated; never returned whole"
  }),
  api_keys: Schema.Array(UpstreamKey),
  provider: Schema.String,
  is_active: Schema.Boolean,
  deactivated_at: Schema.optional(Timestamp),
  rate_limit: Schema.NullOr(RateLimit),
  allowed_models: ModelList,
  max_token_minutes: Schema.NullOr(Schema.Number).annotations({ description: "null = no bound for project keys" }),
  max_token_requests: Schema.NullOr(Schema.Number).annotations({ description: "null = no bound for project keys" }),
  ...spendFields,
  created_at: Timestamp,
  updated_at: Timestamp
}).annotations({ identifier: "Project" })
export type Project = typeof Project.Type

const CreateProjectFields = Schema.Struct({
  name: required(projectName(Text.pipe(Schema.minLength(1, answer(NAME_AND_KEY_REQUIRED)))), NAME_AND_KEY_REQUIRED),
  api_key: Schema.optional(
    providerKey(Text.pipe(Schema.minLength(1, answer(NAME_AND_KEY_REQUIRED)))).annotations({
      description:
        `The provider key, 1..${API_KEY_MAX} characters without whitespace; an obfuscated one (with "..." or ` +
        `"****") is refused. Required unless api_keys is given (the same as api_keys with this one key)`
    })
  ),
  api_keys: Schema.optional(ApiKeysInput),
  provider: Schema.optional(
    Text.annotations({
      description: "Provider name from the configuration (default openai); an unknown one is refused"
    })
  ),
  rate_limit: Schema.optional(RateLimitSetting),
  allowed_models: Schema.optional(AllowedModels),
  max_token_minutes: Schema.optional(MaxTokenMinutes),
  max_token_requests: Schema.optional(MaxTokenRequests),
  ...budgetFields
}).annotations(closedPayload())

export const CreateProject = CreateProjectFields.pipe(
  rule(
    (p: typeof CreateProjectFields.Type) => p.api_key !== undefined || p.api_keys !== undefined,
    NAME_AND_KEY_REQUIRED
  ),
  rule((p: typeof CreateProjectFields.Type) => p.api_key === undefined || p.api_keys === undefined, KEY_OR_KEYS)
).annotations({ identifier: "CreateProject" })
export type CreateProject = typeof CreateProject.Type

export const REVOKE_NEEDS_INACTIVE = "revoke_tokens requires is_active=false"

export const UpdateProject = Schema.Struct({
  name: Schema.optional(projectName(Text)),
  api_key: Schema.optional(
    providerKey(Text).annotations({
      description: "Rotate the provider key: the project's keys become this one; empty string keeps the current keys"
    })
  ),
  api_keys: Schema.optional(ApiKeysInput.annotations({ description: "Replace every key of the project" })),
  provider: Schema.optional(Text.annotations({ description: "Provider name from the configuration" })),
  rate_limit: Schema.optional(RateLimitSetting.annotations({ description: "null removes the limit" })),
  allowed_models: Schema.optional(AllowedModels),
  max_token_minutes: Schema.optional(MaxTokenMinutes),
  max_token_requests: Schema.optional(MaxTokenRequests),
  ...budgetFields,
  is_active: Schema.optional(Flag),
  revoke_tokens: Schema.optional(
    Flag.annotations({ description: "With is_active=false (only): revoke every active token of the project" })
  )
}).annotations(closedPayload()).pipe(
  rule(
    (p: { readonly is_active?: boolean | undefined; readonly revoke_tokens?: boolean | undefined }) =>
      p.revoke_tokens !== true || p.is_active === false,
    REVOKE_NEEDS_INACTIVE
  ),
  rule(
    (p: { readonly api_key?: string | undefined; readonly api_keys?: ReadonlyArray<UpstreamKeyInput> | undefined }) =>
      p.api_key === undefined || p.api_key === "" || p.api_keys === undefined,
    KEY_OR_KEYS
  )
).annotations({ identifier: "UpdateProject" })
export type UpdateProject = typeof UpdateProject.Type

export const BulkRevokeResult = Schema.Struct({
  revoked_count: Schema.Number,
  already_revoked_count: Schema.Number,
  total_tokens: Schema.Number
}).annotations({ identifier: "BulkRevokeResult" })
export type BulkRevokeResult = typeof BulkRevokeResult.Type

export const Token = Schema.Struct({
  id: Schema.String,
  token: Schema.String.annotations({
    description: "sk- + first 4 + **** + last 4; the secret itself is shown only once"
  }),
  project_id: Schema.String,
  expires_at: Schema.NullOr(Timestamp),
  is_active: Schema.Boolean,
  deactivated_at: Schema.optional(Timestamp),
  request_count: Schema.Number,
  max_requests: Schema.NullOr(Schema.Number).annotations({ description: "null = unlimited" }),
  rate_limit: Schema.NullOr(RateLimit),
  cache_hit_count: Schema.Number,
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  ...spendFields,
  created_at: Timestamp,
  last_used_at: Schema.NullOr(Timestamp),
  name: Schema.NullOr(Schema.String),
  user: Schema.NullOr(Schema.String).annotations({ description: "The end user the token was minted for" }),
  metadata: ShownMetadata,
  allowed_models: ModelList.annotations({ description: "null = any model (the project's scope applies as well)" }),
  created_by: Schema.String.annotations({
    description: "Who minted it: `management_api` (the management token) or `project_key:<id>`"
  })
}).annotations({ identifier: "Token" })
export type Token = typeof Token.Type

export const TokenCreated = Schema.Struct({
  id: Schema.String,
  token: Schema.String.annotations({ description: "The secret. Store it now: it is never shown again." }),
  project_id: Schema.String,
  expires_at: Timestamp,
  max_requests: Schema.optional(Schema.Number),
  name: Schema.optional(Schema.String),
  user: Schema.optional(Schema.String),
  metadata: Schema.optional(Schema.Record({ key: Schema.String, value: Schema.String })),
  allowed_models: Schema.optional(Schema.Array(Schema.String))
}).annotations({ identifier: "TokenCreated" })
export type TokenCreated = typeof TokenCreated.Type

export const DURATION_REQUIRED = "project_id and duration_minutes are required"
export const PROJECT_ID_REQUIRED = "project_id is required"

const MaxRequests = Schema.NullOr(
  Numeric.pipe(
    wholeNumber("max_requests must be an integer"),
    Schema.greaterThanOrEqualTo(0, answer("max_requests must be >= 0")),
    Schema.lessThanOrEqualTo(MAX_REQUESTS_MAX, answer(`max_requests must be <= ${MAX_REQUESTS_MAX}`))
  )
).annotations({ description: "0 or null = unlimited" })

export const CreateToken = Schema.Struct({
  duration_minutes: required(
    // null is answered as a missing duration, any other type as a malformed body.
    Schema.Number.annotations({
      message: (issue) => issue._tag === "Type" && issue.actual === null ? DURATION_REQUIRED : INVALID_BODY
    }).pipe(
      wholeNumber("duration_minutes must be an integer"),
      Schema.greaterThanOrEqualTo(1, answer(DURATION_REQUIRED)),
      Schema.lessThanOrEqualTo(DURATION_MAX_MINUTES, answer("duration_minutes exceeds maximum allowed"))
    ).annotations({ description: "Lifetime in minutes" }),
    DURATION_REQUIRED
  ),
  // A project key may leave it out: the handler fills in the key's own project before this Schema judges the body.
  project_id: required(
    Text.pipe(
      Schema.minLength(1, answer(PROJECT_ID_REQUIRED)),
      Schema.pattern(UUID_PATTERN, answer("invalid project_id"))
    )
      .annotations({
        description: "UUID of an active project. A project key may leave it out (the key's own project); any other " +
          "project is 403 for it"
      }),
    PROJECT_ID_REQUIRED
  ),
  max_requests: Schema.optional(MaxRequests),
  rate_limit: Schema.optional(RateLimitSetting),
  name: Schema.optional(TokenName),
  user: Schema.optional(TokenUser),
  metadata: Schema.optional(TokenMetadata),
  allowed_models: Schema.optional(AllowedModels),
  ...budgetFields
}).annotations({ identifier: "CreateToken", ...closedPayload() })
export type CreateToken = typeof CreateToken.Type

export const EXPIRES_AT_INVALID = "expires_at must be an RFC 3339 timestamp"

export const UpdateToken = Schema.Struct({
  is_active: Schema.optional(Flag),
  max_requests: Schema.optional(MaxRequests),
  expires_at: Schema.optional(
    Text.pipe(
      Schema.filter((s: string) => parseTimestamp(s) !== undefined, {
        ...answer(EXPIRES_AT_INVALID),
        jsonSchema: { format: "date-time" },
        // Random strings are hardly ever timestamps: generated ones are drawn from 2000..2100.
        arbitrary: () => (fc) =>
          fc.integer({ min: Date.UTC(2000, 0, 1), max: Date.UTC(2100, 0, 1) }).map((ms) => new Date(ms).toISOString())
      })
    ).annotations({ description: "RFC 3339 timestamp, any offset (stored in UTC)" })
  ),
  rate_limit: Schema.optional(RateLimitSetting.annotations({ description: "null removes the limit" })),
  name: Schema.optional(TokenName),
  user: Schema.optional(TokenUser),
  metadata: Schema.optional(TokenMetadata),
  allowed_models: Schema.optional(AllowedModels),
  ...budgetFields
}).annotations(closedPayload()).pipe(
  rule((p: object) => Object.keys(p).length > 0, "no fields to update", { minProperties: 1 })
).annotations({ identifier: "UpdateToken" })
export type UpdateToken = typeof UpdateToken.Type

export const ListTokensParams = Schema.Struct({
  project_id: Schema.optional(Schema.String),
  projectId: Schema.optional(Schema.String.annotations({ description: "Legacy spelling of project_id" })),
  active_only: Schema.optional(Schema.String.annotations({ description: "true: only active, unexpired tokens" })),
  status: Schema.optional(
    Schema.String.annotations({ description: "active (not revoked, not expired), expired (not revoked) or revoked" })
  ),
  search: Schema.optional(
    Schema.String.annotations({
      description: "The start of the token's id (case-insensitive), or its exact user or name"
    })
  ),
  user: Schema.optional(Schema.String.annotations({ description: "Only the tokens of this end user (exactly)" })),
  name: Schema.optional(Schema.String.annotations({ description: "Only the tokens of this name (exactly)" })),
  page_size: Schema.optional(
    Schema.String.annotations({
      description: "1..100 (default 20); with page_size or cursor the answer is a TokenPage"
    })
  ),
  cursor: Schema.optional(
    Schema.String.annotations({ description: "next_cursor or prev_cursor of a TokenPage, or `last` for the last page" })
  )
})

/** The paging of a keyset listing: no page numbers, a cursor to each neighbouring page. */
export const CursorPagination = Schema.Struct({
  page_size: Schema.Number,
  has_next: Schema.Boolean.annotations({ description: "Older entries follow" }),
  has_prev: Schema.Boolean.annotations({ description: "Newer entries precede" }),
  next_cursor: Schema.NullOr(Schema.String).annotations({ description: "cursor of the next (older) page" }),
  prev_cursor: Schema.NullOr(Schema.String).annotations({ description: "cursor of the previous (newer) page" })
}).annotations({ identifier: "CursorPagination" })
export type CursorPagination = typeof CursorPagination.Type

export const TokenPage = Schema.Struct({
  tokens: Schema.Array(Token),
  pagination: CursorPagination
}).annotations({ identifier: "TokenPage" })
export type TokenPage = typeof TokenPage.Type

export const TokenCountsParams = Schema.Struct({
  project_id: Schema.optional(Schema.String.annotations({ description: "Only this project's tokens" }))
})

const Count = Schema.Struct({
  count: Schema.Number,
  exact: Schema.Boolean.annotations({ description: "false: at least `count` (counting stops there)" })
})

export const TokenCounts = Schema.Struct({
  active: Count,
  expired: Count,
  revoked: Count
}).annotations({ identifier: "TokenCounts", description: "Tokens per state now, each counted up to 10000" })
export type TokenCounts = typeof TokenCounts.Type

export const PURGE_METHOD_AND_URL_REQUIRED = "method and url are required"
export const PURGE_PREFIX_INVALID = "prefix must be 1 to 80 hexadecimal characters (a prefix of X-PROXY-CACHE-KEY)"

/**
 * The fields of a purge, each checked for its type when present (null and "" mean absent); which form applies and
 * its own rules (a hex prefix, a method and URL) are src/cache/policy.ts `parsePurge`'s. Other fields are ignored.
 */
export const CachePurge = Schema.Struct({
  project_id: Schema.optional(
    Schema.NullOr(
      Schema.String.annotations(answer("invalid project_id")).pipe(
        rule((s: string) => s === "" || isUuid(s), "invalid project_id", { pattern: `^$|${UUID_PATTERN.source}` })
      )
    ).annotations({ description: "Restrict any form to one project (UUID)" })
  ),
  all: Schema.optional(
    Schema.Boolean.annotations({
      ...answer("all must be true or false"),
      description: "true: purge everything (of project_id, when given)"
    })
  ),
  prefix: Schema.optional(
    Schema.NullOr(Schema.String.annotations(answer(PURGE_PREFIX_INVALID))).annotations({
      description: "Purge keys starting with this: 1 to 80 hexadecimal characters, a prefix of X-PROXY-CACHE-KEY"
    })
  ),
  method: Schema.optional(
    Schema.NullOr(Schema.String.annotations(answer(PURGE_METHOD_AND_URL_REQUIRED))).annotations({
      description: "With url: purge every entry of that method and URL"
    })
  ),
  url: Schema.optional(
    Schema.NullOr(Schema.String.annotations(answer(PURGE_METHOD_AND_URL_REQUIRED))).annotations({
      description: "Path (with query) or absolute http(s) URL, e.g. /v1/models"
    })
  )
}).annotations({ identifier: "CachePurge", ...answer("invalid JSON"), jsonSchema: { additionalProperties: true } })
export type CachePurge = typeof CachePurge.Type

export const CachePurgeResult = Schema.Struct({
  deleted: Schema.Union(Schema.Boolean, Schema.Number).annotations({
    description: "exact purge: whether anything was deleted; prefix / all: how many entries"
  })
}).annotations({ identifier: "CachePurgeResult" })
export type CachePurgeResult = typeof CachePurgeResult.Type

export const ListProjectsParams = Schema.Struct({
  search: Schema.optional(
    Schema.String.annotations({ description: "Case-insensitive part of the name, or a project id" })
  ),
  page: Schema.optional(
    Schema.String.annotations({ description: "1-based; with page or page_size the answer is a ProjectPage" })
  ),
  page_size: Schema.optional(Schema.String.annotations({ description: "1..100 (default 20)" }))
})

export const Pagination = Schema.Struct({
  page: Schema.Number,
  page_size: Schema.Number,
  total_count: Schema.Number.annotations({ description: "Counted up to 10000 (see total_exact)" }),
  total_pages: Schema.Number,
  has_next: Schema.Boolean,
  has_prev: Schema.Boolean,
  total_exact: Schema.optional(
    Schema.Boolean.annotations({ description: "false: more than total_count match (counting stops at 10000)" })
  )
}).annotations({ identifier: "Pagination" })
export type Pagination = typeof Pagination.Type

export const ProjectPage = Schema.Struct({
  projects: Schema.Array(Project),
  pagination: Pagination
}).annotations({ identifier: "ProjectPage" })
export type ProjectPage = typeof ProjectPage.Type

export const UsageParams = Schema.Struct({
  since: Schema.optional(Timestamp.annotations({ description: "Inclusive start (default: 24 hours before until)" })),
  until: Schema.optional(Timestamp.annotations({ description: "Exclusive end (default: now)" })),
  project_id: Schema.optional(Schema.String),
  token_id: Schema.optional(Schema.String),
  user: Schema.optional(Schema.String.annotations({
    description:
      "Only the usage of this end user's tokens, summed (tokens deleted by TOKEN_RETENTION_DAYS no longer count)"
  }))
})

export const UsageHour = Schema.Struct({
  hour: Timestamp.annotations({ description: "Start of the UTC hour" }),
  requests: Schema.Number,
  cache_hits: Schema.Number,
  errors: Schema.Number,
  prompt_tokens: Schema.Number,
  completion_tokens: Schema.Number,
  cost_usd: Schema.Number.annotations({ description: "USD the hour's answers cost (models without a price count 0)" })
}).annotations({ identifier: "UsageHour" })
export type UsageHour = typeof UsageHour.Type

export const UsageSeries = Schema.Struct({
  since: Timestamp,
  until: Timestamp,
  hours: Schema.Array(UsageHour).annotations({
    description: "Hours with usage, oldest first (hours without usage are absent)"
  }),
  totals: Schema.Struct({
    requests: Schema.Number,
    cache_hits: Schema.Number,
    errors: Schema.Number,
    prompt_tokens: Schema.Number,
    completion_tokens: Schema.Number,
    cost_usd: Schema.Number
  })
}).annotations({ identifier: "UsageSeries" })
export type UsageSeries = typeof UsageSeries.Type

// ---- project keys ------------------------------------------------------------------------------------------------

export const PROJECT_KEY_NAME_MAX = 100
export const PROJECT_KEY_NAME_REQUIRED = "name is required"

export const CreateProjectKey = Schema.Struct({
  name: required(
    Text.pipe(
      Schema.minLength(1, answer(PROJECT_KEY_NAME_REQUIRED)),
      rule((s: string) => s.trim() !== "", "name must not be empty", { pattern: "\\S" }),
      Schema.maxLength(PROJECT_KEY_NAME_MAX, answer(`name must be at most ${PROJECT_KEY_NAME_MAX} characters`)),
      rule((s: string) => !hasControlCharacters(s), "name must not contain control characters", {
        pattern: NO_CONTROL_PATTERN
      }),
      rule(isUnicodeText, "name must be valid Unicode text")
    ).annotations({
      description: `What the key is for (e.g. the app backend holding it), 1..${PROJECT_KEY_NAME_MAX} characters`
    }),
    PROJECT_KEY_NAME_REQUIRED
  )
}).annotations({ identifier: "CreateProjectKey", ...closedPayload() })
export type CreateProjectKey = typeof CreateProjectKey.Type

export const ProjectKeyCreated = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  key: Schema.String.annotations({ description: "lpk- + 43 characters. Store it now: it is never shown again." }),
  project_id: Schema.String,
  created_at: Timestamp
}).annotations({ identifier: "ProjectKeyCreated" })
export type ProjectKeyCreated = typeof ProjectKeyCreated.Type

export const ProjectKey = Schema.Struct({
  id: Schema.String,
  name: Schema.String,
  key: Schema.String.annotations({ description: "lpk- + first 4 + **** + last 4; the key itself is shown only once" }),
  project_id: Schema.String,
  is_active: Schema.Boolean.annotations({ description: "false once revoked" }),
  created_at: Timestamp,
  last_used_at: Schema.NullOr(Timestamp).annotations({ description: "Updated at most once a minute" }),
  revoked_at: Schema.optional(Timestamp)
}).annotations({ identifier: "ProjectKey" })
export type ProjectKey = typeof ProjectKey.Type

/** Anything else than a string `token` is a wrong token (401), like a wrong string; other fields are ignored. */
export const Login = Schema.Struct({
  token: Schema.String.annotations({ description: "The management token" })
}).annotations({ identifier: "Login", jsonSchema: { additionalProperties: true } })

export const SessionInfo = Schema.Struct({
  authenticated: Schema.Boolean,
  csrf_token: Schema.optional(
    Schema.String.annotations({ description: "Send as X-CSRF-Token on every state-changing request" })
  ),
  expires_at: Schema.optional(
    Timestamp.annotations({ description: "When the session ends unless used before (idle timeout)" })
  )
}).annotations({ identifier: "SessionInfo" })
export type SessionInfo = typeof SessionInfo.Type
