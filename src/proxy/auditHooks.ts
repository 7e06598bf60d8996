/**
 * The audit log's part of the data plane: a /v1 request refused for policy reasons worth auditing (today: the
 * token's project is inactive) is recorded as `proxy_request` / `denied` with the reason, the token's id, the
 * project, the request and correlation ids and the client IP. `unsafeRecord` never waits: a full audit queue
 * drops (and counts) the event rather than slow proxy traffic.
 */
import { Effect } from "effect"
import { AuditLog } from "../audit/AuditLog.js"
import { clientIpOf, type TrustedProxies } from "../audit/clientIp.js"
import { AuditActions, AuditActors } from "../domain/audit.js"
import type { ProxyHooksShape, ProxyRequestContext } from "./ProxyHooks.js"

const SAFE_ID = /^[A-Za-z0-9._:\-]{1,128}$/

const header = (ctx: ProxyRequestContext, name: string): string | undefined => {
  const v = ctx.headers?.[name]
  return Array.isArray(v) ? v.join(", ") : v
}

export const auditHooks = (trusted: TrustedProxies) =>
  Effect.map(AuditLog, (audit): Partial<ProxyHooksShape> =>
    audit.enabled
      ? {
        onComplete: [(ctx) => {
          if (ctx.denial === undefined) return
          const viaTrusted = ctx.peer !== undefined && !trusted.isEmpty && trusted.contains(ctx.peer)
          const correlation = header(ctx, "x-correlation-id")
          audit.unsafeRecord({
            action: AuditActions.proxyRequest,
            actor: AuditActors.proxy,
            outcome: "denied",
            reason: ctx.denial,
            projectId: ctx.projectId,
            tokenId: ctx.tokenId,
            requestId: ctx.requestId,
            correlationId: correlation !== undefined && SAFE_ID.test(correlation) ? correlation : ctx.requestId,
            clientIp: clientIpOf(ctx.peer, header(ctx, "x-forwarded-for"), trusted),
            method: ctx.method,
            path: ctx.path,
            userAgent: (viaTrusted ? header(ctx, "x-forwarded-user-agent") : undefined) ?? header(ctx, "user-agent"),
            details: { status: ctx.status, ...(ctx.provider !== undefined ? { provider: ctx.provider } : {}) }
          })
        }]
      }
      : {})
