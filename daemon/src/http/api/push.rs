//! The push routes (docs/api.md):
//! - `POST /api/v1/push` validates a closure, claims its keys (one upload session per root) and answers
//!   which paths are missing and where to put each missing NAR (a presigned S3 URL, or the relay route);
//! - `PUT /api/v1/uploads/{id}/nar/{nix32}` streams a compressed NAR into the store for backends without
//!   presigned URLs, checking on the way that it decompresses to the NAR it is named after;
//! - `POST /api/v1/complete` checks every missing NAR is in the store with the announced size, then
//!   publishes the narinfos dependencies first (through [`crate::upload::publish::Publisher`], the same
//!   step the local pipeline uses) and ends the upload sessions.
//!
//! The server trusts nothing it is sent: every path, hash and reference is parsed and checked, keys are
//! only ever built from validated parts, and a NAR can only be written under a key its session claimed.

use super::super::{HttpState, Request, response};
use super::protocol::{
    CompleteRequest, CompleteResponse, MissingLog, MissingNar, PathInfoWire, PushRequest, PushResponse, UploadResponse,
};
use super::read_json;
use crate::db::{NewObject, UploadId};
use crate::nix::hash::Sha256Hash;
use crate::nix::pathinfo::PathInfo;
use crate::nix::store_path::{StoreDir, StorePath};
use crate::store::{ObjectKey, StoreError};
use crate::upload::publish::{PublishInput, Publisher, StoredNar};
use bytes::Bytes;
use futures::StreamExt;
use http::StatusCode;
use sha2::Digest;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use warp::reply::Response;

/// Longest `ca` value accepted (real ones are < 100 characters).
const MAX_CA_LEN: usize = 1024;
/// Chunks in flight between the request body and the store (bounded memory per upload).
const UPLOAD_CHANNEL_DEPTH: usize = 16;

fn bad(msg: impl Into<String>) -> Response {
    response::json_error(StatusCode::BAD_REQUEST, msg)
}

fn db_failed(err: &dyn std::fmt::Display) -> Response {
    tracing::warn!("database error in push API: {err}");
    response::json_error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
}

fn store_failed(err: &dyn std::fmt::Display) -> Response {
    tracing::warn!("store error in push API: {err}");
    response::json_error(StatusCode::BAD_GATEWAY, "object store error")
}

