import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"

// Keyed per process so digests cannot be precomputed; comparing fixed-size
// digests hides both the matching prefix length and the secret's length.
const hmacKey = randomBytes(32)

const digest = (s: string): Buffer => createHmac("sha256", hmacKey).update(s, "utf8").digest()

export const constantTimeEqual = (a: string, b: string): boolean => timingSafeEqual(digest(a), digest(b))

/**
 * `constantTimeEqual(presented, expected)` for a fixed secret: the secret's digest is computed once (the management
 * token is compared on every management request).
 */
export const constantTimeMatcher = (expected: string): (presented: string) => boolean => {
  const expectedDigest = digest(expected)
  return (presented) => timingSafeEqual(digest(presented), expectedDigest)
}
