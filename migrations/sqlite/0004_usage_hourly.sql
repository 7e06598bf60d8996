-- Per-hour usage rollups, one row per (hour, token), written by the proxy's batched usage flush and read by the
-- dashboard charts. `hour` is the ISO-8601 UTC start of the hour ("2026-01-01T13:00:00.000Z").
-- `requests` counts every request the proxy answered for the token (cache hits included); `cache_hits` those
-- served from the response cache; `errors` those with status >= 400.
CREATE TABLE usage_hourly (
  hour TEXT NOT NULL,
  project_id TEXT NOT NULL,
  token_id TEXT NOT NULL,
  requests INTEGER NOT NULL DEFAULT 0,
  cache_hits INTEGER NOT NULL DEFAULT 0,
  errors INTEGER NOT NULL DEFAULT 0,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (hour, token_id)
);

CREATE INDEX idx_usage_hourly_project_hour ON usage_hourly(project_id, hour);

CREATE INDEX idx_usage_hourly_token_hour ON usage_hourly(token_id, hour);
