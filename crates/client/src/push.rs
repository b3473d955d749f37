//! Pushing closures to a niks3 server: the client half of the protocol in docs/api.md.
//!
//! 1. the closure of the roots from the local Nix store, in dependency order (one `nix path-info`);
//! 2. one `POST /api/v1/push` learns which paths the cache lacks and where each missing NAR goes;
//! 3. each missing NAR is serialised from disk, checked against Nix's NarHash and zstd-compressed here
//!    ([`niks3_local::nar_stream::stream_nar`], the pipeline's single pass), several NARs in parallel,
//!    in bounded memory: cut into presigned multipart parts (one part uploading while the next fills, each
//!    part retried on its own), collected for one presigned PUT when it fits in one part (S3 wants a
//!    Content-Length), or streamed into the relay request;
//! 4. `POST /api/v1/complete` makes the server complete the multipart uploads, check the NARs and publish
//!    the signed narinfos. If anything fails before that ends, `POST /api/v1/abort` gives the sessions up.
//!
//! Idempotent: pushing twice uploads nothing the second time.

use super::{ApiClient, ClientError, check_status};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use niks3_api::protocol::{
    AbortRequest, CompleteRequest, HeldPartWire, ListingWire, MissingLog, MissingNar, MultipartWire, PathInfoWire,
    PushRequest, PushResponse, RealisationsRequest, TouchRequest, UploadedNar,
};
use niks3_local::nar_stream::{DEFAULT_ZSTD_LEVEL, NarEncoding};
use niks3_local::nix::LocalNix;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::realisation::Realisation;
use niks3_nix::store_path::{StoreDir, StorePath};
use niks3_storage::s3::etag_is_md5;
use niks3_storage::{ObjectKey, StorageError};
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Chunks buffered between the compressor and the network, per NAR (each up to 1 MiB).
const CHUNK_QUEUE: usize = 8;
/// Attempts per NAR upload, and per part of one, before giving up (transient failures only).
const UPLOAD_ATTEMPTS: u32 = 3;
/// Largest upload held in memory: one presigned PUT, or one part (the server plans one PUT only for NARs
/// that fit in one part, and parts of its configured size, 8 MiB by default).
const MAX_BUFFERED_UPLOAD: u64 = 1 << 30;
/// How often a pusher tells the server its sessions are alive (well within the servers' default lease
/// timeout of 120 s).
const LEASE_HEARTBEAT: Duration = Duration::from_secs(30);
/// Timeout of one presigned PUT (a part of 8 MiB, or a NAR of at most one part, over a slow uplink).
const PART_TIMEOUT: Duration = Duration::from_mins(10);

/// One finished NAR upload: what was sent, its listing, whether presigned, its NAR size, and how many of
/// its compressed bytes an interrupted push had uploaded already (reused, not sent).
type Done = (UploadedNar, Option<serde_json::Value>, bool, u64, u64);

/// One NAR uploaded: what was sent, its listing, and the compressed bytes reused from an interrupted push.
type Uploaded = (UploadedNar, Option<serde_json::Value>, u64);

/// Receives progress events (a progress bar on a TTY, log lines otherwise, nothing for the drainer).
pub trait Progress: Send + Sync {
    /// The plan: `paths` in the closure, of which `missing` lack, needing `nars` uploads of `nar_bytes`
    /// uncompressed bytes.
    fn planned(&self, paths: usize, missing: usize, nars: usize, nar_bytes: u64);
    /// `n` more uncompressed bytes were serialised and sent.
    fn advanced(&self, n: u64);
    /// One NAR is uploaded (`file_size` compressed bytes).
    fn nar_done(&self, path: &str, nar_size: u64, file_size: u64);
}

/// Progress that reports nothing.
pub(crate) struct NoProgress;

impl Progress for NoProgress {
    fn planned(&self, _: usize, _: usize, _: usize, _: u64) {}
    fn advanced(&self, _: u64) {}
    fn nar_done(&self, _: &str, _: u64, _: u64) {}
}

