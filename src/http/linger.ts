/**
 * Answering a request whose body will not be read, without the kernel resetting the connection under the answer.
 *
 * Closing a socket that still has unread input makes the kernel send RST instead of FIN: a client that is still
 * sending then fails with EPIPE / ECONNRESET, usually before it has read the answer that was already on its way (and
 * an RST drops whatever of the answer the kernel had not sent yet). So such an answer carries `Connection: close`
 * and the connection closes lingering: the answer is flushed and our side half-closed (FIN), up to `bytes` more of
 * the client's input are read and discarded, and the socket is destroyed after at most `ms` — sooner when the
 * request ends or the client closes its side. Past `bytes` reading stops, so the client's writes block (rather than
 * fail) while it reads the answer; nothing is ever buffered.
 */
import type { IncomingMessage, ServerResponse } from "node:http"

/** Input read and discarded after such an answer, at most. */
export const LINGER_BYTES = 64 * 1024
/** How long the connection is kept after such an answer, at most. */
export const LINGER_MS = 2_000

/**
 * Makes the answer about to be written on `res` close its connection lingering. Call before `res.end()`; sets
 * `Connection: close` when the headers are not written yet (otherwise the caller must have set it).
 */
export const closeLingering = (
  req: IncomingMessage,
  res: ServerResponse,
  bytes = LINGER_BYTES,
  ms = LINGER_MS
): void => {
  const socket = req.socket
  if (!res.headersSent) res.setHeader("connection", "close")
  if (!req.complete) {
    let read = 0
    // A listener of our own also keeps Node from dumping the body (reading all of it) once the answer is sent.
    req.on("data", (chunk: Buffer) => {
      read += chunk.length
      if (read > bytes) req.pause()
    })
    req.resume()
  }
  let timer: NodeJS.Timeout | undefined
  const destroy = () => {
    clearTimeout(timer)
    socket.destroy()
  }
  const destroyWhenFlushed = () => {
    if (socket.writableFinished || socket.destroyed) destroy()
    else socket.once("finish", destroy)
  }
  socket.once("close", () => clearTimeout(timer))
  // Node ends and destroys a `Connection: close` socket through destroySoon() as soon as the answer is written; for
  // this one it ends it and lingers instead.
  socket.destroySoon = () => {
    if (socket.writable) socket.end()
    if (req.complete) return destroyWhenFlushed()
    timer = setTimeout(destroy, ms)
    timer.unref()
    req.once("end", destroyWhenFlushed)
    socket.once("end", destroyWhenFlushed)
  }
}
