/**
 * Entry point of the bundle (dist/cli/main.js); everything testable lives in Cli.ts. The rest of the bundle is
 * loaded by `import()` after the young generation is held at its initial size and allocation-site pretenuring is
 * turned off (src/startupMemory.ts): a static import would evaluate every module before this file's first line.
 */
import { holdYoungGeneration, noPretenuring, releaseYoungGeneration } from "../startupMemory.js"

holdYoungGeneration()
noPretenuring()
const { run } = await import("./run.js")
run(process.argv, releaseYoungGeneration)
