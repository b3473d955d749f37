//! The uploader: pushes the closures of local store paths into the cache.
//!
//! For a set of roots (the outputs of one build, or of a whole queue): one upload session, then a walk
//! down the closure a level at a time — the level's path infos in one pipelined burst to the Nix daemon,
//! its keys claimed and checked in one PostgreSQL round trip ([`Db::claim`]) — that descends only into
//! paths the cache lacks. Then the missing paths' NARs are streamed in
//! parallel (bounded by the `jobs` semaphore shared by every upload of this process), and each narinfo is
//! published as soon as its own NAR and the narinfos of all its missing references are in place — so
//! dependencies are always published strictly before their dependents, whatever order the NARs finish in.

use crate::db::{Db, NewObject, UploadId};
use crate::metrics::Metrics;
use crate::upload::UploadError;
use crate::upload::publish::{PublishInput, Publisher, StoredNar};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use niks3_local::nar_stream::{NarEncoding, NarStreamError, NarStreamed, stream_nar};
use niks3_local::nix::{LocalNix, PathInfoError};
use niks3_nix::pathinfo::{PathInfo, dependency_order};
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_storage::{ObjectKey, SmallObject, Storage};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Chunks in flight between a NAR pass and the store, per upload (each at most 1 MiB).
const CHUNK_QUEUE: usize = 4;
/// Uploads in flight at most, and their NAR bytes at most, beyond twice `jobs`: many small paths wait on
/// round trips (an S3 PUT per object, a database statement per path), so keeping many in flight hides
/// the latency; the NAR bytes bound keeps big paths at twice `jobs`, as memory allows (measured: one big
/// NAR's upload is what the memory budget is set by).
const SMALL_IN_FLIGHT: (usize, u64) = (32, 16 << 20);
/// A NAR this size or smaller is compressed into memory and written together with its listing and log
/// ([`Storage::put_many`]: one hand-off to a blocking thread for a local directory, where streaming it took
/// two), and on this thread only (zstd's workers cost a thread start each and gain nothing below a few
/// of their 1 MiB jobs). At most [`SMALL_IN_FLIGHT`] of them are in flight: ~32 MiB at worst.
const SMALL_NAR: u64 = 1 << 20;
/// Below this NAR size zstd's worker threads are never used (see [`SMALL_NAR`]).
const ZSTD_WORKERS_FROM: u64 = 4 << 20;
/// From this NAR size on zstd's worker threads are always used (at least one), even when every core has a
/// NAR of its own: zstd's output is the same whatever the number of workers, but not the same as on the
/// NAR's own thread, and an interrupted upload can only be continued with the same bytes (issue 18). The
/// price, ~10% more CPU per byte while cores are contended, is paid only by NARs big enough that being
/// able to resume them is worth it.
const ZSTD_WORKERS_ALWAYS_FROM: u64 = 64 << 20;
/// Narinfos published together at most (one [`Publisher::publish_many`]).
const PUBLISH_BATCH: usize = 128;
/// Content type of compressed NARs.
pub(crate) const NAR_CONTENT_TYPE: &str = "application/x-nix-archive";
/// Content type of build logs.
const LOG_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// What one closure upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClosureReport {
    /// Paths the walk looked at: those the cache lacked and the cached ones where it stopped.
    pub looked_at: usize,
    /// Paths that were uploaded (the rest were already in the cache).
    pub uploaded: usize,
    /// Uncompressed NAR bytes uploaded.
    pub nar_bytes: u64,
    /// Compressed bytes uploaded.
    pub file_bytes: u64,
    /// Paths left out because their NAR is over the size limit ([`Uploader::with_max_nar_size`]); the
    /// closure is recorded as incomplete by them.
    pub skipped: Vec<StorePath>,
}

/// Paths being uploaded by this process and those it published lately, so that concurrent uploads of
/// overlapping closures (the drainer runs batches side by side) upload each path once: the second waits
/// for the first, or skips a path the first published after the second claimed it.
#[derive(Default)]
struct Paths {
    /// One lock per path being uploaded.
    locks: HashMap<StorePath, Arc<tokio::sync::Mutex<()>>>,
    /// When this process last published each path (bounded, see [`PUBLISHED_MEMORY`]).
    published: HashMap<StorePath, Instant>,
}

