-- OIDC (docs/api.md "OIDC"): an upload session opened by an OIDC subject belongs to it alone. Its owner is
-- its name `oidc:<issuer>#<sub>`; such a caller has no api_tokens row for token_id to point at, and
-- leaving both columns NULL would hand its sessions to the seed token (and the seed's to it).
ALTER TABLE uploads ADD COLUMN oidc_subject TEXT;
ALTER TABLE uploads ADD CONSTRAINT uploads_one_owner CHECK (token_id IS NULL OR oidc_subject IS NULL);
-- The open-session limit counts a subject's sessions on every announce.
CREATE INDEX uploads_oidc_subject ON uploads (oidc_subject) WHERE oidc_subject IS NOT NULL;
