//! The push routes (docs/api.md):
//! - `POST /api/v1/push` validates a closure, claims its keys (one upload session per root) and answers
//!   which paths are missing and where to put each missing NAR: one presigned S3 `PUT` when it fits in
//!   one part, a presigned multipart upload (initiated here and recorded with the session) when it may
//!   not, or the relay route;
//! - `PUT /api/v1/uploads/{id}/nar/{nix32}` streams a compressed NAR into the store for backends without
//!   presigned URLs, checking on the way that it decompresses to the NAR it is named after;
//! - `POST /api/v1/complete` completes the multipart uploads from the parts' ETags, checks every missing
//!   NAR is in the store with the announced size, then publishes the narinfos dependencies first (through
//!   [`crate::upload::publish::Publisher`], the same step the local pipeline uses) and ends the sessions;
//! - `POST /api/v1/abort` ends sessions a client gave up on, aborting their multipart uploads.
//!
//! The server trusts nothing it is sent: every path, hash and reference is parsed and checked, keys are
//! only ever built from validated parts, and a NAR can only be written under a key its session claimed.

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::protocol::{
    AbortRequest, AbortResponse, CompleteRequest, CompleteResponse, MissingLog, MissingNar, MultipartWire,
    PathInfoWire, PushRequest, PushResponse, UploadResponse,
};
use super::read_json;
use crate::db::{NewObject, UploadId};
use crate::nix::hash::Sha256Hash;
use crate::nix::pathinfo::PathInfo;
use crate::nix::store_path::{StoreDir, StorePath};
use crate::store::{ObjectKey, Store, StoreError};
use crate::upload::pipeline::NAR_CONTENT_TYPE;
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
/// Multipart uploads initiated at once while answering a push (each is one S3 round trip).
const MULTIPART_INITIATE_CONCURRENCY: usize = 8;
/// Most presigned part URLs one push answer carries (a bound on the answer's size and the presigning work).
const MAX_PART_URLS: usize = 100_000;

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
pub async fn announce(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Response {
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
                multipart: None,
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
        match state.db.begin_upload_for(caller.token, &ObjectKey::narinfo(root), &claimed, now).await {
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
    let missing_nars = match plan_nar_uploads(state, session, &nars).await {
        Ok(m) => m,
        Err(r) => {
            abort_sessions(state, caller, &uploads).await;
            return r;
        }
    };
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

/// The largest a zstd-compressed NAR of `nar_size` bytes can be: zstd's `ZSTD_compressBound` (incompressible
/// data is stored in raw blocks, 3 header bytes per 128 KiB) plus room for frame headers and checksum.
pub fn max_compressed_size(nar_size: u64) -> u64 {
    const BLOCK: u64 = 128 << 10;
    let small_input_margin = if nar_size < BLOCK { (BLOCK - nar_size) >> 11 } else { 0 };
    nar_size.saturating_add(nar_size >> 8).saturating_add(small_input_margin).saturating_add(64 << 10)
}

/// Where each missing NAR goes: the relay route (local store), one presigned PUT (S3, when the NAR fits in
/// one part even incompressible), or a presigned multipart upload (S3, larger). Multipart uploads are
/// initiated here, a few at once, and recorded under `session` so that `complete` can finish them and GC
/// abort them. On any failure, whatever was initiated is aborted again and the error response returned.
async fn plan_nar_uploads(
    state: &HttpState,
    session: i64,
    nars: &[(ObjectKey, &PathInfo)],
) -> Result<Vec<MissingNar>, Response> {
    let mut plans: Vec<Result<(MissingNar, Option<String>), Response>> = Vec::with_capacity(nars.len());
    for chunk in nars.chunks(MULTIPART_INITIATE_CONCURRENCY) {
        let mut futs = Vec::with_capacity(chunk.len());
        for (key, p) in chunk {
            futs.push(plan_nar_upload(state, session, key, p));
        }
        plans.extend(futures::future::join_all(futs).await);
    }
    let mut missing = Vec::with_capacity(plans.len());
    let mut started: Vec<(ObjectKey, String)> = Vec::new();
    let mut failure = None;
    let mut part_urls = 0usize;
    for (plan, (key, _)) in plans.into_iter().zip(nars) {
        match plan {
            Ok((m, upload_id)) => {
                part_urls += m.multipart.as_ref().map_or(0, |mp| mp.part_urls.len());
                if let Some(id) = upload_id {
                    started.push((key.clone(), id));
                }
                missing.push(m);
            }
            Err(r) => {
                failure.get_or_insert(r);
            }
        }
    }
    if failure.is_none() && part_urls > MAX_PART_URLS {
        failure = Some(response::json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the missing NARs need {part_urls} part uploads (at most {MAX_PART_URLS}); push fewer paths at once"
            ),
        ));
    }
    if failure.is_none() && !started.is_empty() {
        let keys: Vec<&str> = started.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<&str> = started.iter().map(|(_, id)| id.as_str()).collect();
        let recorded = match state.db.pool().get().await {
            Ok(c) => c
                .execute(
                    "INSERT INTO upload_multiparts (upload_id, key, multipart_id) \
                     SELECT $1, k, m FROM unnest($2::text[], $3::text[]) AS t(k, m)",
                    &[&session, &keys, &ids],
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = recorded {
            failure = Some(db_failed(&e));
        }
    }
    match failure {
        None => Ok(missing),
        Some(r) => {
            for (key, id) in &started {
                abort_multipart(state, key, id).await;
            }
            Err(r)
        }
    }
}

/// Plans the upload of one NAR (see [`plan_nar_uploads`]); the multipart upload id when one was started.
async fn plan_nar_upload(
    state: &HttpState,
    session: i64,
    key: &ObjectKey,
    p: &PathInfo,
) -> Result<(MissingNar, Option<String>), Response> {
    let mut m = MissingNar {
        path: state.store_dir.display(&p.path),
        nar_hash: p.nar_hash.to_nix_string(),
        upload_url: String::new(),
        presigned: false,
        multipart: None,
    };
    let expiry = state.limits.presign_expiry;
    let s3 = match &*state.store {
        Store::S3(s3) => s3,
        Store::Local(_) => {
            m.upload_url = format!("/api/v1/uploads/{session}/nar/{}", p.nar_hash.to_nix32());
            return Ok((m, None));
        }
    };
    m.presigned = true;
    let max_size = max_compressed_size(p.nar_size);
    if max_size <= s3.part_size() {
        m.upload_url = state.store.presign_put(key, expiry).await.map_err(|e| store_failed(&e))?.unwrap_or_default();
        return Ok((m, None));
    }
    if max_size > state.limits.max_nar_upload {
        return Err(response::json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the NAR of {} ({} bytes) may exceed the largest upload accepted ({} bytes)",
                p.path.basename(),
                p.nar_size,
                state.limits.max_nar_upload
            ),
        ));
    }
    let mp = s3.presign_multipart(key, NAR_CONTENT_TYPE, max_size, expiry).await.map_err(|e| store_failed(&e))?;
    m.multipart = Some(MultipartWire { part_size: mp.part_size, part_urls: mp.part_urls });
    Ok((m, Some(mp.upload_id)))
}

/// Best effort: aborts multipart upload `upload_id` of `key` (what fails here, GC retries).
async fn abort_multipart(state: &HttpState, key: &ObjectKey, upload_id: &str) {
    if let Store::S3(s3) = &*state.store
        && let Err(e) = s3.abort_multipart(key, upload_id).await
    {
        tracing::warn!(error = %e, "could not abort a multipart upload; GC will retry");
    }
}

/// The multipart uploads recorded for sessions `ids`: key → upload id.
async fn multiparts_of(state: &HttpState, ids: &[i64]) -> Result<HashMap<String, String>, Response> {
    let client = state.db.pool().get().await.map_err(|e| db_failed(&e))?;
    let rows = client
        .query("SELECT key, multipart_id FROM upload_multiparts WHERE upload_id = ANY($1)", &[&ids])
        .await
        .map_err(|e| db_failed(&e))?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
}

/// Ends `caller`'s sessions among `ids` after aborting their multipart uploads (best effort: what is left,
/// GC removes). Returns how many sessions and multipart uploads were ended.
async fn abort_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> (u64, u64) {
    let Ok(owned) = owned_sessions(state, caller, ids).await else { return (0, 0) };
    let ids = owned.as_slice();
    let mut multiparts = 0;
    if let Ok(started) = multiparts_of(state, ids).await {
        for (key, id) in &started {
            if let Ok((_, key)) = ObjectKey::parse(key) {
                abort_multipart(state, &key, id).await;
                multiparts += 1;
            }
        }
    }
    let mut sessions = 0;
    if let Ok(client) = state.db.pool().get().await {
        match client.execute("DELETE FROM uploads WHERE id = ANY($1)", &[&ids]).await {
            Ok(n) => sessions = n,
            Err(e) => tracing::warn!("ending aborted upload sessions: {e}"),
        }
    }
    (sessions, multiparts)
}

/// `POST /api/v1/abort`.
pub async fn abort(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Response {
    let body: AbortRequest = match read_json(req, state.limits.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.uploads.len() > state.limits.max_paths {
        return bad(format!("too many upload ids: {} (at most {})", body.uploads.len(), state.limits.max_paths));
    }
    let (aborted_uploads, aborted_multiparts) = abort_sessions(state, caller, &body.uploads).await;
    tracing::info!(sessions = aborted_uploads, multiparts = aborted_multiparts, "push aborted by the client");
    response::json(StatusCode::OK, &AbortResponse { aborted_uploads, aborted_multiparts })
}

/// Finishes the multipart upload of `key` from the client's part ETags. A refusal by S3 (bad or missing
/// part) aborts the upload: the client must push again. Transient failures leave it for a retry.
async fn complete_multipart(
    state: &HttpState,
    sessions: &[i64],
    key: &ObjectKey,
    upload_id: &str,
    etags: &[String],
) -> Result<(), Response> {
    let Store::S3(s3) = &*state.store else { return Ok(()) };
    if etags.len() as u64 > crate::store::s3::MAX_PARTS {
        return Err(bad(format!("{} parts reported for {key}", etags.len())));
    }
    if let Some(e) = etags.iter().find(|e| !valid_etag(e)) {
        return Err(bad(format!("malformed part ETag {:?} for {key}", clip(e))));
    }
    if let Err(e) = s3.complete_multipart(key, upload_id, etags.to_vec()).await {
        if e.is_transient() {
            return Err(store_failed(&e));
        }
        abort_multipart(state, key, upload_id).await;
        forget_multipart(state, sessions, key).await;
        return Err(response::json_error(
            StatusCode::CONFLICT,
            format!("completing the multipart upload of {key}: {e}; push again"),
        ));
    }
    forget_multipart(state, sessions, key).await;
    Ok(())
}

/// Drops the record of the multipart upload of `key` by `sessions` (completed or aborted).
async fn forget_multipart(state: &HttpState, sessions: &[i64], key: &ObjectKey) {
    if let Ok(c) = state.db.pool().get().await
        && let Err(e) = c
            .execute(
                "DELETE FROM upload_multiparts WHERE upload_id = ANY($1) AND key = $2",
                &[&sessions, &key.as_str()],
            )
            .await
    {
        tracing::warn!("forgetting the multipart upload of {key}: {e}");
    }
}

/// An ETag as S3 servers send them (quoted hex, maybe `-N`): it goes into an XML body unescaped.
fn valid_etag(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 256
        && e.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'"' | b'-' | b'_' | b'.'))
}

/// Of sessions `ids`, those `caller` opened (another token's session is treated as unknown).
async fn owned_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> Result<Vec<i64>, Response> {
    let client = state.db.pool().get().await.map_err(|e| db_failed(&e))?;
    let rows = client
        .query(
            "SELECT id FROM uploads WHERE id = ANY($1) AND token_id IS NOT DISTINCT FROM $2",
            &[&ids, &caller.session_owner()],
        )
        .await
        .map_err(|e| db_failed(&e))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// True when upload session `id` exists, was opened by `caller` and claimed `key`.
async fn session_claims(state: &HttpState, caller: &Caller, id: i64, key: &ObjectKey) -> Result<bool, String> {
    let client = state.db.pool().get().await.map_err(|e| e.to_string())?;
    let row = client
        .query_opt(
            "SELECT 1 FROM uploads WHERE id = $1 AND $2 = ANY(claimed) AND token_id IS NOT DISTINCT FROM $3",
            &[&id, &key.as_str(), &caller.session_owner()],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.is_some())
}

/// `None` when upload session `id` claimed `key`; otherwise the response to send (404, or 503 when the
/// database cannot say). Every upload route checks this before accepting a byte.
async fn refuse_unclaimed(state: &HttpState, caller: &Caller, id: i64, key: &ObjectKey) -> Option<Response> {
    match session_claims(state, caller, id, key).await {
        Ok(true) => None,
        Ok(false) => Some(response::json_error(
            StatusCode::NOT_FOUND,
            format!("upload {id} does not exist or did not claim {key}"),
        )),
        Err(e) => Some(db_failed(&e)),
    }
}

/// `PUT /api/v1/uploads/{id}/nar/{nix32}`.
pub async fn upload_nar(state: &Arc<HttpState>, req: Request, caller: &Caller, id: &str, hash: &str) -> Response {
    let Ok(id) = id.parse::<i64>() else { return bad(format!("invalid upload id {:?}", clip(id))) };
    let nar_hash = match Sha256Hash::parse(&format!("sha256:{hash}")) {
        Ok(h) if h.to_nix32() == hash => h,
        _ => return bad(format!("invalid NAR hash {:?} (expected 52 nix32 characters)", clip(hash))),
    };
    let key = ObjectKey::nar(&nar_hash);
    if let Some(refusal) = refuse_unclaimed(state, caller, id, &key).await {
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
pub async fn upload_log(state: &Arc<HttpState>, req: Request, caller: &Caller, id: &str, drv: &str) -> Response {
    let Ok(id) = id.parse::<i64>() else { return bad(format!("invalid upload id {:?}", clip(id))) };
    let drv = match StorePath::from_basename(drv) {
        Ok(p) if p.is_derivation() => p,
        Ok(p) => return bad(format!("{} is not a .drv", p.basename())),
        Err(e) => return bad(e.to_string()),
    };
    let key = ObjectKey::log(&drv);
    if let Some(refusal) = refuse_unclaimed(state, caller, id, &key).await {
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
pub async fn complete(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Response {
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
    // Each session must still exist (GC aborts stale ones), be the caller's and belong to its root.
    let sessions: BTreeMap<i64, String> = {
        let client = match state.db.pool().get().await {
            Ok(c) => c,
            Err(e) => return db_failed(&e),
        };
        match client
            .query(
                "SELECT id, root FROM uploads WHERE id = ANY($1) AND token_id IS NOT DISTINCT FROM $2",
                &[&body.uploads, &caller.session_owner()],
            )
            .await
        {
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
    let mut parts: HashMap<Sha256Hash, &[String]> = HashMap::new();
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
        parts.insert(nh, &n.parts);
    }
    let narinfo_keys: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let missing: HashSet<ObjectKey> = match state.db.missing(&narinfo_keys).await {
        Ok(m) => m.into_iter().collect(),
        Err(e) => return db_failed(&e),
    };
    let todo: Vec<&PathInfo> =
        closure.paths.iter().filter(|p| missing.contains(&ObjectKey::narinfo(&p.path))).collect();
    // Finish the multipart uploads the client filled (a retried complete finds them finished already).
    let started = match multiparts_of(state, &body.uploads).await {
        Ok(m) => m,
        Err(r) => return r,
    };
    if !started.is_empty() {
        let mut done = HashSet::new();
        for p in &todo {
            let key = ObjectKey::nar(&p.nar_hash);
            let (Some(upload_id), Some(etags)) = (started.get(key.as_str()), parts.get(&p.nar_hash)) else { continue };
            if etags.is_empty() || !done.insert(key.clone()) {
                continue;
            }
            if let Err(r) = complete_multipart(state, &body.uploads, &key, upload_id, etags).await {
                return r;
            }
        }
    }
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
