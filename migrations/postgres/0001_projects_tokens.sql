-- Projects and withering tokens.
CREATE TABLE projects (
  id TEXT PRIMARY KEY,
  name VARCHAR(255) NOT NULL UNIQUE,
  api_key TEXT NOT NULL,
  api_key_hint TEXT NOT NULL,
  provider TEXT NOT NULL DEFAULT 'openai',
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  deactivated_at TIMESTAMPTZ,
  rate_limit_requests INTEGER,
  rate_limit_window_seconds INTEGER,
  created_at TIMESTAMPTZ NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  token_hint TEXT NOT NULL,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  expires_at TIMESTAMPTZ,
  is_active BOOLEAN NOT NULL DEFAULT TRUE,
  deactivated_at TIMESTAMPTZ,
  request_count BIGINT NOT NULL DEFAULT 0,
  max_requests INTEGER,
  rate_limit_requests INTEGER,
  rate_limit_window_seconds INTEGER,
  cache_hit_count BIGINT NOT NULL DEFAULT 0,
  prompt_tokens BIGINT NOT NULL DEFAULT 0,
  completion_tokens BIGINT NOT NULL DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL,
  last_used_at TIMESTAMPTZ
);

CREATE INDEX idx_tokens_project_id ON tokens(project_id);

CREATE INDEX idx_tokens_created_at ON tokens(created_at);
