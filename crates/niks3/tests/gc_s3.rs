//! GC against a real S3 server (single-node Garage): pushes with the upload protocol, expiry, GC with
//! `--force`; deleted objects are really gone from the bucket, the bucket invariant holds, and a delete
//! that fails because S3 is down is counted, made active again, and retried by the next run.

use crate::support::gc::{Cache, Universe, nar_key, narinfo_key};
use niks3_api::protocol::GcFigures;
use niks3_server::gc::{self, GcOptions};
use niks3_storage::Storage;
use niks3_storage::s3::S3Store;
use niks3_testkit::garage::Garage;
use std::time::Duration;

const HOUR: Duration = Duration::from_hours(1);

fn force() -> GcOptions {
    GcOptions { older_than: 24 * HOUR, failed_uploads_older_than: 6 * HOUR, force: true, dry_run: false }
}

async fn s3_cache(g: &Garage, u: Universe) -> Cache {
    let store = Storage::S3(S3Store::new(crate::support::s3_config(g, 8 << 20)).expect("valid config"));
    Cache::with_store(u, store, tempfile::tempdir().expect("dir")).await
}

/// Every key in the bucket (one listing, not HEADs).
async fn bucket_keys(c: &Cache) -> Vec<String> {
    let mut keys = c.store.list("").await.expect("list");
    keys.sort();
    keys
}

#[tokio::test]
async fn gc_deletes_from_s3_referrers_first_and_keeps_live_closures() {
    let g = Garage::start().expect("start garage");
    let c = s3_cache(&g, Universe::chain(5)).await;
    c.push(4, Cache::at(0)).await; // paths 0..=4
    c.push(1, Cache::at(20)).await; // paths 0, 1: still live at 30
    assert_eq!(bucket_keys(&c).await.len(), 10);
    let f = gc::run(&c.db, &c.store, force(), Cache::at(30)).await.expect("gc");
    assert_eq!(
        f,
        GcFigures {
            failed_uploads_deleted: 0,
            old_closures_deleted: 1,
            objects_marked_for_deletion: 6,
            objects_deleted_after_grace_period: 6,
            objects_failed_to_delete: 0,
        }
    );
    let mut left: Vec<String> =
        [narinfo_key(0), nar_key(0), narinfo_key(1), nar_key(1)].iter().map(|k| k.as_str().to_owned()).collect();
    left.sort();
    assert_eq!(bucket_keys(&c).await, left, "paths 2..=4 are really gone from the bucket");
    c.check("after gc on S3").await;
}

#[tokio::test]
async fn a_delete_that_fails_while_s3_is_down_is_counted_reactivated_and_retried() {
    let mut g = Garage::start().expect("start garage");
    let c = s3_cache(&g, Universe::chain(2)).await;
    c.push(1, Cache::at(0)).await;
    // A first run while S3 answers (it lists the bucket once: a new database timeline, gc/adopt.rs) …
    let f = gc::run(&c.db, &c.store, force(), Cache::at(1)).await.expect("gc with S3 up");
    assert_eq!(f, GcFigures::default(), "nothing is old yet");
    g.stop();
    // … then with S3 down. Level 0 is narinfo 1: its delete fails, so it comes back active and keeps everything it refers to.
    let f = gc::run(&c.db, &c.store, force(), Cache::at(30)).await.expect("gc with S3 down");
    assert_eq!(
        f,
        GcFigures {
            failed_uploads_deleted: 0,
            old_closures_deleted: 1,
            objects_marked_for_deletion: 4,
            objects_deleted_after_grace_period: 0,
            objects_failed_to_delete: 1,
        }
    );
    let marked: Option<chrono::DateTime<chrono::Utc>> =
        c.db.client()
            .await
            .expect("client")
            .query_one("SELECT marked_at FROM objects WHERE key = $1", &[&narinfo_key(1).as_str()])
            .await
            .expect("narinfo 1 has its row again")
            .get(0);
    assert_eq!(marked, None, "the failed object is active again");
    g.resume().expect("resume garage");
    assert_eq!(bucket_keys(&c).await.len(), 4, "nothing was deleted while S3 was down");
    c.check("after the failed run").await;
    // The next run marks narinfo 1 again and, with --force, deletes all four, referrers first.
    let f = gc::run(&c.db, &c.store, force(), Cache::at(31)).await.expect("gc");
    assert_eq!(
        f,
        GcFigures {
            failed_uploads_deleted: 0,
            old_closures_deleted: 0,
            objects_marked_for_deletion: 1,
            objects_deleted_after_grace_period: 4,
            objects_failed_to_delete: 0,
        }
    );
    assert!(bucket_keys(&c).await.is_empty(), "all gone from the bucket");
    c.check("after the retry").await;
}

/// Issue 18: a daemon killed mid-upload leaves its session and the multipart upload it recorded there as
/// resumable (migration 0012). Until a restart continues it, it is abandoned like a push's: GC phase 1
/// drops the session once it is older than `failed_uploads_older_than` and aborts the upload with it.
#[tokio::test]
async fn phase_1_aborts_the_resumable_upload_a_killed_daemon_left() {
    let g = Garage::start().expect("start garage");
    let c = s3_cache(&g, Universe::chain(1)).await;
    let Storage::S3(s3) = &c.store else { unreachable!("an S3 cache") };
    let key = nar_key(0);
    let upload_id = s3.initiate_multipart(&key, "application/x-nix-archive").await.expect("initiate");
    let client = c.db.client().await.expect("client");
    let session: i64 = client
        .query_one(
            "INSERT INTO uploads (root, claimed, started_at) VALUES ($1, '{}', $2) RETURNING id",
            &[&narinfo_key(0).as_str(), &Cache::at(0)],
        )
        .await
        .expect("session")
        .get(0);
    client
        .execute(
            "INSERT INTO upload_multiparts (upload_id, key, multipart_id, resumable) VALUES ($1, $2, $3, true)",
            &[&session, &key.as_str(), &upload_id],
        )
        .await
        .expect("record the upload");
    drop(client);
    let f = gc::run(&c.db, &c.store, force(), Cache::at(30)).await.expect("gc");
    assert_eq!(f.failed_uploads_deleted, 1, "{f:?}");
    assert!(s3.pending_uploads().await.expect("list uploads").is_empty(), "the abandoned upload is aborted");
}
