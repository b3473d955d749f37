-- niks3 schema v5: what the push API needs to never replace or lose a NAR (security review #5, #6, #9).
-- (Numbered 0005: 0004 is the concurrent token work.)

-- The SHA-256 of a stored NAR file (narinfo `FileHash`), when known: computed by the server for NARs it
-- relayed or compressed itself, the pusher's word for presigned uploads. A later push of another path
-- with the same NarHash reuses the stored NAR and takes its FileHash from here instead of uploading it
-- again (uploading again could replace a published NAR). NULL for rows older than this migration and for
-- rows GC put back from a tombstone: the push API then learns it from a narinfo pointing at the NAR, and
-- a NAR no narinfo points at may be uploaded again (replacing it harms nothing).
ALTER TABLE objects ADD COLUMN file_hash TEXT;

-- The NARs a push session may upload (through the relay route, or a presigned PUT bound to the file),
-- with the NarSize it announced: the relay's verifier stops decompressing past it (a zstd bomb costs at
-- most NarSize bytes of work), and a bound PUT is never issued for more than zstd's bound for it. A row
-- goes with its session.
CREATE TABLE upload_nars (
    upload_id BIGINT NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    key       TEXT NOT NULL,
    nar_size  BIGINT NOT NULL,
    PRIMARY KEY (upload_id, key)
);
