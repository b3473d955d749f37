//! Garbage collection: failed uploads → expired closures → mark unreachable → delete after grace, under a
//! PostgreSQL advisory lock, keeping the invariant that every narinfo in the bucket has its NAR and the
//! narinfos of all its references.
//!
//! A run ([`run`]) happens on one dedicated connection (closed at the end, so a crash or an error can never
//! leave a lock or a temporary table behind):
//! 1. [`GC_RUN_LOCK`](crate::db::GC_RUN_LOCK) is tried; if another run holds it, [`GcError::AlreadyRunning`]
//!    is returned at once (a second run never waits).
//! 2. Tombstones left by a run that died mid-batch are finished ([`sweep::finish_leftovers`]).
//! 3. [`mark`]: one transaction under the exclusive [`GC_LOCK`](crate::db::GC_LOCK) drops failed uploads,
//!    forgets expired closures and marks what nothing live reaches (clearing marks on what is reachable).
//!    A dry run rolls it back after counting.
//! 4. [`sweep`]: deletes what has been marked longer than the grace period, referrers before what they
//!    refer to (so narinfos go before their NARs and before the narinfos they reference), in batches that
//!    each hold the exclusive lock. The order is computed once, inside PostgreSQL. An object the store
//!    fails to delete becomes active again, and everything it refers to is then kept too.
//!
//! Time is injected (`now`), never read from a clock here.

mod adopt;
pub mod duration;
mod mark;
mod sweep;

pub use duration::{DurationError, parse_duration};

use crate::db::{Db, DbError, GC_RUN_LOCK};
use chrono::{DateTime, Utc};
use niks3_api::protocol::GcFigures;
use niks3_storage::Storage;
use std::time::Duration;

/// The least `older_than` and `failed_uploads_older_than` the API accepts from a token that is not
/// `admin` or a request without `force` (security review #3: `0` wiped every closure of the cache).
pub(crate) const API_OPTION_FLOOR: Duration = Duration::from_hours(1);

/// Temporary upload files (the local store's `.tmp/*.part`, S3 multipart uploads) younger than this are
/// never removed by GC, whatever `failed_uploads_older_than` says: they may belong to an upload still in
/// flight, relayed or from the server's own pipeline (security review #11). Their sessions may be dropped
/// sooner; such an upload then fails at `complete`, instead of mid-stream.
pub(crate) const IN_FLIGHT_MIN_AGE: Duration = Duration::from_hours(1);

/// What a GC run does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcOptions {
    /// Closures last pushed longer ago than this are forgotten (`--older-than`, e.g. 720h).
    pub older_than: Duration,
    /// Uploads in flight longer than this are dropped as failed, and objects must stay marked this long
    /// before they are deleted (the grace period) (`--failed-uploads-older-than`, e.g. 6h).
    pub failed_uploads_older_than: Duration,
    /// Delete unreachable objects at once, without the grace period.
    pub force: bool,
    /// Compute and report the figures without changing anything.
    pub dry_run: bool,
}

