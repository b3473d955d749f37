//! The upload routes of the push API, for what goes through the server rather than straight to S3:
//! - `PUT /api/v1/uploads/{id}/nar/{nix32}` (local backend): a compressed NAR is written to a staged file
//!   in `.tmp/` while a blocking thread decompresses and hashes it; only a NAR that decompresses to
//!   exactly its NarHash and announced NarSize is moved into place. So a bad upload never touches the
//!   object under its key (security review #5), and decompression stops at the announced NarSize or when
//!   the client goes away (#6: a zstd bomb costs at most NarSize bytes of work).
//! - `PUT /api/v1/uploads/{id}/log/{drv}`: a build log the session claimed. A log already in the cache is
//!   never replaced: the same bytes again are fine, other bytes are a 409 (#10).
//!
//! Both record what they stored in `objects` at once, unreferenced: if the push is never completed, GC
//! marks and deletes them after the grace period like any unreachable object (#9).

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::error::ApiError;
use super::push::{clip, nar_upload_target, planned_nar};
use super::read_body;
use crate::db::NewObject;
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use niks3_api::protocol::UploadResponse;
use niks3_local::nar_stream::max_compressed_size;
use niks3_nix::hash::Sha256Hash;
use niks3_nix::store_path::StorePath;
use niks3_storage::{ObjectKey, Storage, StorageError};
use sha2::Digest;
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use warp::reply::Response;

/// Chunks in flight between the request body, the store and the verifier (bounded memory per upload).
const UPLOAD_CHANNEL_DEPTH: usize = 16;

/// Decompressed bytes the verifier handles between two looks at the cancel flag.
const VERIFY_BUFFER: usize = 128 << 10;

/// Sets its flag when dropped while armed: the verifier thread stops when the request it serves is gone
/// (the client disconnected, so hyper dropped the handler) or has failed.
struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl CancelOnDrop {
    fn new(flag: &Arc<AtomicBool>) -> Self {
        CancelOnDrop { flag: Arc::clone(flag), armed: true }
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

/// Why a relayed NAR was refused by the verifier.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    /// Not zstd, truncated, or trailing garbage.
    #[error("the uploaded NAR is not valid zstd: {0}")]
    Zstd(std::io::Error),
    /// It decompresses to more bytes than the NarSize announced (a zstd bomb, or the wrong NAR).
    #[error("the uploaded NAR decompresses to more than the announced NarSize of {nar_size} bytes")]
    TooLarge {
        /// The NarSize announced.
        nar_size: u64,
    },
    /// It decompresses to another size than the NarSize announced.
    #[error("the uploaded NAR decompresses to {actual} bytes, not the announced NarSize of {nar_size}")]
    WrongSize {
        /// The NarSize announced.
        nar_size: u64,
        /// What it decompressed to.
        actual: u64,
    },
    /// It decompresses to another NAR.
    #[error("the uploaded NAR decompresses to {actual}, not {expected}")]
    WrongHash {
        /// The NarHash it is named after.
        expected: Sha256Hash,
        /// What it decompressed to.
        actual: Sha256Hash,
    },
    /// The upload was cancelled (client gone or upload failed) before the verifier finished.
    #[error("the upload was cancelled")]
    Cancelled,
}

/// `PUT /api/v1/uploads/{id}/nar/{nix32}`.
pub(crate) async fn upload_nar(
    state: &Arc<HttpState>,
    req: Request,
    caller: &Caller,
    id: &str,
    hash: &str,
) -> Result<Response, ApiError> {
    let (id, nar_hash, key) = nar_upload_target(id, hash).map_err(ApiError::bad)?;
    let Storage::Local(local) = &*state.store else {
        return Err(ApiError::NotFound("this server takes NARs through presigned URLs".to_owned()));
    };
    let nar_size = match planned_nar(state, caller, id, &key).await? {
        // Uploaded meanwhile by another push: the stored NAR stays, the body is not read.
        (_, Some((size, file_hash))) => {
            return Ok(response::json(StatusCode::OK, &UploadResponse { size, file_hash: file_hash.to_nix_string() }));
        }
        (n, None) => n,
    };
    // zstd never makes a NAR bigger than this, so nothing larger is worth reading.
    let limit = state.limits.max_nar_upload.min(max_compressed_size(nar_size));
    if let Some(len) = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return Err(ApiError::TooLarge(format!(
            "NAR larger than {limit} bytes (the most {nar_size} bytes compress to)"
        )));
    }
    let (staged, file_hash) = stage_verified(state, local, req, nar_hash, nar_size, limit).await?;
    let size = staged.size();
    local.promote(staged, &key).await?;
    state.db.record_nar(&key, size, Some(&file_hash), chrono::Utc::now()).await?;
    Ok(response::json(StatusCode::OK, &UploadResponse { size, file_hash: file_hash.to_nix_string() }))
}

