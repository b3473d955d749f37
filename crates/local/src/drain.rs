//! The spool drainer: turns spool entries into uploads, durably. Shared by `niks3 serve` (entries go to
//! the server's `Uploader`) and `niks3 drain` on a builder (entries go to a
//! server through the client's `Pusher`): both implement [`Process`].
//!
//! It watches `new/` with inotify (and polls every couple of seconds anyway, in case inotify is
//! unavailable or an event was lost), claims entries atomically (a rename, so two drainers never take the
//! same one), and on start re-processes whatever a previous run left in `claimed/` — uploads are
//! idempotent, so doing one twice is harmless. Each entry is handed to a [`Process`] (the
//! server's `Uploader`, or the push client of `niks3 drain`):
//! - success → the entry is acknowledged (deleted) and the GC roots of its outputs removed;
//! - transient failure (S3 or PostgreSQL unreachable) → the entry stays claimed and is retried with
//!   jittered, capped exponential backoff, for as long as the outage lasts;
//! - the local Nix store cannot be read (Nix missing or broken, the daemon refusing connections, an
//!   answer in a format we do not know) → the same: that is niks3's environment, not the entry's fault.
//!   Each distinct cause is logged once (with the Nix version), shown on `/health` and `/metrics`, and
//!   the entries go through as soon as it is fixed;
//! - anything else (unparsable entry, path outside the store, vanished, modified since it was built) →
//!   quarantined with one log line and a `.reason` file; it is never retried forever.
//!
//! Shutdown abandons in-flight entries: they stay in `claimed/` and are re-processed on the next start.

use crate::nix::{LocalNix, PathInfoError};
use crate::retry::Backoff;
use niks3_nix::realisation::Realisation;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_spool::{Claimed, Entry, Spool, SpoolError, gcroots};
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Entries uploaded together at most (the push API takes up to the server's `MAX_ROOTS`
/// roots in one push; an entry has one output or a few).
const MAX_BATCH: usize = 256;

/// When the hook queued the entry at `path`: its name starts with the hook's clock in nanoseconds since
/// the epoch (`niks3_spool::Spool` names entries so); `None` for a name that does not.
fn queued_at(path: &std::path::Path) -> Option<std::time::SystemTime> {
    let name = path.file_name()?.to_str()?;
    let nanos: u64 = name.split('-').next()?.parse().ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_nanos(nanos))
}

/// One entry, resolved: what to upload.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Output paths whose closures are uploaded (sorted, deduplicated); includes the out paths of
    /// `realisations`.
    pub outputs: Vec<StorePath>,
    /// The derivation the entry names, if any.
    pub drv: Option<StorePath>,
    /// Realisations of outputs of `drv` that the `.drv` has no path for (floating content-addressed or
    /// deferred), as Nix registered them; uploaded after their out paths' narinfos.
    pub realisations: Vec<Realisation>,
}

/// What the drainer does with the outputs of entries.
pub trait Process: Send + Sync + 'static {
    /// The processor's error.
    type Error: std::error::Error + Send + 'static;
    /// Uploads the closures of the outputs of every work in `works` (as one upload: paths shared by
    /// several closures are looked at once) and then their realisations; must be idempotent.
    fn process(&self, works: &[Work]) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// True when retrying later may succeed; false quarantines the entry.
    fn is_transient(error: &Self::Error) -> bool;
    /// The local Nix store error behind `error`, when the store could not be read (then the error is
    /// also transient, and is reported on `/health` and `/metrics`).
    fn nix_environment(error: &Self::Error) -> Option<&PathInfoError>;
}

/// Why an entry could not be turned into [`Work`].
enum Unusable {
    /// The entry itself is wrong (unparsable, not in the store, names nothing): quarantine it.
    Garbage(String),
    /// The local Nix store could not be read: keep the entry and retry.
    Nix {
        /// What we were asking.
        what: String,
        /// Why it failed.
        error: PathInfoError,
    },
}

impl Unusable {
    /// `error` while doing `what`: garbage when Nix said the path is not valid, else the environment's.
    fn nix(what: String, error: PathInfoError) -> Self {
        if error.is_environment() {
            Unusable::Nix { what, error }
        } else {
            Unusable::Garbage(format!("{what}: {error}"))
        }
    }
}

