-- `rate_limit_tokens` takes what the API accepts (up to 1,000,000,000,000 per window): as INTEGER it stopped at
-- 2,147,483,647, and a larger limit was refused by the database (the API answered 500). PostgreSQL rewrites both tables
-- for the wider type (a few seconds at a million tokens, holding their lock meanwhile).
ALTER TABLE projects ALTER COLUMN rate_limit_tokens TYPE BIGINT;
ALTER TABLE tokens ALTER COLUMN rate_limit_tokens TYPE BIGINT;
