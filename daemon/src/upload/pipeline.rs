//! The uploader: pushes the closures of local store paths into the cache.
//!
//! For a set of roots (the outputs of one build): one `nix path-info --recursive` for the whole closure
//! (dependency order), one claim per root ([`Db::begin_upload`], which also protects every key from GC),
//! one [`Db::missing`] query for what the cache lacks. Then the missing paths' NARs are streamed in
//! parallel (bounded by the `jobs` semaphore shared by every upload of this process), and each narinfo is
//! published as soon as its own NAR and the narinfos of all its missing references are in place — so
//! dependencies are always published strictly before their dependents, whatever order the NARs finish in.

use crate::db::{Db, NewObject, UploadId};
use crate::metrics::Metrics;
use crate::nix::pathinfo::{LocalNix, PathInfo};
use crate::nix::store_path::{StoreDir, StorePath};
use crate::store::{ObjectKey, Store};
use crate::upload::UploadError;
use crate::upload::nar_stream::{NarEncoding, NarStreamed, stream_nar};
use crate::upload::publish::{PublishInput, Publisher, StoredNar};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunks in flight between a NAR pass and the store, per upload (each at most 1 MiB).
const CHUNK_QUEUE: usize = 4;
/// Content type of compressed NARs.
pub const NAR_CONTENT_TYPE: &str = "application/x-nix-archive";

/// What one closure upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosureReport {
    /// Paths in the closure(s).
    pub closure_size: usize,
    /// Paths that were uploaded (the rest were already in the cache).
    pub uploaded: usize,
    /// Uncompressed NAR bytes uploaded.
    pub nar_bytes: u64,
    /// Compressed bytes uploaded.
    pub file_bytes: u64,
}

/// Paths being uploaded by this process, so concurrent uploads of overlapping closures upload each
/// path once: the second waits for the first and then finds the path published.
type PathLocks = Arc<std::sync::Mutex<HashMap<StorePath, Arc<tokio::sync::Mutex<()>>>>>;

/// Held from the start of a path's NAR until its narinfo is published (or the attempt failed).
struct PathGuard {
    locks: PathLocks,
    path: StorePath,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PathGuard {
    /// Takes the path's lock; the bool is true when another upload held it (and may have published it).
    async fn acquire(locks: &PathLocks, path: &StorePath) -> (Self, bool) {
        let lock = {
            let mut map = locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(map.entry(path.clone()).or_default())
        };
        let (guard, waited) = match Arc::clone(&lock).try_lock_owned() {
            Ok(g) => (g, false),
            Err(_) => (lock.lock_owned().await, true),
        };
        (Self { locks: Arc::clone(locks), path: path.clone(), guard: Some(guard) }, waited)
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map's own reference left: nobody waits for this path; forget it (keeps the map bounded).
        if map.get(&self.path).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(&self.path);
        }
    }
}

/// Everything written for one path before its narinfo.
struct PathUploaded {
    _guard: PathGuard,
    nar: StoredNar,
    listing: Option<ObjectKey>,
    log: Option<ObjectKey>,
    nar_size: u64,
    seconds: f64,
}

/// What finished in [`Uploader::upload_missing`]'s set of tasks.
enum Step {
    /// Path `i`'s NAR, listing and log are stored (`None`: another upload published it meanwhile).
    Uploaded(usize, Result<Option<PathUploaded>, UploadError>),
    /// Path `i`'s narinfo is published: its NAR size and compressed size.
    Published(usize, Result<(u64, u64), UploadError>),
}

/// Uploads closures of local store paths. Cheap to share (`Arc`); several uploads may run at once and
/// together never stream more than `jobs` NARs.
pub struct Uploader {
    publisher: Publisher,
    nix: LocalNix,
    metrics: Arc<Metrics>,
    nar_slots: Arc<Semaphore>,
    locks: PathLocks,
    jobs: usize,
    encoding: NarEncoding,
}

impl Uploader {
    /// An uploader publishing through `publisher`, reading the local store with `nix`, streaming at most
    /// `jobs` NARs at a time (at least 1).
    pub fn new(publisher: Publisher, nix: LocalNix, metrics: Arc<Metrics>, jobs: usize) -> Self {
        let jobs = jobs.max(1);
        Self {
            publisher,
            nix,
            metrics,
            nar_slots: Arc::new(Semaphore::new(jobs)),
            locks: PathLocks::default(),
            jobs,
            encoding: NarEncoding::default(),
        }
    }

    /// Whether to write `<hash>.ls` listings (default on).
    #[must_use]
    pub fn with_listings(mut self, on: bool) -> Self {
        self.encoding.with_listing = on;
        self
    }