/// Why the drainer could not run at all.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// The spool directory is unusable.
    #[error("spool: {0}")]
    Spool(#[from] SpoolError),
}

/// What the drainer reports as it goes, for `/metrics` and `/health` on a server (the server's metrics
/// implement it). A trait so that the drainer, which both the server and a builder's `niks3 drain` run,
/// does not depend on either.
pub trait DrainObserver: Send + Sync {
    /// Entries waiting in the spool now.
    fn queue_depth(&self, depth: u64);
    /// An entry was acknowledged `waited` after the hook queued it.
    fn queued_to_published(&self, waited: Duration);
    /// The local Nix store could not be read because of `cause`; true when that cause is new (the
    /// drainer then logs it at error level, once).
    fn nix_trouble(&self, cause: &str) -> bool;
    /// The local Nix store was read; the cause of the trouble that just ended, if any.
    fn nix_ok(&self) -> Option<String>;
}

/// How the drainer runs.
#[derive(Clone, Debug)]
pub struct DrainConfig {
    /// The spool directory (as the hook's `NIKS3_SPOOL_DIR`).
    pub spool_dir: PathBuf,
    /// Where the hook put GC roots for queued outputs (`NIKS3_GCROOTS_DIR`).
    pub gcroots_dir: PathBuf,
    /// The Nix store the entries' paths must lie in.
    pub store_dir: StoreDir,
    /// Resolves a derivation's outputs when the hook could not.
    pub nix: LocalNix,
    /// Entries processed at once.
    pub concurrency: usize,
    /// Polling interval (the fallback for inotify).
    pub poll_interval: Duration,
    /// Stop once the spool is empty instead of waiting for more.
    pub once: bool,
    /// Backoff for transient failures (base, cap).
    pub backoff: (Duration, Duration),
}

impl DrainConfig {
    /// Defaults: 2 s polling, backoff 0.5 s doubling up to 60 s, run forever.
    pub fn new(
        spool_dir: PathBuf,
        gcroots_dir: PathBuf,
        store_dir: StoreDir,
        nix: LocalNix,
        concurrency: usize,
    ) -> Self {
        Self {
            spool_dir,
            gcroots_dir,
            store_dir,
            nix,
            concurrency: concurrency.max(1),
            poll_interval: Duration::from_secs(2),
            once: false,
            backoff: (Duration::from_millis(500), Duration::from_mins(1)),
        }
    }
}

/// Counts of what a drainer run did (returned when it stops).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainStats {
    /// Entries uploaded and acknowledged.
    pub acked: u64,
    /// Entries quarantined.
    pub quarantined: u64,
}

/// How one entry ended.
enum Outcome {
    Acked,
    Quarantined,
}

/// Drains a spool into a [`Process`].
pub struct Drainer<P> {
    config: DrainConfig,
    spool: Spool,
    processor: Arc<P>,
    observer: Arc<dyn DrainObserver>,
}

impl<P: Process> Drainer<P> {
    /// Opens (creating if needed) the spool.
    pub fn new(config: DrainConfig, processor: Arc<P>, observer: Arc<dyn DrainObserver>) -> Result<Self, DrainError> {
        let spool = Spool::open(&config.spool_dir)?;
        Ok(Self { config, spool, processor, observer })
    }

