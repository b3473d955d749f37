//! Phase 3b: delete what stayed marked past the grace period, referrers first.
//!
//! The candidates (marked before the cutoff, plus rows a crashed run left flagged `deleting`) go into a
//! temporary table with, for each, the number of rows that still refer to it. Deletion proceeds in levels:
//! each level is every candidate nobody refers to any more (narinfos first within a level), deleted in
//! batches; what a level deleted no longer counts as a referrer for the next level. So a narinfo is always
//! deleted before its NAR and before the narinfos it references, and if the store refuses to delete an
//! object, that object becomes active again and everything it refers to stays (its count never drops).
//!
//! Each batch, under the exclusive GC lock (uploads claiming keys wait for it):
//! 1. re-checks and flags the rows `deleting` (a key claimed since marking is no longer marked: skipped);
//! 2. deletes the objects from the store;
//! 3. removes the deleted rows and un-flags and unmarks the failures.
//!
//! Stopping anywhere leaves flagged rows at worst: they read as missing, a claim drops them, and the next run
//! finishes them.

use super::{GcError, count, q};
use crate::db::GC_LOCK;
use crate::store::{ObjectKey, Store};
use chrono::{DateTime, Utc};

/// Objects per batch. Each batch costs a fixed number of round trips (lock, flag, forget, unlock) plus
/// the store's deletes (the S3 backend splits them into DeleteObjects requests of at most 1000 keys), and
/// holds the exclusive GC lock throughout, so uploads claiming keys wait for at most one batch. 1000 made
/// the per-batch overhead dominate on the 1M-object benchmark (docs/benchmarks.md "GC").
const BATCH: i64 = 10_000;

/// What the sweep did.
pub(super) struct Swept {
    /// Objects deleted from the store and forgotten.
    pub deleted: u64,
    /// Objects the store failed to delete (active again; retried by a later run).
    pub failed: u64,
}

/// Deletes every eligible object, level by level.
pub(super) async fn run(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Store,
    marked_before: DateTime<Utc>,
) -> Result<Swept, GcError> {
    // The candidates with their referrer counts, in one statement. Only rows that are marked or being
    // deleted can refer to a candidate: a row that is neither was reachable at the mark phase (then so
    // was everything it refers to, which is therefore unmarked), or was claimed or recorded since (a claim
    // covers the whole closure, which clears the marks of what it refers to too). A row whose deletion
    // fails is reactivated only after it was counted here, so its referees stay held.
    // Statistics are stale right after marking (they may say nothing is marked): with nested loops
    // allowed, the planner rescanned the whole referrer aggregate for every candidate (20+ minutes on the
    // 1M-object benchmark instead of seconds). Hash joins are right for this whole-table statement.
    client.batch_execute("SET enable_nestloop = off; SET jit = off").await.map_err(q("gc sweep: settings"))?;
    let n = client
        .execute(
            "CREATE TEMP TABLE gc_cand AS
             SELECT o.key, o.kind = 'narinfo' AS narinfo, coalesce(x.n, 0)::int AS pending
             FROM objects o LEFT JOIN (
                 SELECT r, count(*) AS n FROM objects f CROSS JOIN LATERAL unnest(f.refs) AS r
                 WHERE (f.marked_at IS NOT NULL OR f.deleting) AND r <> f.key GROUP BY r
             ) x ON x.r = o.key
             WHERE o.deleting OR o.marked_at <= $1",
            &[&marked_before],
        )
        .await
        .map_err(q("gc sweep: collect candidates"))?;
    // The batches below are key lookups: nested loops over primary keys are right for them.
    client.batch_execute("RESET enable_nestloop").await.map_err(q("gc sweep: settings"))?;
    if n == 0 {
        return Ok(Swept { deleted: 0, failed: 0 });
    }
    client
        .batch_execute(
            "ALTER TABLE gc_cand ADD PRIMARY KEY (key);
             CREATE INDEX gc_cand_free ON gc_cand (narinfo DESC, key) WHERE pending = 0;
             ANALYZE gc_cand;
             CREATE TEMP TABLE gc_level (id int PRIMARY KEY, key text NOT NULL);",
        )
        .await
        .map_err(q("gc sweep: work tables"))?;

    let mut swept = Swept { deleted: 0, failed: 0 };
    loop {
        // The next level: every candidate nothing refers to any more (narinfos first).
        let level = client
            .execute(
                "WITH free AS (DELETE FROM gc_cand WHERE pending = 0 RETURNING key, narinfo)
                 INSERT INTO gc_level (id, key)
                 SELECT row_number() OVER (ORDER BY narinfo DESC, key), key FROM free",
                &[],
            )
            .await
            .map_err(q("gc sweep: next level"))?;
        if level == 0 {
            break;
        }
        let level = i64::try_from(level).unwrap_or(i64::MAX);
        let mut first = 1i64;
        while first <= level {
            let last = first + BATCH - 1;
            delete_batch(client, store, marked_before, first, last, &mut swept).await?;
            first = last + 1;
        }
        client.execute("TRUNCATE gc_level", &[]).await.map_err(q("gc sweep: next level"))?;
    }
    Ok(swept)
}