/// Streams the body into a staged file while hashing it and, on a blocking thread, decompressing it to
/// check NarHash and NarSize. Returns the staged file and its FileHash only when the NAR checks out;
/// otherwise the staged file is removed and the error response returned.
async fn stage_verified(
    state: &HttpState,
    local: &niks3_storage::local::LocalStore,
    req: Request,
    nar_hash: Sha256Hash,
    nar_size: u64,
    limit: u64,
) -> Result<(niks3_storage::local::Staged, Sha256Hash), ApiError> {
    let cancel = Arc::new(AtomicBool::new(false));
    let _cancel_on_drop = CancelOnDrop::new(&cancel);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(UPLOAD_CHANNEL_DEPTH);
    let (vtx, vrx) = tokio::sync::mpsc::channel::<Bytes>(UPLOAD_CHANNEL_DEPTH);
    let verifier = tokio::task::spawn_blocking({
        let cancel = Arc::clone(&cancel);
        move || verify_zstd_nar(vrx, nar_hash, nar_size, &cancel)
    });
    let metrics = Arc::clone(&state.metrics);
    let mut body = req.body;
    let feeder_cancel = CancelOnDrop::new(&cancel);
    // The feeder cancels the verifier when it ends early (an error, or the task dropped).
    let feeder = tokio::spawn(async move {
        let mut cancel_guard = feeder_cancel;
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let fail = |reason: String| StorageError::Source { key: "relayed NAR".to_owned(), reason };
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let reason = format!("reading request body: {e}");
                    let _ = tx.send(Err(fail(reason.clone()))).await;
                    return Err(reason);
                }
            };
            size += chunk.len() as u64;
            metrics.api_bytes_received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if size > limit {
                let reason = format!("NAR larger than {limit} bytes (the most {nar_size} bytes compress to)");
                let _ = tx.send(Err(fail(reason.clone()))).await;
                return Err(reason);
            }
            hasher.update(&chunk);
            if vtx.send(chunk.clone()).await.is_err() {
                // The verifier refused the data: stop reading; its verdict says why.
                let _ = tx.send(Err(fail("refused by the verifier".to_owned()))).await;
                return Ok(None);
            }
            if tx.send(Ok(chunk)).await.is_err() {
                // The store gave up; its own error says why.
                return Ok(None);
            }
        }
        drop(vtx);
        // Finished normally: the verifier must see the end of the data, not a cancel.
        cancel_guard.armed = false;
        Ok(Some((Sha256Hash(hasher.finalize().into()), size)))
    });
    let staged = local.stage_stream(rx).await;
    let internal = |e: tokio::task::JoinError| ApiError::Internal(e.to_string());
    let fed = feeder.await.map_err(internal)?;
    let verdict = verifier.await.map_err(internal)?;
    // The store stopped taking the data (disk full, …): its error, not the verifier's view of a cut stream.
    // Unless the verifier refused the data itself: then the feeder stopped the store (the store's error is
    // only that abort), and the verifier's reason is the answer — which of the two the feeder noticed first
    // is a race.
    let refused = matches!(&verdict, Err(e) if !matches!(e, VerifyError::Cancelled));
    if !refused && let (Ok(None), Err(e)) = (&fed, &staged) {
        return Err(ApiError::Storage(e.to_string()));
    }
    match (fed, verdict) {
        (Err(reason), _) => Err(ApiError::bad(reason)),
        (Ok(_), Err(e)) => Err(ApiError::bad(e.to_string())),
        (Ok(None), Ok(())) => Err(ApiError::Internal("the store stopped reading the upload".to_owned())),
        (Ok(Some((file_hash, size))), Ok(())) => {
            let staged = staged?;
            if staged.size() != size {
                return Err(ApiError::Storage(format!("staged {} bytes of {size}", staged.size())));
            }
            Ok((staged, file_hash))
        }
    }
}

