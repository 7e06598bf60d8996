/** Reading a management JSON body: bounded, and every failure a 4xx with a JSON error instead of a defect. */
import { HttpServerRequest } from "@effect/platform"
import { Effect, Either } from "effect"
import { BadRequest, PayloadTooLarge } from "../domain/errors.js"

export const MAX_BODY_BYTES = 2 * 1024 * 1024

const tooLarge = new PayloadTooLarge({ error: "request body too large" })
const invalid = new BadRequest({ error: "invalid request body" })

export const readJson = (request: HttpServerRequest.HttpServerRequest, maxBytes = MAX_BODY_BYTES) =>
  Effect.gen(function*() {
    const declared = Number(request.headers["content-length"] ?? "0")
    if (declared > maxBytes) return yield* tooLarge
    const buffer = yield* Effect.mapError(request.arrayBuffer, () => invalid)
    if (buffer.byteLength > maxBytes) return yield* tooLarge
    const text = new TextDecoder("utf-8", { fatal: false }).decode(buffer)
    return yield* Either.try({ try: () => JSON.parse(text) as unknown, catch: () => invalid })
  })

/** Runs a validator; its message becomes a 400. */
export const validate = <A>(result: Either.Either<A, string>) =>
  Either.mapLeft(result, (error) => new BadRequest({ error }))