    /// Runs until `shutdown` resolves (or, with `once`, until the spool is empty). In-flight entries are
    /// abandoned on shutdown and stay claimed for the next run.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<DrainStats, DrainError> {
        let this = Arc::new(self);
        let mut stats = DrainStats::default();
        let mut pending: VecDeque<Claimed> = this.reclaim().await?.into();
        if !pending.is_empty() {
            tracing::info!(entries = pending.len(), "re-processing entries claimed by a previous run");
        }
        let mut events = watch_new_dir(&this.spool.new_dir());
        let mut in_flight: JoinSet<Vec<Outcome>> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            let free = this.config.concurrency.saturating_sub(in_flight.len());
            let wanted = free * MAX_BATCH;
            if free > 0 && pending.len() < wanted {
                match this.claim(wanted - pending.len()).await {
                    Ok(claimed) => pending.extend(claimed),
                    Err(e) => tracing::warn!(error = %e, "claiming spool entries failed; retrying"),
                }
            }
            // What is pending is shared out over the free slots, so a short queue still keeps every slot
            // busy and a long one goes in batches of at most MAX_BATCH entries.
            while in_flight.len() < this.config.concurrency && !pending.is_empty() {
                let slots = this.config.concurrency - in_flight.len();
                let n = pending.len().div_ceil(slots).min(MAX_BATCH);
                let batch: Vec<Claimed> = pending.drain(..n).collect();
                let me = Arc::clone(&this);
                in_flight.spawn(async move { me.handle_batch(batch).await });
            }
            this.update_depth().await;
            if this.config.once && in_flight.is_empty() && pending.is_empty() {
                break;
            }
            tokio::select! {
                () = &mut shutdown => {
                    if !in_flight.is_empty() {
                        tracing::info!(batches = in_flight.len(), "shutting down; in-flight entries stay claimed for the next start");
                    }
                    in_flight.shutdown().await;
                    break;
                }
                Some(res) = in_flight.join_next(), if !in_flight.is_empty() => match res {
                    Ok(outcomes) => for outcome in outcomes {
                        match outcome {
                            Outcome::Acked => stats.acked += 1,
                            Outcome::Quarantined => stats.quarantined += 1,
                        }
                    },
                    Err(e) => tracing::error!(error = %e, "an entry task failed; its entries stay claimed"),
                },
                () = next_event(&mut events) => {}
                () = tokio::time::sleep(this.config.poll_interval) => {}
            }
        }
        Ok(stats)
    }

    async fn reclaim(&self) -> Result<Vec<Claimed>, SpoolError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.reclaim()).await.unwrap_or_else(|e| Err(join_error(&e)))
    }

    async fn claim(&self, max: usize) -> Result<Vec<Claimed>, SpoolError> {
        let spool = self.spool.clone();
        tokio::task::spawn_blocking(move || spool.claim(max)).await.unwrap_or_else(|e| Err(join_error(&e)))
    }

    async fn update_depth(&self) {
        let spool = self.spool.clone();
        if let Ok(Ok(depth)) = tokio::task::spawn_blocking(move || spool.depth()).await {
            self.observer.queue_depth(depth as u64);
        }
    }

    /// Processes a batch of claimed entries as one upload (their closures overlap: each path is looked at
    /// and uploaded once, and the cache is asked about a level of the union at a time) and acknowledges
    /// them together. Transient failures retry the whole batch; any other failure sends its entries
    /// through [`Drainer::handle_resolved`] one by one, so each gets its own verdict (what the batch
    /// already uploaded is found in the cache and not uploaded again); an entry that cannot be resolved
    /// goes through [`Drainer::handle`].
    async fn handle_batch(&self, batch: Vec<Claimed>) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut alone = Vec::new();
        let mut together = Vec::with_capacity(batch.len());
        for claimed in batch {
            let resolved = match &claimed.entry {
                Ok(entry) => self.work_of(entry).await.ok(),
                Err(_) => None,
            };
            match resolved {
                Some(work) => together.push((claimed, work)),
                None => alone.push(claimed),
            }
        }
        let backoff = || Backoff::new(self.config.backoff.0, self.config.backoff.1);
        let one_by_one = if together.len() > 1 {
            let works: Vec<Work> = together.iter().map(|(_, w)| w.clone()).collect();
            let first = together[0].0.path.clone();
            match self.process_retrying(&works, &first, &mut backoff()).await {
                Ok(()) => {
                    outcomes.extend(together.iter().map(|_| Outcome::Acked));
                    self.ack_all(together.into_iter().map(|(c, w)| (c, w.outputs)).collect()).await;
                    Vec::new()
                }
                Err(e) => {
                    tracing::info!(entries = works.len(), error = %e, "a batch of entries failed; taking them one by one");
                    together
                }
            }
        } else {
            together
        };
        // Resolved entries keep their work (resolving asks Nix again); the others start from the entry.
        for (claimed, work) in one_by_one {
            outcomes.push(self.handle_resolved(claimed, work, backoff()).await);
        }
        for claimed in alone {
            outcomes.push(self.handle(claimed).await);
        }
        outcomes
    }

    /// Processes one claimed entry to its end: acknowledged or quarantined (transient failures retried).
    async fn handle(&self, claimed: Claimed) -> Outcome {
        let entry = match &claimed.entry {
            Ok(entry) => entry.clone(),
            Err(e) => {
                let reason = e.to_string();
                return self.quarantine(claimed, &reason, &[]).await;
            }
        };
        let mut backoff = Backoff::new(self.config.backoff.0, self.config.backoff.1);
        let work = loop {
            match self.work_of(&entry).await {
                Ok(work) => break work,
                Err(Unusable::Garbage(reason)) => {
                    let valid: Vec<StorePath> =
                        entry.outs.iter().filter_map(|o| self.config.store_dir.parse_path(o).ok()).collect();
                    return self.quarantine(claimed, &reason, &valid).await;
                }
                Err(Unusable::Nix { what, error }) => {
                    let delay = backoff.next_delay();
                    self.nix_trouble(&format!("{what}: {error}"), &claimed.path, backoff.attempts(), delay).await;
                    tokio::time::sleep(delay).await;
                }
            }
        };
        self.handle_resolved(claimed, work, backoff).await
    }

    /// [`Drainer::handle`] from the resolved `work` on: uploaded and acknowledged, or quarantined.
    async fn handle_resolved(&self, claimed: Claimed, work: Work, mut backoff: Backoff) -> Outcome {
        if let Err(e) = self.process_retrying(std::slice::from_ref(&work), &claimed.path, &mut backoff).await {
            let reason = e.to_string();
            return self.quarantine(claimed, &reason, &work.outputs).await;
        }
        self.ack(claimed, &work.outputs).await
    }

    /// Processes `works` until it succeeds or fails for good: a local Nix store that cannot be read and
    /// transient failures (S3 or PostgreSQL unreachable) are retried with `backoff`, for as long as they
    /// last; `entry` (the first entry of the works) names them in the log. Returns the lasting error.
    async fn process_retrying(
        &self,
        works: &[Work],
        entry: &std::path::Path,
        backoff: &mut Backoff,
    ) -> Result<(), P::Error> {
        loop {
            match self.processor.process(works).await {
                Ok(()) => return Ok(()),
                Err(e) if P::nix_environment(&e).is_some() => {
                    let delay = backoff.next_delay();
                    self.nix_trouble(&e.to_string(), entry, backoff.attempts(), delay).await;
                    tokio::time::sleep(delay).await;
                }
                Err(e) if P::is_transient(&e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        entry = %entry.display(),
                        entries = works.len(),
                        attempt = backoff.attempts(),
                        retry_in = format_args!("{:.1}s", delay.as_secs_f64()),
                        error = %e,
                        "upload failed (transient); the entries stay claimed and will be retried"
                    );
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// An entry whose closure is in the cache leaves the spool, and its outputs' GC roots go.
    async fn ack(&self, claimed: Claimed, outputs: &[StorePath]) -> Outcome {
        self.ack_all(vec![(claimed, outputs.to_vec())]).await;
        Outcome::Acked
    }

    /// [`Drainer::ack`] for many entries, in one blocking task (a batch acknowledges hundreds at once).
    async fn ack_all(&self, done: Vec<(Claimed, Vec<StorePath>)>) {
        if let Some(cause) = self.observer.nix_ok() {
            tracing::info!(was = %cause, "the local Nix store can be read again");
        }
        let now = std::time::SystemTime::now();
        for (claimed, _) in &done {
            if let Some(waited) = queued_at(&claimed.path).and_then(|q| now.duration_since(q).ok()) {
                self.observer.queued_to_published(waited);
            }
        }
        let (spool, dir, store_dir) =
            (self.spool.clone(), self.config.gcroots_dir.clone(), self.config.store_dir.clone());
        let res = tokio::task::spawn_blocking(move || {
            for (claimed, outputs) in done {
                remove_roots(&dir, &store_dir, &outputs);
                if let Err(e) = spool.ack(&claimed) {
                    tracing::warn!(entry = %claimed.path.display(), error = %e, "could not remove the acknowledged entry");
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "acknowledging entries failed; they are processed again on the next start");
        }
    }

    /// Records that `claimed` waits for the local Nix store: logged at error level (with the Nix version)
    /// once per distinct cause, at debug level for every further entry and retry.
    async fn nix_trouble(&self, cause: &str, entry: &std::path::Path, attempt: u32, retry_in: Duration) {
        if self.observer.nix_trouble(cause) {
            let nix = match self.config.nix.version().await {
                Ok(v) => v,
                Err(e) => format!("unknown ({e})"),
            };
            tracing::error!(
                %nix,
                error = cause,
                "cannot read the local Nix store; queued entries stay in the spool and are uploaded once this is fixed"
            );
        } else {
            tracing::debug!(entry = %entry.display(), attempt, retry_in = ?retry_in, error = cause, "still cannot read the local Nix store");
        }
    }

    /// The entry's outputs and realisations, validated and resolved; or why the entry is unusable.
    ///
    /// Outputs named by `realisation=` are looked up in Nix's realisations of the drv and their paths get
    /// a GC root here (the hook could not root a path it did not know), removed with the others.
    async fn work_of(&self, entry: &Entry) -> Result<Work, Unusable> {
        let store_dir = &self.config.store_dir;
        let nix = &self.config.nix;
        let mut outputs = Vec::with_capacity(entry.outs.len());
        for out in &entry.outs {
            outputs.push(store_dir.parse_path(out).map_err(|e| Unusable::Garbage(format!("output {e}")))?);
        }
        let drv = match &entry.drv {
            Some(d) => {
                let drv = store_dir.parse_path(d).map_err(|e| Unusable::Garbage(format!("derivation {e}")))?;
                if !drv.is_derivation() {
                    return Err(Unusable::Garbage(format!("{} is not a derivation", store_dir.display(&drv))));
                }
                Some(drv)
            }
            None => None,
        };
        let mut realisations = Vec::new();
        if let Some(drv) = drv.as_ref().filter(|_| !entry.realisations.is_empty()) {
            let what = || format!("reading the realisations of {}", store_dir.display(drv));
            // A derivation deleted since the build is the entry's problem; `nix realisation info` failing
            // on a valid one is the environment's.
            if !nix.is_valid(store_dir, drv).await.map_err(|e| Unusable::nix(what(), e))? {
                return Err(Unusable::Garbage(format!(
                    "{} is not valid in the local Nix store",
                    store_dir.display(drv)
                )));
            }
            let known = nix.realisations(store_dir, drv).await.map_err(|e| Unusable::nix(what(), e))?;
            for name in &entry.realisations {
                let r = known.iter().find(|r| r.id.output == *name).ok_or_else(|| {
                    Unusable::Garbage(format!(
                        "output {name:?} of {} has no realisation in the local Nix store",
                        store_dir.display(drv)
                    ))
                })?;
                realisations.push(r.clone());
            }
            let paths: Vec<StorePath> = realisations.iter().map(|r| r.out_path.clone()).collect();
            self.add_roots(&paths).await;
            outputs.extend(paths);
        }
        if outputs.is_empty() {
            let Some(drv) = &drv else {
                return Err(Unusable::Garbage("the entry names no outputs and no derivation".to_owned()));
            };
            outputs = nix
                .derivation_outputs(store_dir, drv)
                .await
                .map_err(|e| Unusable::nix(format!("resolving the outputs of {}", store_dir.display(drv)), e))?;
            if outputs.is_empty() {
                return Err(Unusable::Garbage(format!("{} has no outputs", store_dir.display(drv))));
            }
        }
        outputs.sort();
        outputs.dedup();
        Ok(Work { outputs, drv, realisations })
    }

    async fn quarantine(&self, claimed: Claimed, reason: &str, outputs: &[StorePath]) -> Outcome {
        let spool = self.spool.clone();
        let entry_path = claimed.path.clone();
        let reason_owned = reason.to_owned();
        match tokio::task::spawn_blocking(move || spool.quarantine(&claimed, &reason_owned)).await {
            Ok(Ok(dest)) => {
                tracing::error!(entry = %entry_path.display(), quarantined_to = %dest.display(), reason, "quarantined spool entry");
            }
            Ok(Err(e)) => {
                tracing::error!(entry = %entry_path.display(), reason, error = %e, "could not quarantine spool entry");
            }
            Err(e) => {
                tracing::error!(entry = %entry_path.display(), reason, error = %e, "could not quarantine spool entry");
            }
        }
        // A quarantined entry is not retried automatically: do not pin its outputs in the local store.
        self.remove_roots(outputs).await;
        Outcome::Quarantined
    }

    /// Roots `paths` like the hook does (best effort: a failure only widens the window in which a local
    /// GC could delete the path before upload, which then quarantines the entry as vanished).
    async fn add_roots(&self, paths: &[StorePath]) {
        let dir = self.config.gcroots_dir.clone();
        let paths: Vec<String> = paths.iter().map(|o| self.config.store_dir.display(o)).collect();
        let res = tokio::task::spawn_blocking(move || {
            for p in &paths {
                if let Err(e) = gcroots::ensure(&dir, p) {
                    tracing::warn!(path = %p, error = %e, "could not add a GC root for a resolved output");
                }
            }
        })
        .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "adding GC roots failed");
        }
    }

    async fn remove_roots(&self, outputs: &[StorePath]) {
        let (dir, store_dir, outputs) =
            (self.config.gcroots_dir.clone(), self.config.store_dir.clone(), outputs.to_vec());
        if let Err(e) = tokio::task::spawn_blocking(move || remove_roots(&dir, &store_dir, &outputs)).await {
            tracing::warn!(error = %e, "removing GC roots failed");
        }
    }
}

/// Removes the GC roots of `outputs` from `dir` (blocking; a failure is logged: the root then only keeps a
/// path in the local store longer).
fn remove_roots(dir: &std::path::Path, store_dir: &StoreDir, outputs: &[StorePath]) {
    for o in outputs {
        let p = store_dir.display(o);
        if let Err(e) = gcroots::remove(dir, &p) {
            tracing::warn!(path = %p, error = %e, "could not remove the GC root");
        }
    }
}

fn join_error(e: &tokio::task::JoinError) -> SpoolError {
    SpoolError::Io { op: "spool task", path: PathBuf::new(), source: std::io::Error::other(e.to_string()) }
}

type Events = Option<inotify::EventStream<[u8; 4096]>>;

/// An inotify stream of entries arriving in `new/`; `None` (polling only) when inotify is unavailable.
fn watch_new_dir(dir: &std::path::Path) -> Events {
    let inotify = match inotify::Inotify::init() {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(error = %e, "inotify unavailable; polling the spool");
            return None;
        }
    };
    let mask = inotify::WatchMask::MOVED_TO | inotify::WatchMask::CLOSE_WRITE | inotify::WatchMask::CREATE;
    if let Err(e) = inotify.watches().add(dir, mask) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the spool; polling it");
        return None;
    }
    match inotify.into_event_stream([0u8; 4096]) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "inotify stream unavailable; polling the spool");
            None
        }
    }
}

/// Resolves on the next inotify event (never when polling only), taking every event already queued
/// with it: a burst of entries (a queue moved in at once, a build of many outputs) wakes the drainer once,
/// not once per entry (each wake-up lists the spool's directories).
async fn next_event(events: &mut Events) {
    use futures::{FutureExt as _, StreamExt};
    let Some(stream) = events else { return std::future::pending().await };
    let mut next = stream.next().await;
    loop {
        match next {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "inotify failed; polling the spool from now on");
                *events = None;
                return;
            }
            None => {
                *events = None;
                return;
            }
        }
        // Events already queued come with this one; stop at the first that is not ready.
        match stream.next().now_or_never() {
            Some(more) => next = more,
            None => return,
        }
    }
}
