//! Realisations live and die with the outputs they belong to: a realisation keeps its output's narinfo
//! (and the realisations it depends on) alive while it lives, expires like any pushed closure, and GC
//! deletes it before anything it points to — never leaving a realisation whose narinfo is gone. A
//! realisation is never published before what it points to. Real PostgreSQL, real local store, the real
//! publisher and collector; the clock is injected.

use chrono::{DateTime, Duration as ChronoDuration, TimeZone, Utc};
use niks3_nix::hash::Sha256Hash;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::realisation::{DrvOutput, Realisation};
use niks3_nix::signing::SecretKey;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_server::db::Db;
use niks3_server::gc::{self, GcOptions};
use niks3_server::upload::UploadError;
use niks3_server::upload::publish::{PublishInput, Publisher, StoredNar};
use niks3_storage::local::LocalStore;
use niks3_storage::{ObjectKey, Storage};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

fn t(hours: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("date") + ChronoDuration::hours(hours)
}

fn path(c: char, name: &str) -> StorePath {
    StorePath::from_basename(&format!("{}-{name}", c.to_string().repeat(32))).expect("path")
}

fn info(p: &StorePath, n: u8, refs: &[&StorePath]) -> PathInfo {
    PathInfo {
        path: p.clone(),
        nar_hash: Sha256Hash([n; 32]),
        nar_size: 100,
        references: refs.iter().map(|r| (*r).clone()).collect(),
        deriver: None,
        ca: None,
    }
}

fn realisation(n: u8, out: &StorePath, deps: &[&Realisation]) -> Realisation {
    Realisation {
        id: DrvOutput { drv_hash: Sha256Hash([n; 32]), output: "out".to_owned() },
        out_path: out.clone(),
        signatures: BTreeSet::new(),
        dependents: deps.iter().map(|d| (d.id.clone(), d.out_path.clone())).collect::<BTreeMap<_, _>>(),
    }
}

fn key_of(r: &Realisation) -> ObjectKey {
    ObjectKey::realisation(&r.id.drv_hash, &r.id.output).expect("key")
}

struct Cache {
    _pg: niks3_testkit::postgres::Postgres,
    db: Db,
    store: Arc<Storage>,
    publisher: Publisher,
    _dir: tempfile::TempDir,
}

impl Cache {
    async fn new() -> Cache {
        let pg = niks3_testkit::postgres::Postgres::start().expect("postgres");
        let db = Db::connect(&pg.url()).await.expect("db");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store")));
        let key = SecretKey::generate("test-1").expect("key");
        let publisher = Publisher::new(Arc::clone(&store), db.clone(), StoreDir::default(), Arc::new(vec![key]));
        Cache { _pg: pg, db, store, publisher, _dir: dir }
    }

    /// Pushes the closure `infos` (dependencies first) rooted at the last one, as the pipeline does.
    async fn push(&self, infos: &[&PathInfo], now: DateTime<Utc>) {
        let root = ObjectKey::narinfo(&infos[infos.len() - 1].path);
        let claimed: Vec<ObjectKey> =
            infos.iter().flat_map(|i| [ObjectKey::narinfo(&i.path), ObjectKey::nar(&i.nar_hash)]).collect();
        let id = self.db.begin_upload(&root, &claimed, now).await.expect("claim");
        for i in infos {
            let nar = StoredNar { file_hash: Sha256Hash([7; 32]), file_size: 10 };
            self.store.put(&ObjectKey::nar(&i.nar_hash), "nar".into(), "application/x-nix-archive").await.expect("nar");
            self.publisher.publish(&PublishInput::new(i, nar), now).await.expect("publish");
        }
        self.db.finish_upload(id, &root, now).await.expect("finish");
    }

    async fn has(&self, key: &ObjectKey) -> bool {
        self.store.head(key).await.expect("head").is_some()
    }

