/**
 * The OTLP protobuf wire format for trace export (opentelemetry-proto `ExportTraceServiceRequest`), only what the
 * data plane's spans need, written straight into one growable Buffer: no message objects, no BigInt, no per-field
 * Uint8Arrays. @effect/opentelemetry's own protobuf encoder allocates per field (BigInt varints, DataViews), which
 * is fine for the management API's few spans but not for a span pair on every proxied request
 * (docs/performance.md, "Observability").
 *
 * Field numbers (opentelemetry/proto/trace/v1/trace.proto, common/v1/common.proto):
 *   ExportTraceServiceRequest.resource_spans = 1
 *   ResourceSpans   resource = 1, scope_spans = 2
 *   ScopeSpans      scope = 1, spans = 2
 *   Span            trace_id = 1, span_id = 2, parent_span_id = 4, name = 5, kind = 6,
 *                   start_time_unix_nano = 7 (fixed64), end_time_unix_nano = 8 (fixed64), attributes = 9, status = 15
 *   Status          code = 3
 *   KeyValue        key = 1, value = 2
 *   AnyValue        string_value = 1, bool_value = 2, int_value = 3, double_value = 4, array_value = 5
 *   ArrayValue      values = 1
 *   Resource        attributes = 1
 *   InstrumentationScope name = 1, version = 2
 */

/** (field << 3) | wire type; wire types: 0 varint, 1 fixed64, 2 length-delimited. */
const T = {
  resourceSpans: 0x0a,
  resource: 0x0a,
  scopeSpans: 0x12,
  scope: 0x0a,
  span: 0x12,
  traceId: 0x0a,
  spanId: 0x12,
  parentSpanId: 0x22,
  name: 0x2a,
  kind: 0x30,
  start: 0x39,
  end: 0x41,
  attribute: 0x4a,
  status: 0x7a,
  statusCode: 0x18,
  kvKey: 0x0a,
  kvValue: 0x12,
  stringValue: 0x0a,
  boolValue: 0x10,
  intValue: 0x18,
  doubleValue: 0x21,
  arrayValue: 0x2a,
  arrayValues: 0x0a,
  resourceAttribute: 0x0a,
  scopeName: 0x0a,
  scopeVersion: 0x12
} as const

export type AttributeValue = string | number | boolean | undefined
export type Attributes = Record<string, AttributeValue>

const varintSize = (n: number): number => {
  let size = 1
  while (n >= 0x80) {
    n = Math.floor(n / 0x80)
    size++
  }
  return size
}

// `KeyValue.key` fields (tag, length, UTF-8 bytes) of the attribute names seen, which are a small fixed set.
const keyFields = new Map<string, Buffer>()
export const keyField = (key: string): Buffer => {
  let f = keyFields.get(key)
  if (f === undefined) {
    const bytes = Buffer.from(key, "utf8")
    f = Buffer.concat([Buffer.from([T.kvKey]), encodeVarint(bytes.length), bytes])
    if (keyFields.size < 256) keyFields.set(key, f)
  }
  return f
}

const encodeVarint = (n: number): Buffer => {
  const w = new ProtoWriter(16)
  w.varint(n)
  return Buffer.from(w.view())
}

/** A growable byte buffer with protobuf writers (and `text` for bodies that are not protobuf). */
export class ProtoWriter {
  buf: Buffer
  pos = 0

