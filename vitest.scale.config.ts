import { defineConfig } from "vitest/config"

/**
 * `npm run test:scale`: several built `serve` processes on their own PostgreSQL and Redis (test/scale). Not part of
 * `npm test`: it needs the built binary and the Debian server binaries, and it stops and restarts its servers.
 * One file at a time: the load test wants the machine to itself.
 */
export default defineConfig({
  test: {
    include: ["test/scale/**/*.test.ts"],
    fileParallelism: false,
    testTimeout: 120_000,
    hookTimeout: 120_000
  }
})
