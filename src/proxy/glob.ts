/**
 * Globs as Go's `path.Match` reads them, matched in linear time (no backtracking): the parameter whitelist's
 * patterns (policy.ts) and the model scopes of projects and tokens (`allowed_models`). Pure, no I/O: the admin UI
 * and the payload Schemas use it too.
 */

/** One position of a glob chunk: a literal code point, `?`, or a class (`ranges` holds lo, hi pairs). */
type Atom =
  | { readonly kind: "char"; readonly cp: number }
  | { readonly kind: "any" }
  | { readonly kind: "class"; readonly negated: boolean; readonly ranges: ReadonlyArray<number> }

/** A run of atoms after any number of `*` (`star`). Every atom matches exactly one character. */
interface Chunk {
  readonly star: boolean
  readonly atoms: ReadonlyArray<Atom>
}

/** A compiled glob: `test(value)` runs in O(value length × pattern length), with no backtracking beyond a chunk. */
export interface Glob {
  readonly test: (value: string) => boolean
}

const SLASH = 0x2f
const cpLength = (cp: number) => (cp > 0xffff ? 2 : 1)

/** Go's getEsc: one class character (`\` escapes), which must be followed by more of the pattern. */
const classChar = (p: string, i: number): { readonly cp: number; readonly next: number } | undefined => {
  if (i >= p.length || p[i] === "-" || p[i] === "]") return undefined
  if (p[i] === "\\") {
    i++
    if (i >= p.length) return undefined
  }
  const cp = p.codePointAt(i)!
  const next = i + cpLength(cp)
  return next >= p.length ? undefined : { cp, next }
}

/** Parses a pattern into chunks, as Go's `path.Match` reads it; undefined when it is malformed. */
const parseGlob = (p: string): ReadonlyArray<Chunk> | undefined => {
  const chunks: Array<Chunk> = []
  let i = 0
  while (i < p.length) {
    let star = false
    while (p[i] === "*") {
      star = true
      i++
    }
    const atoms: Array<Atom> = []
    while (i < p.length && p[i] !== "*") {
      const c = p[i]!
      if (c === "?") {
        atoms.push({ kind: "any" })
        i++
      } else if (c === "\\") {
        if (i + 1 >= p.length) return undefined
        const cp = p.codePointAt(i + 1)!
        atoms.push({ kind: "char", cp })
        i += 1 + cpLength(cp)
      } else if (c === "[") {
        i++
        const negated = p[i] === "^"
        if (negated) i++
        const ranges: Array<number> = []
        for (;;) {
          if (p[i] === "]" && ranges.length > 0) {
            i++
            break
          }
          const lo = classChar(p, i)
          if (lo === undefined) return undefined
          let hi = lo
          if (p[lo.next] === "-") {
            const h = classChar(p, lo.next + 1)
            if (h === undefined) return undefined
            hi = h
          }
          ranges.push(lo.cp, hi.cp)
          i = hi.next
        }
        atoms.push({ kind: "class", negated, ranges })
      } else {
        const cp = p.codePointAt(i)!
        atoms.push({ kind: "char", cp })
        i += cpLength(cp)
      }
    }
    chunks.push({ star, atoms })
  }
  return chunks
}

/** Where `atoms` matched starting at `at` in `s` end, or -1. */
const matchChunk = (atoms: ReadonlyArray<Atom>, s: string, at: number): number => {
  for (const a of atoms) {
    if (at >= s.length) return -1
    const cp = s.codePointAt(at)!
    if (a.kind === "char") {
      if (cp !== a.cp) return -1
    } else if (a.kind === "any") {
      if (cp === SLASH) return -1
    } else {
      let inside = false
      for (let r = 0; r < a.ranges.length && !inside; r += 2) inside = a.ranges[r]! <= cp && cp <= a.ranges[r + 1]!
      if (inside === a.negated) return -1
    }
    at += cpLength(cp)
  }
  return at
}

/**
 * Go's `path.Match` algorithm: each chunk after a `*` takes its leftmost match (chunks have a fixed length, so the
 * leftmost one leaves the most for what follows and no earlier choice is ever revisited); the last chunk must end
 * the value. A `*` never skips a `/`.
 */
const matchChunks = (chunks: ReadonlyArray<Chunk>, s: string): boolean => {
  let at = 0
  for (let c = 0; c < chunks.length; c++) {
    const { atoms, star } = chunks[c]!
    const last = c === chunks.length - 1
    if (star && atoms.length === 0) return s.indexOf("/", at) === -1
    const end = matchChunk(atoms, s, at)
    if (end !== -1 && (!last || end === s.length)) {
      at = end
      continue
    }
    if (!star) return false
    let found = -1
    for (let i = at; i < s.length && found === -1;) {
      const cp = s.codePointAt(i)!
      if (cp === SLASH) break
      i += cpLength(cp)
      const e = matchChunk(atoms, s, i)
      if (e !== -1 && (!last || e === s.length)) found = e
    }
    if (found === -1) return false
    at = found
  }
  return at === s.length
}

const globCache = new Map<string, Glob | null>()

/**
 * Go `path.Match` semantics: `*` any run of non-`/` characters, `?` one non-`/` character, `[...]` a class
 * (`[^...]` negated, ranges `a-z`, `\` escapes inside), `\` escapes. A malformed pattern (unclosed or empty class,
 * trailing `\`, a range missing an end) matches nothing: null.
 */
export const compileGlob = (pattern: string): Glob | null => {
  const cached = globCache.get(pattern)
  if (cached !== undefined) return cached
  const chunks = parseGlob(pattern)
  const glob = chunks === undefined ? null : { test: (value: string) => matchChunks(chunks, value) }
  if (globCache.size < 10_000) globCache.set(pattern, glob)
  return glob
}
