//! Phase 3b: delete what stayed marked past the grace period, referrers first.
//!
//! The deletion order is computed once, before anything is deleted, entirely inside PostgreSQL:
//! 1. `gc_cand`: every row that is marked or flagged `deleting` (one sequential scan), with a dense id, its
//!    physical position (`ctid`) and whether it is a candidate (marked before the cutoff, or flagged).
//! 2. `gc_edge`: for each such row, the candidates it refers to (one hash join). A row that is marked but
//!    not yet a candidate is a referrer too: what it refers to is held for this run.
//! 3. [`ORDER`]: Kahn's algorithm over int arrays in one PL/pgSQL block (about a microsecond per edge; the
//!    per-row SQL bookkeeping it replaces cost ~50 µs per deleted row on the 1M-object benchmark). Each
//!    candidate gets a level: level 0 is what no marked row refers to; a candidate is at level n + 1 when
//!    its last referrer is at level n. Candidates in a cycle, or held by a non-candidate, get none and stay.
//!    Nothing in a level refers to anything else in it.
//!
//! Only rows that are marked or being deleted can refer to a candidate: a row that is neither was
//! reachable at the mark phase (then so was everything it refers to, which is therefore unmarked), or was
//! claimed or recorded since (a claim covers the whole closure, which clears the marks of what it refers
//! to too).
//!
//! Then levels are deleted in order, in batches within a level, each under the exclusive GC lock (uploads
//! claiming keys wait for it):
//! 1. the batch's rows that are still candidates (re-checked: a key claimed since marking is no longer
//!    marked) move from `objects` into the tombstone table `gc_deleting`, found by `ctid` (no index
//!    lookups; a row changed since `gc_cand` was made has a new `ctid` and is skipped);
//! 2. the objects are deleted from the store, narinfos first;
//! 3. the rows of objects the store failed to delete come back, active (unmarked); the tombstones go.
//!
//! A batch row that was skipped or failed is kept, and so is every candidate it refers to, transitively:
//! they leave the order before their level comes. So a narinfo is always deleted before its NAR and
//! before the narinfos it references, and nothing a kept object refers to is deleted.
//!
//! Stopping anywhere leaves tombstones of at most one batch (one level: no order among them). They read as
//! missing, a claim drops them, and the next run deletes them first ([`finish_leftovers`]), before it marks.

use super::{GcError, count, q};
use crate::db::GC_LOCK;
use chrono::{DateTime, Utc};
use niks3_storage::{ObjectKey, ObjectKind, Storage};
use std::collections::HashSet;

/// Objects per batch. Each batch costs a fixed number of round trips (lock, take, restore, drop, unlock)
/// plus the store's deletes (the S3 backend splits them into DeleteObjects requests of at most 1000 keys),
/// and holds the exclusive GC lock throughout, so uploads claiming keys wait for at most one batch.
const BATCH: i32 = 10_000;

/// Kahn's algorithm over `gc_cand` (dense ids 1..n) and `gc_edge`, writing `gc_order (pos, id, lvl, tid,
/// key)`: the candidates that can go, in deletion order (`pos` dense from 1, levels ascending). Arrays of ints in the
/// PostgreSQL backend: about 13 bytes per marked row and 12 per edge, freed when the block ends.
const ORDER: &str = "
DO $kahn$
DECLARE
  n int := (SELECT count(*) FROM gc_cand);
  cand bool[]; srcs int[]; dsts int[]; adj int[]; fill int[];
  pending int[]; off int[]; lvl int[]; queue int[];
  qh int := 1; qt int := 0; x int; y int; i int; e int;