  constructor(size = 64 * 1024) {
    this.buf = Buffer.allocUnsafe(size)
  }

  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return
    const next = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.pos + n))
    this.buf.copy(next, 0, 0, this.pos)
    this.buf = next
  }

  /** Non-negative integer below 2^53. */
  varint(n: number): void {
    this.ensure(8)
    const b = this.buf
    let p = this.pos
    while (n >= 0x80) {
      b[p++] = (n % 0x80) | 0x80
      n = Math.floor(n / 0x80)
    }
    b[p++] = n
    this.pos = p
  }

  bytes(tag: number, src: Uint8Array, start: number, length: number): void {
    this.ensure(length + 2)
    const b = this.buf
    let p = this.pos
    b[p++] = tag
    b[p++] = length
    for (let i = 0; i < length; i++) b[p++] = src[start + i]!
    this.pos = p
  }

  /** A length-delimited UTF-8 string field. */
  string(tag: number, s: string): void {
    const n = s.length
    this.ensure(3 * n + 6)
    const b = this.buf
    b[this.pos] = tag
    if (n < 0x80) {
      // ASCII fast path: one length byte, one byte per character.
      const start = this.pos + 2
      let i = 0
      for (; i < n; i++) {
        const c = s.charCodeAt(i)
        if (c >= 0x80) break
        b[start + i] = c
      }
      if (i === n) {
        b[this.pos + 1] = n
        this.pos = start + n
        return
      }
    }
    this.pos++
    this.varint(Buffer.byteLength(s, "utf8"))
    this.pos += b.write(s, this.pos, "utf8")
  }

  /** fixed64 nanoseconds from epoch milliseconds (fractional), exact to the nanosecond without BigInt. */
  fixed64Nanos(tag: number, ms: number): void {
    this.ensure(9)
    let whole = Math.floor(ms)
    let frac = Math.round((ms - whole) * 1_000_000)
    if (frac >= 1_000_000) {
      whole += 1
      frac -= 1_000_000
    }
    // ns = whole·10^6 + frac = (hiMs·10^6)·2^16 + (loMs·10^6 + frac), every product below 2^53.
    const hiMs = Math.floor(whole / 0x10000)
    const a = hiMs * 1_000_000
    const low = (a % 0x10000) * 0x10000 + (whole - hiMs * 0x10000) * 1_000_000 + frac
    const lo32 = low % 0x100000000
    const hi32 = Math.floor(a / 0x10000) + Math.floor(low / 0x100000000)
    const b = this.buf
    b[this.pos++] = tag
    b.writeUInt32LE(lo32, this.pos)
    b.writeUInt32LE(hi32 >>> 0, this.pos + 4)
    this.pos += 8
  }

  /** Starts a length-delimited message: its tag and 2 reserved length bytes. Returns the position for `end`. */
  begin(tag: number): number {
    this.ensure(3)
    this.buf[this.pos++] = tag
    const at = this.pos
    this.pos += 2
    return at
  }

  /** Ends the message `begin` started: writes its length (moving its bytes when it is not 2 bytes long). */
  end(at: number): void {
    const len = this.pos - at - 2
    const b = this.buf
    if (len < 0x80) {
      b.copyWithin(at + 1, at + 2, this.pos)
      b[at] = len
      this.pos--
    } else if (len < 0x4000) {
      b[at] = (len & 0x7f) | 0x80
      b[at + 1] = len >> 7
    } else {
      const extra = varintSize(len) - 2
      this.ensure(extra)
      this.buf.copyWithin(at + 2 + extra, at + 2, this.pos)
      const end = this.pos + extra
      this.pos = at
      this.varint(len)
      this.pos = end
    }
  }

  /** One `KeyValue` (field `tag`, default Span.attributes); undefined values are skipped. */
  attribute(tag: number, key: string, v: AttributeValue): void {
    this.attr(keyField(key), v, tag)
  }

  /** One `KeyValue` whose `key` field (tag, length, bytes) is `k` (see `keyField`); undefined values are skipped. */
  attr(k: Buffer, v: AttributeValue, tag: number = T.attribute): void {
    if (v === undefined) return
    if (typeof v === "string" && k.length + 4 + v.length < 0x80) {
      // Short string: if it is ASCII every length fits one byte, so write it in one pass (else the general path).
      const n = v.length
      this.ensure(k.length + 3 * n + 6)
      const b = this.buf
      const start = this.pos
      let p = start
      b[p++] = tag
      b[p++] = k.length + 4 + n
      for (let i = 0; i < k.length; i++) b[p++] = k[i]!
      b[p++] = T.kvValue
      b[p++] = n + 2
      b[p++] = T.stringValue
      b[p++] = n
      let i = 0
      for (; i < n; i++) {
        const c = v.charCodeAt(i)
        if (c >= 0x80) break
        b[p++] = c
      }
      if (i === n) {
        this.pos = p
        return
      }
      this.pos = start
    } else if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0 && k.length < 0x60) {
      const vs = varintSize(v)
      this.ensure(k.length + vs + 6)
      const b = this.buf
      b[this.pos++] = tag
      b[this.pos++] = k.length + 3 + vs
      for (let i = 0; i < k.length; i++) b[this.pos++] = k[i]!
      b[this.pos++] = T.kvValue
      b[this.pos++] = 1 + vs
      b[this.pos++] = T.intValue
      this.varint(v)
      return
    }
    const kv = this.begin(tag)
    this.ensure(k.length)
    k.copy(this.buf, this.pos)
    this.pos += k.length
    const any = this.begin(T.kvValue)
    if (typeof v === "string") this.string(T.stringValue, v)
    else if (typeof v === "boolean") {
      this.ensure(2)
      this.buf[this.pos++] = T.boolValue
      this.buf[this.pos++] = v ? 1 : 0
    } else if (Number.isSafeInteger(v) && v >= 0) {
      this.ensure(11)
      this.buf[this.pos++] = T.intValue
      this.varint(v)
    } else {
      this.ensure(9)
      this.buf[this.pos++] = T.doubleValue
      this.buf.writeDoubleLE(v, this.pos)
      this.pos += 8
    }
    this.end(any)
    this.end(kv)
  }

  /** One `KeyValue` whose value is always a double (an integral number stays a double); undefined is skipped. */
  attrDouble(k: Buffer, v: number | undefined, tag: number = T.attribute): void {
    if (v === undefined) return
    // tag, length, key, value tag, length (11: double tag + 8 bytes + ...), double tag, 8 bytes: all lengths < 0x80
    // for the short keys used here; longer keys take the general path.
    if (k.length + 11 >= 0x80) {
      const kv = this.begin(tag)
      this.ensure(k.length)
      k.copy(this.buf, this.pos)
      this.pos += k.length
      const any = this.begin(T.kvValue)
      this.ensure(9)
      this.buf[this.pos++] = T.doubleValue
      this.buf.writeDoubleLE(v, this.pos)
      this.pos += 8
      this.end(any)
      this.end(kv)
      return
    }
    this.ensure(k.length + 13)
    const b = this.buf
    b[this.pos++] = tag
    b[this.pos++] = k.length + 11
    for (let i = 0; i < k.length; i++) b[this.pos++] = k[i]!
    b[this.pos++] = T.kvValue
    b[this.pos++] = 9
    b[this.pos++] = T.doubleValue
    b.writeDoubleLE(v, this.pos)
    this.pos += 8
  }

  /** One `KeyValue` whose value is an array of strings (`ArrayValue`). */
  attrStrings(k: Buffer, values: ReadonlyArray<string>, tag: number = T.attribute): void {
    const kv = this.begin(tag)
    this.ensure(k.length)
    k.copy(this.buf, this.pos)
    this.pos += k.length
    const any = this.begin(T.kvValue)
    const array = this.begin(T.arrayValue)
    for (const v of values) {
      const item = this.begin(T.arrayValues)
      this.string(T.stringValue, v)
      this.end(item)
    }
    this.end(array)
    this.end(any)
    this.end(kv)
  }

  /** A string's UTF-8 bytes, as they are (no tag, no length): for text bodies built in the same buffer. */
  text(s: string): void {
    this.ensure(3 * s.length)
    this.pos += this.buf.write(s, this.pos, "utf8")
  }

  /** Bytes encoded earlier (e.g. a cached run of attributes), as they are. */
  raw(bytes: Uint8Array): void {
    this.ensure(bytes.length)
    // TypedArray#set: cheaper than Buffer#copy's argument checks for the short runs copied here.
    this.buf.set(bytes, this.pos)
    this.pos += bytes.length
  }

  /** The bytes written so far (a view; copy it before writing on). */
  view(): Buffer {
    return this.buf.subarray(0, this.pos)
  }
}

