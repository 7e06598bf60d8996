import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"

// Keyed per process so digests cannot be precomputed; comparing fixed-size
// digests hides both the matching prefix length and the secret's length.
const hmacKey = randomBytes(32)

const digest = (s: string): Buffer => createHmac("sha256", hmacKey).update(s, "utf8").digest()

export const constantTimeEqual = (a: string, b: string): boolean => timingSafeEqual(digest(a), digest(b))
