/**
 * HTTP-facing errors. On the wire every error is `{"error": "...", "code"?: "..."}` (docs/management-api.md,
 * docs/proxy.md "Errors"); inside the program they are tagged errors so handlers can `yield*` them and the HttpApi
 * knows each one's status.
 */
import { HttpApiSchema } from "@effect/platform"
import { Schema } from "effect"

export const ErrorBody = Schema.Struct({
  error: Schema.String,
  code: Schema.optional(Schema.String)
}).annotations({ identifier: "ErrorBody" })
export type ErrorBody = typeof ErrorBody.Type

const fields = { error: Schema.String, code: Schema.optional(Schema.String) }

export class BadRequest extends Schema.TaggedError<BadRequest>()("BadRequest", fields) {}
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", fields) {}
export class Forbidden extends Schema.TaggedError<Forbidden>()("Forbidden", fields) {}
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", fields) {}
export class Conflict extends Schema.TaggedError<Conflict>()("Conflict", fields) {}
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", fields) {}
export class TooManyRequests extends Schema.TaggedError<TooManyRequests>()("TooManyRequests", fields) {}
export class InternalError extends Schema.TaggedError<InternalError>()("InternalError", fields) {}
export class ServiceUnavailable extends Schema.TaggedError<ServiceUnavailable>()("ServiceUnavailable", fields) {}

// eslint-disable-next-line @typescript-eslint/no-explicit-any -- a Schema's encoded type is invariant: any admits every encoding
type ErrorClass<A extends ErrorBody> = Schema.Schema<A, any> & (new(props: { error: string; code?: string }) => A)

/** The wire form of an error class: the `_tag` stays inside the program, the body is the contract's shape. */
const wire = <A extends ErrorBody>(cls: ErrorClass<A>, status: number, description: string) =>
  Schema.transform(ErrorBody, Schema.typeSchema(cls), {
    strict: true,
    decode: (body) => new cls(body.code === undefined ? { error: body.error } : { error: body.error, code: body.code }),
    encode: (e) => (e.code === undefined ? { error: e.error } : { error: e.error, code: e.code })
  }).annotations(HttpApiSchema.annotations({ status, description }))

export const BadRequestWire = wire(BadRequest, 400, "Invalid input")
export const UnauthorizedWire = wire(Unauthorized, 401, "Missing or invalid management token")
export const ForbiddenWire = wire(Forbidden, 403, "Forbidden")
export const NotFoundWire = wire(NotFound, 404, "Not found")
export const ConflictWire = wire(Conflict, 409, "Conflict")
export const PayloadTooLargeWire = wire(PayloadTooLarge, 413, "Request body too large")
export const TooManyRequestsWire = wire(
  TooManyRequests,
  429,
  "Too many failed authentication attempts from this client IP (code too_many_attempts); retry after `Retry-After` seconds"
)
export const InternalErrorWire = wire(InternalError, 500, "Internal error (details are logged, never returned)")
export const ServiceUnavailableWire = wire(ServiceUnavailable, 503, "A dependency is unavailable")

export type HttpError =
  | BadRequest
  | Unauthorized
  | Forbidden
  | NotFound
  | Conflict
  | PayloadTooLarge
  | TooManyRequests
  | InternalError
  | ServiceUnavailable

export const statusOf = (e: HttpError): number => {
  switch (e._tag) {
    case "BadRequest":
      return 400
    case "Unauthorized":
      return 401
    case "Forbidden":
      return 403
    case "NotFound":
      return 404
    case "Conflict":
      return 409
    case "PayloadTooLarge":
      return 413
    case "TooManyRequests":
      return 429
    case "InternalError":
      return 500
    case "ServiceUnavailable":
      return 503
  }
}
