/**
 * The audit log's part of the data plane. A /v1 request refused because its token's project is inactive is
 * recorded as `proxy_request` / `denied` / `project_inactive`; one refused for its token (missing, malformed,
 * unknown, revoked, expired) as `token.validate` / `denied` with the error code as reason; one refused for its model
 * (outside `allowed_models`) as `proxy_request` / `denied` / `model_not_allowed`. They carry the token's id when it
 * is known (never the token) and its end user, the project, the request and correlation ids and the client IP.
 *
 * Anyone can send such requests, as fast as they like: they are aggregated (`recordDenial`) into one event per
 * client IP, reason, token, project and minute with a `count`, the first request's ids and path standing for the
 * rest. Counting is synchronous and never waits, so a flood costs a map update per request and a bounded number of
 * rows (src/audit/AuditLog.ts).
 */
import { Effect } from "effect"
import { AuditLog } from "../audit/AuditLog.js"
import { clientIpOf, type TrustedProxies } from "../audit/clientIp.js"
import { AuditActions, AuditActors } from "../domain/audit.js"
import type { ProxyHooksShape, ProxyRequestContext } from "./ProxyHooks.js"

const SAFE_ID = /^[A-Za-z0-9._:-]{1,128}$/

/** Error codes of a refused proxy token (src/proxy/policy.ts Answers). */
const TOKEN_REFUSALS = new Set(["invalid_token", "token_not_found", "token_inactive", "token_expired"])

const header = (ctx: ProxyRequestContext, name: string): string | undefined => {
  const v = ctx.headers?.[name]
  return Array.isArray(v) ? v.join(", ") : v
}

export const auditHooks = (trusted: TrustedProxies) =>
  Effect.map(AuditLog, (audit): Partial<ProxyHooksShape> =>
    audit.enabled
      ? {
        onComplete: [(ctx) => {
          const tokenRefused = ctx.denial === undefined && ctx.code !== undefined && TOKEN_REFUSALS.has(ctx.code)
          if (ctx.denial === undefined && !tokenRefused) return
          const viaTrusted = ctx.peer !== undefined && !trusted.isEmpty && trusted.contains(ctx.peer)
          const correlation = header(ctx, "x-correlation-id")
          audit.recordDenial({
            action: tokenRefused ? AuditActions.tokenValidate : AuditActions.proxyRequest,
            actor: AuditActors.proxy,
            outcome: "denied",
            reason: ctx.denial ?? ctx.code,
            projectId: ctx.projectId,
            tokenId: ctx.tokenId,
            requestId: ctx.requestId,
            correlationId: correlation !== undefined && SAFE_ID.test(correlation) ? correlation : ctx.requestId,
            clientIp: clientIpOf(ctx.peer, header(ctx, "x-forwarded-for"), trusted),
            method: ctx.method,
            path: ctx.path,
            userAgent: (viaTrusted ? header(ctx, "x-forwarded-user-agent") : undefined) ?? header(ctx, "user-agent"),
            details: {
              status: ctx.status,
              ...(ctx.provider !== undefined ? { provider: ctx.provider } : {}),
              ...(ctx.user !== null ? { user: ctx.user } : {}),
              ...(ctx.tokenName !== null ? { token_name: ctx.tokenName } : {})
            }
          })
        }]
      }
      : {})
