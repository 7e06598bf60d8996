/** `llm-proxy dispatcher`: a separate program that delivers instrumentation events from the bus to a backend. */
import { Command, Options } from "@effect/cli"
import { Effect, Layer } from "effect"
import { dispatcherConfig } from "../config/AppConfig.js"
import { dispatcherLayer, loggerLayer } from "../Layers.js"
import * as Tracing from "../observability/Tracing.js"
import { VERSION } from "../version.js"
import { CliFailure, describeError } from "./errors.js"
import { configProvider } from "./serve.js"

const flag = (name: string, variable: string, description: string) =>
  Options.text(name).pipe(Options.withDescription(`${description} (env ${variable})`), Options.optional)

const options = {
  service: Options.choice("service", ["file", "lunary", "helicone"]).pipe(
    Options.withDescription("Backend (env DISPATCHER_SERVICE, default file)"),
    Options.optional
  ),
  endpoint: flag(
    "endpoint",
    "DISPATCHER_ENDPOINT",
    "file: the JSONL path (default ./data/events.jsonl); lunary: the ingestion URL; helicone: the worker's base URL (default: the service's)"
  ),
  apiKey: flag("api-key", "LLM_PROXY_API_KEY", "API key of the lunary or helicone backend"),
  batchSize: flag("batch-size", "DISPATCHER_BATCH_SIZE", "Events per delivery (default 100)"),
  flushInterval: flag(
    "flush-interval",
    "DISPATCHER_FLUSH_INTERVAL",
    "Longest wait to fill a batch, e.g. 5s, 500ms (default 5s)"
  ),
  buffer: flag("buffer", "DISPATCHER_BUFFER", "Events read ahead of delivery (default 1000)"),
  consumerGroup: flag(
    "consumer-group",
    "DISPATCHER_CONSUMER_GROUP",
    "Redis consumer group (default dispatcher-<service>)"
  ),
  consumerName: flag(
    "consumer-name",
    "REDIS_CONSUMER_NAME",
    "Consumer name within the group (default dispatcher-<service>-<host>-<pid>)"
  ),
  deadLetter: flag(
    "dead-letter",
    "DISPATCHER_DEAD_LETTER",
    "JSONL file for rejected events (default ./data/dead-letter-<service>.jsonl)"
  ),
  claimIdle: flag(
    "claim-idle",
    "REDIS_STREAM_CLAIM_IDLE",
    "Take over another consumer's pending events after this idle time (default 30s)"
  ),
  redisUrl: flag("redis-url", "REDIS_URL", "Redis server"),
  streamKey: flag("stream-key", "REDIS_STREAM_KEY", "Stream name (default llm-proxy:events)"),
  metricsAddr: flag(
    "metrics-addr",
    "DISPATCHER_METRICS_ADDR",
    "Serve GET /metrics and GET /health here: PORT or :PORT on 127.0.0.1, HOST:PORT as given (default: no listener)"
  ),
  env: Options.file("env").pipe(
    Options.withDescription("dotenv file read after the environment"),
    Options.withDefault(".env")
  ),
  logLevel: flag("log-level", "LOG_LEVEL", "debug, info, warn or error"),
  logFormat: flag("log-format", "LOG_FORMAT", "json or pretty")
}

export const dispatcher = Command.make("dispatcher", options, (o) =>
  Effect.gen(function*() {
    const provider = yield* configProvider(
      {
        DISPATCHER_SERVICE: o.service,
        DISPATCHER_ENDPOINT: o.endpoint,
        LLM_PROXY_API_KEY: o.apiKey,
        DISPATCHER_BATCH_SIZE: o.batchSize,
        DISPATCHER_FLUSH_INTERVAL: o.flushInterval,
        DISPATCHER_BUFFER: o.buffer,
        DISPATCHER_CONSUMER_GROUP: o.consumerGroup,
        REDIS_CONSUMER_NAME: o.consumerName,
        DISPATCHER_DEAD_LETTER: o.deadLetter,
        REDIS_STREAM_CLAIM_IDLE: o.claimIdle,
        REDIS_URL: o.redisUrl,
        REDIS_STREAM_KEY: o.streamKey,
        LOG_LEVEL: o.logLevel,
        LOG_FORMAT: o.logFormat,
        DISPATCHER_METRICS_ADDR: o.metricsAddr
      },
      o.env
    )
    const config = yield* Effect.withConfigProvider(dispatcherConfig, provider).pipe(
      Effect.mapError((e) => new CliFailure({ message: describeError(e) }))
    )
    return yield* Layer.launch(dispatcherLayer(config, config.events.consumerName)).pipe(
      Effect.provide(Tracing.layerTracer(config.otlp, VERSION)),
      Effect.provide(loggerLayer(config)),
      Effect.mapError((e) => new CliFailure({ message: describeError(e) }))
    )
  })).pipe(
    Command.withDescription(
      "Deliver instrumentation events from the Redis Streams bus to a backend (file, lunary, helicone); " +
        "acknowledges only what the backend accepted, drains on SIGTERM; with --metrics-addr it serves GET /metrics and GET /health"
    )
  )