/**
 * Starts one `ScopeSpans.spans` entry (tag, length, Span) up to its attributes; write them with `w.attr`, then
 * `endSpan`. Ids are read from byte arrays at the given offsets (16 bytes of trace id, 8 of span ids).
 */
export const beginSpan = (
  w: ProtoWriter,
  traceId: Uint8Array,
  traceIdAt: number,
  spanId: Uint8Array,
  spanIdAt: number,
  parentSpanId: Uint8Array | undefined,
  parentSpanIdAt: number,
  name: string,
  /** 2 = SERVER, 3 = CLIENT. */
  kind: number,
  startMs: number,
  endMs: number
): number => {
  const at = w.begin(T.span)
  w.bytes(T.traceId, traceId, traceIdAt, 16)
  w.bytes(T.spanId, spanId, spanIdAt, 8)
  if (parentSpanId !== undefined) w.bytes(T.parentSpanId, parentSpanId, parentSpanIdAt, 8)
  w.string(T.name, name)
  w.ensure(2)
  w.buf[w.pos++] = T.kind
  w.buf[w.pos++] = kind
  w.fixed64Nanos(T.start, startMs)
  w.fixed64Nanos(T.end, endMs)
  return at
}

/** Ends the span `beginSpan` started, with status OK or ERROR. */
export const endSpan = (w: ProtoWriter, at: number, error: boolean): void => {
  w.ensure(4)
  // Status { code: 1 OK | 2 ERROR }
  w.buf[w.pos++] = T.status
  w.buf[w.pos++] = 2
  w.buf[w.pos++] = T.statusCode
  w.buf[w.pos++] = error ? 2 : 1
  w.end(at)
}

