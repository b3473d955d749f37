-- niks3 schema v1. Every object in the bucket has a row in `objects`; `refs` lists the keys the object
-- keeps alive (a narinfo: its NAR, its .ls, its build log, the narinfos of its references).
-- Liveness roots: closures (by last push time), pins, and uploads in flight.
-- Time is always passed in by the caller ($now), never read with now(), so tests can move the clock.

CREATE TABLE objects (
    key         TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('cache-info', 'narinfo', 'nar', 'listing', 'log', 'realisation')),
    size        BIGINT NOT NULL DEFAULT 0,
    refs        TEXT[] NOT NULL DEFAULT '{}',
    first_seen  TIMESTAMPTZ NOT NULL,
    last_pushed TIMESTAMPTZ NOT NULL,
    -- When GC found it unreachable (NULL: reachable, or not looked at yet). Cleared by any claim.
    marked_at   TIMESTAMPTZ,
    -- GC is deleting the object from the store: the row counts as missing. A crashed GC leaves it set; the
    -- next GC finishes the deletion, and an upload claiming the key drops the row first.
    deleting    BOOLEAN NOT NULL DEFAULT false
) WITH (fillfactor = 80);
-- Deliberately no index on marked_at or deleting: GC reads them with one sequential scan per run, and
-- without an index on them marking and unmarking are HOT updates (no index writes; the free space left by
-- fillfactor 80 keeps the new row version on its page). Measured on 1M objects: marking 511k rows took
-- 23 s with a partial index on marked_at, see docs/benchmarks.md "GC".

-- A pushed root (the narinfo key of an output); alive while pushed_at is recent enough.
CREATE TABLE closures (
    root      TEXT PRIMARY KEY,
    pushed_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX closures_pushed_at ON closures (pushed_at);

-- Named roots that never expire.
CREATE TABLE pins (
    name       TEXT PRIMARY KEY,
    root       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

-- Uploads in flight: every key they will write or rely on is claimed (alive) until they finish.
CREATE TABLE uploads (
    id         BIGSERIAL PRIMARY KEY,
    root       TEXT NOT NULL,
    claimed    TEXT[] NOT NULL,
    started_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX uploads_started_at ON uploads (started_at);

-- One row per GC run (not dry runs), with its five figures.
CREATE TABLE gc_runs (
    id                                 BIGSERIAL PRIMARY KEY,
    started_at                         TIMESTAMPTZ NOT NULL,
    finished_at                        TIMESTAMPTZ,
    failed_uploads_deleted             BIGINT NOT NULL DEFAULT 0,
    old_closures_deleted               BIGINT NOT NULL DEFAULT 0,
    objects_marked_for_deletion        BIGINT NOT NULL DEFAULT 0,
    objects_deleted_after_grace_period BIGINT NOT NULL DEFAULT 0,
    objects_failed_to_delete           BIGINT NOT NULL DEFAULT 0
);