/// What a push did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushReport {
    /// Paths in the closure.
    pub closure_paths: usize,
    /// Paths the cache lacked (published now, or listed under `--dry-run`).
    pub missing_paths: Vec<String>,
    /// NARs uploaded.
    pub nars_uploaded: usize,
    /// Uncompressed NAR bytes uploaded.
    pub nar_bytes: u64,
    /// Compressed bytes uploaded.
    pub file_bytes: u64,
    /// Of those, sent to presigned S3 URLs (not through the server).
    pub presigned_uploads: usize,
    /// Narinfos the server wrote.
    pub published: usize,
    /// Missing paths left out because their NAR is over the size limit (this pusher's or the server's).
    pub skipped_paths: Vec<String>,
    /// Of the compressed bytes uploaded, those an interrupted earlier push had already put in the bucket:
    /// parts of a multipart upload the server handed back to be continued, reused (same size and MD5)
    /// instead of sent again.
    pub resumed_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Pushes closures of the local store to a server.
#[derive(Clone, Debug)]
pub struct Pusher {
    /// The server.
    pub api: ApiClient,
    /// The local Nix tools.
    pub nix: LocalNix,
    /// The local store directory.
    pub store_dir: StoreDir,
    /// NARs compressed and uploaded at once.
    pub jobs: usize,
    /// zstd level of the NARs (the server stores what it is sent).
    pub zstd_level: i32,
    /// `--max-nar-size`: sent with the push; the server leaves out missing paths with a larger NAR.
    pub max_nar_size: Option<u64>,
}

impl Pusher {
    /// A pusher with `jobs` parallel NARs (each holds at most two parts of a NAR in memory), compressing
    /// at zstd's default level 3.
    pub fn new(api: ApiClient, nix: LocalNix, store_dir: StoreDir, jobs: usize) -> Self {
        Pusher { api, nix, store_dir, jobs: jobs.max(1), zstd_level: DEFAULT_ZSTD_LEVEL, max_nar_size: None }
    }

    /// Leaves out missing paths whose NAR is larger than `max` bytes (`None`: only the server's limit).
    #[must_use]
    pub fn with_max_nar_size(mut self, max: Option<u64>) -> Self {
        self.max_nar_size = max;
        self
    }

    /// Compresses NARs at zstd `level` instead (1..=9, see [`NarEncoding`]).
    #[must_use]
    pub fn with_compression_level(mut self, level: i32) -> Self {
        self.zstd_level = level;
        self
    }

    /// Resolves a command-line argument (`./result`, a store path, a symlink to one) to a store path.
    pub fn resolve_arg(&self, arg: &str) -> Result<StorePath, ClientError> {
        if let Ok(p) = self.store_dir.parse_path(arg) {
            return Ok(p);
        }
        let canon = std::fs::canonicalize(arg).map_err(|e| ClientError::BadPath(format!("{arg}: {e}")))?;
        let s = canon.to_str().ok_or_else(|| ClientError::BadPath(format!("{arg}: not UTF-8")))?;
        self.store_dir.parse_path(s).map_err(|e| ClientError::BadPath(format!("{arg}: {e}")))
    }

    /// Pushes the closures of `roots`; with `dry_run`, only asks what is missing (nothing is written).
    pub async fn push(
        &self,
        roots: &[StorePath],
        dry_run: bool,
        progress: &dyn Progress,
    ) -> Result<PushReport, ClientError> {
        let t0 = Instant::now();
        let closure = self.nix.closure(&self.store_dir, roots).await?;
        let wire: Vec<PathInfoWire> = closure.iter().map(|p| to_wire(&self.store_dir, p)).collect();
        let root_strings: Vec<String> = roots.iter().map(|r| self.store_dir.display(r)).collect();
        let plan = self
            .api
            .announce(&PushRequest {
                roots: root_strings.clone(),
                paths: wire.clone(),
                dry_run,
                max_nar_size: self.max_nar_size,
            })
            .await?;
        let by_path: HashMap<String, &PathInfo> =
            closure.iter().map(|p| (self.store_dir.display(&p.path), p)).collect();
        let mut report = PushReport {
            closure_paths: closure.len(),
            missing_paths: plan.missing_paths.clone(),
            skipped_paths: plan.skipped_paths.clone(),
            ..PushReport::default()
        };
        let nar_total: u64 = plan.missing_nars.iter().filter_map(|m| by_path.get(&m.path)).map(|p| p.nar_size).sum();
        progress.planned(closure.len(), plan.missing_paths.len(), plan.missing_nars.len(), nar_total);
        if dry_run {
            report.elapsed = t0.elapsed();
            return Ok(report);
        }
        let uploads = plan.uploads.clone();
        let _heartbeat = self.heartbeat(uploads.clone());
        match self.upload_and_complete(plan, &closure, wire, root_strings, &mut report, progress).await {
            Ok(()) => {
                report.elapsed = t0.elapsed();
                Ok(report)
            }
            Err(e) => {
                // Give the sessions up now rather than leave their multipart uploads for GC.
                if let Err(abort) = self.api.abort(&AbortRequest { uploads }).await {
                    tracing::warn!("giving up the upload sessions: {abort}");
                }
                Err(e)
            }
        }
    }

