/** A small Prometheus text-format reader for tests: samples by name and labels. */
export interface Sample {
  readonly name: string
  readonly labels: Readonly<Record<string, string>>
  readonly value: number
}

const LINE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

export const parsePrometheus = (text: string): ReadonlyArray<Sample> => {
  const out: Array<Sample> = []
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const m = LINE.exec(line)
    if (!m) throw new Error(`not a Prometheus sample line: ${line}`)
    const labels: Record<string, string> = {}
    for (const l of (m[2] ?? "").matchAll(LABEL)) labels[l[1]!] = l[2]!.replace(/\\(.)/g, "$1")
    const raw = m[3]!
    out.push({ name: m[1]!, labels, value: raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw) })
  }
  return out
}

/** Sum of the samples named `name` whose labels include `labels`. */
export const value = (samples: ReadonlyArray<Sample>, name: string, labels: Record<string, string> = {}): number =>
  samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((a, s) => a + s.value, 0)

/** `le` → cumulative count of a histogram series. */
export const buckets = (
  samples: ReadonlyArray<Sample>,
  name: string,
  labels: Record<string, string> = {}
): Map<string, number> => {
  const m = new Map<string, number>()
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue
    if (!Object.entries(labels).every(([k, v]) => s.labels[k] === v)) continue
    m.set(s.labels["le"]!, (m.get(s.labels["le"]!) ?? 0) + s.value)
  }
  return m
}
