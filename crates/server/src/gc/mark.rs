//! Phases 1–3a in one transaction under the exclusive GC lock: drop failed uploads, forget expired
//! closures, then mark every object nothing live reaches and unmark every object something live reaches.
//! Live roots: remembered closures, pins, keys claimed by uploads in flight, and `nix-cache-info`.
//! Holding the lock exclusively means no upload can claim keys halfway through, so a mark never lands on a
//! key claimed after the reachability walk (uploads wait for the commit, then clear the mark themselves).

use super::{GcError, count, q};
use crate::db::GC_LOCK;
use chrono::{DateTime, Utc};

/// What the mark transaction did (or, in a dry run, would have done).
pub(super) struct Marked {
    /// Uploads in flight dropped as failed.
    pub failed_uploads: u64,
    /// Their multipart uploads still open in the bucket: (key, upload id).
    pub abandoned_multiparts: Vec<(String, String)>,
    /// Closures forgotten.
    pub old_closures: u64,
    /// Objects newly marked unreachable.
    pub new: u64,
    /// Objects eligible for deletion now (marked before the cutoff, or left half-deleted by a crash).
    pub deletable: u64,
}

/// Runs the transaction; commits it unless `dry_run`.
pub(super) async fn run(
    client: &mut deadpool_postgres::ClientWrapper,
    closures_before: DateTime<Utc>,
    uploads_before: DateTime<Utc>,
    delete_marked_before: DateTime<Utc>,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<Marked, GcError> {
    let t = client.transaction().await.map_err(q("gc mark: begin"))?;
    t.execute("SELECT pg_advisory_xact_lock($1)", &[&GC_LOCK]).await.map_err(q("gc mark: lock"))?;
    // Every statement below is a whole-table set operation: hash joins are always right, while a nested
    // loop chosen on stale statistics (e.g. right after a run marked half the table) turned the unmark
    // step from one second into many minutes in the 1M-object benchmark. JIT only adds compile time here.
    t.batch_execute("SET LOCAL enable_nestloop = off; SET LOCAL jit = off").await.map_err(q("gc mark: settings"))?;

    // The multipart uploads of the failed uploads (their rows go with the uploads), aborted after commit.
    let abandoned_multiparts = t
        .query(
            "SELECT m.key, m.multipart_id FROM upload_multiparts m JOIN uploads u ON u.id = m.upload_id \
             WHERE u.started_at < $1",
            &[&uploads_before],
        )
        .await
        .map_err(q("gc: find abandoned multipart uploads"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let failed_uploads = t
        .execute("DELETE FROM uploads WHERE started_at < $1", &[&uploads_before])
        .await
        .map_err(q("gc: drop failed uploads"))?;
    let old_closures = t
        .execute("DELETE FROM closures WHERE pushed_at < $1", &[&closures_before])
        .await
        .map_err(q("gc: forget old closures"))?;

    // Everything reachable, as a temporary table (no index: the updates below hash-join it; an index made
    // filling it a third slower). UNION (not UNION ALL) makes the walk stop at keys already seen, cycles
    // included, and leaves each key once.
    t.batch_execute(
        "CREATE TEMP TABLE gc_live (key text) ON COMMIT DROP;
         INSERT INTO gc_live
         WITH RECURSIVE live(key) AS (
             SELECT root FROM closures
             UNION SELECT root FROM pins
             UNION SELECT unnest(claimed) FROM uploads
             UNION SELECT key FROM objects WHERE kind = 'cache-info'
             UNION SELECT unnest(o.refs) FROM objects o JOIN live ON o.key = live.key
         )
         SELECT key FROM live;
         ANALYZE gc_live;",
    )
    .await
    .map_err(q("gc: walk live closures"))?;

    let newly_marked = t
        .execute(
            "UPDATE objects SET marked_at = $1 WHERE marked_at IS NULL AND NOT deleting \
             AND NOT EXISTS (SELECT 1 FROM gc_live l WHERE l.key = objects.key)",
            &[&now],
        )
        .await
        .map_err(q("gc: mark unreachable"))?;
    t.execute(
        "UPDATE objects SET marked_at = NULL WHERE marked_at IS NOT NULL \
         AND EXISTS (SELECT 1 FROM gc_live l WHERE l.key = objects.key)",
        &[],
    )
    .await
    .map_err(q("gc: unmark reachable"))?;

    let deletable: i64 = t
        .query_one("SELECT count(*) FROM objects WHERE deleting OR marked_at <= $1", &[&delete_marked_before])
        .await
        .map_err(q("gc: count deletable"))?
        .get(0);

    if dry_run {
        t.rollback().await.map_err(q("gc mark: rollback"))?;
    } else {
        t.commit().await.map_err(q("gc mark: commit"))?;
    }
    Ok(Marked { failed_uploads, abandoned_multiparts, old_closures, new: newly_marked, deletable: count(deletable) })
}