    /// Tells the server every [`LEASE_HEARTBEAT`] that sessions `uploads` are alive, until dropped, so
    /// the paths they lease are not taken over by another push during a long upload. A failed touch (an
    /// older server without the route, a blip) only costs the lease's protection: the push goes on.
    fn heartbeat(&self, uploads: Vec<i64>) -> AbortOnDrop<()> {
        let api = self.api.clone();
        AbortOnDrop(tokio::spawn(async move {
            let mut tick = tokio::time::interval(LEASE_HEARTBEAT);
            tick.tick().await; // the first tick is immediate: the announce just touched them
            loop {
                tick.tick().await;
                if let Err(e) = api.touch(&TouchRequest { uploads: uploads.clone() }).await {
                    tracing::debug!("touching the upload sessions: {e}");
                }
            }
        }))
    }

    /// Steps 3 and 4 of a push whose announce answered `plan`.
    async fn upload_and_complete(
        &self,
        plan: PushResponse,
        closure: &[PathInfo],
        wire: Vec<PathInfoWire>,
        root_strings: Vec<String>,
        report: &mut PushReport,
        progress: &dyn Progress,
    ) -> Result<(), ClientError> {
        let by_path: HashMap<String, &PathInfo> =
            closure.iter().map(|p| (self.store_dir.display(&p.path), p)).collect();
        let mut jobs = Vec::with_capacity(plan.missing_nars.len());
        for m in &plan.missing_nars {
            let info = by_path.get(&m.path).ok_or_else(|| ClientError::Protocol {
                what: "POST /api/v1/push".to_owned(),
                reason: format!("the server asked for {}, which is not in the closure", m.path),
            })?;
            jobs.push(((*info).clone(), m.clone()));
        }
        // Fewer NARs than jobs leaves cores idle: the NARs then share them as zstd workers.
        let zstd_workers =
            if jobs.len() < self.jobs { u32::try_from(self.jobs / jobs.len().max(1)).unwrap_or(u32::MAX) } else { 0 };
        let results: Vec<Result<Done, ClientError>> = futures::stream::iter(jobs)
            .map(|(info, m)| async move {
                // A multipart NAR is always compressed on zstd workers (at least one): their output is the
                // same whatever their number, but not the same as on this thread, and a push killed part
                // way can only be continued (its held parts reused) if the parts come out byte for byte
                // the same — as the server's own pipeline does for its big NARs.
                let workers = if m.multipart.is_some() { zstd_workers.max(1) } else { zstd_workers };
                let (up, listing, reused) = self.upload_with_retries(&info, &m, workers, progress).await?;
                progress.nar_done(&m.path, info.nar_size, up.file_size);
                Ok((up, listing, m.presigned, info.nar_size, reused))
            })
            .buffer_unordered(self.jobs)
            .collect()
            .await;
        let mut nars = Vec::with_capacity(results.len());
        let mut listing_of: HashMap<String, serde_json::Value> = HashMap::new();
        for r in results {
            let (up, listing, presigned, nar_size, reused) = r?;
            if let Some(l) = listing {
                listing_of.insert(up.nar_hash.clone(), l);
            }
            report.nars_uploaded += 1;
            report.nar_bytes += nar_size;
            report.file_bytes += up.file_size;
            report.resumed_bytes += reused;
            report.presigned_uploads += usize::from(presigned);
            nars.push(up);
        }
        // Identical contents give identical listings: every missing path gets the one of its NAR.
        let listings = plan
            .missing_paths
            .iter()
            .filter_map(|p| {
                let info = by_path.get(p)?;
                let l = listing_of.get(&info.nar_hash.to_nix_string())?;
                Some(ListingWire { path: p.clone(), listing: l.clone() })
            })
            .collect();
        for log in &plan.missing_logs {
            self.upload_log(log).await;
        }
        let done = self
            .api
            .complete(&CompleteRequest {
                uploads: plan.uploads,
                roots: root_strings,
                paths: wire,
                nars,
                listings,
                max_nar_size: self.max_nar_size,
            })
            .await?;
        report.published = done.published;
        Ok(())
    }

