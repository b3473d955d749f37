//! A small cache for GC tests: a real PostgreSQL, a real local store, and a universe of store paths whose
//! references form a DAG, pushed exactly as the server's upload pipeline does (open a session, walk down
//! from the root claiming each level before asking what is missing, stop at cached paths, write NAR then
//! narinfo, record each object after writing it, finish). `check` verifies the promises.

use chrono::{DateTime, Duration, TimeZone, Utc};
use niks3_nix::hash::Sha256Hash;
use niks3_server::db::{Db, DbError, NewObject, UploadId};
use niks3_storage::local::LocalStore;
use niks3_storage::{ObjectKey, Storage};
use niks3_testkit::postgres::Postgres;
use rand::Rng;
use std::collections::{BTreeSet, HashMap};

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// A valid, distinct 32-character nixbase32 hash part for path `n`.
pub fn hash_part(n: usize) -> String {
    let mut x = n as u64;
    let mut s = String::with_capacity(32);
    for _ in 0..32 {
        s.push(NIX32[(x % 32) as usize] as char);
        x /= 32;
    }
    s
}

/// `<hash>.narinfo` of path `n`.
pub fn narinfo_key(n: usize) -> ObjectKey {
    ObjectKey::parse(&format!("{}.narinfo", hash_part(n))).expect("valid narinfo key").1
}

/// `nar/<hash>.nar.zst` of path `n`.
pub fn nar_key(n: usize) -> ObjectKey {
    ObjectKey::nar(&Sha256Hash::digest(format!("nar of {n}").as_bytes()))
}

/// Midnight, 1 January 2026: the tests' clock starts here and only moves when they say so.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid date")
}

/// Store paths `0..n`; path `i` references `deps[i]`, all lower than `i` (a DAG, as Nix guarantees).
pub struct Universe {
    /// References of each path.
    pub deps: Vec<Vec<usize>>,
}

impl Universe {
    /// `n` paths, each referencing up to three earlier ones, mostly recent ones (so closures are deep and
    /// overlap a lot).
    pub fn random(n: usize, rng: &mut impl Rng) -> Self {
        let mut deps = Vec::with_capacity(n);
        for i in 0..n {
            let k = if i == 0 { 0 } else { rng.gen_range(0..=3.min(i)) };
            let mut d = BTreeSet::new();
            for _ in 0..k {
                let back = rng.gen_range(1..=i.min(6));
                d.insert(i - back);
            }
            deps.push(d.into_iter().collect());
        }
        Universe { deps }
    }

    /// A chain `n-1 -> n-2 -> … -> 0`.
    pub fn chain(n: usize) -> Self {
        Universe { deps: (0..n).map(|i| if i == 0 { vec![] } else { vec![i - 1] }).collect() }
    }

    /// The closure of `root`, dependencies before dependents.
    pub fn closure(&self, root: usize) -> Vec<usize> {
        let mut seen = BTreeSet::new();
        let mut stack = vec![root];
        while let Some(p) = stack.pop() {
            if seen.insert(p) {
                stack.extend(self.deps[p].iter().copied());
            }
        }
        seen.into_iter().collect() // ascending index = dependencies first
    }

    /// Every key the closure of `root` consists of.
    pub fn closure_keys(&self, root: usize) -> Vec<ObjectKey> {
        self.closure(root).into_iter().flat_map(|p| [nar_key(p), narinfo_key(p)]).collect()
    }

    /// The objects' database records of path `p`: its NAR, and its narinfo keeping alive the NAR and the
    /// narinfos of its references.
    pub fn records(&self, p: usize) -> (NewObject, NewObject) {
        let nar = NewObject { key: nar_key(p), size: 1000 + p as u64, refs: vec![] };
        let mut refs = vec![nar_key(p)];
        refs.extend(self.deps[p].iter().map(|&d| narinfo_key(d)));
        (nar, NewObject { key: narinfo_key(p), size: 100, refs })
    }
}

/// PostgreSQL + local store + a universe.
pub struct Cache {
    /// Held for its `Drop`: the database server lives as long as the cache.
    _pg: Postgres,
    pub db: Db,
    pub store: Storage,
    /// Held for its `Drop`: the local store's directory.
    _dir: tempfile::TempDir,
    pub u: Universe,
    by_key: HashMap<String, usize>,
}

