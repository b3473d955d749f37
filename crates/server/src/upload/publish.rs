//! The publish step, shared by the local pipeline and the push API: once a path's compressed NAR is in
//! the store, record it, sign and write the narinfo, and record the narinfo with everything it keeps
//! alive. The narinfo is the last object written for a path, so a reader that finds it finds its NAR,
//! listing, log and the narinfos of all its references.
//!
//! What the caller promises: the NAR object `nar/<nix32 NarHash>.nar.zst` is complete in the store and
//! the upload that wrote it holds a claim ([`crate::db::Db::begin_upload`]) on every key involved. What
//! this module checks: every reference already has a narinfo recorded (one query), otherwise it refuses.

use crate::db::{Db, NewObject};
use crate::upload::UploadError;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use niks3_nix::hash::Sha256Hash;
use niks3_nix::narinfo::NarInfo;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::realisation::{DrvOutput, Realisation};
use niks3_nix::signing::SecretKey;
use niks3_nix::store_path::StoreDir;
use niks3_storage::{ObjectKey, SmallObject, Storage};
use std::collections::HashSet;
use std::sync::Arc;

/// Content type of narinfo objects (what Nix's own caches use).
pub(crate) const NARINFO_CONTENT_TYPE: &str = "text/x-nix-narinfo";

/// The compressed NAR of a path, already stored under [`ObjectKey::nar`] of the path's NarHash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoredNar {
    /// SHA-256 of the compressed file (narinfo `FileHash`).
    pub file_hash: Sha256Hash,
    /// Size of the compressed file (narinfo `FileSize`).
    pub file_size: u64,
}

/// Everything known about one path at publish time.
#[derive(Clone, Debug)]
pub struct PublishInput<'a> {
    /// The path's metadata as Nix (or a pushing client) reports it.
    pub info: &'a PathInfo,
    /// Its stored NAR.
    pub nar: StoredNar,
    /// The `.ls` listing object, if one was written (and recorded) for this path.
    pub listing: Option<ObjectKey>,
    /// The build log object, if one was written (and recorded) for this path's deriver.
    pub log: Option<ObjectKey>,
    /// Objects the caller wrote for this path but has not recorded (its listing, its log): recorded
    /// with the narinfo, in the same round trip.
    pub unrecorded: Vec<NewObject>,
    /// The caller has checked that every reference is in the cache and its upload session holds a claim
    /// on each (the local pipeline's walk did): the check is not repeated.
    pub references_checked: bool,
    /// Narinfo keys of references that are absent on purpose (left out by the size policy, `--max-nar-size`):
    /// the check accepts them missing.
    pub skipped_references: Option<&'a HashSet<ObjectKey>>,
}

impl<'a> PublishInput<'a> {
    /// `info` with its stored NAR and nothing else: no listing or log, references checked by the
    /// publisher.
    pub fn new(info: &'a PathInfo, nar: StoredNar) -> Self {
        PublishInput {
            info,
            nar,
            listing: None,
            log: None,
            unrecorded: Vec::new(),
            references_checked: false,
            skipped_references: None,
        }
    }
}

/// Signs and writes narinfos; cheap to clone (everything shared).
#[derive(Clone)]
pub struct Publisher {
    store: Arc<Storage>,
    db: Db,
    store_dir: StoreDir,
    keys: Arc<Vec<SecretKey>>,
}

impl Publisher {
    /// A publisher writing to `store`, recording in `db`, signing with every key in `keys`.
    pub fn new(store: Arc<Storage>, db: Db, store_dir: StoreDir, keys: Arc<Vec<SecretKey>>) -> Self {
        Self { store, db, store_dir, keys }
    }

