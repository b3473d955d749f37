-- The PostgreSQL timeline each GC run saw. Promoting a standby starts a new timeline, and with
-- asynchronous replication it may have lost the last commits the old primary acknowledged — records of
-- narinfos that are in the bucket. A run that sees a timeline other than the last run's first records
-- every narinfo of the bucket that has no row (crates/server/src/gc/adopt.rs).
ALTER TABLE gc_runs ADD COLUMN timeline BIGINT;
