/**
 * The Swagger UI of `/manage/docs`, loaded by `import()` on its first request (src/http/App.ts): the platform's page
 * inlines ~2 MB of Swagger UI code, which `serve` would otherwise parse and keep in memory from start-up whether or
 * not anyone reads the docs (scripts/build.mjs puts this module in a chunk of its own).
 */
import { HttpApi, HttpApiBuilder, HttpServerRequest, type HttpServerResponse } from "@effect/platform"
// From its own module, not the package index: code imported through the index lands in the chunk every entry shares.
import * as HttpApiSwagger from "@effect/platform/HttpApiSwagger"
import { Context, Effect, Layer } from "effect"
import { ManagementApi } from "../api/ManagementApi.js"

let page: HttpServerResponse.HttpServerResponse | undefined

/** The platform's Swagger UI page for the management API, made once. */
export const swaggerPage: Effect.Effect<HttpServerResponse.HttpServerResponse> = Effect.suspend(() => {
  if (page !== undefined) return Effect.succeed(page)
  return Effect.gen(function*() {
    // The platform's own route, on a router of its own: the page is the answer to GET /manage/docs there.
    const router = yield* HttpApiBuilder.Router.router
    const request = HttpServerRequest.fromWeb(new Request("http://localhost/manage/docs"))
    // Typed as needing the platform's services; the Swagger route answers with a fixed page and uses none of them.
    const app = router as unknown as Effect.Effect<
      HttpServerResponse.HttpServerResponse,
      unknown,
      HttpServerRequest.HttpServerRequest
    >
    const response = yield* Effect.provideService(app, HttpServerRequest.HttpServerRequest, request)
    page = response
    return response
  }).pipe(
    Effect.provide(
      HttpApiSwagger.layer({ path: "/manage/docs" }).pipe(
        Layer.provideMerge(HttpApiBuilder.Router.Live),
        Layer.provide(Layer.succeed(HttpApi.Api, {
          api: ManagementApi as unknown as Context.Tag.Service<HttpApi.Api>["api"],
          context: Context.empty()
        }))
      )
    ),
    Effect.orDie
  )
})
