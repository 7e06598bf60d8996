/** The audit settings and TRUSTED_PROXIES: defaults, accepted values, and one line naming the variable when wrong. */
import { ConfigProvider, Effect, Either, Option } from "effect"
import { describe, expect, it } from "vitest"
import { appConfig, formatConfigError } from "../../src/config/AppConfig.js"

const load = (env: Record<string, string>) =>
  Effect.runSync(
    Effect.either(Effect.withConfigProvider(appConfig, ConfigProvider.fromMap(new Map(Object.entries(env)))))
  )

const ok = (env: Record<string, string>) => {
  const r = load(env)
  if (Either.isLeft(r)) throw new Error(formatConfigError(r.left))
  return r.right
}

const error = (env: Record<string, string>) => {
  const r = load(env)
  if (Either.isRight(r)) throw new Error("expected a configuration error")
  return formatConfigError(r.left)
}

describe("audit configuration", () => {
  it("defaults: enabled, ./data/audit.log, stored in the database, kept forever, no trusted proxies", () => {
    const c = ok({})
    expect(c.audit).toEqual({ enabled: true, file: Option.some("./data/audit.log"), storeInDb: true, retentionDays: 0 })
    expect(c.trustedProxies).toEqual([])
  })

  it("AUDIT_LOG_FILE empty means database only; the other switches", () => {
    expect(ok({ AUDIT_LOG_FILE: "" }).audit.file).toEqual(Option.none())
    expect(ok({ AUDIT_LOG_FILE: "  " }).audit.file).toEqual(Option.none())
    expect(ok({ AUDIT_LOG_FILE: "/var/log/llm-proxy/audit.jsonl" }).audit.file).toEqual(
      Option.some("/var/log/llm-proxy/audit.jsonl")
    )
    expect(ok({ AUDIT_ENABLED: "false", AUDIT_STORE_IN_DB: "0", AUDIT_RETENTION_DAYS: "90" }).audit).toMatchObject({
      enabled: false,
      storeInDb: false,
      retentionDays: 90
    })
  })

  it("TRUSTED_PROXIES takes IPs and CIDRs, v4 and v6, separated by commas or spaces", () => {
    expect(ok({ TRUSTED_PROXIES: "10.0.0.0/8, 192.168.1.1 ::1,fd00::/8" }).trustedProxies).toEqual([
      "10.0.0.0/8",
      "192.168.1.1",
      "::1",
      "fd00::/8"
    ])
  })

  it.each([
    [{ AUDIT_ENABLED: "maybe" }, "AUDIT_ENABLED: expected true or false, got \"maybe\""],
    [{ AUDIT_STORE_IN_DB: "2" }, "AUDIT_STORE_IN_DB: expected true or false, got \"2\""],
    [{ AUDIT_RETENTION_DAYS: "-1" }, "AUDIT_RETENTION_DAYS: expected a non-negative integer, got \"-1\""],
    [{ AUDIT_RETENTION_DAYS: "30d" }, "AUDIT_RETENTION_DAYS: expected a non-negative integer, got \"30d\""],
    [{ TRUSTED_PROXIES: "10.0.0.0/33" }, "TRUSTED_PROXIES: \"10.0.0.0/33\" has an invalid prefix length (0..32)"],
    [{ TRUSTED_PROXIES: "proxy.internal" }, "TRUSTED_PROXIES: \"proxy.internal\" is not an IP address or CIDR"],
    [{ TRUSTED_PROXIES: "::1/129" }, "TRUSTED_PROXIES: \"::1/129\" has an invalid prefix length (0..128)"],
    [{ TRUSTED_PROXIES: "1.2.3.4/8/9" }, "TRUSTED_PROXIES: \"1.2.3.4/8/9\" is not an IP address or CIDR"]
  ])("%j → one line naming the variable", (env, message) => {
    expect(error(env)).toBe(`invalid configuration: ${message}`)
  })
})
