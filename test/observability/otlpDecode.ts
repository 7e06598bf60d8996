/**
 * A protobuf wire-format reader for OTLP trace exports, written from opentelemetry-proto (trace/v1/trace.proto,
 * common/v1/common.proto) independently of src/observability/otlpProto.ts. It turns an `ExportTraceServiceRequest`
 * into the OTLP/JSON shape (hex ids, string nanos, `{ key, value: { stringValue | intValue | … } }` attributes), so
 * tests can read both protocols the same way. Unknown fields are skipped, as protobuf readers do.
 */

interface Field {
  readonly no: number
  readonly wire: number
  /** varint / fixed64 as bigint; length-delimited as bytes. */
  readonly value: bigint | Uint8Array
}

const fields = (b: Uint8Array): Array<Field> => {
  const out: Array<Field> = []
  let p = 0
  const varint = (): bigint => {
    let r = 0n
    let shift = 0n
    for (;;) {
      if (p >= b.length) throw new Error("truncated varint")
      const byte = b[p++]!
      r |= BigInt(byte & 0x7f) << shift
      if ((byte & 0x80) === 0) return r
      shift += 7n
      if (shift > 63n) throw new Error("varint too long")
    }
  }
  while (p < b.length) {
    const key = Number(varint())
    const no = key >> 3
    const wire = key & 7
    if (wire === 0) out.push({ no, wire, value: varint() })
    else if (wire === 1) {
      if (p + 8 > b.length) throw new Error("truncated fixed64")
      out.push({ no, wire, value: new DataView(b.buffer, b.byteOffset + p, 8).getBigUint64(0, true) })
      p += 8
    } else if (wire === 2) {
      const len = Number(varint())
      if (p + len > b.length) throw new Error(`truncated field ${no}`)
      out.push({ no, wire, value: b.subarray(p, p + len) })
      p += len
    } else if (wire === 5) p += 4
    else throw new Error(`unsupported wire type ${wire}`)
  }
  return out
}

const bytesOf = (f: Field) => f.value as Uint8Array
const text = (f: Field) => Buffer.from(bytesOf(f)).toString("utf8")
const hex = (f: Field) => Buffer.from(bytesOf(f)).toString("hex")

const anyValue = (b: Uint8Array): Record<string, unknown> => {
  const [f] = fields(b)
  if (f === undefined) return {}
  switch (f.no) {
    case 1:
      return { stringValue: text(f) }
    case 2:
      return { boolValue: f.value !== 0n }
    case 3:
      return { intValue: String(f.value) }
    case 4:
      return { doubleValue: new DataView(new BigUint64Array([f.value as bigint]).buffer).getFloat64(0, true) }
    case 5:
      // ArrayValue { repeated AnyValue values = 1 }
      return { arrayValue: { values: fields(bytesOf(f)).filter((v) => v.no === 1).map((v) => anyValue(bytesOf(v))) } }
    default:
      return { unknown: f.no }
  }
}

const keyValue = (b: Uint8Array) => {
  let key = ""
  let value: Record<string, unknown> = {}
  for (const f of fields(b)) {
    if (f.no === 1) key = text(f)
    else if (f.no === 2) value = anyValue(bytesOf(f))
  }
  return { key, value }
}

const span = (b: Uint8Array) => {
  const s: Record<string, unknown> = { attributes: [] as Array<unknown> }
  for (const f of fields(b)) {
    switch (f.no) {
      case 1:
        s["traceId"] = hex(f)
        break
      case 2:
        s["spanId"] = hex(f)
        break
      case 4:
        s["parentSpanId"] = hex(f)
        break
      case 5:
        s["name"] = text(f)
        break
      case 6:
        s["kind"] = Number(f.value)
        break
      case 7:
        s["startTimeUnixNano"] = String(f.value)
        break
      case 8:
        s["endTimeUnixNano"] = String(f.value)
        break
      case 9:
        ;(s["attributes"] as Array<unknown>).push(keyValue(bytesOf(f)))
        break
      case 15: {
        const code = fields(bytesOf(f)).find((x) => x.no === 3)
        s["status"] = { code: code === undefined ? 0 : Number(code.value) }
        break
      }
    }
  }
  return s
}

/** An `ExportTraceServiceRequest` in the OTLP/JSON shape. */
export const decodeTraces = (body: Uint8Array) => ({
  resourceSpans: fields(body).filter((f) => f.no === 1).map((rs) => {
    const out = { resource: { attributes: [] as Array<unknown> }, scopeSpans: [] as Array<unknown> }
    for (const f of fields(bytesOf(rs))) {
      if (f.no === 1) {
        out.resource.attributes = fields(bytesOf(f)).filter((a) => a.no === 1).map((a) => keyValue(bytesOf(a)))
      } else if (f.no === 2) {
        const ss = { scope: {} as Record<string, string>, spans: [] as Array<unknown> }
        for (const g of fields(bytesOf(f))) {
          if (g.no === 1) {
            for (const h of fields(bytesOf(g))) {
              if (h.no === 1) ss.scope["name"] = text(h)
              else if (h.no === 2) ss.scope["version"] = text(h)
            }
          } else if (g.no === 2) ss.spans.push(span(bytesOf(g)))
        }
        out.scopeSpans.push(ss)
      }
    }
    return out
  })
})
