/** Turning any failure of a CLI command into the one line a person reads. Secrets never appear here. */
import { HttpClientError } from "@effect/platform"
import { ConfigError, Data, ParseResult, Predicate } from "effect"
import { formatConfigError } from "../config/AppConfig.js"

export class CliFailure extends Data.TaggedError("CliFailure")<{ readonly message: string }> {}

export const describeError = (e: unknown): string => {
  if (e instanceof CliFailure) return e.message
  if (ConfigError.isConfigError(e)) return formatConfigError(e)
  if (ParseResult.isParseError(e)) {
    const first = ParseResult.ArrayFormatter.formatErrorSync(e)[0]
    return first ? `invalid input: ${first.path.join(".") || "value"}: ${first.message}` : "invalid input"
  }
  if (HttpClientError.isHttpClientError(e)) {
    if (e._tag === "RequestError") {
      return `cannot reach the management API at ${e.request.url.replace(/\/manage\/.*$/, "")} (${e.reason})`
    }
    return `unexpected response from the management API (HTTP ${e.response.status})`
  }
  // The management API's errors decode to tagged errors carrying the server's message.
  if (Predicate.hasProperty(e, "error") && typeof e.error === "string") {
    return Predicate.hasProperty(e, "code") && typeof e.code === "string" ? `${e.error} (${e.code})` : e.error
  }
  if (Predicate.hasProperty(e, "message") && typeof e.message === "string" && e.message !== "") return e.message
  return String(e)
}