/// Shortens attacker-controlled text before it goes into an error message.
fn clip(s: &str) -> String {
    if s.len() <= 200 {
        return s.to_owned();
    }
    let mut end = 200;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A validated closure: its roots and its paths, dependencies before dependents.
#[derive(Debug)]
pub struct ValidClosure {
    /// The roots, in request order.
    pub roots: Vec<StorePath>,
    /// Every path, each after all of its references.
    pub paths: Vec<PathInfo>,
}

/// Validates a closure sent by a client: paths in `store_dir`, hashes well-formed, no duplicates, every
/// reference inside the request, no cycles, at most `max_paths` paths, roots among the paths. The error
/// message names the offending input.
pub fn validate_closure(
    store_dir: &StoreDir,
    roots: &[String],
    paths: &[PathInfoWire],
    max_paths: usize,
) -> Result<ValidClosure, String> {
    if paths.is_empty() || roots.is_empty() {
        return Err("a push needs at least one root and one path".to_owned());
    }
    if paths.len() > max_paths || roots.len() > max_paths {
        return Err(format!("too many paths: {} (at most {max_paths} per request)", paths.len()));
    }
    let parse = |p: &str, what: &str| store_dir.parse_path(p).map_err(|e| format!("{what} {:?}: {e}", clip(p)));
    let mut infos: Vec<PathInfo> = Vec::with_capacity(paths.len());
    let mut index: HashMap<StorePath, usize> = HashMap::with_capacity(paths.len());
    for w in paths {
        let path = parse(&w.path, "path")?;
        let nar_hash = Sha256Hash::parse(&w.nar_hash).map_err(|e| format!("NarHash of {}: {e}", clip(&w.path)))?;
        if w.nar_size == 0 {
            return Err(format!("NarSize of {} is 0", clip(&w.path)));
        }
        let mut references = Vec::with_capacity(w.references.len());
        for r in &w.references {
            references.push(parse(r, "reference")?);
        }
        references.sort();
        references.dedup();
        let deriver = match &w.deriver {
            Some(d) if !d.is_empty() => {
                let d = parse(d, "deriver")?;
                if !d.is_derivation() {
                    return Err(format!("deriver {} is not a .drv", d.basename()));
                }
                Some(d)
            }
            _ => None,
        };
        let ca = match &w.ca {
            Some(ca) if !ca.is_empty() => {
                if ca.len() > MAX_CA_LEN || ca.chars().any(char::is_control) {
                    return Err(format!("CA of {} is malformed", clip(&w.path)));
                }
                Some(ca.clone())
            }
            _ => None,
        };
        if index.insert(path.clone(), infos.len()).is_some() {
            return Err(format!("path {} appears twice", path.basename()));
        }
        infos.push(PathInfo { path, nar_hash, nar_size: w.nar_size, references, deriver, ca });
    }
    for info in &infos {
        for r in &info.references {
            if !index.contains_key(r) {
                return Err(format!(
                    "{} references {}, which is not in the request (send the whole closure)",
                    info.path.basename(),
                    r.basename()
                ));
            }
        }
    }
    let mut root_paths = Vec::with_capacity(roots.len());
    for r in roots {
        let p = parse(r, "root")?;
        if !index.contains_key(&p) {
            return Err(format!("root {} is not among the paths", p.basename()));
        }
        if !root_paths.contains(&p) {
            root_paths.push(p);
        }
    }
    // Kahn's algorithm: a path comes after all of its references (self-references ignored).
    let n = infos.len();
    let mut pending: Vec<usize> = vec![0; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, info) in infos.iter().enumerate() {
        for r in &info.references {
            let j = index[r];
            if j != i {
                pending[i] += 1;
                dependents[j].push(i);
            }
        }
    }
    let mut ready: Vec<usize> = (0..n).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(n);
    while let Some(i) = ready.pop() {
        order.push(i);
        for &d in &dependents[i] {
            pending[d] -= 1;
            if pending[d] == 0 {
                ready.push(d);
            }
        }
    }
    if order.len() != n {
        return Err("the references form a cycle".to_owned());
    }
    let mut slots: Vec<Option<PathInfo>> = infos.into_iter().map(Some).collect();
    let paths = order.into_iter().filter_map(|i| slots[i].take()).collect();
    Ok(ValidClosure { roots: root_paths, paths })
}

/// `POST /api/v1/push`.
pub async fn announce(state: &Arc<HttpState>, req: Request) -> Response {
    let body: PushRequest = match read_json(req, state.limits.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let closure = match validate_closure(&state.store_dir, &body.roots, &body.paths, state.limits.max_paths) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    let narinfo_keys: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let missing: HashSet<ObjectKey> = match state.db.missing(&narinfo_keys).await {
        Ok(m) => m.into_iter().collect(),
        Err(e) => return db_failed(&e),
    };
    let missing_paths: Vec<&PathInfo> =
        closure.paths.iter().filter(|p| missing.contains(&ObjectKey::narinfo(&p.path))).collect();
    // One NAR per distinct NarHash, in dependency order.
    let mut nars: Vec<(ObjectKey, &PathInfo)> = Vec::new();
    let mut seen = HashSet::new();
    for p in &missing_paths {
        let key = ObjectKey::nar(&p.nar_hash);
        if seen.insert(key.clone()) {
            nars.push((key, p));
        }
    }
    if body.dry_run {
        let missing_nars = nars
            .iter()
            .map(|(_, p)| MissingNar {
                path: state.store_dir.display(&p.path),
                nar_hash: p.nar_hash.to_nix_string(),
                upload_url: String::new(),
                presigned: false,
            })
            .collect();
        return response::json(
            StatusCode::OK,
            &PushResponse {
                uploads: Vec::new(),
                missing_paths: missing_paths.iter().map(|p| state.store_dir.display(&p.path)).collect(),
                missing_nars,
                compression: "zstd".to_owned(),
                missing_logs: Vec::new(),
            },
        );
    }
    // Build logs of the missing paths that the cache lacks (one query).
    let mut log_keys: Vec<(ObjectKey, &StorePath)> = Vec::new();
    for p in &missing_paths {
        if let Some(drv) = &p.deriver {
            let k = ObjectKey::log(drv);
            if !log_keys.iter().any(|(x, _)| *x == k) {
                log_keys.push((k, drv));
            }
        }
    }
    let absent_logs: HashSet<ObjectKey> = if log_keys.is_empty() {
        HashSet::new()
    } else {
        let keys: Vec<ObjectKey> = log_keys.iter().map(|(k, _)| k.clone()).collect();
        match state.db.missing(&keys).await {
            Ok(m) => m.into_iter().collect(),
            Err(e) => return db_failed(&e),
        }
    };
    let mut claimed = narinfo_keys.clone();
    claimed.extend(nars.iter().map(|(k, _)| k.clone()));
    claimed.extend(missing_paths.iter().map(|p| ObjectKey::listing(&p.path)));
    claimed.extend(log_keys.iter().map(|(k, _)| k.clone()));
    let now = chrono::Utc::now();
    let mut uploads = Vec::with_capacity(closure.roots.len());
    for root in &closure.roots {
        match state.db.begin_upload(&ObjectKey::narinfo(root), &claimed, now).await {
            Ok(id) => uploads.push(id.0),
            Err(e) => {
                for id in &uploads {
                    let _ = state.db.abort_upload(UploadId(*id)).await;
                }
                return db_failed(&e);
            }
        }
    }
    let Some(&session) = uploads.first() else { return bad("no roots") };
    let mut missing_nars = Vec::with_capacity(nars.len());
    for (key, p) in &nars {
        let (upload_url, presigned) = match state.store.presign_put(key, state.limits.presign_expiry).await {
            Ok(Some(url)) => (url, true),
            Ok(None) => (format!("/api/v1/uploads/{session}/nar/{}", p.nar_hash.to_nix32()), false),
            Err(e) => {
                for id in &uploads {
                    let _ = state.db.abort_upload(UploadId(*id)).await;
                }
                return store_failed(&e);
            }
        };
        missing_nars.push(MissingNar {
            path: state.store_dir.display(&p.path),
            nar_hash: p.nar_hash.to_nix_string(),
            upload_url,
            presigned,
        });
    }
    let missing_logs = log_keys
        .iter()
        .filter(|(k, _)| absent_logs.contains(k))
        .map(|(_, drv)| MissingLog {
            deriver: state.store_dir.display(drv),
            upload_url: format!("/api/v1/uploads/{session}/log/{}", drv.basename()),
        })
        .collect();
    tracing::info!(
        paths = closure.paths.len(),
        missing = missing_paths.len(),
        nars = missing_nars.len(),
        "push announced"
    );
    response::json(
        StatusCode::OK,
        &PushResponse {
            uploads,
            missing_paths: missing_paths.iter().map(|p| state.store_dir.display(&p.path)).collect(),
            missing_nars,
            compression: "zstd".to_owned(),
            missing_logs,
        },
    )
}

/// True when upload session `id` exists and claimed `key`.
async fn session_claims(state: &HttpState, id: i64, key: &ObjectKey) -> Result<bool, String> {
    let client = state.db.pool().get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt("SELECT 1 FROM uploads WHERE id = $1 AND $2 = ANY(claimed)", &[&id, &key.as_str()])
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.is_some())
}

/// `None` when upload session `id` claimed `key`; otherwise the response to send (404, or 503 when the
/// database cannot say). Every upload route checks this before accepting a byte.
async fn refuse_unclaimed(state: &HttpState, id: i64, key: &ObjectKey) -> Option<Response> {
    match session_claims(state, id, key).await {
        Ok(true) => None,
        Ok(false) => Some(response::json_error(
            StatusCode::NOT_FOUND,
            format!("upload {id} does not exist or did not claim {key}"),
        )),
        Err(e) => Some(db_failed(&e)),
    }
}

/// `PUT /api/v1/uploads/{id}/nar/{nix32}`.
pub async fn upload_nar(state: &Arc<HttpState>, req: Request, id: &str, hash: &str) -> Response {
    let Ok(id) = id.parse::<i64>() else { return bad(format!("invalid upload id {:?}", clip(id))) };
    let nar_hash = match Sha256Hash::parse(&format!("sha256:{hash}")) {
        Ok(h) if h.to_nix32() == hash => h,
        _ => return bad(format!("invalid NAR hash {:?} (expected 52 nix32 characters)", clip(hash))),
    };
    let key = ObjectKey::nar(&nar_hash);
    if let Some(refusal) = refuse_unclaimed(state, id, &key).await {
        return refusal;
    }
    let limit = state.limits.max_nar_upload;
    if let Some(len) = req.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit
    {
        return response::json_error(StatusCode::PAYLOAD_TOO_LARGE, format!("NAR larger than {limit} bytes"));
    }
    match relay_nar(state, req, &key, nar_hash, limit).await {
        Ok(resp) => response::json(StatusCode::OK, &resp),
        Err(r) => r,
    }
}

/// Streams the body into the store while hashing it and, on a blocking thread, decompressing it to check
/// the NarHash. On a mismatch the object is deleted again (no narinfo can point at it yet).
async fn relay_nar(
    state: &HttpState,
    req: Request,
    key: &ObjectKey,
    nar_hash: Sha256Hash,
    limit: u64,
) -> Result<UploadResponse, Response> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(UPLOAD_CHANNEL_DEPTH);
    let (vtx, vrx) = tokio::sync::mpsc::channel::<Bytes>(UPLOAD_CHANNEL_DEPTH);
    let verifier = tokio::task::spawn_blocking(move || verify_zstd_nar(vrx));
    let metrics = Arc::clone(&state.metrics);
    let key_s = key.to_string();
    let mut body = req.body;
    let feeder = tokio::spawn(async move {
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let reason = format!("reading request body: {e}");
                    let _ = tx.send(Err(StoreError::Source { key: key_s.clone(), reason: reason.clone() })).await;
                    return Err(reason);
                }
            };
            size += chunk.len() as u64;
            metrics.api_bytes_received.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            if size > limit {
                let reason = format!("NAR larger than {limit} bytes");
                let _ = tx.send(Err(StoreError::Source { key: key_s.clone(), reason: reason.clone() })).await;
                return Err(reason);
            }
            hasher.update(&chunk);
            // The verifier may have stopped (bad data); its verdict is collected below.
            let _ = vtx.send(chunk.clone()).await;
            if tx.send(Ok(chunk)).await.is_err() {
                // The store gave up; its own error says why.
                return Ok(None);
            }
        }
        drop(vtx);
        Ok(Some((Sha256Hash(hasher.finalize().into()), size)))
    });
    let stored = state.store.put_stream(key, rx, "application/zstd").await;
    let fed = feeder.await.map_err(|e| response::json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let verdict = verifier.await.map_err(|e| response::json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (file_hash, size) = match (fed, stored) {
        (Err(reason), _) => return Err(bad(reason)),
        (Ok(_), Err(e)) => return Err(store_failed(&e)),
        (Ok(Some(v)), Ok(_)) => v,
        (Ok(None), Ok(_)) => {
            return Err(response::json_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the store stopped reading the upload",
            ));
        }
    };
    match verdict {
        Ok(h) if h == nar_hash => {}
        Ok(h) => {
            let _ = state.store.delete_many(std::slice::from_ref(key)).await;
            return Err(bad(format!("the uploaded NAR decompresses to {h}, not {nar_hash}")));
        }
        Err(e) => {
            let _ = state.store.delete_many(std::slice::from_ref(key)).await;
            return Err(bad(format!("the uploaded NAR is not valid zstd: {e}")));
        }
    }
    Ok(UploadResponse { size, file_hash: file_hash.to_nix_string() })
}

