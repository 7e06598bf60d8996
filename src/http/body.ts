/**
 * Reading a management JSON body: bounded, and every failure a 4xx with a JSON error instead of a defect. The body is
 * read here rather than by the HttpApi (whose reader turns malformed JSON into a defect, picks a parser by
 * Content-Type and resets the connection past its size limit), then decoded with the endpoint's payload Schema —
 * inside the handler, so a refusal is audited like any other, and after a lookup where that must come first.
 */
import { HttpServerRequest } from "@effect/platform"
import { Effect, Either, type Schema, Stream } from "effect"
import { BadRequest, PayloadTooLarge } from "../domain/errors.js"
import { decodePayload } from "../domain/validation.js"

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

/**
 * Decodes a parsed body with a payload Schema (src/domain/models.ts); a refusal is a 400 with the Schema's message.
 * For handlers that must look something up between reading the body and judging it.
 */
export const decodeBody = <A, I>(schema: Schema.Schema<A, I, never>) => {
  const decode = decodePayload(schema)
  return (body: unknown) => validate(decode(body))
}

/** The request's body, read as JSON and decoded with the endpoint's payload Schema. */
export const readPayload = <A, I>(schema: Schema.Schema<A, I, never>) => {
  const decode = decodeBody(schema)
  return (request: HttpServerRequest.HttpServerRequest) => Effect.flatMap(readJson(request), decode)
}
