-- niks3 schema v4: scoped, revocable API tokens (`niks3 token create|list|revoke`), and which token opened
-- each upload session.
-- Only the SHA-256 of a token's secret is kept: the secret is printed once by `niks3 token create` and a
-- copy of this table cannot be used to authenticate. A token is never deleted, only revoked (its row keeps
-- the name taken, so a log line naming it stays unambiguous). The seed token (`--api-token-file`,
-- `NIKS3_API_TOKEN`, `<state-dir>/api-token`) has no row: it is the server's own admin token.
-- Times are passed in by the caller, as everywhere else.
CREATE TABLE api_tokens (
    id           BIGSERIAL PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$'),
    sha256       BYTEA NOT NULL UNIQUE CHECK (length(sha256) = 32),
    scopes       TEXT[] NOT NULL
                 CHECK (cardinality(scopes) > 0 AND scopes <@ ARRAY['read', 'push', 'gc', 'admin']::text[]),
    created_at   TIMESTAMPTZ NOT NULL,
    expires_at   TIMESTAMPTZ,
    -- Updated at most once a minute per token, so a busy push is not one write per request.
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);

-- The token that announced the push (NULL: the server's own pipeline or the seed admin token). The relay,
-- log, complete and abort routes only accept a session from the token that opened it. Tokens are never
-- deleted by niks3; if a row is deleted by hand its sessions go with it.
ALTER TABLE uploads ADD COLUMN token_id BIGINT REFERENCES api_tokens (id) ON DELETE CASCADE;
