/**
 * Providers: the upstream APIs projects may name. This build knows the built-in `openai` provider; the YAML
 * provider file (API_CONFIG_PATH) arrives with the data plane.
 */
import { Context, Layer } from "effect"

export interface ProvidersShape {
  readonly names: ReadonlySet<string>
  readonly defaultProvider: string
}

export class Providers extends Context.Tag("llm-proxy/Providers")<Providers, ProvidersShape>() {
  static readonly builtIn: Layer.Layer<Providers> = Layer.succeed(Providers, {
    names: new Set(["openai"]),
    defaultProvider: "openai"
  })
}