/// How many published paths [`Paths`] remembers before it forgets the old ones: only publications
/// after an upload's claim count, so a few minutes' worth is all that is ever useful.
const PUBLISHED_MEMORY: usize = 100_000;

impl Paths {
    /// True when this process published `path` after `claimed_at`. Then the narinfo is in the cache and
    /// safe from GC: the upload asking claimed its key before that (a publication before the claim does
    /// not count — GC may have deleted the path since, which is why the claim found it missing).
    fn published_since(&self, path: &StorePath, claimed_at: Instant) -> bool {
        self.published.get(path).is_some_and(|t| *t > claimed_at)
    }
}

type PathLocks = Arc<std::sync::Mutex<Paths>>;

/// Held from the start of a path's NAR until its narinfo is published (or the attempt failed).
struct PathGuard {
    locks: PathLocks,
    path: StorePath,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl PathGuard {
    /// Takes the path's lock (waiting for another upload of it); `None` when this process published the
    /// path after `claimed_at`, before or while we waited.
    async fn acquire(locks: &PathLocks, path: &StorePath, claimed_at: Instant) -> Option<Self> {
        let lock = {
            let mut paths = locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if paths.published_since(path, claimed_at) {
                return None;
            }
            Arc::clone(paths.locks.entry(path.clone()).or_default())
        };
        let guard = Self { locks: Arc::clone(locks), path: path.clone(), guard: Some(lock.lock_owned().await) };
        let published =
            locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner).published_since(path, claimed_at);
        (!published).then_some(guard)
    }

    /// Records that the path is published (while still holding its lock).
    fn published(&self) {
        let mut paths = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if paths.published.len() >= PUBLISHED_MEMORY {
            paths.published.clear();
        }
        paths.published.insert(self.path.clone(), Instant::now());
    }
}

impl Drop for PathGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut paths = self.locks.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // Only the map's own reference left: nobody waits for this path; forget it (keeps the map bounded).
        if paths.locks.get(&self.path).is_some_and(|l| Arc::strong_count(l) == 1) {
            paths.locks.remove(&self.path);
        }
    }
}

/// Everything written for one path before its narinfo.
struct PathUploaded {
    guard: PathGuard,
    nar: StoredNar,
    /// The listing written, not yet recorded.
    listing: Option<NewObject>,
    /// The build log the narinfo names (written now, or already in the cache).
    log: Option<ObjectKey>,
    /// The build log, when this upload wrote it (not yet recorded).
    new_log: Option<NewObject>,
    nar_size: u64,
    seconds: f64,
}

/// What [`Uploader::walk`] found: the paths to upload, and every key it claimed that the cache lacks.
struct Walk {
    /// The upload session the keys were claimed in (big NARs record their multipart uploads in it).
    session: UploadId,
    /// Paths whose narinfo the cache lacks, dependencies first.
    missing: Vec<PathInfo>,
    /// Claimed keys with no live row (narinfos, NARs, listings, logs).
    absent: HashSet<ObjectKey>,
    /// When each missing path's keys were claimed (just before).
    claimed_at: HashMap<StorePath, Instant>,
    /// Paths looked at.
    looked_at: usize,
    /// Missing paths over the size limit: not uploaded, their references not walked.
    skipped: Vec<StorePath>,
}

