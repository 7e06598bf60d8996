-- Audit log (reference-system.md §8, §9.2). Timestamps are ISO-8601 UTC text with milliseconds (sortable);
-- ids are UUIDv7, so `ORDER BY timestamp DESC, id DESC` is newest first even within one millisecond.
CREATE TABLE audit_events (
  id TEXT PRIMARY KEY,
  timestamp TEXT NOT NULL,
  action TEXT NOT NULL,
  actor TEXT NOT NULL,
  outcome TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'denied', 'error')),
  project_id TEXT,
  token_id TEXT,
  request_id TEXT,
  correlation_id TEXT,
  client_ip TEXT,
  method TEXT,
  path TEXT,
  user_agent TEXT,
  reason TEXT,
  metadata TEXT
);

CREATE INDEX idx_audit_events_timestamp ON audit_events(timestamp);

CREATE INDEX idx_audit_events_action ON audit_events(action, timestamp);

CREATE INDEX idx_audit_events_project_id ON audit_events(project_id);

CREATE INDEX idx_audit_events_token_id ON audit_events(token_id);

CREATE INDEX idx_audit_events_client_ip ON audit_events(client_ip, action);

CREATE INDEX idx_audit_events_request_id ON audit_events(request_id);
