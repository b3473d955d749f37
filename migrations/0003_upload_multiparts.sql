-- Multipart uploads that remote clients fill through presigned part URLs (push API): one row per NAR an
-- upload session is uploading that way. `complete` finishes them from the parts' ETags the client reports;
-- GC phase 1 aborts those of the sessions it drops as failed, and the push API's abort route those of the
-- sessions a client gives up. A row goes with its session (finished, aborted or dropped by GC).
-- (Numbered 0003: 0002 is left to the concurrent GC work.)
CREATE TABLE upload_multiparts (
    upload_id    BIGINT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    key          TEXT NOT NULL,
    multipart_id TEXT NOT NULL,
    PRIMARY KEY (upload_id, key)
);