/// What finished in [`Uploader::upload_missing`]'s set of tasks.
enum Step {
    /// Path `i`'s NAR, listing and log are stored (`None`: another upload published it meanwhile).
    Uploaded(usize, Result<Option<PathUploaded>, UploadError>),
    /// Narinfos published together: each path's index, NAR size and compressed size.
    Published(Result<Vec<(usize, u64, u64)>, UploadError>),
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
    max_nar_size: Option<u64>,
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
            max_nar_size: None,
        }
    }

    /// Leaves out paths whose NAR is larger than `max` bytes (`--max-nar-size`): each is logged once and
    /// counted, its referrers are still uploaded and name it, and the closure is recorded as incomplete.
    /// A spool entry whose root is over the limit is done (acknowledged), not failed: retrying would not
    /// make the NAR smaller.
    #[must_use]
    pub fn with_max_nar_size(mut self, max: Option<u64>) -> Self {
        self.max_nar_size = max;
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

    fn store(&self) -> &Arc<Storage> {
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
    /// path of every closure is in the cache, or with the first error (the session's claims are then
    /// dropped; what was written stays recorded and is reused or collected later).
    pub async fn upload_closure(&self, roots: &[StorePath]) -> Result<ClosureReport, UploadError> {
        let mut roots = roots.to_vec();
        roots.sort();
        roots.dedup();
        let Some(first) = roots.first() else { return Ok(ClosureReport::default()) };
        // A root deleted from the store is reported as such (and without asking Nix, which may try its
        // substituters for a path it does not have). One blocking task for the whole batch of roots.
        let fs_paths: Vec<_> = roots.iter().map(|r| self.store_dir().path_of(r)).collect();
        let gone = tokio::task::spawn_blocking(move || {
            fs_paths
                .iter()
                .position(|p| std::fs::symlink_metadata(p).is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound))
        })
        .await
        .map_err(|e| UploadError::Task(format!("checking the roots exist: {e}")))?;
        if let Some(i) = gone {
            return Err(UploadError::Vanished { path: self.store_dir().display(&roots[i]) });
        }
        let id = self.db().begin_upload(&ObjectKey::narinfo(first), &[], chrono::Utc::now()).await?;
        let result = async {
            let walk = self.walk(id, &roots).await?;
            self.upload_missing(&walk).await
        }
        .await;
        let finished = match result {
            Ok(report) => {
                let root_keys: Vec<ObjectKey> = roots.iter().map(ObjectKey::narinfo).collect();
                let skipped: Vec<String> = report.skipped.iter().map(|p| self.store_dir().display(p)).collect();
                let mut detail = serde_json::json!({ "published": report.uploaded, "closure_paths": report.looked_at });
                if !skipped.is_empty() {
                    detail["skipped"] = serde_json::json!(skipped);
                }
                let audit = crate::db::audit::PushAudit {
                    who: "spool",
                    roots: roots.iter().map(|r| self.store_dir().display(r)).collect(),
                    detail,
                };
                self.db()
                    .finish_uploads(&[id], &root_keys, &skipped, Some(&audit), chrono::Utc::now())
                    .await
                    .map(|()| report)
                    .map_err(Into::into)
            }
            Err(e) => Err(e),
        };
        if finished.is_err()
            && let Err(e) = self.db().abort_upload(id).await
        {
            tracing::debug!(error = %e, "could not drop an upload claim; GC expires it");
        }
        finished
    }

    /// Walks the closures of `roots` down from the roots, claiming every key of every path it looks at
    /// in session `id` before asking whether the cache has it, and stops at paths the cache has: a cached
    /// narinfo's closure is complete in the cache, and the claim keeps all of it from GC. So an upload costs
    /// work in what the cache lacks, not in the size of its closure (a queue of N paths whose closures
    /// overlap used to cost O(N^2)), and a closure that is all cached costs one level.
    async fn walk(&self, id: UploadId, roots: &[StorePath]) -> Result<Walk, UploadError> {
        let mut seen: HashSet<StorePath> = roots.iter().cloned().collect();
        let mut frontier = roots.to_vec();
        let mut walk = Walk {
            session: id,
            missing: Vec::new(),
            absent: HashSet::new(),
            claimed_at: HashMap::new(),
            looked_at: 0,
            skipped: Vec::new(),
        };
        let mut missing = Vec::new();
        while !frontier.is_empty() {
            let infos = self.nix.path_infos(self.store_dir(), &frontier).await?;
            walk.looked_at += infos.len();
            let keys: Vec<ObjectKey> = infos.iter().flat_map(keys_of).collect();
            let claimed_at = Instant::now();
            walk.absent.extend(self.db().claim(id, &keys).await?);
            let mut next = Vec::new();
            for info in infos {
                if walk.absent.contains(&ObjectKey::narinfo(&info.path)) {
                    if let Some(max) = self.max_nar_size.filter(|max| info.nar_size > *max) {
                        self.metrics.paths_skipped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(
                            path = %self.store_dir().display(&info.path),
                            nar_size = info.nar_size,
                            max_nar_size = max,
                            "skipped: its NAR is over --max-nar-size (referrers are uploaded without it)"
                        );
                        walk.skipped.push(info.path);
                        continue;
                    }
                    walk.claimed_at.insert(info.path.clone(), claimed_at);
                    next.extend(info.references.iter().filter(|r| seen.insert((*r).clone())).cloned());
                    missing.push(info);
                }
            }
            next.sort();
            frontier = next;
        }
        walk.missing = dependency_order(missing).map_err(PathInfoError::from)?;
        Ok(walk)
    }

    /// Uploads the paths the walk found missing, each NAR before its narinfo and every narinfo after
    /// those of its missing references.
    async fn upload_missing(&self, walk: &Walk) -> Result<ClosureReport, UploadError> {
        let closure = &walk.missing;
        let mut report =
            ClosureReport { looked_at: walk.looked_at, skipped: walk.skipped.clone(), ..ClosureReport::default() };
        if closure.is_empty() {
            return Ok(report);
        }

        // waiting[i]: missing references of i (other than itself) not yet published.
        let is_missing: HashMap<&StorePath, usize> = closure.iter().enumerate().map(|(i, p)| (&p.path, i)).collect();
        let mut waiting: HashMap<usize, usize> = HashMap::new();
        let mut dependents: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, info) in closure.iter().enumerate() {
            let mut n = 0;
            for r in &info.references {
                if *r != info.path
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
        // NARs being compressed at `jobs`. Small paths may go beyond that (see SMALL_IN_FLIGHT): their
        // time is in round trips to the store and the database, not in compression.
        // Publishing is a group commit: one publish at a time takes every path that became ready while
        // the previous one ran (paths ready together never refer to each other: a path is ready only
        // once all its missing references are published).
        let mut done: HashMap<usize, PathUploaded> = HashMap::new();
        let mut ready: Vec<(usize, PathUploaded)> = Vec::new();
        let mut publishing = false;
        let mut tasks: FuturesUnordered<Pin<Box<dyn Future<Output = Step> + Send + '_>>> = FuturesUnordered::new();
        let (mut uploads_in_flight, mut bytes_in_flight) = (0, 0u64);
        let mut next = 0;
        loop {
            while next < closure.len() {
                let i = next;
                let size = closure[i].nar_size;
                let room = uploads_in_flight < 2 * self.jobs
                    || (uploads_in_flight < SMALL_IN_FLIGHT.0 && bytes_in_flight + size <= SMALL_IN_FLIGHT.1);
                if !room {
                    break;
                }
                next += 1;
                uploads_in_flight += 1;
                bytes_in_flight += size;
                let info = &closure[i];
                tasks.push(Box::pin(async move { Step::Uploaded(i, self.upload_path_objects(info, walk).await) }));
            }
            if !publishing && !ready.is_empty() {
                let batch: Vec<(usize, PathUploaded)> = ready.drain(..ready.len().min(PUBLISH_BATCH)).collect();
                publishing = true;
                tasks.push(Box::pin(async move { Step::Published(self.publish(closure, batch).await) }));
            }
            let Some(step) = tasks.next().await else { break };
            let published: Vec<usize> = match step {
                Step::Uploaded(i, res) => {
                    uploads_in_flight -= 1;
                    bytes_in_flight -= closure[i].nar_size;
                    match res? {
                        Some(up) if waiting.get(&i) == Some(&0) => {
                            ready.push((i, up));
                            continue;
                        }
                        Some(up) => {
                            done.insert(i, up);
                            continue;
                        }
                        // Another upload of this process published it meanwhile.
                        None => vec![i],
                    }
                }
                Step::Published(res) => {
                    publishing = false;
                    let sizes = res?;
                    for &(_, nar_size, file_size) in &sizes {
                        report.uploaded += 1;
                        report.nar_bytes += nar_size;
                        report.file_bytes += file_size;
                    }
                    sizes.into_iter().map(|(i, ..)| i).collect()
                }
            };
            // A published path may make dependents ready: their NAR done, all missing references published.
            for p in published {
                waiting.remove(&p);
                for &d in dependents.get(&p).map_or(&[][..], Vec::as_slice) {
                    if let Some(w) = waiting.get_mut(&d) {
                        *w = w.saturating_sub(1);
                        if *w == 0
                            && let Some(up) = done.remove(&d)
                        {
                            ready.push((d, up));
                        }
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

    /// Publishes the paths of `batch` (indices into `closure`, with what was stored for each) together:
    /// their indices, NAR sizes and compressed sizes.
    async fn publish(
        &self,
        closure: &[PathInfo],
        batch: Vec<(usize, PathUploaded)>,
    ) -> Result<Vec<(usize, u64, u64)>, UploadError> {
        let started = Instant::now();
        let inputs: Vec<PublishInput<'_>> = batch
            .iter()
            .map(|(i, up)| PublishInput {
                info: &closure[*i],
                nar: up.nar,
                listing: up.listing.as_ref().map(|o| o.key.clone()),
                log: up.log.clone(),
                unrecorded: up.listing.iter().chain(&up.new_log).cloned().collect(),
                // The walk claimed every reference: each was in the cache then (and the claim keeps it
                // there) or is a missing path this upload published before this one (or one it skipped).
                references_checked: true,
                skipped_references: None,
            })
            .collect();
        self.publisher.publish_many(&inputs, chrono::Utc::now()).await?;
        let waited = started.elapsed().as_secs_f64();
        for (i, up) in &batch {
            up.guard.published();
            let seconds = up.seconds + waited;
            self.metrics.record_upload(true, up.nar_size, up.nar.file_size, seconds);
            let ratio = if up.nar.file_size == 0 { 0.0 } else { up.nar_size as f64 / up.nar.file_size as f64 };
            tracing::info!(
                path = %self.store_dir().display(&closure[*i].path),
                nar_size = up.nar_size,
                file_size = up.nar.file_size,
                ratio = format_args!("{ratio:.2}"),
                seconds = format_args!("{seconds:.3}"),
                "uploaded"
            );
        }
        Ok(batch.iter().map(|(i, up)| (*i, up.nar_size, up.nar.file_size)).collect())
    }

    /// Streams the NAR, then writes the listing and build log of one path (not its narinfo; none of
    /// them recorded yet: [`Uploader::publish`] records them with the narinfo, in one round trip).
    /// `walk` says which keys the cache lacked when they were claimed. `None` when another upload of this
    /// process published the path since (it is in the cache, and the claim keeps it there).
    async fn upload_path_objects(&self, info: &PathInfo, walk: &Walk) -> Result<Option<PathUploaded>, UploadError> {
        let claimed_at = walk.claimed_at.get(&info.path).copied().unwrap_or_else(Instant::now);
        let Some(guard) = PathGuard::acquire(&self.locks, &info.path, claimed_at).await else {
            return Ok(None);
        };
        let slot = Arc::clone(&self.nar_slots).acquire_owned().await.map_err(|e| UploadError::Task(e.to_string()))?;
        // Free slots are cores with nothing to compress: a big NAR gets them as zstd workers.
        let free = self.nar_slots.available_permits();
        let use_workers = info.nar_size >= ZSTD_WORKERS_ALWAYS_FROM || (free > 0 && info.nar_size >= ZSTD_WORKERS_FROM);
        let zstd_workers = if use_workers { u32::try_from(free + 1).unwrap_or(u32::MAX) } else { 0 };
        let started = Instant::now();
        tracing::debug!(path = %self.store_dir().display(&info.path), nar_size = info.nar_size, "uploading");
        let mut objects = Vec::new();
        let streamed = if info.nar_size <= SMALL_NAR {
            self.encode_nar(info, slot).await.map(|(streamed, body)| {
                let key = ObjectKey::nar(&info.nar_hash);
                objects.push(SmallObject { key, body, content_type: NAR_CONTENT_TYPE });
                streamed
            })
        } else {
            self.stream_nar(info, slot, zstd_workers, walk.session).await
        };
        let streamed = match streamed {
            Ok(s) => s,
            Err(e) => {
                self.metrics.record_upload(false, 0, 0, started.elapsed().as_secs_f64());
                return Err(e);
            }
        };
        let listing = streamed.listing.map(|json| {
            let key = ObjectKey::listing(&info.path);
            let body = Bytes::from(json.to_string());
            objects.push(SmallObject { key: key.clone(), body: body.clone(), content_type: "application/json" });
            NewObject { key, size: body.len() as u64, refs: Vec::new() }
        });
        let (log, new_log) = match &info.deriver {
            Some(drv) if !walk.absent.contains(&ObjectKey::log(drv)) => (Some(ObjectKey::log(drv)), None),
            Some(drv) => match self.read_log(drv).await {
                Some(body) => {
                    let key = ObjectKey::log(drv);
                    objects.push(SmallObject { key: key.clone(), body: body.clone(), content_type: LOG_CONTENT_TYPE });
                    (Some(key.clone()), Some(NewObject { key, size: body.len() as u64, refs: Vec::new() }))
                }
                None => (None, None),
            },
            None => (None, None),
        };
        // The NAR (when small), listing and log together; a big NAR is already stored.
        self.store().put_many(objects).await?;
        Ok(Some(PathUploaded {
            guard,
            nar: StoredNar { file_hash: streamed.file_hash, file_size: streamed.file_size },
            listing,
            log,
            new_log,
            nar_size: streamed.nar_size,
            seconds: started.elapsed().as_secs_f64(),
        }))
    }

    /// The build log of `drv`, if Nix has one; a log that cannot be read is not worth failing the
    /// upload for.
    async fn read_log(&self, drv: &StorePath) -> Option<Bytes> {
        match self.nix.build_log(self.store_dir(), drv).await {
            Ok(log) => log.map(Bytes::from),
            Err(e) => {
                tracing::debug!(drv = %self.store_dir().display(drv), error = %e, "no build log");
                None
            }
        }
    }

    /// Starts the single pass over `info`'s path on a blocking thread (NAR → NarHash check → zstd →
    /// chunks): the thread, and the chunks it sends. The thread holds `slot` (CPU work) and gives it back
    /// when the last byte is compressed.
    fn start_nar_pass(
        &self,
        info: &PathInfo,
        slot: OwnedSemaphorePermit,
        zstd_workers: u32,
    ) -> (tokio::task::JoinHandle<Result<NarStreamed, UploadError>>, ChunkReceiver) {
        let (tx, rx) = tokio::sync::mpsc::channel(CHUNK_QUEUE);
        let fs_path = self.store_dir().path_of(&info.path);
        let display = self.store_dir().display(&info.path);
        let (hash, size, encoding, key) = (info.nar_hash, info.nar_size, self.encoding, ObjectKey::nar(&info.nar_hash));
        let producer = tokio::task::spawn_blocking(move || {
            let streamed =
                stream_nar(&fs_path, &display, hash, size, key, tx, encoding, zstd_workers).map_err(UploadError::from);
            drop(slot);
            streamed
        });
        (producer, rx)
    }

    /// A small NAR's single pass into memory: the compressed bytes, checked against Nix's record
    /// like a streamed one (the bytes exist only if the NarHash matched).
    async fn encode_nar(
        &self,
        info: &PathInfo,
        slot: OwnedSemaphorePermit,
    ) -> Result<(NarStreamed, Bytes), UploadError> {
        let (producer, mut rx) = self.start_nar_pass(info, slot, 0);
        // Received while the pass runs (it blocks when the channel is full), to the end; an error chunk
        // is the pass's own failure, which its result reports.
        let collect = async {
            let mut chunks = Vec::new();
            while let Some(chunk) = rx.recv().await {
                chunks.extend(chunk.ok());
            }
            chunks
        };
        let (chunks, pass) = tokio::join!(collect, producer);
        let streamed = pass.map_err(nar_thread)??;
        let body = match <[Bytes; 1]>::try_from(chunks) {
            Ok([one]) => one,
            Err(chunks) => Bytes::from(chunks.concat()),
        };
        Ok((streamed, body))
    }

    /// The single pass: the blocking NAR/zstd thread and the store's `put_stream`, joined. The thread
    /// holds `slot` (CPU work) and gives it back when the last byte is compressed, so the next NAR
    /// starts while the store still syncs or sends this one's tail. A multipart upload is recorded in
    /// `session`, and one an interrupted upload of the same NAR left is continued (issue 18): the NAR and
    /// its compression are deterministic, so the parts already in the bucket are the ones this pass
    /// would send (each is checked before it is skipped).
    async fn stream_nar(
        &self,
        info: &PathInfo,
        slot: OwnedSemaphorePermit,
        zstd_workers: u32,
        session: UploadId,
    ) -> Result<NarStreamed, UploadError> {
        let (producer, rx) = self.start_nar_pass(info, slot, zstd_workers);
        let bound = niks3_local::nar_stream::max_compressed_size(info.nar_size);
        let journal = SessionJournal { db: self.db(), session };
        let key = ObjectKey::nar(&info.nar_hash);
        let stored = self.store().put_stream_resumable(&key, rx, NAR_CONTENT_TYPE, Some(bound), &journal).await;
        if let Ok(s) = &stored {
            self.metrics.record_resumed(s.size.saturating_sub(s.sent));
        }
        let nar_result = producer.await.map_err(nar_thread)?;
        match nar_result {
            // A mismatch is the real story even though the store (rightly) refused the stream.
            Err(e @ UploadError::NarStream(NarStreamError::HashMismatch { .. })) => Err(e),
            Ok(streamed) => stored.map(|_| streamed).map_err(Into::into),
            // When the store failed first, the NAR thread only saw the channel close: report the store.
            Err(e) => Err(stored.err().map_or(e, Into::into)),
        }
    }
}

/// The multipart uploads of one upload session, in PostgreSQL (`upload_multiparts`, migration 0012).
/// Best effort both ways: the database failing means a fresh upload, or one the next attempt cannot
/// continue (GC aborts it), never a failed upload.
struct SessionJournal<'a> {
    db: &'a Db,
    session: UploadId,
}

impl niks3_storage::UploadJournal for SessionJournal<'_> {
    fn take_over<'a>(&'a self, key: &'a ObjectKey) -> futures::future::BoxFuture<'a, Option<String>> {
        Box::pin(async move {
            self.db.take_over_multipart(self.session.0, key).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, %key, "cannot look for an interrupted upload to continue");
                None
            })
        })
    }

    fn started<'a>(&'a self, key: &'a ObjectKey, upload_id: &'a str) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.db.record_resumable_multipart(self.session.0, key, upload_id).await {
                tracing::warn!(error = %e, %key, "cannot record a multipart upload; if interrupted, it starts over");
            }
        })
    }
}

