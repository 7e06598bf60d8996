/**
 * The direct route of `POST /manage/tokens` (docs/performance.md "Token creation"). Apps that mint a token per user
 * session call this endpoint more than every other management endpoint together, and through the platform's HTTP
 * stack and the HttpApi router the work done before and around the handler cost more than minting the token itself.
 * So Server.ts hands this one request from node:http to here, as it hands /v1 to the data plane, and it runs the
 * steps of the management app (App.ts) with the same functions: the brute-force throttle when an Authorization
 * header is present, authentication and the endpoint's project-key scope (`Auth.authorizeWith`), the handler
 * (`TokensHttp.createToken`: body, validation, store, the `token.create` audit event), the same error bodies and
 * statuses, the `X-Request-ID` / `X-Correlation-ID` headers, and a 500 for anything unexpected (logged).
 *
 * Not taken when traces are exported (OTLP): every management request then keeps its server span.
 */
import { Cookies } from "@effect/platform"
import { Cause, Effect, FiberId, Option, Runtime } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { CurrentCaller, routeKey } from "../api/ManagementApi.js"
import type { AuditLog } from "../audit/AuditLog.js"
import { makeTrustedProxies } from "../audit/clientIp.js"
import { AppConfig } from "../config/AppConfig.js"
import { AuditActions } from "../domain/audit.js"
import { type HttpError, statusOf } from "../domain/errors.js"
import type { Store } from "../store/Store.js"
import type { ProjectKeys } from "../token/ProjectKeys.js"
import { currentRequestMeta, requestMetaFrom } from "./auditing.js"
import * as Auth from "./auth.js"
import type { AuthThrottle } from "./authThrottle.js"
import { readNodeJson } from "./body.js"
import { unhandled } from "./fallback.js"
import { type AdminSessions, CSRF_HEADER, SESSION_COOKIE } from "./session.js"
import { createToken } from "./TokensHttp.js"

export const MINT_PATH = "/manage/tokens"

const ROUTE = routeKey("POST", MINT_PATH)

interface Answer {
  readonly status: number
  readonly body: unknown
  readonly headers?: Record<string, string>
}

const errorAnswer = (e: HttpError): Answer => ({
  status: statusOf(e),
  body: e.code === undefined ? { error: e.error } : { error: e.error, code: e.code }
})

/** Whether `req` is the request this route answers. */
export const isMintRequest = (req: IncomingMessage): boolean => req.method === "POST" && req.url === MINT_PATH

/** The route, or undefined when it is not taken (traces exported). */
export const makeMintRoute = Effect.gen(function*() {
  const config = yield* AppConfig
  if (Option.isSome(config.otlp)) return undefined
  const trusted = makeTrustedProxies(config.trustedProxies)
  const runFork = Runtime.runFork(
    yield* Effect.runtime<Store | AuditLog | AuthThrottle | Auth.ManagementToken | AdminSessions | ProjectKeys>()
  )
  return (req: IncomingMessage, res: ServerResponse): void => {
    const meta = requestMetaFrom(
      { headers: req.headers, method: "POST", url: MINT_PATH },
      req.socket.remoteAddress,
      trusted
    )
    const authorization = req.headers.authorization
    const answer = Effect.gen(function*() {
      if (authorization !== undefined) {
        const wait = yield* Auth.throttleWait(AuditActions.managementAuth)
        if (wait > 0) {
          return {
            status: 429,
            body: { error: Auth.TOO_MANY_ATTEMPTS, code: "too_many_attempts" },
            headers: { "retry-after": String(wait) }
          } satisfies Answer
        }
      }
      const caller = yield* Auth.authorizeWith({
        authorization,
        sessionId: authorization === undefined
          ? Cookies.parseHeader(req.headers.cookie ?? "")[SESSION_COOKIE]
          : undefined,
        method: "POST",
        csrf: typeof req.headers[CSRF_HEADER] === "string" ? req.headers[CSRF_HEADER] : undefined
      }, ROUTE)
      const created = yield* Effect.provideService(createToken(readNodeJson(req)), CurrentCaller, caller)
      return { status: 201, body: created } satisfies Answer
    }).pipe(
      Effect.catchAll((e) => Effect.succeed(errorAnswer(e))),
      Effect.catchAllCause((cause) =>
        Cause.isInterruptedOnly(cause)
          ? Effect.failCause(cause)
          : Effect.as(unhandled(cause, meta.requestId), { status: 500, body: { error: "internal server error" } })
      ),
      Effect.locally(currentRequestMeta, meta),
      Effect.map((a: Answer) => {
        const body = JSON.stringify(a.body)
        res.writeHead(a.status, {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          "x-request-id": meta.requestId,
          "x-correlation-id": meta.correlationId,
          ...a.headers
        })
        res.end(body)
      })
    )
    const fiber = runFork(answer)
    // A client gone before its answer: the request is interrupted, as the platform does (audited "request aborted").
    res.once("close", () => {
      if (!res.writableEnded) fiber.unsafeInterruptAsFork(FiberId.none)
    })
  }
})
