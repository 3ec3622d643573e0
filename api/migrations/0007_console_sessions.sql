-- Console sessions: a browser holds a random token in an HttpOnly cookie;
-- only its SHA-256 hash is stored. API sessions (bearer tokens) leave it NULL.
ALTER TABLE sessions ADD COLUMN cookie_hash bytea NULL;
CREATE UNIQUE INDEX sessions_cookie_hash_idx ON sessions (cookie_hash) WHERE cookie_hash IS NOT NULL;