/// `PUT /api/v1/uploads/{id}/log/{drv basename}`: stores a build log the session claimed.
pub async fn upload_log(state: &Arc<HttpState>, req: Request, id: &str, drv: &str) -> Response {
    let Ok(id) = id.parse::<i64>() else { return bad(format!("invalid upload id {:?}", clip(id))) };
    let drv = match StorePath::from_basename(drv) {
        Ok(p) if p.is_derivation() => p,
        Ok(p) => return bad(format!("{} is not a .drv", p.basename())),
        Err(e) => return bad(e.to_string()),
    };
    let key = ObjectKey::log(&drv);
    if let Some(refusal) = refuse_unclaimed(state, id, &key).await {
        return refusal;
    }
    let limit = state.limits.max_log_upload;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, StoreError>>(UPLOAD_CHANNEL_DEPTH);
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
                    let _ = tx.send(Err(StoreError::Source { key: key_s.clone(), reason: reason.clone() })).await;
                    return Err(reason);
                }
            }
        }
        Ok(size)
    });
    let stored = state.store.put_stream(&key, rx, "text/plain; charset=utf-8").await;
    match feeder.await {
        Ok(Ok(_)) => {}
        Ok(Err(reason)) => return bad(reason),
        Err(e) => return response::json_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    match stored {
        Ok(size) => response::json(StatusCode::OK, &serde_json::json!({ "size": size })),
        Err(e) => store_failed(&e),
    }
}