/// Reads chunks from `rx`, decompresses them as zstd and checks they are exactly `nar_size` bytes hashing
/// to `nar_hash`. Stops as soon as the output exceeds `nar_size` or `cancel` is set.
fn verify_zstd_nar(
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    nar_hash: Sha256Hash,
    nar_size: u64,
    cancel: &AtomicBool,
) -> Result<(), VerifyError> {
    struct ChanReader {
        rx: tokio::sync::mpsc::Receiver<Bytes>,
        cur: Bytes,
    }
    impl Read for ChanReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            while self.cur.is_empty() {
                match self.rx.blocking_recv() {
                    Some(b) => self.cur = b,
                    None => return Ok(0),
                }
            }
            let n = buf.len().min(self.cur.len());
            buf[..n].copy_from_slice(&self.cur[..n]);
            bytes::Buf::advance(&mut self.cur, n);
            Ok(n)
        }
    }
    let mut dec = zstd::stream::read::Decoder::new(ChanReader { rx, cur: Bytes::new() }).map_err(VerifyError::Zstd)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; VERIFY_BUFFER];
    let mut total = 0u64;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(VerifyError::Cancelled);
        }
        let n = dec.read(&mut buf).map_err(VerifyError::Zstd)?;
        if n == 0 {
            break;
        }
        total += n as u64;
        if total > nar_size {
            return Err(VerifyError::TooLarge { nar_size });
        }
        hasher.update(&buf[..n]);
    }
    if total != nar_size {
        return Err(VerifyError::WrongSize { nar_size, actual: total });
    }
    let actual = Sha256Hash(hasher.finalize().into());
    if actual != nar_hash {
        return Err(VerifyError::WrongHash { expected: nar_hash, actual });
    }
    Ok(())
}

/// `PUT /api/v1/uploads/{id}/log/{drv basename}`: stores a build log the session claimed.
pub async fn upload_log(
    state: &Arc<HttpState>,
    req: Request,
    caller: &Caller,
    id: &str,
    drv: &str,
) -> Result<Response, ApiError> {
    let Ok(id) = id.parse::<i64>() else { return Err(ApiError::bad(format!("invalid upload id {:?}", clip(id)))) };
    let drv = match StorePath::from_basename(drv) {
        Ok(p) if p.is_derivation() => p,
        Ok(p) => return Err(ApiError::bad(format!("{} is not a .drv", p.basename()))),
        Err(e) => return Err(ApiError::bad(e.to_string())),
    };
    let key = ObjectKey::log(&drv);
    super::push::refuse_unclaimed(state, caller, id, &key).await?;
    let limit = state.limits.max_log_upload;
    if state.db.object_exists(&key).await? {
        return same_log_or_conflict(state, req, &key, &drv, limit).await;
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(UPLOAD_CHANNEL_DEPTH);
    let key_s = key.to_string();
    let mut body = req.body;
    let feeder = tokio::spawn(async move {
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let item = match chunk {
                Ok(c) => {
                    size += c.len() as u64;
                    if size > limit { Err(format!("build log larger than {limit} bytes")) } else { Ok(c) }
                }
                Err(e) => Err(format!("reading request body: {e}")),
            };
            match item {
                Ok(c) => {
                    if tx.send(Ok(c)).await.is_err() {
                        // The store gave up; its own error (below) says why.
                        return Ok(size);
                    }
                }
                Err(reason) => {
                    let _ = tx.send(Err(StorageError::Source { key: key_s.clone(), reason: reason.clone() })).await;
                    return Err(reason);
                }
            }
        }
        Ok(size)
    });
    let stored = state.store.put_stream(&key, rx, "text/plain; charset=utf-8", Some(state.limits.max_log_upload)).await;
    match feeder.await {
        Ok(Ok(_)) => {}
        Ok(Err(reason)) => return Err(ApiError::bad(reason)),
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    }
    let size = stored?;
    // Recorded now, unreferenced: the narinfo that keeps it alive comes with `complete`; if that never
    // comes, GC collects it.
    let obj = NewObject { key, size, refs: Vec::new() };
    state.db.record_object(&obj, chrono::Utc::now()).await?;
    Ok(response::json(StatusCode::OK, &serde_json::json!({ "size": size })))
}

/// A log for `drv` is in the cache already: the same bytes again are an idempotent success, other bytes
/// a 409 (the first log stays).
async fn same_log_or_conflict(
    state: &HttpState,
    req: Request,
    key: &ObjectKey,
    drv: &StorePath,
    limit: u64,
) -> Result<Response, ApiError> {
    let sent = read_body(req, limit, "build log").await?;
    match state.store.get(key).await? {
        Some(existing) if existing == sent => {
            Ok(response::json(StatusCode::OK, &serde_json::json!({ "size": existing.len() })))
        }
        _ => {
            tracing::warn!(log = %drv.basename(), "refused to replace a build log with different content");
            Err(ApiError::conflict(format!(
                "the build log of {} is already in the cache with other content; logs are never replaced",
                drv.basename()
            )))
        }
    }
}
