-- Listings paged in the database and token retention, at millions of rows.
-- Token listings are ordered newest first by (created_at, id) and paged with a keyset on those two columns: one
-- index for all tokens, one per project (it also serves the foreign key's ON DELETE CASCADE, so the old
-- project_id index goes), one per activity flag for the status filters. The state columns at the end let a status
-- filter or count be decided from the index alone.
DROP INDEX idx_tokens_created_at;

DROP INDEX idx_tokens_project_id;

CREATE INDEX idx_tokens_created ON tokens(created_at, id);

CREATE INDEX idx_tokens_project_created ON tokens(project_id, created_at, id, is_active, expires_at);

CREATE INDEX idx_tokens_active_created ON tokens(is_active, created_at, id, expires_at);

-- Retention (TOKEN_RETENTION_DAYS) finds tokens expired, or revoked, before its cut-off.
CREATE INDEX idx_tokens_expires_at ON tokens(expires_at);

CREATE INDEX idx_tokens_revoked_at ON tokens(deactivated_at) WHERE is_active = 0;

-- Audit listings are ordered newest first by ("timestamp", id) and paged with a keyset on those columns, also when
-- filtered by project or token.
DROP INDEX idx_audit_events_timestamp;

DROP INDEX idx_audit_events_project_id;

DROP INDEX idx_audit_events_token_id;

CREATE INDEX idx_audit_events_time_id ON audit_events("timestamp", id);

CREATE INDEX idx_audit_events_project_time ON audit_events(project_id, "timestamp", id);

CREATE INDEX idx_audit_events_token_time ON audit_events(token_id, "timestamp", id);