/// The chunks a NAR pass sends (an error chunk when the pass failed).
type ChunkReceiver = tokio::sync::mpsc::Receiver<Result<Bytes, niks3_storage::StorageError>>;

/// A NAR thread that panicked or was cancelled.
#[allow(clippy::needless_pass_by_value, reason = "the map_err signature")]
fn nar_thread(e: tokio::task::JoinError) -> UploadError {
    UploadError::Task(format!("NAR thread: {e}"))
}

/// The keys an upload of `p` writes or relies on (claimed so GC keeps them).
fn keys_of(p: &PathInfo) -> Vec<ObjectKey> {
    let mut keys = vec![ObjectKey::narinfo(&p.path), ObjectKey::nar(&p.nar_hash), ObjectKey::listing(&p.path)];
    if let Some(drv) = &p.deriver {
        keys.push(ObjectKey::log(drv));
    }
    keys
}

/// The local drainer's work: a batch's closures in one upload, then their realisations.
impl niks3_local::drain::Process for Uploader {
    type Error = crate::upload::UploadError;
    async fn process(&self, works: &[niks3_local::drain::Work]) -> Result<(), Self::Error> {
        let outputs: Vec<StorePath> = works.iter().flat_map(|w| w.outputs.iter().cloned()).collect();
        self.upload_closure(&outputs).await?;
        for work in works {
            if let Some(drv) = &work.drv
                && !work.realisations.is_empty()
            {
                self.upload_realisations(drv, &work.realisations).await?;
            }
        }
        Ok(())
    }
    fn is_transient(error: &Self::Error) -> bool {
        error.is_transient()
    }
    fn nix_environment(error: &Self::Error) -> Option<&niks3_local::nix::PathInfoError> {
        error.nix_environment()
    }
}