    /// Compresses NARs at zstd `level` instead of 3 (1..=9, see [`NarEncoding`]).
    #[must_use]
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.encoding.zstd_level = level;
        self
    }

    /// The publisher (signing keys, store, database).
    pub(crate) fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn store(&self) -> &Arc<Store> {
        self.publisher.store()
    }

    pub(crate) fn db(&self) -> &Db {
        self.publisher.db()
    }

    pub(crate) fn store_dir(&self) -> &StoreDir {
        self.publisher.store_dir()
    }

    /// The Nix command line used to read the local store.
    pub fn nix(&self) -> &LocalNix {
        &self.nix
    }

    /// Writes `nix-cache-info` (StoreDir, WantMassQuery, Priority) and records it. Idempotent.
    pub async fn write_cache_info(&self, priority: u32) -> Result<(), UploadError> {
        let text = format!("StoreDir: {}\nWantMassQuery: 1\nPriority: {priority}\n", self.store_dir().as_str());
        let key = ObjectKey::cache_info();
        let size = text.len() as u64;
        self.store().put(&key, Bytes::from(text), "text/x-nix-cache-info").await?;
        self.db().record_object(&NewObject { key, size, refs: Vec::new() }, chrono::Utc::now()).await?;
        Ok(())
    }

    /// Uploads the closures of `roots` (each root becomes a GC root of the cache). Returns when every
    /// path of every closure is in the cache, or with the first error (claims are then dropped; what was
    /// written stays recorded and is reused or collected later).
    pub async fn upload_closure(&self, roots: &[StorePath]) -> Result<ClosureReport, UploadError> {
        if roots.is_empty() {
            return Ok(ClosureReport::default());
        }
        // A root deleted from the store is reported as such (and without asking Nix, which may try its
        // substituters for a path it does not have).
        for root in roots {
            let fs_path = self.store_dir().path_of(root);
            if let Err(e) = tokio::fs::symlink_metadata(&fs_path).await
                && e.kind() == std::io::ErrorKind::NotFound
            {
                return Err(UploadError::Vanished { path: self.store_dir().display(root) });
            }
        }
        let closure = self.nix.closure(self.store_dir(), roots).await?;
        let index: HashMap<&StorePath, usize> = closure.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();

        let now = chrono::Utc::now();
        let mut claims: Vec<(ObjectKey, UploadId)> = Vec::with_capacity(roots.len());
        let mut seen_roots = HashSet::new();
        for root in roots {
            if !seen_roots.insert(root) {
                continue;
            }
            let members = reachable(&closure, &index, root);
            let mut claimed = Vec::with_capacity(members.len() * 4);
            for &i in &members {
                claimed.extend(keys_of(&closure[i]));
            }
            let root_key = ObjectKey::narinfo(root);
            match self.db().begin_upload(&root_key, &claimed, now).await {
                Ok(id) => claims.push((root_key, id)),
                Err(e) => {
                    self.abort_all(&claims).await;
                    return Err(e.into());
                }
            }
        }

        let result = self.upload_missing(&closure).await;
        match result {
            Ok(report) => {
                let now = chrono::Utc::now();
                for (root_key, id) in &claims {
                    if let Err(e) = self.db().finish_upload(*id, root_key, now).await {
                        self.abort_all(&claims).await;
                        return Err(e.into());
                    }
                }
                Ok(report)
            }
            Err(e) => {
                self.abort_all(&claims).await;
                Err(e)
            }
        }
    }

    async fn abort_all(&self, claims: &[(ObjectKey, UploadId)]) {
        for (_, id) in claims {
            if let Err(e) = self.db().abort_upload(*id).await {
                tracing::debug!(error = %e, "could not drop an upload claim; GC expires it");
            }
        }
    }

    /// Uploads the paths of `closure` (dependency order) that the cache lacks.
    async fn upload_missing(&self, closure: &[PathInfo]) -> Result<ClosureReport, UploadError> {
        let narinfo_keys: Vec<ObjectKey> = closure.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
        let missing_keys: HashSet<ObjectKey> = self.db().missing(&narinfo_keys).await?.into_iter().collect();
        let missing: Vec<usize> = (0..closure.len()).filter(|i| missing_keys.contains(&narinfo_keys[*i])).collect();
        let mut report = ClosureReport { closure_size: closure.len(), ..ClosureReport::default() };
        if missing.is_empty() {
            return Ok(report);
        }

        // waiting[i]: missing references of i (other than itself) not yet published.
        let is_missing: HashMap<&StorePath, usize> = missing.iter().map(|&i| (&closure[i].path, i)).collect();
        let mut waiting: HashMap<usize, usize> = HashMap::new();
        let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
        for &i in &missing {
            let mut n = 0;
            for r in &closure[i].references {
                if *r != closure[i].path
                    && let Some(&j) = is_missing.get(r)
                {
                    n += 1;
                    dependents.entry(j).or_default().push(i);
                }
            }
            waiting.insert(i, n);
        }

        // Uploads and publishes run side by side in one set of tasks, so a publish (or a path's log and
        // listing) never holds up the NARs still streaming. Twice `jobs` uploads are in flight so the
        // next NAR takes a slot as soon as one finishes compressing, while the previous one still
        // syncs, uploads its log and listing and waits to publish; the `nar_slots` semaphore keeps the
        // NARs being compressed at `jobs`.
        let mut done: HashMap<usize, PathUploaded> = HashMap::new();
        let mut tasks: FuturesUnordered<Pin<Box<dyn Future<Output = Step> + Send + '_>>> = FuturesUnordered::new();
        let mut uploads_in_flight = 0;
        let mut next = 0;
        loop {
            while uploads_in_flight < 2 * self.jobs && next < missing.len() {
                let i = missing[next];
                next += 1;
                uploads_in_flight += 1;
                let info = &closure[i];
                tasks.push(Box::pin(async move { Step::Uploaded(i, self.upload_path_objects(info).await) }));
            }
            let Some(step) = tasks.next().await else { break };
            let published = match step {
                Step::Uploaded(i, res) => {
                    uploads_in_flight -= 1;
                    match res? {
                        Some(up) if waiting.get(&i) == Some(&0) => {
                            tasks.push(self.publish_task(closure, i, up));
                            continue;
                        }
                        Some(up) => {
                            done.insert(i, up);
                            continue;
                        }
                        // Another upload of this process published it meanwhile.
                        None => i,
                    }
                }
                Step::Published(i, res) => {
                    let (nar_size, file_size) = res?;
                    report.uploaded += 1;
                    report.nar_bytes += nar_size;
                    report.file_bytes += file_size;
                    i
                }
            };
            // A published path may make dependents ready: their NAR done, all missing references published.
            waiting.remove(&published);
            for &d in dependents.get(&published).map_or(&[][..], Vec::as_slice) {
                if let Some(w) = waiting.get_mut(&d) {
                    *w = w.saturating_sub(1);
                    if *w == 0
                        && let Some(up) = done.remove(&d)
                    {
                        tasks.push(self.publish_task(closure, d, up));
                    }
                }
            }
        }
        if !waiting.is_empty() {
            // Cannot happen for a closure Nix returned (references are inside it); refuse rather than
            // leave paths silently unpublished.
            return Err(UploadError::Task(format!("{} paths could not be ordered for publishing", waiting.len())));
        }
        Ok(report)
    }

    /// Publishes path `i` of `closure` as a task: its sizes once the narinfo is written.
    fn publish_task<'a>(
        &'a self,
        closure: &'a [PathInfo],
        i: usize,
        up: PathUploaded,
    ) -> Pin<Box<dyn Future<Output = Step> + Send + 'a>> {
        Box::pin(async move {
            let res = self.publish(&closure[i], &up).await.map(|()| (up.nar_size, up.nar.file_size));
            Step::Published(i, res)
        })
    }

    async fn publish(&self, info: &PathInfo, up: &PathUploaded) -> Result<(), UploadError> {
        let started = Instant::now();
        self.publisher
            .publish(
                &PublishInput { info, nar: up.nar, listing: up.listing.clone(), log: up.log.clone() },
                chrono::Utc::now(),
            )
            .await?;
        let seconds = up.seconds + started.elapsed().as_secs_f64();
        self.metrics.record_upload(true, up.nar_size, up.nar.file_size, seconds);
        let ratio = if up.nar.file_size == 0 { 0.0 } else { up.nar_size as f64 / up.nar.file_size as f64 };
        tracing::info!(
            path = %self.store_dir().display(&info.path),
            nar_size = up.nar_size,
            file_size = up.nar.file_size,
            ratio = format_args!("{ratio:.2}"),
            seconds = format_args!("{seconds:.3}"),
            "uploaded"
        );
        Ok(())
    }

    /// Streams the NAR, then writes the listing and build log of one path (not its narinfo).
    /// `None` when another upload of this process published the path while we waited for it.
    async fn upload_path_objects(&self, info: &PathInfo) -> Result<Option<PathUploaded>, UploadError> {
        let (guard, waited) = PathGuard::acquire(&self.locks, &info.path).await;
        if waited && self.db().missing(&[ObjectKey::narinfo(&info.path)]).await?.is_empty() {
            return Ok(None);
        }
        let slot = Arc::clone(&self.nar_slots).acquire_owned().await.map_err(|e| UploadError::Task(e.to_string()))?;
        // Free slots are cores with nothing to compress: this NAR gets them as zstd workers.
        let free = self.nar_slots.available_permits();
        let zstd_workers = if free == 0 { 0 } else { u32::try_from(free + 1).unwrap_or(u32::MAX) };
        let started = Instant::now();
        tracing::debug!(path = %self.store_dir().display(&info.path), nar_size = info.nar_size, "uploading");
        let streamed = self.stream_nar(info, slot, zstd_workers).await;
        let streamed = match streamed {
            Ok(s) => s,
            Err(e) => {
                self.metrics.record_upload(false, 0, 0, started.elapsed().as_secs_f64());
                return Err(e);
            }
        };
        let now = chrono::Utc::now();
        let listing = match streamed.listing {
            Some(json) => {
                let key = ObjectKey::listing(&info.path);
                let body = Bytes::from(json.to_string());
                let size = body.len() as u64;
                self.store().put(&key, body, "application/json").await?;
                self.db().record_object(&NewObject { key: key.clone(), size, refs: Vec::new() }, now).await?;
                Some(key)
            }
            None => None,
        };
        let log = match &info.deriver {
            Some(drv) => self.upload_log(drv, now).await?,
            None => None,
        };
        Ok(Some(PathUploaded {
            _guard: guard,
            nar: StoredNar { file_hash: streamed.file_hash, file_size: streamed.file_size },
            listing,
            log,
            nar_size: streamed.nar_size,
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    /// Uploads the build log of `drv` if Nix has one and the cache does not.
    async fn upload_log(
        &self,
        drv: &StorePath,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<ObjectKey>, UploadError> {
        let key = ObjectKey::log(drv);
        if self.db().missing(std::slice::from_ref(&key)).await?.is_empty() {
            return Ok(Some(key));
        }
        // A log that cannot be read is not worth failing the upload for.
        let log = match self.nix.build_log(self.store_dir(), drv).await {
            Ok(Some(log)) => log,
            Ok(None) => return Ok(None),
            Err(e) => {
                tracing::debug!(drv = %self.store_dir().display(drv), error = %e, "no build log");
                return Ok(None);
            }
        };
        let size = log.len() as u64;
        self.store().put(&key, Bytes::from(log), "text/plain; charset=utf-8").await?;
        self.db().record_object(&NewObject { key: key.clone(), size, refs: Vec::new() }, now).await?;
        Ok(Some(key))
    }

    /// The single pass: the blocking NAR/zstd thread and the store's `put_stream`, joined. The thread
    /// holds `slot` (CPU work) and gives it back when the last byte is compressed, so the next NAR
    /// starts while the store still syncs or sends this one's tail.
    async fn stream_nar(
        &self,
        info: &PathInfo,
        slot: OwnedSemaphorePermit,
        zstd_workers: u32,
    ) -> Result<NarStreamed, UploadError> {
        let key = ObjectKey::nar(&info.nar_hash);
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNK_QUEUE);
        let fs_path = self.store_dir().path_of(&info.path);
        let display = self.store_dir().display(&info.path);
        let (hash, size, encoding, nar_key) = (info.nar_hash, info.nar_size, self.encoding, key.clone());
        let producer = tokio::task::spawn_blocking(move || {
            let streamed = stream_nar(&fs_path, &display, hash, size, nar_key, tx, encoding, zstd_workers);
            drop(slot);
            streamed
        });
        let stored = self.store().put_stream(&key, rx, NAR_CONTENT_TYPE).await;
        let nar_result = producer.await.map_err(|e| UploadError::Task(format!("NAR thread: {e}")))?;
        match nar_result {
            // A mismatch is the real story even though the store (rightly) refused the stream.
            Err(e @ UploadError::HashMismatch { .. }) => Err(e),
            Ok(streamed) => stored.map(|_| streamed).map_err(Into::into),
            // When the store failed first, the NAR thread only saw the channel close: report the store.
            Err(e) => Err(stored.err().map_or(e, Into::into)),
        }
    }
}

/// The keys an upload of `p` writes or relies on (claimed so GC keeps them).
fn keys_of(p: &PathInfo) -> Vec<ObjectKey> {
    let mut keys = vec![ObjectKey::narinfo(&p.path), ObjectKey::nar(&p.nar_hash), ObjectKey::listing(&p.path)];
    if let Some(drv) = &p.deriver {
        keys.push(ObjectKey::log(drv));
    }
    keys
}

/// Indices of the paths reachable from `root` through references (including `root`).
fn reachable(closure: &[PathInfo], index: &HashMap<&StorePath, usize>, root: &StorePath) -> Vec<usize> {
    let mut seen = HashSet::new();
    let mut stack: Vec<usize> = index.get(root).copied().into_iter().collect();
    while let Some(i) = stack.pop() {
        if !seen.insert(i) {
            continue;
        }
        for r in &closure[i].references {
            if let Some(&j) = index.get(r)
                && !seen.contains(&j)
            {
                stack.push(j);
            }
        }
    }
    let mut v: Vec<usize> = seen.into_iter().collect();
    v.sort_unstable();
    v
}