    async fn upload_with_retries(
        &self,
        info: &PathInfo,
        m: &MissingNar,
        zstd_workers: u32,
        progress: &dyn Progress,
    ) -> Result<Uploaded, ClientError> {
        let mut attempt = 1;
        loop {
            match self.upload_one(info, m, zstd_workers, progress).await {
                Ok(u) => return Ok(u),
                Err(e) if e.is_transient() && attempt < UPLOAD_ATTEMPTS => {
                    tracing::warn!("uploading the NAR of {} (attempt {attempt}): {e}; retrying", m.path);
                    tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Uploads the build log Nix has for `log.deriver`, if any. A log is a nicety: failures are logged,
    /// never fatal.
    async fn upload_log(&self, log: &MissingLog) {
        let Ok(drv) = self.store_dir.parse_path(&log.deriver) else { return };
        let text = match self.nix.build_log(&self.store_dir, &drv).await {
            Ok(Some(t)) => t,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!("no build log for {}: {e}", log.deriver);
                return;
            }
        };
        let what = format!("uploading the build log of {}", log.deriver);
        let url = self.api.resolve(&log.upload_url);
        let sent = self.api.authorized_for(self.api.http().put(&url), &url).body(text).send().await;
        let res = match sent {
            Ok(resp) => check_status(resp, &what).await.map(|_| ()),
            Err(e) => Err(ClientError::Transport { what, source: e.without_url() }),
        };
        if let Err(e) = res {
            tracing::warn!("{e}");
        }
    }

    /// Serialises, checks, compresses and uploads one NAR; returns what was sent, the NAR's listing and
    /// the compressed bytes reused from an interrupted push.
    async fn upload_one(
        &self,
        info: &PathInfo,
        m: &MissingNar,
        zstd_workers: u32,
        progress: &dyn Progress,
    ) -> Result<Uploaded, ClientError> {
        let what = format!("uploading the NAR of {}", m.path);
        let (tx, rx) = mpsc::channel::<Result<Bytes, StorageError>>(CHUNK_QUEUE);
        let fs_path = self.store_dir.path_of(&info.path);
        let display = m.path.clone();
        let (hash, size, key) = (info.nar_hash, info.nar_size, ObjectKey::nar(&info.nar_hash));
        let encoding = NarEncoding { zstd_level: self.zstd_level, with_listing: true };
        let producer = tokio::task::spawn_blocking(move || {
            niks3_local::nar_stream::stream_nar(&fs_path, &display, hash, size, key, tx, encoding, zstd_workers)
        });
        let counter = Arc::new(AtomicU64::new(0));
        let mut reused = 0;
        let (sent, parts) = if let Some(mp) = &m.multipart {
            let uploaded = with_ticks(self.put_parts(rx, mp, &what, &counter), &counter, info.nar_size, progress).await;
            // A part that failed stops reading the NAR, and the producer then fails too: report the part's
            // error. If the producer failed first (hash mismatch, unreadable file), its verdict is the cause.
            match uploaded {
                Ok(Some((etags, reused_bytes))) => {
                    reused = reused_bytes;
                    (join_producer(producer).await?, etags)
                }
                Ok(None) => {
                    join_producer(producer).await?;
                    return Err(ClientError::Protocol { what, reason: "the NAR stream ended early".to_owned() });
                }
                Err(e) => {
                    producer.abort();
                    return Err(e);
                }
            }
        } else if m.presigned {
            // One PUT needs the length up front: the compressed NAR (at most one part) is collected first.
            let body = collect_chunks(rx, MAX_BUFFERED_UPLOAD).await;
            let streamed = join_producer(producer).await?;
            let body = body.ok_or_else(|| ClientError::Protocol {
                what: what.clone(),
                reason: format!("the server asked for one PUT of more than {MAX_BUFFERED_UPLOAD} bytes"),
            })?;
            let len = body.len() as u64;
            // A URL bound to exactly this file (security review #19).
            let Some(route) = &m.presign_route else {
                return Err(ClientError::Protocol {
                    what: what.clone(),
                    reason: "the server gave neither a presign route nor parts for a presigned upload".to_owned(),
                });
            };
            let bound = self.api.presign(route, len, &streamed.file_hash).await?;
            let (url, headers) = (bound.upload_url, bound.headers);
            let put = put_with_retries(self.api.http().clone(), url, headers, body, what);
            with_ticks(put, &counter, info.nar_size, progress).await?;
            counter.fetch_add(len, Ordering::Relaxed);
            (streamed, Vec::new())
        } else {
            let url = self.api.resolve(&m.upload_url);
            let body = reqwest::Body::wrap_stream(ChunkStream { rx, sent: Arc::clone(&counter) });
            let req = self
                .api
                .authorized_for(self.api.http().put(&url), &url)
                .header(http::header::CONTENT_TYPE, "application/zstd");
            let resp = with_ticks(req.body(body).send(), &counter, info.nar_size, progress).await;
            // The producer's verdict first: a hash mismatch aborts the body, which is the real cause.
            let streamed = join_producer(producer).await?;
            let resp = resp.map_err(|e| ClientError::Transport { what: what.clone(), source: e.without_url() })?;
            check_status(resp, &what).await?;
            (streamed, Vec::new())
        };
        let up = UploadedNar {
            nar_hash: info.nar_hash.to_nix_string(),
            file_hash: sent.file_hash.to_nix_string(),
            file_size: sent.file_size,
            parts,
        };
        Ok((up, sent.listing, reused))
    }

    /// Cuts the compressed NAR into parts of exactly `mp.part_size` bytes (the last one shorter); for each,
    /// asks `mp.part_route` for a URL bound to its size and MD5 and `PUT`s it there, one part uploading
    /// while the next fills: at most two parts in memory. S3 checks the signed `Content-MD5`, so a part
    /// corrupted on the way is refused (`BadDigest`) and sent again. A part the bucket already holds with
    /// exactly these bytes (`mp.held_parts`: same size, ETag = MD5; the server continues an interrupted
    /// push's upload) is not sent again. Returns the parts' ETags and the bytes reused, or `None` when the
    /// producer reported an error (its verdict says why).
    async fn put_parts(
        &self,
        mut rx: mpsc::Receiver<Result<Bytes, StorageError>>,
        mp: &MultipartWire,
        what: &str,
        sent: &Arc<AtomicU64>,
    ) -> Result<Option<(Vec<String>, u64)>, ClientError> {
        let protocol = |reason: String| ClientError::Protocol { what: what.to_owned(), reason };
        if mp.part_route.is_empty() {
            return Err(protocol(
                "the server gave no route for part URLs (a niks3 server older than this client: upgrade it)".to_owned(),
            ));
        }
        let part_size = usize::try_from(mp.part_size)
            .ok()
            .filter(|&s| s > 0 && s as u64 <= MAX_BUFFERED_UPLOAD)
            .ok_or_else(|| protocol(format!("unusable part size {}", mp.part_size)))?;
        let held: HashMap<u32, &HeldPartWire> = mp.held_parts.iter().map(|h| (h.number, h)).collect();
        let mut reused = 0u64;
        let mut etags = Vec::new();
        let mut in_flight: Option<AbortOnDrop<Result<Option<String>, ClientError>>> = None;
        let mut buf = BytesMut::with_capacity(part_size);
        let mut pending = Bytes::new();
        let mut ended = false;
        while !ended {
            while buf.len() < part_size {
                if pending.is_empty() {
                    match rx.recv().await {
                        Some(Ok(chunk)) => pending = chunk,
                        Some(Err(_)) => return Ok(None),
                        None => {
                            ended = true;
                            break;
                        }
                    }
                }
                let take = (part_size - buf.len()).min(pending.len());
                buf.extend_from_slice(&pending.split_to(take));
            }
            let started = etags.len() + usize::from(in_flight.is_some());
            if buf.is_empty() && started > 0 {
                break;
            }
            let number = u32::try_from(started + 1).map_err(|_| protocol("more than 2^32 parts".to_owned()))?;
            let part = std::mem::replace(&mut buf, BytesMut::new()).freeze();
            if !ended {
                buf.reserve(part_size);
            }
            let len = part.len() as u64;
            let bytes = part.clone();
            let md5: [u8; 16] = tokio::task::spawn_blocking(move || md5::compute(&bytes).0)
                .await
                .map_err(|e| protocol(format!("hashing part {number}: {e}")))?;
            if let Some(task) = in_flight.take() {
                etags.push(
                    task.join(what).await?.ok_or_else(|| protocol("S3 answered a part without an ETag".to_owned()))?,
                );
            }
            if held.get(&number).is_some_and(|h| h.size == len && etag_is_md5(&h.etag, &md5)) {
                etags.push(format!("\"{:x}\"", md5::Digest(md5)));
                reused += len;
                sent.fetch_add(len, Ordering::Relaxed);
                continue;
            }
            let (api, route, what_n, sent) =
                (self.api.clone(), mp.part_route.clone(), format!("{what} (part {number})"), Arc::clone(sent));
            in_flight = Some(AbortOnDrop(tokio::spawn(async move {
                let bound = api.presign_part(&route, number, len, &md5).await?;
                let etag = put_with_retries(api.http().clone(), bound.upload_url, bound.headers, part, what_n).await?;
                sent.fetch_add(len, Ordering::Relaxed);
                Ok(etag)
            })));
        }
        if let Some(task) = in_flight.take() {
            etags
                .push(task.join(what).await?.ok_or_else(|| protocol("S3 answered a part without an ETag".to_owned()))?);
        }
        Ok(Some((etags, reused)))
    }
}

/// A spawned task that is cancelled when its handle is dropped (a failed upload stops its other part).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<Result<T, ClientError>> {
    async fn join(mut self, what: &str) -> Result<T, ClientError> {
        match (&mut self.0).await {
            Ok(r) => r,
            Err(e) => Err(ClientError::Protocol { what: what.to_owned(), reason: format!("upload task failed: {e}") }),
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Attempts of one presigned `PUT` (a part or a whole small NAR) before the NAR's upload fails: enough to
/// ride out a store shedding load (503 SlowDown) without re-reading and re-compressing the NAR.
const PUT_ATTEMPTS: u32 = 8;

/// S3 error codes meaning the body arrived other than it was sent: sending it again is the fix.
const CORRUPTED_IN_TRANSIT: [&str; 4] = ["BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"];

/// True for an S3 answer saying the body was corrupted on the way (400 `BadDigest` and kin).
fn corrupted_in_transit(e: &ClientError) -> bool {
    matches!(e, ClientError::Status { status: 400, message, .. }
        if CORRUPTED_IN_TRANSIT.iter().any(|code| message.contains(&format!("<Code>{code}</Code>"))))
}

/// The `Retry-After` of an answer, when it is a number of seconds (S3 stores and proxies send that form).
fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    let v = resp.headers().get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// `PUT`s `body` to a presigned URL (no token: the URL is the credential), retrying transient failures
/// (throttling, resets, a bound URL's body refused as corrupted) with jittered backoff that honours
/// `Retry-After`; returns the `ETag` S3 answered, if any.
async fn put_with_retries(
    http: reqwest::Client,
    url: String,
    headers: std::collections::BTreeMap<String, String>,
    body: Bytes,
    what: String,
) -> Result<Option<String>, ClientError> {
    let policy = niks3_storage::throttle::RetryPolicy {
        attempts: PUT_ATTEMPTS,
        base: Duration::from_millis(250),
        cap: Duration::from_secs(30),
    };
    let mut attempt = 1;
    loop {
        let mut rb = http.put(&url).header(http::header::CONTENT_LENGTH, body.len());
        // Signed headers a bound URL requires (the length is the body's own, set above).
        for (k, v) in headers.iter().filter(|(k, _)| !k.eq_ignore_ascii_case("content-length")) {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let sent = rb
            .body(body.clone())
            .timeout(PART_TIMEOUT)
            .send()
            .await
            .map_err(|e| ClientError::Transport { what: what.clone(), source: e.without_url() });
        let (result, wait) = match sent {
            Ok(resp) => {
                let wait = retry_after(&resp);
                let result = check_status(resp, &what).await.map(|resp| {
                    resp.headers().get(http::header::ETAG).and_then(|v| v.to_str().ok()).map(str::to_owned)
                });
                (result, wait)
            }
            Err(e) => (Err(e), None),
        };
        match result {
            Err(e) if (e.is_transient() || corrupted_in_transit(&e)) && attempt < PUT_ATTEMPTS => {
                tracing::warn!("{e} (attempt {attempt}); retrying");
                tokio::time::sleep(policy.delay(attempt, wait)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Collects the chunk stream into one buffer of at most `limit` bytes; `None` when the producer reported
/// an error (its verdict says why) or the stream is longer than `limit`.
async fn collect_chunks(mut rx: mpsc::Receiver<Result<Bytes, StorageError>>, limit: u64) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk.ok()?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return None;
        }
        buf.extend_from_slice(&chunk);
    }
    Some(buf.freeze())
}

async fn join_producer(
    h: tokio::task::JoinHandle<Result<niks3_local::nar_stream::NarStreamed, niks3_local::nar_stream::NarStreamError>>,
) -> Result<niks3_local::nar_stream::NarStreamed, ClientError> {
    match h.await {
        Ok(r) => Ok(r?),
        Err(e) => Err(ClientError::Task(e.to_string())),
    }
}

/// The wire form of a path's metadata.
pub fn to_wire(store_dir: &StoreDir, p: &PathInfo) -> PathInfoWire {
    PathInfoWire {
        path: store_dir.display(&p.path),
        nar_hash: p.nar_hash.to_nix_string(),
        nar_size: p.nar_size,
        references: p.references.iter().map(|r| store_dir.display(r)).collect(),
        deriver: p.deriver.as_ref().map(|d| store_dir.display(d)),
        ca: p.ca.clone(),
    }
}

/// The compressor's channel as a request body (`Sync`, as reqwest wants).
struct ChunkStream {
    rx: mpsc::Receiver<Result<Bytes, StorageError>>,
    sent: Arc<AtomicU64>,
}

impl Stream for ChunkStream {
    type Item = Result<Bytes, StorageError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(b))) = &item {
            self.sent.fetch_add(b.len() as u64, Ordering::Relaxed);
        }
        item
    }
}

/// Drives `fut` (one NAR's request) while reporting, every 200 ms, the compressed bytes sent so far as
/// progress; when it ends, tops the report up to the NAR's size, so the bar ends exactly at the total.
async fn with_ticks<F: std::future::Future>(
    fut: F,
    sent: &AtomicU64,
    nar_size: u64,
    progress: &dyn Progress,
) -> F::Output {
    let mut reported = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut fut = std::pin::pin!(fut);
    loop {
        tokio::select! {
            out = &mut fut => {
                progress.advanced(nar_size.saturating_sub(reported));
                return out;
            }
            _ = tick.tick() => {
                // compressed bytes undercount the NAR bytes; never report past the NAR's size
                let now = sent.load(Ordering::Relaxed).min(nar_size);
                if now > reported {
                    progress.advanced(now - reported);
                    reported = now;
                }
            }
        }
    }
}

/// The `niks3 drain` processor: each spool entry's outputs are pushed to the server.
impl niks3_local::drain::Process for Pusher {
    type Error = ClientError;
    async fn process(&self, works: &[niks3_local::drain::Work]) -> Result<(), Self::Error> {
        let outputs: Vec<StorePath> = works.iter().flat_map(|w| w.outputs.iter().cloned()).collect();
        let r = self.push(&outputs, false, &NoProgress).await?;
        tracing::info!(
            roots = outputs.len(),
            closure = r.closure_paths,
            published = r.published,
            bytes = r.file_bytes,
            "pushed to {}",
            self.api.base()
        );
        for work in works {
            if let Some(drv) = &work.drv
                && !work.realisations.is_empty()
            {
                self.push_realisations(drv, &work.realisations).await?;
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

impl Pusher {
    /// Pushes `realisations` (of outputs of `drv`, whose closures were pushed) and every realisation they
    /// depend on, dependencies first, after the out paths of those dependents. Without the server's
    /// database at hand every dependent is resolved from the local derivation graph and sent (the server
    /// rewrites the ones it has with the same bytes).
    async fn push_realisations(&self, drv: &StorePath, realisations: &[Realisation]) -> Result<(), ClientError> {
        let all = niks3_local::realisations::resolve(
            &self.nix,
            &self.store_dir,
            drv,
            realisations,
            &niks3_local::realisations::AssumeNothing,
        )
        .await?;
        let given: std::collections::HashSet<_> = realisations.iter().map(|r| &r.id).collect();
        let extra: Vec<StorePath> =
            all.values().filter(|r| !given.contains(&r.id)).map(|r| r.out_path.clone()).collect();
        if !extra.is_empty() {
            self.push(&extra, false, &NoProgress).await?;
        }
        let ordered = niks3_local::realisations::dependencies_first(&all);
        let mut body = Vec::with_capacity(ordered.len());
        for r in ordered {
            let json = serde_json::from_str(&r.to_json())
                .map_err(|e| ClientError::Protocol { what: "realisation JSON".to_owned(), reason: e.to_string() })?;
            body.push(json);
        }
        match self.api.publish_realisations(&RealisationsRequest { realisations: body }).await {
            Ok(resp) => {
                tracing::info!(published = resp.published, "pushed realisations to {}", self.api.base());
                Ok(())
            }
            // The cache already has a different realisation for one of these ids, and realisations are
            // never replaced: nothing a retry changes. The paths are pushed; clients that resolve
            // through the realisation get the first one (as the server's own pipeline does).
            Err(ClientError::Status { status: 422, message, .. }) => {
                tracing::warn!("{}: {message}; the cached realisation stays", self.api.base());
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use niks3_nix::hash::Sha256Hash;

    #[test]
    fn status_errors_classify_for_the_drainer() {
        let s = |status| ClientError::Status { what: String::new(), status, message: String::new() };
        assert!(!s(400).is_transient());
        assert!(s(401).is_transient());
        assert!(s(409).is_transient());
        assert!(s(503).is_transient());
        assert!(!ClientError::BadPath("x".into()).is_transient());
    }

    #[test]
    fn a_body_corrupted_in_transit_is_sent_again_other_400s_are_not() {
        let s = |status, code: &str| ClientError::Status {
            what: String::new(),
            status,
            message: format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>"),
        };
        assert!(corrupted_in_transit(&s(400, "BadDigest")));
        assert!(corrupted_in_transit(&s(400, "XAmzContentSHA256Mismatch")));
        assert!(!corrupted_in_transit(&s(400, "InvalidPart")));
        assert!(!corrupted_in_transit(&s(403, "BadDigest")));
    }

    #[test]
    fn wire_form_uses_full_paths() {
        let sd = StoreDir::default();
        let p = StorePath::from_basename("00bgd045z0d4icpbc2yyz4gx48ak44la-a").expect("valid");
        let info = PathInfo {
            path: p.clone(),
            nar_hash: Sha256Hash([1; 32]),
            nar_size: 120,
            references: vec![p],
            deriver: None,
            ca: None,
        };
        let w = to_wire(&sd, &info);
        assert_eq!(w.path, "/nix/store/00bgd045z0d4icpbc2yyz4gx48ak44la-a");
        assert_eq!(w.references, vec![w.path.clone()]);
    }
}