    /// The store directory narinfos are written for.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The object store.
    pub fn store(&self) -> &Arc<Storage> {
        &self.store
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// The narinfo (signed by every key) that [`Publisher::publish`] writes for `input`.
    pub fn narinfo(&self, input: &PublishInput<'_>) -> NarInfo {
        let info = input.info;
        let mut references = info.references.clone();
        references.sort();
        references.dedup();
        let mut narinfo = NarInfo {
            store_path: info.path.clone(),
            url: ObjectKey::nar(&info.nar_hash).as_str().to_owned(),
            compression: "zstd".to_owned(),
            file_hash: Some(input.nar.file_hash),
            file_size: Some(input.nar.file_size),
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references,
            deriver: info.deriver.clone(),
            sigs: Vec::new(),
            ca: info.ca.clone(),
        };
        for key in self.keys.iter() {
            narinfo.sign(key, &self.store_dir);
        }
        narinfo
    }

    /// Checks every reference is in the cache (unless the caller did), writes the signed narinfo, then
    /// records the NAR, the caller's unrecorded objects and the narinfo with its liveness references (NAR,
    /// listing, log, the references' narinfos) in one round trip. Idempotent: publishing the same path
    /// twice writes the same bytes.
    pub async fn publish(&self, input: &PublishInput<'_>, now: DateTime<Utc>) -> Result<NarInfo, UploadError> {
        let mut written = self.publish_many(std::slice::from_ref(input), now).await?;
        written.pop().ok_or_else(|| UploadError::Task("publishing wrote no narinfo".to_owned()))
    }

    /// [`Publisher::publish`] for paths that do not refer to each other (the caller publishes a path
    /// only after its references): the references of all checked in one query, the narinfos written
    /// together ([`Storage::put_many`]) and everything recorded in one statement. Group commit: a
    /// drain publishing a wave of ready paths pays one round trip to the store and one to the database,
    /// not one each per path. On an error some narinfos may be written but none is recorded; the
    /// caller's upload fails and a later one writes the same bytes again.
    pub(crate) async fn publish_many(
        &self,
        inputs: &[PublishInput<'_>],
        now: DateTime<Utc>,
    ) -> Result<Vec<NarInfo>, UploadError> {
        let ref_keys = |info: &'_ PathInfo| -> Vec<ObjectKey> {
            info.references.iter().filter(|r| **r != info.path).map(ObjectKey::narinfo).collect()
        };
        let unchecked: Vec<ObjectKey> =
            inputs.iter().filter(|i| !i.references_checked).flat_map(|i| ref_keys(i.info)).collect();
        let missing: std::collections::HashSet<ObjectKey> = self.db.missing(&unchecked).await?.into_iter().collect();
        if !missing.is_empty() {
            for input in inputs.iter().filter(|i| !i.references_checked) {
                let info = input.info;
                let mut references = info.references.iter().filter(|r| **r != info.path);
                let skipped = |key: &ObjectKey| input.skipped_references.is_some_and(|s| s.contains(key));
                if let Some(reference) = references.find(|r| {
                    let key = ObjectKey::narinfo(r);
                    missing.contains(&key) && !skipped(&key)
                }) {
                    return Err(UploadError::MissingReference {
                        path: info.path.clone(),
                        reference: reference.clone(),
                    });
                }
            }
        }
        let narinfos: Vec<NarInfo> = inputs.iter().map(|input| self.narinfo(input)).collect();
        let mut objects = Vec::with_capacity(inputs.len());
        let mut rows = Vec::new();
        let mut nars = Vec::with_capacity(inputs.len());
        let nar_keys: Vec<ObjectKey> = inputs.iter().map(|i| ObjectKey::nar(&i.info.nar_hash)).collect();
        for ((input, narinfo), nar_key) in inputs.iter().zip(&narinfos).zip(&nar_keys) {
            let text = narinfo.to_text(&self.store_dir);
            let key = ObjectKey::narinfo(&input.info.path);
            let mut refs = vec![nar_key.clone()];
            refs.extend(input.listing.iter().cloned());
            refs.extend(input.log.iter().cloned());
            let mut ref_narinfos = ref_keys(input.info);
            ref_narinfos.sort();
            ref_narinfos.dedup();
            refs.extend(ref_narinfos);
            rows.extend(input.unrecorded.iter().cloned());
            rows.push(NewObject { key: key.clone(), size: text.len() as u64, refs });
            objects.push(SmallObject { key, body: Bytes::from(text), content_type: NARINFO_CONTENT_TYPE });
            nars.push((nar_key, input.nar.file_size, Some(&input.nar.file_hash)));
        }
        self.store.put_many(objects).await?;
        self.db.record_published(&nars, &rows, now).await?;
        Ok(narinfos)
    }
}

impl Publisher {
    /// Publishes one realisation, signed by every key: claims its key and everything it points to (the
    /// output's narinfo, the realisations it depends on), checks they are all in the cache, writes the
    /// `.doi` and records it as a closure root whose refs are those keys. So GC keeps what a realisation
    /// points to for as long as the realisation lives, and deletes the realisation first; the realisation
    /// itself lives as long as it keeps being pushed (`--older-than`), like any other closure.
    pub async fn publish_realisation(
        &self,
        realisation: &Realisation,
        now: DateTime<Utc>,
    ) -> Result<Realisation, UploadError> {
        let key = realisation_key(&realisation.id)?;
        let mut refs = vec![ObjectKey::narinfo(&realisation.out_path)];
        for dep in realisation.dependents.keys() {
            refs.push(realisation_key(dep)?);
        }
        let mut claimed = refs.clone();
        claimed.push(key.clone());
        let id = self.db.begin_upload(&key, &claimed, now).await?;
        let result = self.write_realisation(realisation, &key, refs, now).await;
        let result = match result {
            Ok(signed) => self.db.finish_upload(id, &key, now).await.map(|()| signed).map_err(UploadError::from),
            Err(e) => Err(e),
        };
        if result.is_err()
            && let Err(e) = self.db.abort_upload(id).await
        {
            tracing::debug!(error = %e, "could not drop a realisation claim; GC expires it");
        }
        result
    }

