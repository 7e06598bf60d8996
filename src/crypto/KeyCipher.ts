import { Context, Effect, Either, Layer, Option, Redacted, Schema } from "effect"
import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto"

const PREFIX = "enc:v1:"
const KEY_BYTES = 32
const NONCE_BYTES = 12
const TAG_BYTES = 16
const BASE64_RE = /^[A-Za-z0-9+/]*={0,2}$/

export class KeyDecryptError extends Schema.TaggedError<KeyDecryptError>()("KeyDecryptError", {
  reason: Schema.String
}) {}

export interface KeyCipherService {
  readonly enabled: boolean
  /** Returns `plain` unchanged when disabled, empty, or already encrypted. */
  readonly encrypt: (plain: string) => string
  /** Values without the `enc:v1:` prefix are legacy plaintext and returned as-is. */
  readonly decrypt: (stored: string) => Effect.Effect<string, KeyDecryptError>
}

// Buffer.from(..., "base64") silently skips invalid characters, so validate first
// to tell "not base64" apart from a real decode.
const decodeBase64 = (s: string): Option.Option<Buffer> => {
  if (!BASE64_RE.test(s)) return Option.none()
  const unpadded = s.replace(/=+$/, "")
  if (unpadded.length % 4 === 1) return Option.none()
  if (s.length !== unpadded.length && s.length % 4 !== 0) return Option.none()
  return Option.some(Buffer.from(s, "base64"))
}

export const parseEncryptionKey = (base64: string): Either.Either<Uint8Array, string> =>
  Option.match(decodeBase64(base64.trim()), {
    onNone: () => Either.left("must be base64 of exactly 32 bytes (not valid base64)"),
    onSome: (bytes) =>
      bytes.length === KEY_BYTES
        ? Either.right(new Uint8Array(bytes))
        : Either.left(`must be base64 of exactly 32 bytes (got ${bytes.length})`)
  })

const fail = (reason: string) => Effect.fail(new KeyDecryptError({ reason }))

const disabled: KeyCipherService = {
  enabled: false,
  encrypt: (plain) => plain,
  decrypt: (stored) =>
    stored.startsWith(PREFIX)
      ? fail("ENCRYPTION_KEY is not set but the stored key is encrypted")
      : Effect.succeed(stored)
}

const make = (key: Buffer): KeyCipherService => ({
  enabled: true,
  encrypt: (plain) => {
    if (plain === "" || plain.startsWith(PREFIX)) return plain
    const nonce = randomBytes(NONCE_BYTES)
    const cipher = createCipheriv("aes-256-gcm", key, nonce)
    const body = Buffer.concat([cipher.update(plain, "utf8"), cipher.final()])
    return PREFIX + Buffer.concat([nonce, body, cipher.getAuthTag()]).toString("base64")
  },
  decrypt: (stored) => {
    if (!stored.startsWith(PREFIX)) return Effect.succeed(stored)
    const raw = decodeBase64(stored.slice(PREFIX.length))
    if (Option.isNone(raw)) return fail("encrypted value is not valid base64")
    const bytes = raw.value
    if (bytes.length < NONCE_BYTES + TAG_BYTES) return fail("encrypted value is too short")
    // Never surface the underlying crypto error: the reason must stay free of key
    // material and ciphertext.
    return Effect.try({
      try: () => {
        const decipher = createDecipheriv("aes-256-gcm", key, bytes.subarray(0, NONCE_BYTES))
        decipher.setAuthTag(bytes.subarray(bytes.length - TAG_BYTES))
        const body = bytes.subarray(NONCE_BYTES, bytes.length - TAG_BYTES)
        return Buffer.concat([decipher.update(body), decipher.final()]).toString("utf8")
      },
      catch: () => new KeyDecryptError({ reason: "decryption failed (wrong ENCRYPTION_KEY or corrupted value)" })
    })
  }
})

export class KeyCipher extends Context.Tag("llm-proxy/KeyCipher")<KeyCipher, KeyCipherService>() {
  static readonly layer = (key: Option.Option<Redacted.Redacted<Uint8Array>>): Layer.Layer<KeyCipher> =>
    Layer.sync(KeyCipher, () =>
      Option.match(key, {
        onNone: () => disabled,
        onSome: (redacted) => {
          const bytes = Redacted.value(redacted)
          // Callers are expected to go through parseEncryptionKey; a wrong size here is a bug.
          if (bytes.length !== KEY_BYTES) throw new Error(`encryption key must be ${KEY_BYTES} bytes`)
          return make(Buffer.from(bytes))
        }
      }))
}
