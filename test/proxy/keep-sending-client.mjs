// A raw-socket HTTP client in its own process (so its timing is not the server's event loop): it sends a request
// head, then body bytes in a loop for as long as the socket takes them, reading whatever the server answers, until
// it has read a whole JSON answer or the connection dies. Prints one JSON line per attempt:
// {"status": <first status line or 0>, "body": "...", "error": "EPIPE" | null}.
// Usage: node keep-sending-client.mjs <port> <cl|chunked> <attempts> <head as JSON string>
import { connect } from "node:net"

const [port, framing, attempts, headJson] = process.argv.slice(2)
const head = JSON.parse(headJson)
const chunk = Buffer.alloc(64 * 1024, 0x61)
const data = framing === "chunked"
  ? Buffer.concat([Buffer.from(chunk.length.toString(16) + "\r\n"), chunk, Buffer.from("\r\n")])
  : chunk

const attempt = () =>
  new Promise((resolve) => {
    const socket = connect(Number(port), "127.0.0.1")
    let text = ""
    let error = null
    let done = false
    const finish = () => {
      if (done) return
      done = true
      socket.destroy()
      const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(text)?.[1] ?? 0)
      resolve({ status, body: text.slice(text.indexOf("\r\n\r\n") + 4), error })
    }
    socket.on("data", (d) => {
      text += d.toString("latin1")
      const sep = text.indexOf("\r\n\r\n")
      const length = Number(/\r\ncontent-length: (\d+)/i.exec(text)?.[1] ?? -1)
      if (sep !== -1 && length >= 0 && text.length >= sep + 4 + length) finish()
    })
    socket.on("error", (e) => {
      error ??= e.code
    })
    socket.on("close", finish)
    setTimeout(finish, 10_000).unref()
    socket.on("connect", () => {
      socket.write(head)
      const pump = () => {
        while (!done && !socket.destroyed) {
          if (!socket.write(data)) return void socket.once("drain", pump)
        }
      }
      pump()
    })
  })

for (let i = 0; i < Number(attempts); i++) console.log(JSON.stringify(await attempt()))
