/**
 * UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then random bits. Ids made by one process are strictly increasing
 * (a 12-bit counter in `rand_a` orders ids of the same millisecond), so sorting audit events by (timestamp, id)
 * gives the order they were recorded in. Audit events, tokens and generated request ids get them: a new row's id
 * lands at the end of its indexes instead of on a random page of each (on SQLite at a million tokens, random token
 * ids cost ~20 % of the creation rate: docs/performance.md "Token creation").
 */
import { randomFillSync } from "node:crypto"

let lastMs = -1
let counter = 0

// One 4 KiB draw from the CSPRNG serves 409 ids: randomBytes(16) per id costs ~6 µs, a pooled slice ~10 ns.
const POOL_IDS = 409
const pool = Buffer.alloc(POOL_IDS * 10)
let poolIndex = POOL_IDS

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
  if (poolIndex === POOL_IDS) {
    randomFillSync(pool)
    poolIndex = 0
  }
  const bytes = Buffer.allocUnsafe(16)
  pool.copy(bytes, 6, poolIndex * 10, poolIndex * 10 + 10)
  poolIndex++
  bytes.writeUIntBE(ms, 0, 6)
  bytes[6] = 0x70 | (counter >> 8)
  bytes[7] = counter & 0xff
  bytes[8] = 0x80 | (bytes[8]! & 0x3f)
  const hex = bytes.toString("hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`
}
