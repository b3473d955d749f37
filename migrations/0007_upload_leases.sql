-- One writer per path across servers (docs/deployment.md): a push session leases the narinfo keys of the
-- missing paths it will publish (and the logs it will upload); another session that needs the same path
-- uploads nothing for it and waits for its publication. A lease ends with its session (finished,
-- aborted, or dropped by GC) and may be taken over once nothing touched it for the server's lease
-- timeout (its pusher died). `touched` is passed in by the caller, like every time here.
CREATE TABLE upload_leases (
    key       TEXT PRIMARY KEY,
    upload_id BIGINT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    touched   TIMESTAMPTZ NOT NULL
);
CREATE INDEX upload_leases_upload_id ON upload_leases (upload_id);
