-- Multipart uploads the server's own pipeline streams (issue 18, resume): recorded like the push API's,
-- one row per (session, key), with `resumable` set. A daemon killed mid-upload leaves its session and the
-- row behind; the next upload of the same key takes the row over (moves it into its own session) and
-- continues that multipart upload, sending only the parts the bucket lacks. GC phase 1 aborts the rows of
-- the sessions it drops as failed, as for pushes. Push rows keep `resumable` false: their parts come from
-- a remote client, which the server cannot continue.
ALTER TABLE upload_multiparts ADD COLUMN resumable BOOLEAN NOT NULL DEFAULT false;
CREATE INDEX upload_multiparts_resumable_key ON upload_multiparts (key) WHERE resumable;
