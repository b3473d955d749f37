-- niks3 schema v6: claiming keys for an upload in one round trip, and claims that cover a closure by
-- naming its top.
--
-- An upload used to claim every key of its whole closure before asking what the cache lacks: O(closure)
-- work per spool entry, so draining a queue of N paths whose closures overlap cost O(N^2) (measured: 11M
-- rows read for 2 000 small paths). Now an upload walks its closure down from the roots and stops at
-- paths the cache already has (a cached narinfo's closure is complete in the cache); it claims only what
-- it walked. A claimed key stays reachable for GC's mark phase (the walk follows `refs` from `claimed`),
-- and this function also clears the marks of everything a claimed key reaches that GC marked, so GC's
-- delete phase (which deletes only rows still marked, and never what an unmarked row refers to, see
-- gc/sweep.rs) cannot take a part of a closure whose top was claimed.
--
-- niks3_claim(upload, keys, gc_lock): under the shared GC lock (GC's mark and delete steps hold it
-- exclusively, so a claim lands entirely before or after each step):
--   1. rows a crashed GC left half-deleted and tombstones among `keys` go (uploaded again);
--   2. every key in `keys`, and everything marked that a marked one of them refers to, transitively, is
--      unmarked (the walk stops at unmarked rows: what an unmarked row refers to is unmarked);
--   3. `keys` are appended to the upload's claims (SQLSTATE NK001 if GC dropped the upload as failed);
--   4. returns the keys of `keys` that have no live row: what the upload must write.
-- PL/pgSQL runs each statement with a fresh snapshot, after the lock is held.
CREATE FUNCTION niks3_claim(upload_id BIGINT, keys TEXT[], gc_lock BIGINT) RETURNS SETOF TEXT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM pg_advisory_xact_lock_shared(gc_lock);
    DELETE FROM objects WHERE key = ANY (keys) AND deleting;
    DELETE FROM gc_deleting WHERE key = ANY (keys);
    WITH RECURSIVE walk (key) AS (
        SELECT o.key FROM objects o WHERE o.key = ANY (keys) AND o.marked_at IS NOT NULL
        UNION
        SELECT r.key FROM walk w
            JOIN objects o ON o.key = w.key
            CROSS JOIN LATERAL unnest(o.refs) AS r (key)
            JOIN objects m ON m.key = r.key AND m.marked_at IS NOT NULL
    )
    UPDATE objects SET marked_at = NULL WHERE key IN (SELECT w.key FROM walk w) AND marked_at IS NOT NULL;
    UPDATE uploads SET claimed = claimed || keys WHERE id = upload_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'upload % expired', upload_id USING ERRCODE = 'NK001';
    END IF;
    RETURN QUERY SELECT k FROM unnest(keys) AS k
        WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = k AND NOT o.deleting);
END
$$;
