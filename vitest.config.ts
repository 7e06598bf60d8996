import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // test/scale runs with `npm run test:scale` (its own servers and processes; vitest.scale.config.ts).
    exclude: ["test/scale/**", "**/node_modules/**"],
    // Integration suites start servers and databases; keep them from starving each other on 2 cores.
    fileParallelism: true,
    maxWorkers: 2,
    testTimeout: 30_000,
    hookTimeout: 60_000,
    coverage: {
      provider: "v8",
      include: ["src/**/*.ts"],
      reporter: ["text-summary", "text"],
      thresholds: { statements: 90 }
    }
  }
})
