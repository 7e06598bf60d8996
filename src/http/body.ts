/**
 * Reading a management JSON body: bounded, and every failure a 4xx with a JSON error instead of a defect. The body is
 * read here rather than by the HttpApi (whose reader turns malformed JSON into a defect, picks a parser by
 * Content-Type and resets the connection past its size limit), then decoded with the endpoint's payload Schema —
 * inside the handler, so a refusal is audited like any other, and after a lookup where that must come first.
 */
import { HttpServerRequest } from "@effect/platform"
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Effect, Either, type Schema } from "effect"
import type { IncomingMessage } from "node:http"
import { BadRequest, PayloadTooLarge } from "../domain/errors.js"
import { decodePayload } from "../domain/validation.js"

export const MAX_BODY_BYTES = 2 * 1024 * 1024

const tooLarge = new PayloadTooLarge({ error: "request body too large" })
const invalid = new BadRequest({ error: "invalid request body" })

interface Read {
  readonly parts: Array<Uint8Array>
  bytes: number
}

/**
 * The body of a node:http request, read with its own events. Effect's Stream over the same readable costs about a
 * millisecond of CPU per request (fibers and queues for a body of a few hundred bytes): as much as the rest of a
 * token creation together.
 */
const readNode = (source: IncomingMessage, maxBytes: number) =>
  Effect.async<Read, BadRequest>((resume) => {
    const read: Read = { parts: [], bytes: 0 }
    const onData = (chunk: Buffer) => {
      read.bytes += chunk.byteLength
      if (read.bytes <= maxBytes) read.parts.push(chunk)
    }
    const finish = (outcome: Effect.Effect<Read, BadRequest>) => {
      source.off("data", onData)
      source.off("end", onEnd)
      source.off("error", onFailure)
      source.off("close", onClose)
      resume(outcome)
    }
    const onEnd = () => finish(Effect.succeed(read))
    const onFailure = () => finish(Effect.fail(invalid))
    // closed before its end: the client went away mid-body
    const onClose = () => {
      if (!source.readableEnded) finish(Effect.fail(invalid))
    }
    if (source.readableEnded) return resume(Effect.succeed(read))
    source.on("data", onData)
    source.once("end", onEnd)
    source.once("error", onFailure)
    source.once("close", onClose)
    return Effect.sync(() => {
      source.off("data", onData)
      source.off("end", onEnd)
      source.off("error", onFailure)
      source.off("close", onClose)
    })
  })

const utf8 = new TextDecoder("utf-8", { fatal: false })

export const readJson = (request: HttpServerRequest.HttpServerRequest, maxBytes = MAX_BODY_BYTES) =>
  readNodeJson(NodeHttpServerRequest.toIncomingMessage(request), maxBytes)

/** `readJson` of node:http's request. */
export const readNodeJson = (source: IncomingMessage, maxBytes = MAX_BODY_BYTES) =>
  Effect.gen(function*() {
    const declared = Number(source.headers["content-length"] ?? "0")
    if (declared > maxBytes) return yield* tooLarge
    // Read to the end, keeping at most maxBytes. (`request.arrayBuffer` destroys the socket when the limit is
    // exceeded, so a client streaming a chunked body got a connection reset instead of the 413.)
    const read = yield* readNode(source, maxBytes)
    if (read.bytes > maxBytes) return yield* tooLarge
    const text = utf8.decode(Buffer.concat(read.parts))
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