    async fn gc(&self, now: DateTime<Utc>) {
        let opts = GcOptions {
            older_than: Duration::from_hours(24),
            failed_uploads_older_than: Duration::from_hours(6),
            force: true,
            dry_run: false,
        };
        gc::run(&self.db, &self.store, opts, now).await.expect("gc");
    }

    /// Every realisation in the store has its output's narinfo and the realisations it depends on.
    async fn check(&self, all: &[&Realisation], when: &str) {
        for r in all {
            if self.has(&key_of(r)).await {
                assert!(self.has(&ObjectKey::narinfo(&r.out_path)).await, "{when}: {} without its narinfo", r.id);
                for dep in r.dependents.keys() {
                    let k = ObjectKey::realisation(&dep.drv_hash, &dep.output).expect("key");
                    assert!(self.has(&k).await, "{when}: {} without its dependent {dep}", r.id);
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_deletes_realisations_with_their_outputs_and_never_leaves_one_dangling() {
    let c = Cache::new().await;
    let (pa, pb) = (path('a', "ca-a"), path('b', "ca-b"));
    let (a, b) = (info(&pa, 1, &[]), info(&pb, 2, &[&pa]));
    let ra = realisation(1, &pa, &[]);
    let rb = realisation(2, &pb, &[&ra]);
    let all = [&ra, &rb];

    // A realisation is refused while what it points to is absent; nothing is written, no claim is left.
    let err = c.publisher.publish_realisation(&ra, t(0)).await.expect_err("narinfo missing");
    assert!(matches!(err, UploadError::RealisationIncomplete { .. }) && err.is_transient(), "{err}");
    assert!(err.to_string().contains(&ObjectKey::narinfo(&pa).to_string()), "{err}");
    c.push(&[&a, &b], t(0)).await;
    let err = c.publisher.publish_realisation(&rb, t(0)).await.expect_err("dependent missing");
    assert!(err.to_string().contains(key_of(&ra).as_str()), "{err}");
    assert!(!c.has(&key_of(&rb)).await);
    assert_eq!(c.db.stats().await.expect("stats").uploads, 0, "claims dropped");

    // Dependencies first: both published, signed, recorded.
    let signed = c.publisher.publish_realisation(&ra, t(0)).await.expect("ra");
    assert_eq!(signed.signatures.len(), 1);
    c.publisher.publish_realisation(&rb, t(0)).await.expect("rb");
    c.check(&all, "published").await;

    // The outputs are pushed again later; the realisations are not: they expire, the outputs stay.
    c.push(&[&a, &b], t(20)).await;
    c.gc(t(30)).await;
    c.check(&all, "after the realisations expired").await;
    assert!(!c.has(&key_of(&ra)).await && !c.has(&key_of(&rb)).await, "expired realisations deleted");
    assert!(c.has(&ObjectKey::narinfo(&pa)).await && c.has(&ObjectKey::narinfo(&pb)).await, "outputs kept");

    // Realisations pushed again keep their outputs alive after the outputs' own closure expired.
    c.publisher.publish_realisation(&ra, t(40)).await.expect("ra again");
    c.publisher.publish_realisation(&rb, t(40)).await.expect("rb again");
    c.gc(t(50)).await;
    c.check(&all, "outputs held by realisations").await;
    for k in [key_of(&ra), key_of(&rb), ObjectKey::narinfo(&pa), ObjectKey::narinfo(&pb), ObjectKey::nar(&b.nar_hash)] {
        assert!(c.has(&k).await, "{k} deleted while a live realisation reaches it");
    }

    // Everything expired: everything goes, realisations with (before) their outputs.
    c.gc(t(70)).await;
    c.check(&all, "all expired").await;
    for k in [key_of(&ra), key_of(&rb), ObjectKey::narinfo(&pa), ObjectKey::narinfo(&pb)] {
        assert!(!c.has(&k).await, "{k} survived");
    }
    assert_eq!(c.db.stats().await.expect("stats").objects, 0);
}
