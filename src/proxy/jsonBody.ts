/**
 * Reading and editing a JSON request body's top-level members without parsing all of it (pure, no I/O).
 *
 * A request body may be as large as MAX_REQUEST_SIZE (32 MB) and nested as deep as its sender likes: `JSON.parse` of
 * the whole of it would stall the event loop (30 MB take half a second). What the data plane needs from a body is a
 * few top-level members (`model`, `user`, `stream`, `stream_options`, whitelisted parameters): the object is scanned
 * once — strings are skipped with a native search for quotes, nesting is counted in a loop, never recursion — and
 * only the wanted values are parsed, each bounded in size.
 *
 * Edits are splices of the original bytes: everything the proxy does not change reaches the upstream byte for byte.
 */

export const QUOTE = 0x22
export const BACKSLASH = 0x5c
const isJsonSpace = (c: number | undefined) => c === 0x20 || c === 0x0a || c === 0x0d || c === 0x09

export const skipSpace = (b: Buffer, i: number): number => {
  while (isJsonSpace(b[i])) i++
  return i
}

/** Index just past the JSON string starting at `b[i]` (a quote), or -1. Quotes are found natively (memchr). */
export const stringEnd = (b: Buffer, i: number): number => {
  for (let from = i + 1;;) {
    const q = b.indexOf(QUOTE, from)
    if (q === -1) return -1
    let k = q - 1
    while (b[k] === BACKSLASH) k--
    if ((q - 1 - k) % 2 === 0) return q + 1
    from = q + 1
  }
}

/**
 * Index just past the JSON value starting at `b[i]`, or -1 when the body ends first; `depth` gets its deepest
 * nesting. Not a validator: it only has to find where a well-formed value ends (a malformed body is the upstream's
 * to refuse). A loop with a counter, never recursion.
 */
export const valueEnd = (b: Buffer, i: number, depth: { max: number }): number => {
  const c = b[i]
  if (c === QUOTE) return stringEnd(b, i)
  if (c === 0x7b || c === 0x5b) {
    let d = 0
    for (; i < b.length; i++) {
      const x = b[i]!
      if (x === QUOTE) {
        const e = stringEnd(b, i)
        if (e === -1) return -1
        i = e - 1
      } else if (x === 0x7b || x === 0x5b) {
        if (++d > depth.max) depth.max = d
      } else if (x === 0x7d || x === 0x5d) {
        if (--d === 0) return i + 1
      }
    }
    return -1
  }
  // A number, true, false or null: up to the next delimiter.
  while (i < b.length && b[i] !== 0x2c && b[i] !== 0x7d && b[i] !== 0x5d && !isJsonSpace(b[i])) i++
  return i
}

/** One member of the top-level object: where its key and value are in the body. */
export interface Member {
  /** The decoded key; undefined when it is longer than the scan was asked to decode. */
  readonly key: string | undefined
  readonly keyStart: number
  readonly valueStart: number
  readonly valueEnd: number
  /** Deepest nesting inside the value (0 for a scalar). */
  readonly depth: number
}

export interface ObjectScan {
  /** Index of the top-level `{`. */
  readonly open: number
  /** Index of the top-level `}`; -1 when the scan stopped early (malformed or truncated body). */
  readonly close: number
  readonly members: ReadonlyArray<Member>
}

/**
 * The top-level members of a JSON object body, in order. Undefined when the body is not a JSON object. A body that
 * turns malformed part-way gives the members read so far (`close` = -1). Keys longer than `maxKeyBytes` (as
 * encoded) are not decoded.
 */
export const scanObject = (body: Buffer, maxKeyBytes = 256): ObjectScan | undefined => {
  const open = skipSpace(body, 0)
  if (body[open] !== 0x7b) return undefined
  const members: Array<Member> = []
  let i = skipSpace(body, open + 1)
  if (body[i] === 0x7d) return { open, close: i, members }
  for (;;) {
    if (body[i] !== QUOTE) return { open, close: -1, members }
    const keyStart = i
    const keyEnd = stringEnd(body, i)
    if (keyEnd === -1) return { open, close: -1, members }
    let key: string | undefined
    if (keyEnd - i <= maxKeyBytes) {
      if (body.subarray(i, keyEnd).includes(BACKSLASH)) {
        try {
          key = JSON.parse(body.toString("utf8", i, keyEnd)) as string
        } catch {
          return { open, close: -1, members }
        }
      } else key = body.toString("utf8", i + 1, keyEnd - 1)
    }
    i = skipSpace(body, keyEnd)
    if (body[i] !== 0x3a) return { open, close: -1, members }
    i = skipSpace(body, i + 1)
    const depth = { max: 0 }
    const end = valueEnd(body, i, depth)
    if (end === -1 || end === i) return { open, close: -1, members }
    members.push({ key, keyStart, valueStart: i, valueEnd: end, depth: depth.max })
    i = skipSpace(body, end)
    if (body[i] === 0x7d) return { open, close: i, members }
    if (body[i] !== 0x2c) return { open, close: -1, members }
    i = skipSpace(body, i + 1)
  }
}

/** Where a request keeps the last body it scanned: the stages that read one body's members scan it once. */
export interface ScanMemo {
  scannedBody: Buffer | undefined
  scan: ObjectScan | undefined
}

/** `scanObject(body)`, or the scan `memo` holds of this very body. */
export const scanOnce = (body: Buffer, memo: ScanMemo | undefined): ObjectScan | undefined => {
  if (memo === undefined) return scanObject(body)
  if (memo.scannedBody !== body) {
    memo.scan = scanObject(body)
    memo.scannedBody = body
  }
  return memo.scan
}

/** The occurrences of `key` among the scanned members (a JSON object may name a key twice; parsers disagree which wins). */
export const membersNamed = (scan: ObjectScan, key: string): ReadonlyArray<Member> =>
  scan.members.filter((m) => m.key === key)

/** A member's value parsed, or undefined when it is larger than `maxBytes`, deeper than `maxDepth` or not JSON. */
export const parseMember = (body: Buffer, m: Member, maxBytes = 64 * 1024, maxDepth = 32): unknown => {
  if (m.valueEnd - m.valueStart > maxBytes || m.depth > maxDepth) return undefined
  try {
    return JSON.parse(body.toString("utf8", m.valueStart, m.valueEnd))
  } catch {
    return undefined
  }
}

/**
 * The string value of top-level `key` when it occurs exactly once as a string (at most `maxBytes`); undefined when
 * it is absent, not a string, too long, or named twice (ambiguous: never guess which one the upstream reads).
 */
export const stringMember = (body: Buffer, scan: ObjectScan, key: string, maxBytes = 4096): string | undefined => {
  const found = membersNamed(scan, key)
  if (found.length !== 1) return undefined
  const v = parseMember(body, found[0]!, maxBytes, 0)
  return typeof v === "string" ? v : undefined
}

/** `body` with `text` in place of bytes `start` to `end`. */
export const splice = (body: Buffer, start: number, end: number, text: string): Buffer => {
  const insert = Buffer.from(text, "utf8")
  return Buffer.concat(
    [body.subarray(0, start), insert, body.subarray(end)],
    body.length - (end - start) + insert.length
  )
}

/**
 * `body` with the member `"key": <json>` added first in the top-level object (the caller checked it is absent):
 * every other byte is unchanged.
 */
export const insertMember = (body: Buffer, scan: ObjectScan, key: string, json: string): Buffer => {
  const member = `${JSON.stringify(key)}:${json}`
  const empty = scan.members.length === 0
  return splice(body, scan.open + 1, scan.open + 1, empty ? member : `${member},`)
}
