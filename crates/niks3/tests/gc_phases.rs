//! Each GC phase and option on a small cache with a real PostgreSQL and a real local store.

use crate::support::gc::{Cache, Universe, hash_part, nar_key, narinfo_key};
use niks3_api::protocol::GcFigures;
use niks3_server::gc::{self, GcError, GcOptions};
use std::time::Duration;

const HOUR: Duration = Duration::from_hours(1);

fn opts(force: bool) -> GcOptions {
    GcOptions { older_than: 24 * HOUR, failed_uploads_older_than: 6 * HOUR, force, dry_run: false }
}

fn figures(failed: u64, old: u64, marked: u64, deleted: u64, not_deleted: u64) -> GcFigures {
    GcFigures {
        failed_uploads_deleted: failed,
        old_closures_deleted: old,
        objects_marked_for_deletion: marked,
        objects_deleted_after_grace_period: deleted,
        objects_failed_to_delete: not_deleted,
    }
}

#[tokio::test]
async fn expired_closures_are_marked_then_deleted_after_the_grace_period() {
    let c = Cache::new(Universe::chain(4)).await;
    c.push(1, Cache::at(0)).await; // paths 0, 1
    c.push(3, Cache::at(20)).await; // paths 0..=3
    // At 30h path 1's closure has expired, but its objects are reachable from 3's closure: nothing marked.
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("gc");
    assert_eq!(f, figures(0, 1, 0, 0, 0));
    c.check("after first gc").await;
    // At 50h 3's closure has expired: all 8 objects are marked, none deleted yet (grace).
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(50)).await.expect("gc");
    assert_eq!(f, figures(0, 1, 8, 0, 0));
    assert!(c.has(&narinfo_key(3)).await);
    c.check("after marking").await;
    // 5h later the grace period (6h) has not passed.
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(55)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 0, 0));
    // 6h after marking, they go.
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(56)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 8, 0));
    for p in 0..4 {
        assert!(!c.has(&narinfo_key(p)).await && !c.has(&nar_key(p)).await, "path {p} deleted");
    }
    assert_eq!(c.db.stats().await.expect("stats").objects, 0);
    c.check("after deleting").await;
}

#[tokio::test]
async fn a_marked_object_pushed_again_is_not_deleted() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(2, Cache::at(0)).await;
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("gc");
    assert_eq!(f.objects_marked_for_deletion, 6);
    // Pushed again within the grace period: the claim clears the marks, nothing is uploaded twice.
    c.push(1, Cache::at(31)).await;
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(40)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 2, 0), "only path 2 (no longer pushed) goes");
    assert!(c.has(&narinfo_key(1)).await && c.has(&nar_key(0)).await);
    assert!(!c.has(&narinfo_key(2)).await);
    c.check("after re-push").await;
}

#[tokio::test]
async fn claiming_the_top_of_a_marked_closure_unmarks_all_of_it() {
    // The pipeline's walk claims a cached narinfo and stops there. If GC marked the closure (and is about
    // to delete it, between its mark and delete steps), the claim must unmark everything the narinfo
    // reaches, or GC would delete the closure under a narinfo the new upload relies on.
    let c = Cache::new(Universe::chain(4)).await;
    c.push(3, Cache::at(0)).await;
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("gc");
    assert_eq!(f.objects_marked_for_deletion, 8);
    let id = c.db.begin_upload(&narinfo_key(9), &[], Cache::at(31)).await.expect("session");
    let absent = c.db.claim(id, &[narinfo_key(3)]).await.expect("claim");
    assert!(absent.is_empty(), "the narinfo is cached: {absent:?}");
    assert_eq!(c.db.stats().await.expect("stats").marked, 0, "every object the narinfo reaches is unmarked");
    // An unrelated marked closure stays marked: the walk follows references only.
    let c2 = Cache::new(Universe { deps: vec![vec![], vec![]] }).await;
    c2.push(0, Cache::at(0)).await;
    c2.push(1, Cache::at(0)).await;
    gc::run(&c2.db, &c2.store, opts(false), Cache::at(30)).await.expect("gc");
    let id = c2.db.begin_upload(&narinfo_key(1), &[], Cache::at(31)).await.expect("session");
    c2.db.claim(id, &[narinfo_key(1)]).await.expect("claim");
    assert_eq!(c2.db.stats().await.expect("stats").marked, 2, "path 0's narinfo and NAR stay marked");
    // A session GC dropped as failed cannot claim.
    c2.db.abort_upload(id).await.expect("abort");
    let err = c2.db.claim(id, &[narinfo_key(0)]).await.expect_err("session gone");
    assert!(matches!(err, niks3_server::db::DbError::UploadExpired(_)), "{err}");
}

