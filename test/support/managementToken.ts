/**
 * Management tokens for tests. `serve` refuses one shorter than 32 characters (src/config/managementToken.ts), so
 * suites that start it take theirs from here rather than writing a short literal.
 */
import { randomUUID } from "node:crypto"

/** A fresh management token, `<label>-management-token-<uuid>` (well over 32 characters). */
export const newManagementToken = (label = "test"): string => `${label}-management-token-${randomUUID()}`
