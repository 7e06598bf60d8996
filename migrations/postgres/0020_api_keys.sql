-- Several provider keys per project: a JSON array of {"id", "key", "hint", "weight", "provider"} (each key stored
-- like api_key: `enc:v1:…` when ENCRYPTION_KEY is set). NULL = the one key in api_key (projects written before).
-- api_key / api_key_hint keep the first key.
ALTER TABLE projects ADD COLUMN api_keys TEXT;
