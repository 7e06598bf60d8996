/**
 * Checks a keyset-paged listing against the naive reference (the expected ids in order): every page forwards from
 * the first, backwards from the last, and past both ends, each with the right has_next / has_prev; cursors go
 * through their wire form, so each database's own time text must be accepted back.
 */
import { Effect, Either } from "effect"
import { expect } from "vitest"
import { decodeCursor, encodeCursor } from "../../src/http/cursor.js"
import type { KeysetPage, PagePosition, PageRequest, RowKey } from "../../src/store/keyset.js"

const roundTrip = (direction: "after" | "before", key: RowKey): PagePosition => {
  // Through the wire form, so a cursor of each database's own time text is accepted back.
  const decoded = decodeCursor(encodeCursor(direction, key))
  if (Either.isLeft(decoded)) throw new Error(`cursor of ${JSON.stringify(key)} refused: ${decoded.left}`)
  return decoded.right
}

const checkPage = <A>(
  page: KeysetPage<A>,
  expected: { readonly rows: ReadonlyArray<string>; readonly hasNext: boolean; readonly hasPrev: boolean },
  idOf: (a: A) => string,
  label: string
) => {
  expect({ rows: page.rows.map(idOf), hasNext: page.hasNext, hasPrev: page.hasPrev }, label).toEqual(expected)
}

/** Reads every page forwards from the first, backwards from the last, and past both ends; compares to `ref`. */
export const walk = <A>(
  list: (request: PageRequest) => Effect.Effect<KeysetPage<A>, unknown>,
  ref: ReadonlyArray<string>,
  size: number,
  idOf: (a: A) => string,
  label: string
) =>
  Effect.gen(function*() {
    const n = ref.length
    // forwards
    let position: PagePosition = { _tag: "first" }
    let lastPage: KeysetPage<A> | undefined
    for (let start = 0;; start += size) {
      const page: KeysetPage<A> = yield* list({ limit: size, position })
      checkPage(
        page,
        { rows: ref.slice(start, start + size), hasNext: start + size < n, hasPrev: start > 0 },
        idOf,
        `${label} forwards from ${start}`
      )
      lastPage = page
      if (!page.hasNext) break
      position = roundTrip("after", page.lastKey!)
    }
    // past the end: after the last row, before the first
    if (n > 0) {
      const end = yield* list({ limit: size, position: roundTrip("after", lastPage.lastKey!) })
      checkPage(end, { rows: [], hasNext: false, hasPrev: true }, idOf, `${label} after the last row`)
      const first = yield* list({ limit: size, position: { _tag: "first" } })
      const start = yield* list({ limit: size, position: roundTrip("before", first.firstKey!) })
      checkPage(start, { rows: [], hasNext: true, hasPrev: false }, idOf, `${label} before the first row`)
    }
    // backwards from the last page
    position = { _tag: "last" }
    for (let end = n;; end -= size) {
      const from = Math.max(0, end - size)
      const page: KeysetPage<A> = yield* list({ limit: size, position })
      checkPage(
        page,
        { rows: ref.slice(from, end), hasNext: end < n, hasPrev: from > 0 },
        idOf,
        `${label} backwards to ${end}`
      )
      if (!page.hasPrev) break
      position = roundTrip("before", page.firstKey!)
    }
  })