BEGIN
  IF n = 0 THEN RETURN; END IF;
  SELECT array_agg(c.cand ORDER BY c.id) INTO cand FROM gc_cand c;
  -- Unsorted (sorting a million edges cost more than the whole algorithm); both aggregates consume the
  -- same rows in the same order (one scan feeding one aggregate node; temporary tables are never read by
  -- parallel workers).
  SELECT coalesce(array_agg(src), '{}'), coalesce(array_agg(dst), '{}') INTO srcs, dsts FROM gc_edge;
  e := coalesce(array_length(dsts, 1), 0);
  pending := array_fill(0, ARRAY[n]);
  off := array_fill(0, ARRAY[n + 1]);
  FOR i IN 1..e LOOP
    pending[dsts[i]] := pending[dsts[i]] + 1;
    off[srcs[i]] := off[srcs[i]] + 1;
  END LOOP;
  -- Counting sort by src: off[x] becomes the index of x's first edge in adj, off[n + 1] the end.
  y := 1;
  FOR i IN 1..n + 1 LOOP x := off[i]; off[i] := y; y := y + x; END LOOP;
  fill := off;
  adj := array_fill(0, ARRAY[greatest(e, 1)]);
  FOR i IN 1..e LOOP
    x := srcs[i]; adj[fill[x]] := dsts[i]; fill[x] := fill[x] + 1;
  END LOOP;
  srcs := NULL; dsts := NULL; fill := NULL;
  lvl := array_fill(0, ARRAY[n]);
  queue := array_fill(0, ARRAY[n]);
  FOR i IN 1..n LOOP
    IF cand[i] AND pending[i] = 0 THEN qt := qt + 1; queue[qt] := i; END IF;
  END LOOP;
  -- First in, first out: levels never decrease along the queue, so the referrer that frees a candidate is
  -- its deepest one.
  WHILE qh <= qt LOOP
    x := queue[qh]; qh := qh + 1;
    IF cand[x] THEN
      FOR i IN off[x]..off[x + 1] - 1 LOOP
        y := adj[i];
        pending[y] := pending[y] - 1;
        IF pending[y] = 0 THEN lvl[y] := lvl[x] + 1; qt := qt + 1; queue[qt] := y; END IF;
      END LOOP;
    END IF;
  END LOOP;
  INSERT INTO gc_order (pos, id, lvl, tid, key)
    SELECT u.pos, u.id, lvl[u.id], c.tid, c.key
    FROM unnest(queue[1:qt]) WITH ORDINALITY AS u(id, pos) JOIN gc_cand c ON c.id = u.id;
END
$kahn$;
";

/// What the sweep did.
#[derive(Default)]
pub(super) struct Swept {
    /// Objects deleted from the store and forgotten.
    pub deleted: u64,
    /// Objects the store failed to delete (active again; retried by a later run).
    pub failed: u64,
}

/// Finishes the tombstones a crashed run left (at most one batch), under the exclusive GC lock. Runs
/// before marking, so a row put back because its object could not be deleted is marked again by this
/// run and holds what it refers to.
pub(super) async fn finish_leftovers(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
) -> Result<Swept, GcError> {
    with_gc_lock(client, async |c| finish_leftovers_locked(c, store).await).await
}

/// Runs `body` holding the exclusive GC lock (a session lock: it spans the body's transactions) and
/// releases it even when `body` failed; on a lost connection the lock went with the connection. The
/// body's error wins over the unlock's.
async fn with_gc_lock<T>(
    client: &mut deadpool_postgres::ClientWrapper,
    body: impl AsyncFnOnce(&mut deadpool_postgres::ClientWrapper) -> Result<T, GcError>,
) -> Result<T, GcError> {
    client.execute("SELECT pg_advisory_lock($1)", &[&GC_LOCK]).await.map_err(q("gc: lock"))?;
    let result = body(client).await;
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&GC_LOCK]).await.map_err(q("gc: unlock"));
    let value = result?;
    unlocked?;
    Ok(value)
}