/// Why a GC run failed. Whatever it had already done stays consistent.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// Another GC run (this server or another one sharing the database) holds the GC lock.
    #[error("GC already running (another run holds the PostgreSQL advisory lock); try again when it ends")]
    AlreadyRunning,
    /// An option is out of range.
    #[error("invalid GC option {name}: {reason}")]
    Options {
        /// The option.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// Getting a connection or a query failed.
    #[error("GC: {0}")]
    Db(#[from] DbError),
    /// The bucket could not be read where GC must know what is there before dropping anything.
    #[error("GC: reading {key} from the bucket: {reason}")]
    Storage {
        /// The object.
        key: String,
        /// The store's error.
        reason: String,
    },
}

impl GcError {
    /// True when running again later may succeed (database down, another run in progress).
    pub fn is_transient(&self) -> bool {
        match self {
            GcError::AlreadyRunning | GcError::Storage { .. } => true,
            GcError::Options { .. } => false,
            GcError::Db(e) => e.is_transient(),
        }
    }
}

/// Maps a query error of GC step `what` into [`GcError`].
fn q(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> GcError {
    move |source| GcError::Db(DbError::Query { what, source })
}

/// A count from PostgreSQL (`u64` from the driver's `u64`/`i64`).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// `now - d`, or an options error naming `name` when `d` is absurdly large.
fn before(now: DateTime<Utc>, d: Duration, name: &'static str) -> Result<DateTime<Utc>, GcError> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| GcError::Options { name, reason: format!("{d:?} is too large") })
}

/// Runs one GC: drops failed uploads, forgets closures older than `older_than`, marks what nothing reaches
/// and deletes what stayed marked for the grace period. Returns the five figures and logs them in one line.
pub async fn run(db: &Db, store: &Storage, opts: GcOptions, now: DateTime<Utc>) -> Result<GcFigures, GcError> {
    let closures_before = before(now, opts.older_than, "older_than")?;
    let uploads_before = before(now, opts.failed_uploads_older_than, "failed_uploads_older_than")?;
    let delete_marked_before = if opts.force { now } else { uploads_before };

    // A connection of our own, closed when this function returns: session locks and temporary tables
    // never outlive the run, whatever happens.
    let pooled = db.client().await?;
    let mut client = deadpool_postgres::Object::take(pooled);

    // The run's work tables (the live set while marking, the candidates while sweeping: tens of MB on a
    // 1M-object cache) are temporary tables, which live in the session's local buffers; with the default
    // 8 MB every batch of the sweep evicted and re-read them. Must be set before the session's first
    // temporary table; local buffers are allocated only as used, and go with the connection.
    // work_mem: the walk's hash of `objects` (key and refs; ~200 MB for 1M objects) then fits in memory
    // and is built once for all its iterations; with the default 4 MB it was split into 32 batches spilled
    // to disk and rebuilt at every iteration (24 s instead of 9 s for the walk, docs/benchmarks.md "GC").
    // Only what a statement needs is allocated; bigger inputs degrade to batches as before.
    client.batch_execute("SET temp_buffers = '256MB'; SET work_mem = '256MB'").await.map_err(q("gc: settings"))?;
    let got: bool =
        client.query_one("SELECT pg_try_advisory_lock($1)", &[&GC_RUN_LOCK]).await.map_err(q("gc: run lock"))?.get(0);
    if !got {
        return Err(GcError::AlreadyRunning);
    }

    let result = collect(&mut client, store, opts, now, closures_before, uploads_before, delete_marked_before).await;
    // Release the run lock explicitly: closing the connection would too, but the server notices that a
    // moment later, and a run started right after this one must not see the lock still held.
    let unlocked = client.execute("SELECT pg_advisory_unlock($1)", &[&GC_RUN_LOCK]).await;
    let figures = result?;
    unlocked.map_err(q("gc: run unlock"))?;

    tracing::info!(
        dry_run = opts.dry_run,
        "gc finished: failed-uploads-deleted={} old-closures-deleted={} objects-marked-for-deletion={} \
         objects-deleted-after-grace-period={} objects-failed-to-delete={}",
        figures.failed_uploads_deleted,
        figures.old_closures_deleted,
        figures.objects_marked_for_deletion,
        figures.objects_deleted_after_grace_period,
        figures.objects_failed_to_delete,
    );
    Ok(figures)
}

/// The three phases, under the run lock.
async fn collect(
    client: &mut deadpool_postgres::ClientWrapper,
    store: &Storage,
    opts: GcOptions,
    now: DateTime<Utc>,
    closures_before: DateTime<Utc>,
    uploads_before: DateTime<Utc>,
    delete_marked_before: DateTime<Utc>,
) -> Result<GcFigures, GcError> {
    let mut figures = GcFigures::default();
    // Tombstones of a run that died mid-batch go first: a row put back because its object could not be
    // deleted is then marked again below, and holds what it refers to.
    let leftovers = if opts.dry_run { sweep::Swept::default() } else { sweep::finish_leftovers(client, store).await? };
    let (timeline, failed_over) = adopt::timeline(client).await?;
    if failed_over {
        let adopted = adopt::run(client, store, now, opts.dry_run).await?;
        tracing::info!(timeline, adopted, dry_run = opts.dry_run, "gc: new database timeline; bucket reconciled");
    }
    let marked = mark::run(client, closures_before, uploads_before, delete_marked_before, now, opts.dry_run).await?;
    figures.failed_uploads_deleted = marked.failed_uploads;
    figures.old_closures_deleted = marked.old_closures;
    figures.objects_marked_for_deletion = marked.new;
    if opts.dry_run {
        figures.objects_deleted_after_grace_period = marked.deletable;
        return Ok(figures);
    }
    abort_abandoned_multiparts(store, &marked.abandoned_multiparts).await;
    abort_stale_multiparts(client, store, opts).await;
    // Nothing eligible when the mark transaction committed: claims since then only make fewer rows
    // eligible, so there is nothing to sweep (this skips building the work tables over every marked row).
    let swept = if marked.deletable == 0 {
        sweep::Swept::default()
    } else {
        sweep::run(client, store, delete_marked_before).await?
    };
    figures.objects_deleted_after_grace_period = leftovers.deleted + swept.deleted;
    figures.objects_failed_to_delete = leftovers.failed + swept.failed;
    record_run(client, now, figures, timeline).await?;
    Ok(figures)
}

/// Aborts the multipart uploads in the bucket older than `failed_uploads_older_than` (at least
/// [`IN_FLIGHT_MIN_AGE`]), except those the sessions still in flight recorded: those are not stale, however
/// old (a restarted daemon continues one an earlier process started: issue 18). Best effort: what fails
/// here, or everything when the recorded ones cannot be read, waits for the next run.
async fn abort_stale_multiparts(client: &deadpool_postgres::ClientWrapper, store: &Storage, opts: GcOptions) {
    let in_flight: std::collections::HashSet<String> = match client
        .query("SELECT multipart_id FROM upload_multiparts", &[])
        .await
    {
        Ok(rows) => rows.iter().map(|r| r.get(0)).collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not read the multipart uploads in flight; the next GC aborts stale ones");
            return;
        }
    };
    match store.abort_stale_uploads_except(opts.failed_uploads_older_than.max(IN_FLIGHT_MIN_AGE), &in_flight).await {
        Ok(n) if n > 0 => tracing::info!(aborted = n, "aborted stale multipart uploads"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "could not abort stale multipart uploads; the next GC retries"),
    }
}

/// Aborts the multipart uploads of the failed uploads phase 1 dropped (remote pushers that never completed).
/// Best effort: what fails here is still in the bucket, and `abort_stale_uploads` removes it by age.
async fn abort_abandoned_multiparts(store: &Storage, multiparts: &[(String, String)]) {
    let mut aborted = 0u64;
    for (key, upload_id) in multiparts {
        let Ok((_, key)) = niks3_storage::ObjectKey::parse(key) else { continue };
        match store.abort_multipart(&key, upload_id).await {
            Ok(()) => aborted += 1,
            Err(e) => tracing::warn!(error = %e, "could not abort an abandoned multipart upload; the next GC retries"),
        }
    }
    if aborted > 0 {
        tracing::info!(aborted, "aborted the multipart uploads of failed uploads");
    }
}

/// Keeps the figures of a finished run in `gc_runs`.
async fn record_run(
    client: &tokio_postgres::Client,
    now: DateTime<Utc>,
    f: GcFigures,
    timeline: i64,
) -> Result<(), GcError> {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    client
        .execute(
            "INSERT INTO gc_runs (started_at, finished_at, failed_uploads_deleted, old_closures_deleted, \
             objects_marked_for_deletion, objects_deleted_after_grace_period, objects_failed_to_delete, timeline) \
             VALUES ($1, $1, $2, $3, $4, $5, $6, $7)",
            &[
                &now,
                &n(f.failed_uploads_deleted),
                &n(f.old_closures_deleted),
                &n(f.objects_marked_for_deletion),
                &n(f.objects_deleted_after_grace_period),
                &n(f.objects_failed_to_delete),
                &timeline,
            ],
        )
        .await
        .map_err(q("gc: record run"))?;
    Ok(())
}
