-- niks3 schema v2: GC tombstones. A delete batch moves its rows out of `objects` into `gc_deleting` (one
-- row removal instead of flagging the row with an UPDATE and removing it later: on a 1M-object cache the
-- flag UPDATE alone cost as much as everything else in the sweep, see docs/benchmarks.md "GC"), deletes
-- the objects from the store, then drops the tombstones. A key with a tombstone reads as missing (it has
-- no row); a crashed GC leaves tombstones behind, the next GC finishes deleting them first, and an upload
-- claiming such a key drops its tombstone (so GC never deletes what the upload writes again).
-- `objects.deleting` stays: rows flagged by older versions are still finished by GC and dropped by claims.
-- No index: the table holds at most one batch (GC truncates it after each), and an index made taking a
-- batch a third slower.
CREATE TABLE gc_deleting (
    key         TEXT NOT NULL,
    kind        TEXT NOT NULL,
    size        BIGINT NOT NULL,
    refs        TEXT[] NOT NULL,
    first_seen  TIMESTAMPTZ NOT NULL,
    last_pushed TIMESTAMPTZ NOT NULL
);
