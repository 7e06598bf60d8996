/**
 * The management API from the browser, through the client derived from the same HttpApi definition the server
 * implements (src/api/ManagementApi.ts): paths, payloads and answers are type-checked and decoded.
 *
 * Authentication is the session cookie (HttpOnly, set by POST /manage/session); the CSRF token that must
 * accompany state-changing requests is kept in this module's memory only, never in storage.
 */
import { FetchHttpClient, HttpApiClient, HttpClient, HttpClientRequest } from "@effect/platform"
import { Cause, Effect, Exit, Option } from "effect"
import { ManagementApi } from "../../src/api/ManagementApi.js"

let csrfToken: string | undefined

export const setCsrfToken = (token: string | undefined) => {
  csrfToken = token
}

const makeClient = HttpApiClient.make(ManagementApi, {
  baseUrl: location.origin,
  transformClient: HttpClient.mapRequest((request) => {
    // X-Admin-Origin marks the audit events of these calls as coming from the admin UI.
    const marked = HttpClientRequest.setHeader(request, "x-admin-origin", "1")
    return csrfToken === undefined ? marked : HttpClientRequest.setHeader(marked, "x-csrf-token", csrfToken)
  })
}).pipe(Effect.provide(FetchHttpClient.layer))

export type Client = Effect.Effect.Success<typeof makeClient>

const client: Client = Effect.runSync(makeClient)

/** Why a call failed, in words for the user. */
export class ApiFailure extends Error {
  constructor(readonly status: number | undefined, message: string, readonly code: string | undefined) {
    super(message)
  }
}

const STATUS: Record<string, number> = {
  BadRequest: 400,
  Unauthorized: 401,
  Forbidden: 403,
  NotFound: 404,
  Conflict: 409,
  PayloadTooLarge: 413,
  TooManyRequests: 429,
  InternalError: 500,
  ServiceUnavailable: 503
}

const describe = (e: unknown): ApiFailure => {
  const err = e as { _tag?: string; error?: unknown; code?: unknown; reason?: string; response?: { status: number } }
  if (err._tag !== undefined && err._tag in STATUS && typeof err.error === "string") {
    return new ApiFailure(STATUS[err._tag], err.error, typeof err.code === "string" ? err.code : undefined)
  }
  if (err._tag === "ResponseError" && err.response) {
    return new ApiFailure(err.response.status, `the server answered ${err.response.status}`, undefined)
  }
  if (err._tag === "RequestError") return new ApiFailure(undefined, "cannot reach the server", undefined)
  return new ApiFailure(undefined, "unexpected answer from the server", undefined)
}

let onUnauthorized: (failure: ApiFailure) => void = () => {}

/** Called when a request is refused for lack of a (live) session, so the app can return to the login screen. */
export const whenUnauthorized = (f: (failure: ApiFailure) => void) => {
  onUnauthorized = f
}

/** Runs one API call; rejects with an ApiFailure. A 401 also ends the session in the UI. */
export const api = async <A, E>(
  call: (c: Client) => Effect.Effect<A, E>,
  options: { login?: boolean } = {}
): Promise<A> => {
  const exit = await Effect.runPromiseExit(call(client))
  if (Exit.isSuccess(exit)) return exit.value
  const failure = Cause.failureOption(exit.cause)
  const described = Option.isSome(failure)
    ? describe(failure.value)
    : new ApiFailure(undefined, "unexpected error", undefined)
  if (described.status === 401 && !options.login) onUnauthorized(described)
  throw described
}
