-- Denials are aggregated: one row per (action, client IP, reason, minute) stands for `count` refused requests
-- (anonymous /v1 requests with a bad token, failed management authentication), so a flood cannot grow the table
-- without bound. Every other event has count 1.
ALTER TABLE audit_events ADD COLUMN count INTEGER NOT NULL DEFAULT 1;
