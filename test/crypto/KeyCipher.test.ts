import { describe, expect, it } from "@effect/vitest"
import { Effect, Either, Option, Redacted } from "effect"
import { randomBytes } from "node:crypto"
import { KeyCipher, KeyDecryptError, parseEncryptionKey } from "../../src/crypto/KeyCipher.js"

const PLAIN = "sk-proj-1234567890abcdefghijklmnopqrstuvwxyz"
const keyA = randomBytes(32)
const keyB = randomBytes(32)

const withKey = (key: Uint8Array | undefined) =>
  KeyCipher.layer(key === undefined ? Option.none() : Option.some(Redacted.make(new Uint8Array(key))))

const cipherWith = (key: Uint8Array | undefined) => Effect.provide(KeyCipher, withKey(key))

const flipByte = (stored: string, index: number): string => {
  const bytes = Buffer.from(stored.slice("enc:v1:".length), "base64")
  bytes[index] = bytes[index]! ^ 0x01
  return "enc:v1:" + bytes.toString("base64")
}

const expectDecryptError = (e: unknown): KeyDecryptError => {
  expect(e).toBeInstanceOf(KeyDecryptError)
  return e as KeyDecryptError
}

describe("KeyCipher enabled", () => {
  it.effect("round-trips and uses the enc:v1 format", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      expect(c.enabled).toBe(true)
      const stored = c.encrypt(PLAIN)
      expect(stored).toMatch(/^enc:v1:[A-Za-z0-9+/]+={0,2}$/)
      expect(stored).not.toContain(PLAIN)
      // nonce 12 + ciphertext (same length as utf8 plaintext) + tag 16
      expect(Buffer.from(stored.slice(7), "base64").length).toBe(12 + PLAIN.length + 16)
      expect(yield* c.decrypt(stored)).toBe(PLAIN)
      const unicode = "ключ-🔑"
      expect(yield* c.decrypt(c.encrypt(unicode))).toBe(unicode)
    }))

  it.effect("uses a random nonce per encryption", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      const a = c.encrypt(PLAIN)
      const b = c.encrypt(PLAIN)
      expect(a).not.toBe(b)
      expect(yield* c.decrypt(a)).toBe(PLAIN)
      expect(yield* c.decrypt(b)).toBe(PLAIN)
    }))

  it.effect("leaves empty and already-encrypted values alone", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      expect(c.encrypt("")).toBe("")
      const stored = c.encrypt(PLAIN)
      expect(c.encrypt(stored)).toBe(stored)
    }))

  it.effect("passes legacy plaintext through decrypt", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      expect(yield* c.decrypt(PLAIN)).toBe(PLAIN)
      expect(yield* c.decrypt("")).toBe("")
    }))

  it.effect("rejects tampering with nonce, ciphertext or tag", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      const stored = c.encrypt(PLAIN)
      const total = Buffer.from(stored.slice(7), "base64").length
      for (const index of [0, 11, 12, 12 + 10, total - 16, total - 1]) {
        const e = yield* Effect.flip(c.decrypt(flipByte(stored, index)))
        expectDecryptError(e)
      }
    }))

  it.effect("fails with a KeyDecryptError that leaks nothing under the wrong key", () =>
    Effect.gen(function*() {
      const stored = (yield* cipherWith(keyA)).encrypt(PLAIN)
      const e = expectDecryptError(yield* Effect.flip((yield* cipherWith(keyB)).decrypt(stored)))
      const rendered = [e.reason, e.message, String(e), JSON.stringify(e), e.stack ?? ""].join("\n")
      for (
        const secret of [
          PLAIN,
          stored,
          stored.slice(7),
          keyA.toString("base64"),
          keyB.toString("base64"),
          keyA.toString("hex"),
          keyB.toString("hex")
        ]
      ) {
        expect(rendered).not.toContain(secret)
      }
    }))

  it.effect.each([
    ["bad base64", "enc:v1:!!!not-base64!!!"],
    ["too short", "enc:v1:" + Buffer.alloc(27).toString("base64")],
    ["empty payload", "enc:v1:"]
  ])("rejects %s", ([, stored]) =>
    Effect.gen(function*() {
      const c = yield* cipherWith(keyA)
      expectDecryptError(yield* Effect.flip(c.decrypt(stored)))
    }))

  it("dies when given a key of the wrong size", () => {
    const exit = Effect.runSyncExit(cipherWith(randomBytes(16)))
    expect(exit._tag).toBe("Failure")
  })
})

describe("KeyCipher disabled", () => {
  it.effect("passes plaintext through both ways", () =>
    Effect.gen(function*() {
      const c = yield* cipherWith(undefined)
      expect(c.enabled).toBe(false)
      expect(c.encrypt(PLAIN)).toBe(PLAIN)
      expect(yield* c.decrypt(PLAIN)).toBe(PLAIN)
    }))

  it.effect("refuses enc:v1 values", () =>
    Effect.gen(function*() {
      const stored = (yield* cipherWith(keyA)).encrypt(PLAIN)
      const e = expectDecryptError(yield* Effect.flip((yield* cipherWith(undefined)).decrypt(stored)))
      expect(e.reason).toBe("ENCRYPTION_KEY is not set but the stored key is encrypted")
    }))
})

describe("parseEncryptionKey", () => {
  const b64 = (n: number) => randomBytes(n).toString("base64")

  it.each([
    ["31 bytes", b64(31), "got 31"],
    ["33 bytes", b64(33), "got 33"],
    ["0 bytes", "", "got 0"],
    ["not base64", "this is not base64!!", "not valid base64"],
    ["base64url chars", "_-" + b64(32).slice(2), "not valid base64"],
    ["misplaced padding", "AA==" + b64(30), "not valid base64"]
  ])("rejects %s", (_label, input, fragment) => {
    const result = parseEncryptionKey(input)
    expect(Either.isLeft(result)).toBe(true)
    if (Either.isLeft(result)) {
      expect(result.left).toContain("must be base64 of exactly 32 bytes")
      expect(result.left).toContain(fragment)
      if (input !== "") expect(result.left).not.toContain(input)
    }
  })

  it.each([
    ["padded", (k: Buffer) => k.toString("base64")],
    ["unpadded", (k: Buffer) => k.toString("base64").replace(/=+$/, "")],
    ["trailing newline", (k: Buffer) => k.toString("base64") + "\n"]
  ])("accepts 32 bytes (%s)", (_label, encode) => {
    const key = randomBytes(32)
    const result = parseEncryptionKey(encode(key))
    expect(Either.isRight(result)).toBe(true)
    if (Either.isRight(result)) {
      expect(result.right).toBeInstanceOf(Uint8Array)
      expect(Buffer.from(result.right).equals(key)).toBe(true)
    }
  })
})