#[tokio::test]
async fn force_deletes_unreachable_objects_at_once() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(2, Cache::at(0)).await;
    c.push(0, Cache::at(29)).await;
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(30)).await.expect("gc");
    assert_eq!(f, figures(0, 1, 4, 4, 0));
    assert!(c.has(&narinfo_key(0)).await && !c.has(&narinfo_key(1)).await);
    c.check("after force").await;
}

#[tokio::test]
async fn failed_uploads_are_dropped_and_their_objects_collected() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(0, Cache::at(0)).await;
    // Dies after writing path 1's NAR (path 0 is already there).
    c.abandon(2, Cache::at(1), 1).await;
    assert!(c.has(&nar_key(1)).await);
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(6)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 0, 0), "5h old: still in flight, its claim protects what it wrote");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(8)).await.expect("gc");
    assert_eq!(f, figures(1, 0, 1, 1, 0), "7h old: dropped, its orphan NAR deleted");
    assert!(!c.has(&nar_key(1)).await);
    assert!(c.has(&narinfo_key(0)).await, "the pushed closure it shared stays");
    assert_eq!(c.db.stats().await.expect("stats").uploads, 0);
    c.check("after failed upload").await;
}

#[tokio::test]
async fn an_upload_dropped_as_failed_cannot_finish() {
    let c = Cache::new(Universe::chain(2)).await;
    let id = c.begin(1, Cache::at(0)).await;
    c.write_missing(1, Cache::at(0), usize::MAX).await;
    gc::run(&c.db, &c.store, opts(true), Cache::at(7)).await.expect("gc");
    let err = c.db.finish_upload(id, &narinfo_key(1), Cache::at(7)).await.expect_err("dropped upload");
    assert!(err.is_transient(), "{err}");
    // Uploading it again works and is complete.
    c.push(1, Cache::at(7)).await;
    c.check("after re-upload").await;
}

#[tokio::test]
async fn dry_run_reports_without_changing_anything() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(2, Cache::at(0)).await;
    c.abandon(1, Cache::at(0), 0).await;
    let dry = GcOptions { dry_run: true, ..opts(true) };
    let before = c.db.stats().await.expect("stats");
    let f = gc::run(&c.db, &c.store, dry, Cache::at(30)).await.expect("dry run");
    assert_eq!(c.db.stats().await.expect("stats"), before, "dry run changed the database");
    assert!(c.has(&narinfo_key(2)).await, "dry run deleted objects");
    let real = gc::run(&c.db, &c.store, opts(true), Cache::at(30)).await.expect("gc");
    assert_eq!(f, real, "a dry run predicts the real run");
    assert_eq!(real, figures(1, 1, 6, 6, 0));
}

#[tokio::test]
async fn a_second_concurrent_run_is_refused_clearly() {
    let c = Cache::new(Universe::chain(1)).await;
    let holder = c.db.client().await.expect("client");
    holder.execute("SELECT pg_advisory_lock($1)", &[&niks3_server::db::GC_RUN_LOCK]).await.expect("lock");
    let err = gc::run(&c.db, &c.store, opts(false), Cache::at(0)).await.expect_err("must refuse");
    assert!(matches!(err, GcError::AlreadyRunning), "{err}");
    assert!(err.to_string().contains("already running"), "{err}");
    holder.execute("SELECT pg_advisory_unlock($1)", &[&niks3_server::db::GC_RUN_LOCK]).await.expect("unlock");
    gc::run(&c.db, &c.store, opts(false), Cache::at(0)).await.expect("runs once the other ended");
}