    async fn write_realisation(
        &self,
        realisation: &Realisation,
        key: &ObjectKey,
        refs: Vec<ObjectKey>,
        now: DateTime<Utc>,
    ) -> Result<Realisation, UploadError> {
        if let Some(missing) = self.db.missing(&refs).await?.into_iter().next() {
            return Err(UploadError::RealisationIncomplete { id: realisation.id.to_string(), missing });
        }
        // First writer wins: the same realisation again only refreshes it, another one is refused.
        if self.db.object_exists(key).await?
            && let Some(text) = self.store.get(key).await?
        {
            let describe = |r: &Realisation| {
                let deps: Vec<String> = r.dependents.iter().map(|(k, v)| format!("{k}={}", v.basename())).collect();
                format!("{} [{}]", r.out_path.basename(), deps.join(", "))
            };
            let cached = Realisation::from_json(&text).ok();
            let same = cached
                .as_ref()
                .is_some_and(|c| c.out_path == realisation.out_path && c.dependents == realisation.dependents);
            if !same {
                let cached = cached.as_ref().map_or_else(|| "an unreadable realisation".to_owned(), describe);
                tracing::warn!(id = %realisation.id, %cached, "refused to replace a realisation with another one");
                return Err(UploadError::RealisationConflict {
                    id: realisation.id.to_string(),
                    cached,
                    pushed: describe(realisation),
                });
            }
            self.db.record_object(&NewObject { key: key.clone(), size: text.len() as u64, refs }, now).await?;
            let mut existing = realisation.clone();
            existing.signatures = cached.map(|c| c.signatures).unwrap_or_default();
            return Ok(existing);
        }
        let mut signed = Realisation { signatures: std::collections::BTreeSet::new(), ..realisation.clone() };
        for k in self.keys.iter() {
            signed.sign(k);
        }
        let body = signed.to_json();
        let size = body.len() as u64;
        self.store.put(key, Bytes::from(body), REALISATION_CONTENT_TYPE).await?;
        self.db.record_object(&NewObject { key: key.clone(), size, refs }, now).await?;
        Ok(signed)
    }
}

/// Content type of realisation objects (what Nix's binary cache store uses).
pub(crate) const REALISATION_CONTENT_TYPE: &str = "application/json";

/// The key of a realisation; its parts were validated when it was parsed, so this cannot fail in practice.
fn realisation_key(id: &DrvOutput) -> Result<ObjectKey, UploadError> {
    Ok(ObjectKey::realisation(&id.drv_hash, &id.output)?)
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("store_dir", &self.store_dir)
            .field("keys", &self.keys.iter().map(SecretKey::name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use niks3_storage::local::LocalStore;

    fn info(name: &str, hash_byte: u8, references: Vec<niks3_nix::store_path::StorePath>) -> PathInfo {
        let hash =
            format!("{}", "0123456789abcdfghijklmnpqrsvwxyz".chars().nth(usize::from(hash_byte) % 32).unwrap_or('0'));
        PathInfo {
            path: niks3_nix::store_path::StorePath::from_basename(&format!("{}-{name}", hash.repeat(32)))
                .expect("path"),
            nar_hash: Sha256Hash([hash_byte; 32]),
            nar_size: 120,
            references,
            deriver: None,
            ca: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn publish_refuses_a_narinfo_whose_reference_is_missing_and_signs_what_it_writes() {
        let pg = niks3_testkit::postgres::Postgres::start().expect("postgres");
        let db = Db::connect(&pg.url()).await.expect("db");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store")));
        let key = SecretKey::generate("test-1").expect("key");
        let public = key.public();
        let store_dir = StoreDir::default();
        let publisher = Publisher::new(Arc::clone(&store), db.clone(), store_dir.clone(), Arc::new(vec![key]));
        let dep = info("dep", 1, Vec::new());
        let top = info("top", 2, vec![dep.path.clone()]);
        let nar = StoredNar { file_hash: Sha256Hash([9; 32]), file_size: 99 };
        let now = chrono::Utc::now();

        // The dependency is not published yet: refuse, write nothing.
        let err = publisher.publish(&PublishInput::new(&top, nar), now).await.expect_err("reference missing");
        assert!(matches!(err, UploadError::MissingReference { .. }) && err.is_transient(), "{err}");
        assert!(err.to_string().contains("dep"), "{err}");
        assert!(store.head(&ObjectKey::narinfo(&top.path)).await.expect("head").is_none());

        // Dependencies first, then the dependent: both signed, both recorded with their liveness refs.
        publisher.publish(&PublishInput::new(&dep, nar), now).await.expect("dep");
        let written = publisher.publish(&PublishInput::new(&top, nar), now).await.expect("top");
        assert!(written.verify(std::slice::from_ref(&public), &store_dir));
        let text = store.get(&ObjectKey::narinfo(&top.path)).await.expect("get").expect("narinfo stored");
        let parsed = NarInfo::parse(std::str::from_utf8(&text).expect("utf8"), &store_dir).expect("parse");
        assert_eq!(parsed, written);
        assert_eq!(parsed.url, ObjectKey::nar(&top.nar_hash).as_str());
        assert_eq!((parsed.compression.as_str(), parsed.file_size), ("zstd", Some(99)));
        let missing = db
            .missing(&[ObjectKey::narinfo(&dep.path), ObjectKey::narinfo(&top.path), ObjectKey::nar(&top.nar_hash)])
            .await
            .expect("missing");
        assert!(missing.is_empty(), "everything recorded: {missing:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paths_published_together_are_all_written_and_recorded_and_a_batch_mate_is_no_reference() {
        let pg = niks3_testkit::postgres::Postgres::start().expect("postgres");
        let db = Db::connect(&pg.url()).await.expect("db");
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store")));
        let key = SecretKey::generate("test-1").expect("key");
        let store_dir = StoreDir::default();
        let publisher = Publisher::new(Arc::clone(&store), db.clone(), store_dir, Arc::new(vec![key]));
        let a = info("a", 3, Vec::new());
        let b = info("b", 4, Vec::new());
        // Same content as `a` under another name: one NAR object, recorded once.
        let a2 = PathInfo { path: info("a2", 5, Vec::new()).path, ..a.clone() };
        let top = info("top", 6, vec![a.path.clone()]);
        let nar = StoredNar { file_hash: Sha256Hash([9; 32]), file_size: 99 };
        let now = chrono::Utc::now();

        // A path whose reference is only in the same batch is refused: a batch is paths that do not
        // refer to each other, and nothing of it is recorded.
        let err = publisher
            .publish_many(&[PublishInput::new(&a, nar), PublishInput::new(&top, nar)], now)
            .await
            .expect_err("batch mate is no reference");
        assert!(matches!(err, UploadError::MissingReference { ref path, .. } if *path == top.path), "{err}");
        let keys = [&a, &b, &a2, &top].map(|p| ObjectKey::narinfo(&p.path));
        assert_eq!(db.missing(&keys).await.expect("missing").len(), 4, "nothing recorded");

        let written = publisher
            .publish_many(&[PublishInput::new(&a, nar), PublishInput::new(&b, nar), PublishInput::new(&a2, nar)], now)
            .await
            .expect("independent paths");
        assert_eq!(written.iter().map(|n| &n.store_path).collect::<Vec<_>>(), [&a.path, &b.path, &a2.path]);
        for p in [&a, &b, &a2] {
            assert!(store.head(&ObjectKey::narinfo(&p.path)).await.expect("head").is_some(), "{:?}", p.path);
        }
        let recorded = [ObjectKey::narinfo(&a.path), ObjectKey::narinfo(&b.path), ObjectKey::narinfo(&a2.path)];
        let nars = [ObjectKey::nar(&a.nar_hash), ObjectKey::nar(&b.nar_hash)];
        assert!(db.missing(&recorded).await.expect("missing").is_empty());
        assert!(db.missing(&nars).await.expect("missing").is_empty());
        publisher.publish(&PublishInput::new(&top, nar), now).await.expect("top, after its reference");
    }
}