/// Deletes the level's rows `first..=last`, holding the exclusive GC lock throughout.
async fn delete_batch(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Store,
    marked_before: DateTime<Utc>,
    first: i64,
    last: i64,
    swept: &mut Swept,
) -> Result<(), GcError> {
    let (first, last) = (i32::try_from(first).unwrap_or(i32::MAX), i32::try_from(last).unwrap_or(i32::MAX));
    client.execute("SELECT pg_advisory_lock($1)", &[&GC_LOCK]).await.map_err(q("gc sweep: lock"))?;
    let result = delete_batch_locked(client, store, marked_before, first, last, swept).await;
    // On a lost connection the lock is gone with it; otherwise release it even after an error.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&GC_LOCK]).await.map_err(q("gc sweep: unlock"));
    result.and(unlocked.map(|_| ()))
}

async fn delete_batch_locked(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Store,
    marked_before: DateTime<Utc>,
    first: i32,
    last: i32,
    swept: &mut Swept,
) -> Result<(), GcError> {
    // Re-check under the lock: a key claimed since marking has marked_at = NULL and is skipped.
    let rows = client
        .query(
            "UPDATE objects o SET deleting = true FROM gc_level l \
             WHERE l.id BETWEEN $1 AND $2 AND o.key = l.key AND (o.deleting OR o.marked_at <= $3) \
             RETURNING o.key, l.id",
            &[&first, &last, &marked_before],
        )
        .await
        .map_err(q("gc sweep: flag batch"))?;
    if rows.is_empty() {
        return Ok(());
    }
    // Keep the level's order (narinfos first).
    let mut taken: Vec<(i32, String)> = rows.iter().map(|r| (r.get(1), r.get(0))).collect();
    taken.sort_unstable();

    let mut keys = Vec::with_capacity(taken.len());
    let mut failed: Vec<String> = Vec::new();
    for (_, k) in &taken {
        match ObjectKey::parse(k) {
            Ok((_, key)) => keys.push(key),
            Err(e) => {
                // Not a key of the layout: never hand it to the store; keep the row for an operator.
                tracing::error!(key = %k, error = %e, "GC: refusing to delete an object with an invalid key");
                failed.push(k.clone());
            }
        }
    }
    let mut store_failed: std::collections::HashSet<String> = std::collections::HashSet::new();
    // Nothing in a level refers to anything else in it (its referrer count would not be zero), so order
    // within a batch is not needed for the invariant; narinfos still go first, as the design promises.
    let split = keys.iter().position(|k| k.kind() != crate::store::ObjectKind::NarInfo).unwrap_or(keys.len());
    for part in [&keys[..split], &keys[split..]] {
        if part.is_empty() {
            continue;
        }
        for (key, err) in store.delete_many(part).await {
            tracing::warn!(key = %key, error = %err, "GC: store failed to delete an object; keeping it");
            store_failed.insert(key.as_str().to_owned());
        }
    }
    failed.extend(store_failed.iter().cloned());
    let deleted: Vec<&str> = keys.iter().map(ObjectKey::as_str).filter(|k| !store_failed.contains(*k)).collect();

    // Forget the deleted rows and, in the same statement, release what they referred to.
    let n: i64 = client
        .query_one(
            "WITH d AS (DELETE FROM objects WHERE key = ANY($1) AND deleting RETURNING key, refs),
             released AS (
                 UPDATE gc_cand c SET pending = c.pending - x.n FROM (
                     SELECT r, count(*)::int AS n FROM d CROSS JOIN LATERAL unnest(d.refs) AS r
                     WHERE r <> d.key GROUP BY r
                 ) x WHERE c.key = x.r
             )
             SELECT count(*) FROM d",
            &[&deleted],
        )
        .await
        .map_err(q("gc sweep: forget deleted"))?
        .get(0);
    swept.deleted += count(n);
    if !failed.is_empty() {
        let f = client
            .execute("UPDATE objects SET deleting = false, marked_at = NULL WHERE key = ANY($1)", &[&failed])
            .await
            .map_err(q("gc sweep: reactivate failures"))?;
        swept.failed += f;
    }
    Ok(())
}