#[tokio::test]
async fn two_runs_at_once_one_runs_one_is_refused() {
    let c = Cache::new(Universe::chain(5)).await;
    c.push(4, Cache::at(0)).await;
    let (a, b) = tokio::join!(
        gc::run(&c.db, &c.store, opts(true), Cache::at(30)),
        gc::run(&c.db, &c.store, opts(true), Cache::at(30))
    );
    let ok = [&a, &b].iter().filter(|r| r.is_ok()).count();
    let refused = [&a, &b].iter().filter(|r| matches!(r, Err(GcError::AlreadyRunning))).count();
    assert_eq!(ok + refused, 2, "{a:?} {b:?}");
    assert!(ok >= 1);
    c.check("after two runs").await;
}

#[tokio::test]
async fn a_narinfo_the_store_cannot_delete_keeps_its_whole_closure() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(2, Cache::at(0)).await;
    // Make narinfo 2 undeletable: a non-empty directory where the file was.
    let p = c.path_of(&narinfo_key(2));
    std::fs::remove_file(&p).expect("rm");
    std::fs::create_dir_all(p.join("stuck")).expect("dir");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(30)).await.expect("gc");
    assert_eq!(f, figures(0, 1, 6, 0, 1), "narinfo 2 failed; everything it refers to was kept");
    assert!(c.has(&nar_key(2)).await && c.has(&narinfo_key(1)).await && c.has(&nar_key(0)).await);
    let marked: Option<chrono::DateTime<chrono::Utc>> =
        c.db.client()
            .await
            .expect("client")
            .query_one("SELECT marked_at FROM objects WHERE key = $1", &[&narinfo_key(2).as_str()])
            .await
            .expect("row")
            .get(0);
    assert_eq!(marked, None, "the failed object is active again");
    // Once the store cooperates, the next runs delete everything, referrers first.
    std::fs::remove_dir_all(&p).expect("unstick");
    std::fs::write(&p, "narinfo").expect("restore");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(31)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 1, 6, 0));
    assert_eq!(c.db.stats().await.expect("stats").objects, 0);
}

#[tokio::test]
async fn a_run_that_died_mid_delete_is_finished_by_the_next() {
    let c = Cache::new(Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("mark");
    // As if a run had flagged narinfo 1, deleted it from the store and died before removing the row.
    let client = c.db.client().await.expect("client");
    client
        .execute("UPDATE objects SET deleting = true WHERE key = $1", &[&narinfo_key(1).as_str()])
        .await
        .expect("flag");
    std::fs::remove_file(c.path_of(&narinfo_key(1))).expect("rm");
    c.check("after the crash").await;
    assert_eq!(c.db.missing(&[narinfo_key(1)]).await.expect("missing").len(), 1, "a flagged row reads as missing");
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(37)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 4, 0));
    c.check("after the next run").await;
}

#[tokio::test]
async fn pins_and_nix_cache_info_are_never_collected() {
    let c = Cache::new(Universe::chain(3)).await;
    c.push(1, Cache::at(0)).await;
    c.push(2, Cache::at(0)).await;
    c.db.pin("release", &narinfo_key(1), "/nix/store/one", "local:ops", Cache::at(0)).await.expect("pin");
    let info = niks3_storage::ObjectKey::cache_info();
    c.store.put(&info, "StoreDir: /nix/store\n".into(), "text/plain").await.expect("put");
    c.db.record_object(&niks3_server::db::NewObject { key: info.clone(), size: 21, refs: vec![] }, Cache::at(0))
        .await
        .expect("record");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(100)).await.expect("gc");
    assert_eq!(f, figures(0, 2, 2, 2, 0), "only path 2 goes");
    assert!(c.has(&info).await && c.has(&narinfo_key(1)).await && c.has(&nar_key(0)).await);
    c.check("with a pin").await;
}