/// Reads chunks from `rx`, decompresses them as zstd and returns the SHA-256 of the decompressed bytes.
fn verify_zstd_nar(rx: tokio::sync::mpsc::Receiver<Bytes>) -> Result<Sha256Hash, std::io::Error> {
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
    let mut dec = zstd::stream::read::Decoder::new(ChanReader { rx, cur: Bytes::new() })?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 128 << 10];
    loop {
        let n = dec.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Sha256Hash(hasher.finalize().into()))
}

/// Writes and records the `.ls` listing of `path`.
async fn put_listing(
    state: &HttpState,
    path: &StorePath,
    json: &serde_json::Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ObjectKey, Response> {
    let text = json.to_string();
    if text.len() > state.limits.max_listing {
        return Err(bad(format!("listing for {} is larger than {} bytes", path.basename(), state.limits.max_listing)));
    }
    let key = ObjectKey::listing(path);
    let size = text.len() as u64;
    state.store.put(&key, Bytes::from(text), "application/json").await.map_err(|e| store_failed(&e))?;
    state
        .db
        .record_object(&NewObject { key: key.clone(), size, refs: Vec::new() }, now)
        .await
        .map_err(|e| db_failed(&e))?;
    Ok(key)
}

/// The log key of `drv` when the log is in the store (recording it if the database did not know it yet).
async fn record_log_if_stored(
    state: &HttpState,
    drv: &StorePath,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Option<ObjectKey>, Response> {
    let key = ObjectKey::log(drv);
    let known = state.db.missing(std::slice::from_ref(&key)).await.map_err(|e| db_failed(&e))?.is_empty();
    if known {
        return Ok(Some(key));
    }
    match state.store.head(&key).await {
        Ok(Some(meta)) => {
            let obj = NewObject { key: key.clone(), size: meta.size, refs: Vec::new() };
            state.db.record_object(&obj, now).await.map_err(|e| db_failed(&e))?;
            Ok(Some(key))
        }
        Ok(None) => Ok(None),
        Err(e) => Err(store_failed(&e)),
    }
}

/// `POST /api/v1/complete`.
pub async fn complete(state: &Arc<HttpState>, req: Request) -> Response {
    let body: CompleteRequest = match read_json(req, state.limits.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let closure = match validate_closure(&state.store_dir, &body.roots, &body.paths, state.limits.max_paths) {
        Ok(c) => c,
        Err(e) => return bad(e),
    };
    if body.uploads.len() != closure.roots.len() {
        return bad(format!("{} upload ids for {} roots", body.uploads.len(), closure.roots.len()));
    }
    // Each session must still exist (GC aborts stale ones) and belong to its root.
    let sessions: BTreeMap<i64, String> = {
        let client = match state.db.pool().get().await {
            Ok(c) => c,
            Err(e) => return db_failed(&e),
        };
        match client.query("SELECT id, root FROM uploads WHERE id = ANY($1)", &[&body.uploads]).await {
            Ok(rows) => rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect(),
            Err(e) => return db_failed(&e),
        }
    };
    for (id, root) in body.uploads.iter().zip(&closure.roots) {
        if sessions.get(id).map(String::as_str) != Some(ObjectKey::narinfo(root).as_str()) {
            return response::json_error(
                StatusCode::CONFLICT,
                format!("upload {id} for {} does not exist (expired?); push again", root.basename()),
            );
        }
    }
    let mut files: HashMap<Sha256Hash, (Sha256Hash, u64)> = HashMap::new();
    for n in &body.nars {
        let nh = match Sha256Hash::parse(&n.nar_hash) {
            Ok(h) => h,
            Err(e) => return bad(format!("nars: {e}")),
        };
        let fh = match Sha256Hash::parse(&n.file_hash) {
            Ok(h) => h,
            Err(e) => return bad(format!("nars: {e}")),
        };
        files.insert(nh, (fh, n.file_size));
    }
    let narinfo_keys: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let missing: HashSet<ObjectKey> = match state.db.missing(&narinfo_keys).await {
        Ok(m) => m.into_iter().collect(),
        Err(e) => return db_failed(&e),
    };
    let todo: Vec<&PathInfo> =
        closure.paths.iter().filter(|p| missing.contains(&ObjectKey::narinfo(&p.path))).collect();
    // Check every NAR first, so that a missing one publishes nothing.
    let mut stored: HashMap<Sha256Hash, StoredNar> = HashMap::new();
    for p in &todo {
        if stored.contains_key(&p.nar_hash) {
            continue;
        }
        let Some(&(file_hash, file_size)) = files.get(&p.nar_hash) else {
            return bad(format!("no FileHash/FileSize sent for the NAR of {}", p.path.basename()));
        };
        let key = ObjectKey::nar(&p.nar_hash);
        match state.store.head(&key).await {
            Ok(Some(meta)) if meta.size == file_size => {}
            Ok(Some(meta)) => {
                return response::json_error(
                    StatusCode::CONFLICT,
                    format!("the NAR of {} has {} bytes in the store, not {file_size}", p.path.basename(), meta.size),
                );
            }
            Ok(None) => {
                return response::json_error(
                    StatusCode::CONFLICT,
                    format!("the NAR of {} was not uploaded ({key})", p.path.basename()),
                );
            }
            Err(e) => return store_failed(&e),
        }
        stored.insert(p.nar_hash, StoredNar { file_hash, file_size });
    }
    let mut listings: HashMap<StorePath, &serde_json::Value> = HashMap::new();
    for l in &body.listings {
        let Ok(p) = state.store_dir.parse_path(&l.path) else {
            return bad(format!("listing for {:?}: not a store path", clip(&l.path)));
        };
        if l.listing.get("version").and_then(serde_json::Value::as_u64) != Some(1) || l.listing.get("root").is_none() {
            return bad(format!("listing for {}: not a version 1 listing", p.basename()));
        }
        listings.insert(p, &l.listing);
    }
    let publisher = Publisher::new(
        Arc::clone(&state.store),
        state.db.clone(),
        state.store_dir.clone(),
        Arc::clone(&state.sign_keys),
    );
    let now = chrono::Utc::now();
    for p in &todo {
        let nar = stored[&p.nar_hash];
        let listing = match listings.get(&p.path) {
            Some(json) => match put_listing(state, &p.path, json, now).await {
                Ok(k) => Some(k),
                Err(r) => return r,
            },
            None => None,
        };
        let log = match &p.deriver {
            Some(drv) => match record_log_if_stored(state, drv, now).await {
                Ok(k) => k,
                Err(r) => return r,
            },
            None => None,
        };
        if let Err(e) = publisher.publish(&PublishInput { info: p, nar, listing, log }, now).await {
            tracing::warn!("publishing {}: {e}", p.path.basename());
            state.metrics.uploads_failed.fetch_add(1, Ordering::Relaxed);
            let status = if e.is_transient() { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::CONFLICT };
            return response::json_error(status, format!("publishing {}: {e}", p.path.basename()));
        }
        state.metrics.uploads_ok.fetch_add(1, Ordering::Relaxed);
        state.metrics.nar_bytes.fetch_add(p.nar_size, Ordering::Relaxed);
        state.metrics.bytes_uploaded.fetch_add(nar.file_size, Ordering::Relaxed);
    }
    for (id, root) in body.uploads.iter().zip(&closure.roots) {
        if let Err(e) = state.db.finish_upload(UploadId(*id), &ObjectKey::narinfo(root), now).await {
            return db_failed(&e);
        }
    }
    tracing::info!(published = todo.len(), paths = closure.paths.len(), "push completed");
    response::json(
        StatusCode::OK,
        &CompleteResponse { published: todo.len(), already_present: closure.paths.len() - todo.len() },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(hash: &str, refs: &[&str]) -> PathInfoWire {
        PathInfoWire {
            path: format!("/nix/store/{hash}-p"),
            nar_hash: "sha256:1b1hhr3qpa5qdjwkp3ahfq1xnlmk8b0i36nyr2ljvxhyhdqycdj9".to_owned(),
            nar_size: 120,
            references: refs.iter().map(|r| format!("/nix/store/{r}-p")).collect(),
            deriver: None,
            ca: None,
        }
    }

    const A: &str = "0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const B: &str = "1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const C: &str = "2c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";

    #[test]
    fn closure_is_ordered_dependencies_first() {
        let sd = StoreDir::default();
        let paths = [w(A, &[A, B, C]), w(B, &[C]), w(C, &[])];
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &paths, 10).expect("valid");
        let order: Vec<&str> = c.paths.iter().map(|p| p.path.hash_part()).collect();
        assert_eq!(order, [C, B, A]);
    }

    #[test]
    fn cycles_missing_references_and_too_many_paths_are_refused() {
        let sd = StoreDir::default();
        let root = [format!("/nix/store/{A}-p")];
        let e = validate_closure(&sd, &root, &[w(A, &[B]), w(B, &[A])], 10).expect_err("cycle");
        assert!(e.contains("cycle"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[C])], 10).expect_err("missing");
        assert!(e.contains("not in the request"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[]), w(B, &[])], 1).expect_err("too many");
        assert!(e.contains("too many"), "{e}");
        let e = validate_closure(&sd, &[format!("/nix/store/{B}-p")], &[w(A, &[])], 10).expect_err("root");
        assert!(e.contains("not among the paths"), "{e}");
    }
}
