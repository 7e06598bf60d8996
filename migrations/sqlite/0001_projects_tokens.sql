-- Projects and withering tokens. Timestamps are ISO-8601 UTC text (sortable); booleans are 0/1.
CREATE TABLE projects (
  id TEXT PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  api_key TEXT NOT NULL,
  api_key_hint TEXT NOT NULL,
  provider TEXT NOT NULL DEFAULT 'openai',
  is_active INTEGER NOT NULL DEFAULT 1,
  deactivated_at TEXT,
  rate_limit_requests INTEGER,
  rate_limit_window_seconds INTEGER,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);

CREATE TABLE tokens (
  id TEXT PRIMARY KEY,
  token_hash TEXT NOT NULL UNIQUE,
  token_hint TEXT NOT NULL,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  expires_at TEXT,
  is_active INTEGER NOT NULL DEFAULT 1,
  deactivated_at TEXT,
  request_count INTEGER NOT NULL DEFAULT 0,
  max_requests INTEGER,
  rate_limit_requests INTEGER,
  rate_limit_window_seconds INTEGER,
  cache_hit_count INTEGER NOT NULL DEFAULT 0,
  prompt_tokens INTEGER NOT NULL DEFAULT 0,
  completion_tokens INTEGER NOT NULL DEFAULT 0,
  created_at TEXT NOT NULL,
  last_used_at TEXT
);

CREATE INDEX idx_tokens_project_id ON tokens(project_id);

CREATE INDEX idx_tokens_created_at ON tokens(created_at);
