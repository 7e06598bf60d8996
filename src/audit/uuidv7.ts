/**
 * UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits. Ids made by one process are strictly increasing
 * (a 12-bit counter in `rand_a` orders ids of the same millisecond), so sorting audit events by (timestamp, id)
 * gives the order they were recorded in.
 */
import { randomBytes } from "node:crypto"

let lastMs = -1
let counter = 0

export const uuidv7 = (nowMs: number = Date.now()): string => {
  let ms = Math.max(nowMs, lastMs)
  if (ms === lastMs) {
    counter++
    if (counter > 0xfff) {
      // 4096 ids in one millisecond: borrow the next millisecond rather than lose the ordering.
      ms++
      counter = 0
    }
  } else {
    counter = 0
  }
  lastMs = ms
  const bytes = randomBytes(16)
  bytes.writeUIntBE(ms, 0, 6)
  bytes[6] = 0x70 | (counter >> 8)
  bytes[7] = counter & 0xff
  bytes[8] = 0x80 | (bytes[8]! & 0x3f)
  const hex = bytes.toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}
