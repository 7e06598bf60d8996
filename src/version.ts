/**
 * This build's version: the `version` of package.json, the one place it is written. esbuild inlines it into the
 * bundle; `/health`, `--version`, the OpenAPI document and the tracer's `service.version` all read it from here.
 */
import packageJson from "../package.json" with { type: "json" }

export const VERSION: string = packageJson.version
