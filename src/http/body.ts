/** Reading a management JSON body: bounded, and every failure a 4xx with a JSON error instead of a defect. */
import { HttpServerRequest } from "@effect/platform"
import { Effect, Either, Stream } from "effect"
import { BadRequest, PayloadTooLarge } from "../domain/errors.js"

export const MAX_BODY_BYTES = 2 * 1024 * 1024

const tooLarge = new PayloadTooLarge({ error: "request body too large" })
const invalid = new BadRequest({ error: "invalid request body" })

export const readJson = (request: HttpServerRequest.HttpServerRequest, maxBytes = MAX_BODY_BYTES) =>
  Effect.gen(function*() {
    const declared = Number(request.headers["content-length"] ?? "0")
    if (declared > maxBytes) return yield* tooLarge
    // Read to the end, keeping at most maxBytes. (`request.arrayBuffer` destroys the socket when the limit is
    // exceeded, so a client streaming a chunked body got a connection reset instead of the 413.)
    const read = yield* Effect.mapError(
      Stream.runFold(request.stream, { parts: [] as Array<Uint8Array>, bytes: 0 }, (acc, chunk) => {
        acc.bytes += chunk.byteLength
        if (acc.bytes <= maxBytes) acc.parts.push(chunk)
        return acc
      }),
      () => invalid
    )
    if (read.bytes > maxBytes) return yield* tooLarge
    const text = new TextDecoder("utf-8", { fatal: false }).decode(Buffer.concat(read.parts))
    return yield* Either.try({ try: () => JSON.parse(text) as unknown, catch: () => invalid })
  })

/** Runs a validator; its message becomes a 400. */
export const validate = <A>(result: Either.Either<A, string>) =>
  Either.mapLeft(result, (error) => new BadRequest({ error }))