/// As if a run had moved `key`'s row into the tombstone table `gc_deleting` (the first step of a delete
/// batch) and died there.
async fn tombstone(c: &Cache, key: &niks3_storage::ObjectKey) {
    let client = c.db.client().await.expect("client");
    let n = client
        .execute(
            "WITH d AS (DELETE FROM objects WHERE key = $1 RETURNING *)
             INSERT INTO gc_deleting (key, kind, size, refs, first_seen, last_pushed)
             SELECT key, kind, size, refs, first_seen, last_pushed FROM d",
            &[&key.as_str()],
        )
        .await
        .expect("tombstone");
    assert_eq!(n, 1);
}

async fn tombstones(c: &Cache) -> i64 {
    let client = c.db.client().await.expect("client");
    client.query_one("SELECT count(*) FROM gc_deleting", &[]).await.expect("count").get(0)
}

#[tokio::test]
async fn a_run_that_died_mid_batch_is_finished_by_the_next_before_it_marks() {
    let c = Cache::new(Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("mark");
    // Died after taking narinfo 1 and deleting its object, before dropping the tombstone.
    tombstone(&c, &narinfo_key(1)).await;
    std::fs::remove_file(c.path_of(&narinfo_key(1))).expect("rm");
    c.check("after the crash").await;
    assert_eq!(c.db.missing(&[narinfo_key(1)]).await.expect("missing").len(), 1, "a tombstoned key reads as missing");
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(37)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 4, 0), "the tombstone and the three objects it held");
    assert_eq!(tombstones(&c).await, 0);
    assert_eq!(c.db.stats().await.expect("stats").objects, 0);
    c.check("after the next run").await;
}

#[tokio::test]
async fn a_claim_drops_a_tombstone_so_gc_never_deletes_the_object_uploaded_again() {
    let c = Cache::new(Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("mark");
    tombstone(&c, &narinfo_key(1)).await;
    std::fs::remove_file(c.path_of(&narinfo_key(1))).expect("rm");
    // Pushed again: the claim drops the tombstone, the narinfo reads as missing and is written again.
    c.push(1, Cache::at(31)).await;
    assert_eq!(tombstones(&c).await, 0, "the claim dropped the tombstone");
    assert!(c.has(&narinfo_key(1)).await, "uploaded again");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(32)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 0, 0), "nothing to finish, nothing unreachable");
    assert!(c.has(&narinfo_key(1)).await && c.has(&nar_key(0)).await);
    c.check("after the re-push and gc").await;
}

#[tokio::test]
async fn a_tombstone_the_store_cannot_delete_comes_back_and_holds_its_closure() {
    let c = Cache::new(Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    gc::run(&c.db, &c.store, opts(false), Cache::at(30)).await.expect("mark");
    tombstone(&c, &narinfo_key(1)).await;
    let p = c.path_of(&narinfo_key(1));
    std::fs::remove_file(&p).expect("rm");
    std::fs::create_dir_all(p.join("stuck")).expect("dir");
    // The leftover fails: its row comes back, is marked again by this run (so not yet past its grace
    // period), and holds the NAR and narinfo 0 (and through it NAR 0), whose grace period is over.
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(37)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 1, 0, 1));
    assert_eq!(tombstones(&c).await, 0);
    assert!(c.has(&nar_key(1)).await && c.has(&narinfo_key(0)).await && c.has(&nar_key(0)).await);
    std::fs::remove_dir_all(&p).expect("unstick");
    std::fs::write(&p, "narinfo").expect("restore");
    let f = gc::run(&c.db, &c.store, opts(false), Cache::at(43)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 4, 0), "six hours later all four go, referrers first");
    c.check("after the store cooperates").await;
}

