-- Admin UI sessions, shared by every instance and kept across restarts. `id_hash` is the hex SHA-256 of the session
-- id the browser holds in its cookie; neither the id nor the CSRF token (derived from the id) is stored, so a copy
-- of this table signs nobody in. Times are Unix epoch milliseconds: `last_seen_ms` is refreshed at most once a
-- minute, a session ends 30 minutes after it or 12 hours after `created_ms`, whichever comes first.
CREATE TABLE admin_sessions (
  id_hash TEXT PRIMARY KEY,
  created_ms INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL
);

CREATE INDEX idx_admin_sessions_last_seen ON admin_sessions(last_seen_ms);

CREATE INDEX idx_admin_sessions_created ON admin_sessions(created_ms);
