/**
 * `npm run test:chaos`: fuzzing, injected faults, security checks and the soak test (test/chaos/*.chaos.ts).
 * Files run one after the other: the timing test and the soak's RSS/lag figures need the machine to themselves.
 * CHAOS_PROFILE=ci (set by .ci/run) shrinks the input counts; SOAK_SECONDS sets the soak's length (default 1800).
 */
import { defineConfig } from "vitest/config"

const soakSeconds = Number(process.env["SOAK_SECONDS"] ?? 1800)

export default defineConfig({
  test: {
    include: ["test/chaos/**/*.chaos.ts"],
    fileParallelism: false,
    maxWorkers: 1,
    testTimeout: 300_000 + soakSeconds * 1000,
    hookTimeout: 120_000,
    reporters: ["default"]
  }
})
