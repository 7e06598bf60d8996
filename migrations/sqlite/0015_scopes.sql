-- Scoped tokens and delegated minting (docs/untrusted-clients.md).
-- Model scopes: a JSON array of names or globs, NULL = any model; a request must pass the project's and the token's.
-- What a project lets its project keys mint: the longest lifetime, the largest request quota (NULL = no bound).
ALTER TABLE projects ADD COLUMN allowed_models TEXT;

ALTER TABLE projects ADD COLUMN max_token_minutes INTEGER;

ALTER TABLE projects ADD COLUMN max_token_requests INTEGER;

-- A token's model scope, its name, the end user it was minted for, its metadata (a JSON object of strings) and the
-- project key that minted it (NULL: the management token).
ALTER TABLE tokens ADD COLUMN allowed_models TEXT;

ALTER TABLE tokens ADD COLUMN name TEXT;

ALTER TABLE tokens ADD COLUMN end_user TEXT;

ALTER TABLE tokens ADD COLUMN metadata TEXT;

ALTER TABLE tokens ADD COLUMN project_key_id TEXT;

-- `GET /manage/tokens?user=` / `?name=` (and the search, which matches either exactly) read the listing's keyset order
-- from these; only tokens that have the field are in them.
CREATE INDEX idx_tokens_end_user_created ON tokens(end_user, created_at, id) WHERE end_user IS NOT NULL;

CREATE INDEX idx_tokens_name_created ON tokens(name, created_at, id) WHERE name IS NOT NULL;

-- Project keys: credentials that may mint and manage the tokens of one project. Stored as their SHA-256 only;
-- `key_hint` is the obfuscated form lists show. A revoked key keeps its row (and its id in the audit log).
CREATE TABLE project_keys (
  id TEXT PRIMARY KEY,
  project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
  name TEXT NOT NULL,
  key_hash TEXT NOT NULL UNIQUE,
  key_hint TEXT NOT NULL,
  created_at TEXT NOT NULL,
  last_used_at TEXT,
  revoked_at TEXT
);

CREATE INDEX idx_project_keys_project ON project_keys(project_id, created_at);
