/**
 * Listing cursors on the wire: `next_cursor` / `prev_cursor` of a page are the key of its last / first row and a
 * direction (src/store/keyset.ts), as base64url JSON. Clients treat them as opaque; `last` asks for the last page.
 */
import { Either } from "effect"
import type { PagePosition, RowKey } from "../store/keyset.js"

export const encodeCursor = (direction: "after" | "before", key: RowKey): string =>
  Buffer.from(JSON.stringify([direction === "after" ? "a" : "b", key.time, key.id])).toString("base64url")

// The time as either database prints it: ISO 8601 from SQLite, `2026-01-02 03:04:05.123456+00` from PostgreSQL.
const TIME = /^(\d{4})-(\d{2})-(\d{2})[T ](\d{2}):(\d{2}):(\d{2})(?:\.\d{1,9})?(?:Z|[+-](?:0\d|1[0-5])(?::?[0-5]\d)?)$/
const ID = /^[0-9A-Za-z._:-]{1,128}$/

/** A valid calendar time: the database would refuse `2026-13-45` with an error instead of a 400. */
const validTime = (time: string) => {
  const m = TIME.exec(time)
  if (m === null) return false
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number
  ]
  const date = new Date(Date.UTC(year, month - 1, day))
  return date.getUTCFullYear() === year && date.getUTCMonth() === month - 1 && date.getUTCDate() === day &&
    hour < 24 && minute < 60 && second < 60
}

/** `undefined`/empty: the first page; `last`: the last page; else a cursor from an earlier answer. */
export const decodeCursor = (raw: string | undefined): Either.Either<PagePosition, string> => {
  if (raw === undefined || raw === "") return Either.right({ _tag: "first" })
  if (raw === "last") return Either.right({ _tag: "last" })
  const invalid = Either.left("invalid cursor")
  if (raw.length > 512 || !/^[A-Za-z0-9_-]+$/.test(raw)) return invalid
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(raw, "base64url").toString("utf8"))
  } catch {
    return invalid
  }
  if (!Array.isArray(parsed) || parsed.length !== 3) return invalid
  const [direction, time, id] = parsed as Array<unknown>
  if ((direction !== "a" && direction !== "b") || typeof time !== "string" || typeof id !== "string") return invalid
  if (!validTime(time) || !ID.test(id)) return invalid
  const key: RowKey = { time, id }
  return Either.right(direction === "a" ? { _tag: "after", key } : { _tag: "before", key })
}