impl Cache {
    /// A fresh empty cache over `u`.
    pub async fn new(u: Universe) -> Self {
        let dir = tempfile::tempdir().expect("store dir");
        let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("open local store"));
        Self::with_store(u, store, dir).await
    }

    /// A fresh empty cache over `u` on `store` (e.g. S3); `dir` is kept alive with it.
    pub async fn with_store(u: Universe, store: Storage, dir: tempfile::TempDir) -> Self {
        let pg = Postgres::start().expect("start PostgreSQL");
        let db = Db::connect(&pg.url()).await.expect("connect");
        let by_key = (0..u.deps.len()).map(|i| (narinfo_key(i).as_str().to_owned(), i)).collect();
        Cache { _pg: pg, db, store, _dir: dir, u, by_key }
    }

    /// The local store's file for `key`.
    pub fn path_of(&self, key: &ObjectKey) -> std::path::PathBuf {
        match &self.store {
            Storage::Local(s) => s.path_of(key),
            Storage::S3(_) => unreachable!("GC tests use the local store"),
        }
    }

    async fn write(&self, obj: &NewObject, now: DateTime<Utc>) {
        let body = format!("{}\n{:?}\n", obj.key, obj.refs.iter().map(ObjectKey::as_str).collect::<Vec<_>>());
        self.store.put(&obj.key, body.into(), "text/plain").await.expect("store put");
        self.db.record_object(obj, now).await.expect("record object");
    }

    /// Pushes the closure of `root` with the upload protocol the server's pipeline uses (open a session,
    /// walk down from the root claiming each level before asking what is missing, stop at cached paths,
    /// write, finish); retries from the start if GC dropped the session.
    pub async fn push(&self, root: usize, now: DateTime<Utc>) {
        loop {
            let id = self.db.begin_upload(&narinfo_key(root), &[], now).await.expect("begin_upload");
            let absent = match self.walk(id, root).await {
                Ok(absent) => absent,
                Err(DbError::UploadExpired(_)) => continue,
                Err(e) => panic!("claim: {e}"),
            };
            self.write_absent(root, &absent, now, usize::MAX).await;
            match self.db.finish_upload(id, &narinfo_key(root), now).await {
                Ok(()) => return,
                Err(DbError::UploadExpired(_)) => {}
                Err(e) => panic!("finish_upload: {e}"),
            }
        }
    }

    /// The pipeline's walk in session `id`: claims the keys of a level, descends only into the paths
    /// whose narinfo is missing; returns the claimed keys the cache lacks.
    pub async fn walk(&self, id: UploadId, root: usize) -> Result<BTreeSet<ObjectKey>, DbError> {
        let mut absent = BTreeSet::new();
        let mut seen = BTreeSet::from([root]);
        let mut frontier = vec![root];
        while !frontier.is_empty() {
            let keys: Vec<ObjectKey> = frontier.iter().flat_map(|&p| [nar_key(p), narinfo_key(p)]).collect();
            absent.extend(self.db.claim(id, &keys).await?);
            let mut next = Vec::new();
            for &p in &frontier {
                if absent.contains(&narinfo_key(p)) {
                    next.extend(self.u.deps[p].iter().copied().filter(|d| seen.insert(*d)));
                }
            }
            frontier = next;
        }
        Ok(absent)
    }

    /// Claims the whole closure of `root` at once (the push API's way).
    pub async fn begin(&self, root: usize, now: DateTime<Utc>) -> UploadId {
        self.db.begin_upload(&narinfo_key(root), &self.u.closure_keys(root), now).await.expect("begin_upload")
    }

    /// Writes (and records) up to `limit` missing objects of the closure of `root`, NAR before narinfo,
    /// dependencies first.
    pub async fn write_missing(&self, root: usize, now: DateTime<Utc>, limit: usize) {
        let missing: BTreeSet<ObjectKey> =
            self.db.missing(&self.u.closure_keys(root)).await.expect("missing").into_iter().collect();
        self.write_absent(root, &missing, now, limit).await;
    }

    /// Writes (and records) up to `limit` objects of the closure of `root` that are in `absent`, NAR
    /// before narinfo, dependencies first.
    async fn write_absent(&self, root: usize, absent: &BTreeSet<ObjectKey>, now: DateTime<Utc>, limit: usize) {
        let mut written = 0;
        for p in self.u.closure(root) {
            let (nar, narinfo) = self.u.records(p);
            for obj in [nar, narinfo] {
                if written < limit && absent.contains(&obj.key) {
                    self.write(&obj, now).await;
                    written += 1;
                }
            }
        }
    }

    /// An upload that dies half-way: walks (claims) like [`Cache::push`], writes some objects, never
    /// finishes.
    pub async fn abandon(&self, root: usize, now: DateTime<Utc>, limit: usize) {
        let id = self.db.begin_upload(&narinfo_key(root), &[], now).await.expect("begin_upload");
        let absent = self.walk(id, root).await.expect("claim");
        self.write_absent(root, &absent, now, limit).await;
    }

    /// True when the store holds `key`.
    pub async fn has(&self, key: &ObjectKey) -> bool {
        self.store.head(key).await.expect("head").is_some()
    }

    /// The promises:
    /// 1. every narinfo in the store has its NAR and the narinfos of its references;
    /// 2. every object of every remembered closure and pin is in the store and recorded;
    /// 3. every recorded object (not being deleted) is in the store.
    pub async fn check(&self, when: &str) {
        for p in 0..self.u.deps.len() {
            if self.has(&narinfo_key(p)).await {
                assert!(self.has(&nar_key(p)).await, "{when}: narinfo of {p} without its NAR");
                for &d in &self.u.deps[p] {
                    assert!(self.has(&narinfo_key(d)).await, "{when}: narinfo of {p} without the narinfo of {d}");
                }
            }
        }
        let c = self.db.client().await.expect("client");
        let roots: Vec<String> = c
            .query("SELECT root FROM closures UNION SELECT root FROM pins", &[])
            .await
            .expect("roots")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for root in roots {
            let p = self.by_key[&root];
            let keys = self.u.closure_keys(p);
            assert!(self.db.missing(&keys).await.expect("missing").is_empty(), "{when}: closure {p} not all recorded");
            for k in &keys {
                assert!(self.has(k).await, "{when}: closure {p} lost {k}");
            }
        }
        let rows: Vec<String> = c
            .query("SELECT key FROM objects WHERE NOT deleting", &[])
            .await
            .expect("rows")
            .iter()
            .map(|r| r.get(0))
            .collect();
        for k in rows {
            let key = ObjectKey::parse(&k).expect("recorded keys are valid").1;
            assert!(self.has(&key).await, "{when}: row {k} but no object");
        }
    }

    /// Hours after `t0()`.
    pub fn at(hours: i64) -> DateTime<Utc> {
        t0() + Duration::hours(hours)
    }
}
