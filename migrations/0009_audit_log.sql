-- Who did what, and when (docs/api.md "Audit trail"): every closure push (one row per root), GC run and
-- token change, written in the same transaction as what it records where there is one. `who` is a token
-- name (`seed` for the seed token), `spool` for the server's own drainer, or `local:<user>` for
-- `niks3 token` run against the database. Read with `niks3 audit`.
CREATE TABLE audit_log (
    id      BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL,
    who     TEXT NOT NULL,
    action  TEXT NOT NULL CHECK (action IN ('push', 'gc', 'token-create', 'token-revoke')),
    subject TEXT NOT NULL,
    detail  JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_subject ON audit_log (subject);