/** `Resource` and `InstrumentationScope` message bodies, encoded once per exporter. */
export const encodeResource = (
  attributes: ReadonlyArray<{ readonly key: string; readonly value: { readonly stringValue?: string | null } }>
): Buffer => {
  const w = new ProtoWriter(1024)
  for (const a of attributes) w.attribute(T.resourceAttribute, a.key, a.value.stringValue ?? undefined)
  return Buffer.from(w.view())
}

export const encodeScope = (name: string, version: string): Buffer => {
  const w = new ProtoWriter(256)
  w.string(T.scopeName, name)
  w.string(T.scopeVersion, version)
  return Buffer.from(w.view())
}

/**
 * The start of an `ExportTraceServiceRequest` (one ResourceSpans with one ScopeSpans) whose spans — concatenated
 * `beginSpan`/`endSpan` output — follow it and are `spansLength` bytes long.
 */
export const exportHeader = (resource: Buffer, scope: Buffer, spansLength: number): Buffer => {
  const scopeSpansLen = 1 + varintSize(scope.length) + scope.length + spansLength
  const resourceSpansLen = 1 + varintSize(resource.length) + resource.length + 1 + varintSize(scopeSpansLen) +
    scopeSpansLen
  const w = new ProtoWriter(exportHeaderRoom(resource, scope))
  w.buf[w.pos++] = T.resourceSpans
  w.varint(resourceSpansLen)
  w.buf[w.pos++] = T.resource
  w.varint(resource.length)
  w.raw(resource)
  w.buf[w.pos++] = T.scopeSpans
  w.varint(scopeSpansLen)
  w.buf[w.pos++] = T.scope
  w.varint(scope.length)
  w.raw(scope)
  return Buffer.from(w.view())
}

/** Room `exportHeader` needs at most for this resource and scope: 4 tags and 4 length varints fit in 32 bytes. */
export function exportHeaderRoom(resource: Buffer, scope: Buffer): number {
  return 32 + resource.length + scope.length
}