async fn finish_leftovers_locked(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
) -> Result<Swept, GcError> {
    let keys: Vec<String> = client
        .query("SELECT key FROM gc_deleting", &[])
        .await
        .map_err(q("gc leftovers: read tombstones"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if keys.is_empty() {
        return Ok(Swept::default());
    }
    tracing::info!(objects = keys.len(), "GC: finishing the deletes of an interrupted run");
    let failed = delete_tombstoned(client, store, &keys).await?;
    Ok(Swept { deleted: (keys.len() - failed.len()) as u64, failed: failed.len() as u64 })
}

/// Deletes every eligible object, level by level.
pub(super) async fn run(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
    marked_before: DateTime<Utc>,
) -> Result<Swept, GcError> {
    // Whole-table statements: hash joins are right (stale statistics right after marking once made the
    // planner pick nested loops that rescanned 500 000 rows per row); JIT only adds compile time.
    client
        .batch_execute(
            "SET enable_nestloop = off; SET enable_memoize = off; SET jit = off;
             DROP TABLE IF EXISTS gc_cand, gc_edge, gc_order",
        )
        .await
        .map_err(q("gc sweep: settings"))?;
    let n = client
        .execute(
            "CREATE TEMP TABLE gc_cand AS
             SELECT (row_number() OVER ())::int AS id, ctid AS tid, key COLLATE \"C\" AS key,
                    (deleting OR marked_at <= $1) AS cand, refs
             FROM objects WHERE deleting OR marked_at IS NOT NULL",
            &[&marked_before],
        )
        .await
        .map_err(q("gc sweep: collect marked rows"))?;
    if n == 0 {
        client
            .batch_execute("DROP TABLE gc_cand; RESET enable_nestloop; RESET enable_memoize")
            .await
            .map_err(q("gc sweep: settings"))?;
        return Ok(Swept::default());
    }
    // Statistics first: without them the planner sorted both sides of the next join (merge join).
    // (Memoize, off above, cached unnest() results per refs array: pure overhead here.)
    client
        .batch_execute(
            "ANALYZE gc_cand;
             CREATE TEMP TABLE gc_edge AS
             SELECT c.id AS src, d.id AS dst
             FROM gc_cand c CROSS JOIN LATERAL unnest(c.refs) AS r JOIN gc_cand d ON d.key = r COLLATE \"C\"
             WHERE d.cand AND d.id <> c.id AND cardinality(c.refs) > 0;
             CREATE TEMP TABLE gc_order (pos int NOT NULL, id int NOT NULL, lvl int NOT NULL, tid tid NOT NULL,
                                         key text COLLATE \"C\" NOT NULL);",
        )
        .await
        .map_err(q("gc sweep: references between marked rows"))?;
    client.batch_execute(ORDER).await.map_err(q("gc sweep: deletion order"))?;
    // The batches below are key lookups: nested loops are right for them.
    client
        .batch_execute(
            "RESET enable_nestloop; RESET enable_memoize;
             DROP TABLE gc_cand;
             ALTER TABLE gc_order ADD PRIMARY KEY (pos);
             CREATE INDEX ON gc_edge (src);
             ANALYZE gc_order; ANALYZE gc_edge;",
        )
        .await
        .map_err(q("gc sweep: work tables"))?;
    let levels: Vec<(i32, i32)> = client
        .query("SELECT min(pos), max(pos) FROM gc_order GROUP BY lvl ORDER BY lvl", &[])
        .await
        .map_err(q("gc sweep: levels"))?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let mut swept = Swept::default();
    for (start, end) in levels {
        let mut first = start;
        while first <= end {
            let last = first.saturating_add(BATCH - 1).min(end);
            with_gc_lock(client, async |c| delete_batch(c, store, marked_before, first, last, &mut swept).await)
                .await?;
            first = last.saturating_add(1);
        }
    }
    client.batch_execute("DROP TABLE gc_edge, gc_order").await.map_err(q("gc sweep: drop work tables"))?;
    Ok(swept)
}

/// Deletes the order's positions `first..=last` (all in one level); the caller holds the exclusive GC lock
/// throughout ([`with_gc_lock`]).
async fn delete_batch(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
    marked_before: DateTime<Utc>,
    first: i32,
    last: i32,
    swept: &mut Swept,
) -> Result<(), GcError> {
    // Re-check under the lock: a key claimed since marking has marked_at = NULL and is skipped; so is a
    // row changed in any way since gc_cand was made (its ctid moved).
    let row = client
        .query_one(
            "WITH b AS (SELECT id, tid, key FROM gc_order WHERE pos BETWEEN $1 AND $2),
             d AS (
                 DELETE FROM objects o USING b
                 WHERE o.ctid = b.tid AND o.key COLLATE \"C\" = b.key AND (o.deleting OR o.marked_at <= $3)
                 RETURNING o.key, o.kind, o.size, o.refs, o.first_seen, o.last_pushed, b.id
             ),
             t AS (
                 INSERT INTO gc_deleting (key, kind, size, refs, first_seen, last_pushed)
                 SELECT key, kind, size, refs, first_seen, last_pushed FROM d
             )
             SELECT (SELECT count(*) FROM b), coalesce(array_agg(d.key), '{}'), coalesce(array_agg(d.id), '{}')
             FROM d",
            &[&first, &last, &marked_before],
        )
        .await
        .map_err(q("gc sweep: take batch"))?;
    let in_batch: i64 = row.get(0);
    let keys: Vec<String> = row.get(1);
    let ids: Vec<i32> = row.get(2);

    let failed: HashSet<String> =
        if keys.is_empty() { HashSet::new() } else { delete_tombstoned(client, store, &keys).await? };
    swept.deleted += (keys.len() - failed.len()) as u64;
    swept.failed += failed.len() as u64;

    // Keep what the skipped and failed rows refer to, transitively.
    if count(in_batch) != (keys.len() - failed.len()) as u64 {
        let deleted: Vec<i32> =
            keys.iter().zip(&ids).filter(|(k, _)| !failed.contains(*k)).map(|(_, id)| *id).collect();
        client
            .execute(
                "WITH RECURSIVE kept(id) AS (
                     SELECT id FROM gc_order WHERE pos BETWEEN $1 AND $2 AND NOT (id = ANY($3))
                     UNION SELECT e.dst FROM gc_edge e JOIN kept ON e.src = kept.id
                 )
                 DELETE FROM gc_order l USING kept WHERE l.id = kept.id AND l.pos > $2",
                &[&first, &last, &deleted],
            )
            .await
            .map_err(q("gc sweep: keep what kept objects refer to"))?;
    }
    Ok(())
}

/// Deletes the objects of the tombstones `keys` from the store (narinfos first), gives the rows of those it
/// could not delete back to `objects` (unmarked: active again) and drops the tombstones. Returns the keys
/// that failed. The caller holds the exclusive GC lock.
async fn delete_tombstoned(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
    keys: &[String],
) -> Result<HashSet<String>, GcError> {
    let mut failed: HashSet<String> = HashSet::new();
    let mut parsed: Vec<ObjectKey> = Vec::with_capacity(keys.len());
    for k in keys {
        match ObjectKey::parse(k) {
            Ok((_, key)) => parsed.push(key),
            Err(e) => {
                // Not a key of the layout: never hand it to the store; keep the row for an operator.
                tracing::error!(key = %k, error = %e, "GC: refusing to delete an object with an invalid key");
                failed.insert(k.clone());
            }
        }
    }
    // Nothing in a batch refers to anything else in it (one level), so order within it is not needed for
    // the invariant; narinfos still go first, as the design promises.
    parsed.sort_by_key(|k| k.kind() != ObjectKind::NarInfo);
    let split = parsed.iter().position(|k| k.kind() != ObjectKind::NarInfo).unwrap_or(parsed.len());
    for part in [&parsed[..split], &parsed[split..]] {
        if part.is_empty() {
            continue;
        }
        for (key, err) in store.delete_many(part).await {
            tracing::warn!(key = %key, error = %err, "GC: store failed to delete an object; keeping it");
            failed.insert(key.as_str().to_owned());
        }
    }
    if !failed.is_empty() {
        let back: Vec<&str> = failed.iter().map(String::as_str).collect();
        client
            .execute(
                "WITH f AS (DELETE FROM gc_deleting WHERE key = ANY($1) RETURNING *)
                 INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed)
                 SELECT key, kind, size, refs, first_seen, last_pushed FROM f
                 ON CONFLICT (key) DO NOTHING",
                &[&back],
            )
            .await
            .map_err(q("gc sweep: reactivate failures"))?;
    }
    drop_tombstones(client).await?;
    Ok(failed)
}

/// Empties `gc_deleting`. Only this batch's tombstones exist: each batch drops its own before the next is
/// taken, leftovers of a crashed run are finished before anything else, and one run at a time holds the
/// run lock. TRUNCATE, not DELETE: the table's storage starts empty again instead of growing by a batch of
/// dead rows each time (every later batch would scan them). Claims touch the table only under the shared
/// GC lock, so nothing of ours holds it; but TRUNCATE's exclusive table lock would wait behind anyone
/// else's (a `pg_dump`, say) while this run holds the GC lock and uploads wait: after a second, DELETE.
async fn drop_tombstones(client: &mut deadpool_postgres::ClientWrapper) -> Result<(), GcError> {
    client.batch_execute("SET lock_timeout = '1s'").await.map_err(q("gc sweep: settings"))?;
    let truncated = client.batch_execute("TRUNCATE gc_deleting").await;
    client.batch_execute("RESET lock_timeout").await.map_err(q("gc sweep: settings"))?;
    if let Err(e) = truncated {
        tracing::debug!(error = %e, "GC: could not truncate the tombstones; deleting them");
        client.execute("DELETE FROM gc_deleting", &[]).await.map_err(q("gc sweep: drop tombstones"))?;
    }
    Ok(())
}