#[tokio::test]
async fn objects_in_a_reference_cycle_are_never_ordered_for_deletion() {
    // Nix never makes cycles between store paths, but rows are data: a cycle must not make GC delete a
    // narinfo before one that refers to it. Narinfos 0 and 1 refer to each other (and to their NARs).
    let c = Cache::new(Universe::chain(2)).await;
    let objs = [
        niks3_server::db::NewObject { key: nar_key(0), size: 1, refs: vec![] },
        niks3_server::db::NewObject { key: nar_key(1), size: 1, refs: vec![] },
        niks3_server::db::NewObject { key: narinfo_key(0), size: 1, refs: vec![nar_key(0), narinfo_key(1)] },
        niks3_server::db::NewObject { key: narinfo_key(1), size: 1, refs: vec![nar_key(1), narinfo_key(0)] },
    ];
    for o in &objs {
        c.store.put(&o.key, "x".into(), "text/plain").await.expect("put");
    }
    c.db.record_objects(&objs, Cache::at(0)).await.expect("record");
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(30)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 4, 0, 0), "all unreachable, none deletable referrers-first");
    for o in &objs {
        assert!(c.has(&o.key).await, "{} kept", o.key);
    }
    c.check("with a cycle").await;
}

#[tokio::test]
async fn a_reader_holding_the_tombstone_table_does_not_stall_the_sweep() {
    // Say a pg_dump holds a share lock on gc_deleting for its whole run: TRUNCATE would wait for it while
    // GC holds the GC lock (and uploads wait for GC). The sweep falls back to DELETE after a second.
    let c = Cache::new(Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    let mut reader = c.db.client().await.expect("client");
    let t = reader.transaction().await.expect("begin");
    t.query_one("SELECT count(*) FROM gc_deleting", &[]).await.expect("read");
    let f = tokio::time::timeout(Duration::from_mins(1), gc::run(&c.db, &c.store, opts(true), Cache::at(30)))
        .await
        .expect("the sweep does not wait for the reader")
        .expect("gc");
    assert_eq!(f, figures(0, 1, 4, 4, 0));
    t.commit().await.expect("end the reader");
    assert_eq!(tombstones(&c).await, 0);
    c.check("after a sweep beside a reader").await;
}

/// A database failover lost the records of a published path (its push's commits never reached the
/// standby): the narinfo is in the bucket, its row and closure are not. The first run on the new
/// timeline records it again from the bucket, so the paths it refers to are kept although their own
/// closure expired.
#[tokio::test]
async fn a_narinfo_whose_record_a_failover_lost_keeps_its_references() {
    let c = Cache::new(Universe::chain(3)).await; // 2 → 1 → 0
    c.push(1, Cache::at(0)).await;
    assert_eq!(gc::run(&c.db, &c.store, opts(true), Cache::at(1)).await.expect("gc"), figures(0, 0, 0, 0, 0));
    // Path 2, pushed at 10h: its NAR's row survived, the narinfo's row and the closure were lost.
    let (nar, _) = c.u.records(2);
    c.store.put(&nar.key, "nar of 2".into(), "application/zstd").await.expect("put nar");
    c.db.record_object(&nar, Cache::at(10)).await.expect("record nar");
    let text = format!(
        "StorePath: /nix/store/{}-p2\nURL: {}\nCompression: zstd\nReferences: {}-p1\n",
        hash_part(2),
        nar_key(2),
        hash_part(1)
    );
    c.store.put(&narinfo_key(2), text.into(), "text/x-nix-narinfo").await.expect("put narinfo");
    let db = c.db.client().await.expect("client");
    // The promoted standby is on another timeline than the last run saw.
    db.execute("UPDATE gc_runs SET timeline = timeline + 1", &[]).await.expect("another timeline");
    // At 30h closure 1 expired; path 2 still refers to 1 (and so 0).
    gc::run(&c.db, &c.store, opts(true), Cache::at(30)).await.expect("gc");
    for p in 0..3 {
        assert!(c.has(&narinfo_key(p)).await && c.has(&nar_key(p)).await, "path {p} was deleted");
    }
    assert!(c.db.missing(&[narinfo_key(2)]).await.expect("missing").is_empty(), "path 2 recorded again");
    c.check("after the first run on the new timeline").await;
    // On the same timeline nothing is listed again, and path 2 now lives as a closure of its own.
    let f = gc::run(&c.db, &c.store, opts(true), Cache::at(40)).await.expect("gc");
    assert_eq!(f, figures(0, 0, 0, 0, 0));
}
