-- Spend control (docs/spend.md): token-per-minute limits, budgets and what tokens and projects spent.
-- `rate_limit_tokens`: LLM tokens allowed per `rate_limit_window_seconds` (with or without `rate_limit_requests`).
-- Budgets: `max_cost_usd` (USD), `max_tokens` (input + output tokens), per `budget_period` (total, day or month, UTC).
-- Spent: `spent_usd` and `tokens_used` over the whole life; the current UTC day's and month's in `day_*` and
-- `month_*`, whose `*_start` is the period's first instant (Unix epoch ms): a row whose start is older counts as 0
-- for the current period. Costs are USD (double precision).
ALTER TABLE projects ADD COLUMN rate_limit_tokens INTEGER;

ALTER TABLE projects ADD COLUMN max_cost_usd DOUBLE PRECISION;

ALTER TABLE projects ADD COLUMN max_tokens BIGINT;

ALTER TABLE projects ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'total';

ALTER TABLE projects ADD COLUMN spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN tokens_used BIGINT NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN day_start BIGINT;

ALTER TABLE projects ADD COLUMN day_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN day_tokens BIGINT NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN month_start BIGINT;

ALTER TABLE projects ADD COLUMN month_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE projects ADD COLUMN month_tokens BIGINT NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN rate_limit_tokens INTEGER;

ALTER TABLE tokens ADD COLUMN max_cost_usd DOUBLE PRECISION;

ALTER TABLE tokens ADD COLUMN max_tokens BIGINT;

ALTER TABLE tokens ADD COLUMN budget_period TEXT NOT NULL DEFAULT 'total';

ALTER TABLE tokens ADD COLUMN spent_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN tokens_used BIGINT NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN day_start BIGINT;

ALTER TABLE tokens ADD COLUMN day_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN day_tokens BIGINT NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN month_start BIGINT;

ALTER TABLE tokens ADD COLUMN month_cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;

ALTER TABLE tokens ADD COLUMN month_tokens BIGINT NOT NULL DEFAULT 0;

-- What the hour's answers cost (USD; answers of models without a price count 0).
ALTER TABLE usage_hourly ADD COLUMN cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
