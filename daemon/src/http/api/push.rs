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
use super::error::{self, ApiError};
use super::protocol::{
    AbortRequest, AbortResponse, CompleteRequest, CompleteResponse, MissingLog, MissingNar, MultipartWire,
    PathInfoWire, PushRequest, PushResponse,
};
use super::read_json;
use crate::db::{NewObject, UploadId};
use crate::nix::content_address;
use crate::nix::hash::Sha256Hash;
use crate::nix::narinfo::NarInfo;
use crate::nix::pathinfo::PathInfo;
use crate::nix::store_path::{StoreDir, StorePath};
use crate::store::{ObjectKey, SmallObject, Store};
use crate::upload::pipeline::NAR_CONTENT_TYPE;
use crate::upload::publish::{PublishInput, Publisher, StoredNar};
use bytes::Bytes;
use http::StatusCode;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use warp::reply::Response;

/// Longest `ca` value accepted (real ones are < 100 characters).
const MAX_CA_LEN: usize = 1024;
/// Multipart uploads initiated at once while answering a push (each is one S3 round trip).
const MULTIPART_INITIATE_CONCURRENCY: usize = 8;
/// Most presigned part URLs one push answer carries (a bound on the answer's size and the presigning work).
const MAX_PART_URLS: usize = 100_000;

/// Most distinct roots in one push: each becomes a GC closure, and a push is one tool invocation, not a
/// dump of a whole store (send many pushes for that).
pub const MAX_ROOTS: usize = 1024;

/// Shortens attacker-controlled text before it goes into an error message.
pub(super) fn clip(s: &str) -> String {
    error::clip(s, 200)
}

/// A validated closure: its roots and its paths, dependencies before dependents.
#[derive(Debug)]
pub struct ValidClosure {
    /// The roots, in request order, each once.
    pub roots: Vec<StorePath>,
    /// Every path, each after all of its references.
    pub paths: Vec<PathInfo>,
}

/// What one push request may carry.
#[derive(Clone, Copy, Debug)]
pub struct ClosureLimits {
    /// Most paths.
    pub max_paths: usize,
    /// Most roots (see [`MAX_ROOTS`]).
    pub max_roots: usize,
    /// Largest NarSize (larger NARs could not be uploaded anyway).
    pub max_nar_size: u64,
}

impl ClosureLimits {
    /// The limits of a server configured with `limits`.
    pub fn of(limits: &super::ApiLimits) -> Self {
        ClosureLimits { max_paths: limits.max_paths, max_roots: MAX_ROOTS, max_nar_size: limits.max_nar_upload }
    }
}

/// Validates a closure sent by a client: paths in `store_dir`, hashes well-formed, NarSize in 1..=the
/// largest upload, no duplicates, every reference inside the request, no cycles, at most `max_paths`
/// paths and `max_roots` roots, roots among the paths, and every `ca` claim really determining its path
/// ([`content_address::check_store_path`]). Linear in the size of the request; CPU-bound, so callers on
/// the async workers run it through `spawn_blocking`. The error message names the offending input
/// (clipped).
pub fn validate_closure(
    store_dir: &StoreDir,
    roots: &[String],
    paths: &[PathInfoWire],
    limits: ClosureLimits,
) -> Result<ValidClosure, String> {
    if paths.is_empty() || roots.is_empty() {
        return Err("a push needs at least one root and one path".to_owned());
    }
    if paths.len() > limits.max_paths {
        return Err(format!("too many paths: {} (at most {} per request)", paths.len(), limits.max_paths));
    }
    if roots.len() > limits.max_roots {
        return Err(format!("too many roots: {} (at most {} per request)", roots.len(), limits.max_roots));
    }
    let parse = |p: &str, what: &str| {
        store_dir
            .parse_path(p)
            .map_err(|e| format!("{what} {:?} is not a valid store path: {}", clip(p), clip(&e.to_string())))
    };
    let mut infos: Vec<PathInfo> = Vec::with_capacity(paths.len());
    let mut index: HashMap<StorePath, usize> = HashMap::with_capacity(paths.len());
    for w in paths {
        let path = parse(&w.path, "path")?;
        let nar_hash = Sha256Hash::parse(&w.nar_hash)
            .map_err(|_| format!("NarHash of {} is not a sha256 hash: {:?}", path.basename(), clip(&w.nar_hash)))?;
        if w.nar_size == 0 {
            return Err(format!("NarSize of {} is 0", path.basename()));
        }
        if w.nar_size > limits.max_nar_size {
            return Err(format!(
                "NarSize of {} is {} bytes, above the largest NAR this server accepts ({} bytes)",
                path.basename(),
                w.nar_size,
                limits.max_nar_size
            ));
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
                    return Err(format!("CA of {} is malformed", path.basename()));
                }
                content_address::check_store_path(store_dir, &path, ca, &references)
                    .map_err(|e| format!("CA of {} refused: {e}", path.basename()))?;
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
    let mut seen_roots = HashSet::with_capacity(roots.len());
    for r in roots {
        let p = parse(r, "root")?;
        if !index.contains_key(&p) {
            return Err(format!("root {} is not among the paths", p.basename()));
        }
        if seen_roots.insert(p.clone()) {
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

/// Validates a request's closure on a blocking thread (it is linear but can be 100 000 paths).
async fn validate_off_workers(
    state: &HttpState,
    roots: Vec<String>,
    paths: Vec<PathInfoWire>,
) -> Result<ValidClosure, ApiError> {
    let store_dir = state.store_dir.clone();
    let limits = ClosureLimits::of(&state.limits);
    let joined = tokio::task::spawn_blocking(move || validate_closure(&store_dir, &roots, &paths, limits)).await;
    match joined {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(ApiError::bad(e)),
        Err(e) => Err(ApiError::Internal(format!("validating the closure: {e}"))),
    }
}

/// The paths of `closure` whose narinfo the cache lacks. A path already published with another NarHash
/// is a conflict (409 naming it): a published narinfo is never replaced, and a pusher that believes its
/// content differs should know.
async fn missing_paths<'a>(state: &HttpState, closure: &'a ValidClosure) -> Result<Vec<&'a PathInfo>, ApiError> {
    let narinfo_keys: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let published = state.db.published_nars(&narinfo_keys).await.map_err(|e| ApiError::Database(e.to_string()))?;
    let mut missing = Vec::new();
    for (p, key) in closure.paths.iter().zip(&narinfo_keys) {
        match published.get(key.as_str()) {
            None => missing.push(p),
            Some(None) => {}
            Some(Some(nar)) if *nar == ObjectKey::nar(&p.nar_hash).as_str() => {}
            Some(Some(nar)) => {
                tracing::warn!(path = %p.path.basename(), cached = %nar, pushed = %p.nar_hash, "push of a cached path with another NarHash refused");
                return Err(ApiError::conflict(format!(
                    "{} is already in the cache with another NAR ({nar}), not {}; a published path is never replaced",
                    p.path.basename(),
                    p.nar_hash
                )));
            }
        }
    }
    Ok(missing)
}

/// NAR rows recorded before FileHashes were kept (migration 0005) have none, so they could not be reused
/// and would be uploaded again — over a published NAR, on S3, where nothing checks the bytes first. For
/// those a narinfo refers to, the FileHash (and FileSize) is taken from that narinfo and recorded, so the
/// NAR is reused like any other; the ones nothing refers to stay unknown (replacing them harms nothing).
async fn learn_legacy_file_hashes(
    state: &HttpState,
    stored: &mut HashMap<String, crate::db::StoredFile>,
) -> Result<(), ApiError> {
    let legacy: Vec<ObjectKey> = stored
        .iter()
        .filter(|(_, f)| f.file_hash.is_none())
        .filter_map(|(k, _)| ObjectKey::parse(k).ok().map(|(_, k)| k))
        .collect();
    if legacy.is_empty() {
        return Ok(());
    }
    let referrers = state.db.narinfos_referring_to(&legacy).await.map_err(|e| ApiError::Database(e.to_string()))?;
    let now = chrono::Utc::now();
    for (nar, narinfo) in referrers {
        let (Ok((_, nar_key)), Ok((_, narinfo_key))) = (ObjectKey::parse(&nar), ObjectKey::parse(&narinfo)) else {
            continue;
        };
        let Some(text) = state.store.get(&narinfo_key).await.map_err(|e| ApiError::Storage(e.to_string()))? else {
            continue;
        };
        let Ok(parsed) = std::str::from_utf8(&text)
            .map_err(|e| e.to_string())
            .and_then(|t| NarInfo::parse(t, &state.store_dir).map_err(|e| e.to_string()))
        else {
            continue;
        };
        let (Some(file_hash), Some(file_size)) = (parsed.file_hash, parsed.file_size) else { continue };
        if parsed.url != nar_key.as_str() {
            continue;
        }
        state
            .db
            .record_nar(&nar_key, file_size, Some(&file_hash), now)
            .await
            .map_err(|e| ApiError::Database(e.to_string()))?;
        stored.insert(nar, crate::db::StoredFile { size: file_size, file_hash: Some(file_hash) });
    }
    Ok(())
}

/// `POST /api/v1/push`.
pub async fn announce(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: PushRequest = read_json(req, state.limits.max_json_body).await?;
    let dry_run = body.dry_run;
    let closure = validate_off_workers(state, body.roots, body.paths).await?;
    let missing_paths = missing_paths(state, &closure).await?;
    // One NAR per distinct NarHash, in dependency order; those the cache already has are reused, never
    // uploaded again (an upload could replace a published NAR).
    let mut nars: Vec<(ObjectKey, &PathInfo)> = Vec::new();
    let mut seen = HashSet::new();
    for p in &missing_paths {
        let key = ObjectKey::nar(&p.nar_hash);
        if seen.insert(key.clone()) {
            nars.push((key, p));
        }
    }
    let nar_keys: Vec<ObjectKey> = nars.iter().map(|(k, _)| k.clone()).collect();
    let mut stored_nars = match state.db.nar_files(&nar_keys).await {
        Ok(m) => m,
        Err(e) => return Err(ApiError::Database(e.to_string())),
    };
    learn_legacy_file_hashes(state, &mut stored_nars).await?;
    // A NAR row still without a FileHash is referenced by no narinfo: uploading it again harms nothing.
    let to_upload: Vec<(ObjectKey, &PathInfo)> = nars
        .iter()
        .filter(|(k, _)| stored_nars.get(k.as_str()).is_none_or(|f| f.file_hash.is_none()))
        .map(|(k, p)| (k.clone(), *p))
        .collect();
    if dry_run {
        let missing_nars = to_upload
            .iter()
            .map(|(_, p)| MissingNar {
                path: state.store_dir.display(&p.path),
                nar_hash: p.nar_hash.to_nix_string(),
                upload_url: String::new(),
                presigned: false,
                multipart: None,
                presign_route: None,
            })
            .collect();
        return Ok(response::json(
            StatusCode::OK,
            &PushResponse {
                uploads: Vec::new(),
                missing_paths: missing_paths.iter().map(|p| state.store_dir.display(&p.path)).collect(),
                missing_nars,
                compression: "zstd".to_owned(),
                missing_logs: Vec::new(),
            },
        ));
    }
    // Build logs of the missing paths that the cache lacks (one query); existing logs are never claimed,
    // so they cannot be uploaded again (first writer wins).
    let mut log_keys: Vec<(ObjectKey, &StorePath)> = Vec::new();
    let mut seen_logs = HashSet::new();
    for p in &missing_paths {
        if let Some(drv) = &p.deriver {
            let k = ObjectKey::log(drv);
            if seen_logs.insert(k.clone()) {
                log_keys.push((k, drv));
            }
        }
    }
    let absent_logs: HashSet<ObjectKey> = {
        let keys: Vec<ObjectKey> = log_keys.iter().map(|(k, _)| k.clone()).collect();
        match state.db.missing(&keys).await {
            Ok(m) => m.into_iter().collect(),
            Err(e) => return Err(ApiError::Database(e.to_string())),
        }
    };
    log_keys.retain(|(k, _)| absent_logs.contains(k));
    // One session for the whole push: it claims every narinfo of the closure (so GC keeps what the push
    // relies on), the NARs and listings of the missing paths and the absent logs, each key once.
    let mut claimed: Vec<ObjectKey> = closure.paths.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    claimed.extend(nar_keys.iter().cloned());
    claimed.extend(missing_paths.iter().map(|p| ObjectKey::listing(&p.path)));
    claimed.extend(log_keys.iter().map(|(k, _)| k.clone()));
    let now = chrono::Utc::now();
    let Some(first_root) = closure.roots.first() else { return Err(ApiError::bad("no roots")) };
    let session = match state.db.begin_upload_for(caller.token, &ObjectKey::narinfo(first_root), &claimed, now).await {
        Ok(id) => id,
        Err(e) => return Err(ApiError::Database(e.to_string())),
    };
    let uploads = vec![session.0];
    let planned: Vec<(ObjectKey, u64)> = to_upload.iter().map(|(k, p)| (k.clone(), p.nar_size)).collect();
    if let Err(e) = state.db.allow_nar_uploads(session, &planned).await {
        abort_sessions(state, caller, &uploads).await;
        return Err(ApiError::Database(e.to_string()));
    }
    let missing_nars = match plan_nar_uploads(state, session.0, &to_upload).await {
        Ok(m) => m,
        Err(e) => {
            abort_sessions(state, caller, &uploads).await;
            return Err(e);
        }
    };
    let missing_logs = log_keys
        .iter()
        .map(|(_, drv)| MissingLog {
            deriver: state.store_dir.display(drv),
            upload_url: format!("/api/v1/uploads/{}/log/{}", session.0, drv.basename()),
        })
        .collect();
    tracing::info!(
        paths = closure.paths.len(),
        missing = missing_paths.len(),
        nars = missing_nars.len(),
        "push announced"
    );
    Ok(response::json(
        StatusCode::OK,
        &PushResponse {
            uploads,
            missing_paths: missing_paths.iter().map(|p| state.store_dir.display(&p.path)).collect(),
            missing_nars,
            compression: "zstd".to_owned(),
            missing_logs,
        },
    ))
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
) -> Result<Vec<MissingNar>, ApiError> {
    let mut plans: Vec<Result<(MissingNar, Option<String>), ApiError>> = Vec::with_capacity(nars.len());
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
        failure = Some(ApiError::TooLarge(format!(
            "the missing NARs need {part_urls} part uploads (at most {MAX_PART_URLS}); push fewer paths at once"
        )));
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
            failure = Some(ApiError::Database(e));
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
) -> Result<(MissingNar, Option<String>), ApiError> {
    let mut m = MissingNar {
        path: state.store_dir.display(&p.path),
        nar_hash: p.nar_hash.to_nix_string(),
        upload_url: String::new(),
        presigned: false,
        multipart: None,
        presign_route: None,
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
        // No URL yet: an unbound one would take any body up to S3's 5 GiB and could replace the object
        // while it lives. The client asks `presign_route` for one bound to the file once it is compressed.
        m.presign_route = Some(format!("/api/v1/uploads/{session}/nar/{}/presign", p.nar_hash.to_nix32()));
        return Ok((m, None));
    }
    if max_size > state.limits.max_nar_upload {
        return Err(ApiError::TooLarge(format!(
            "the NAR of {} ({} bytes) may exceed the largest upload accepted ({} bytes)",
            p.path.basename(),
            p.nar_size,
            state.limits.max_nar_upload
        )));
    }
    let mp = s3
        .presign_multipart(key, NAR_CONTENT_TYPE, max_size, expiry)
        .await
        .map_err(|e| ApiError::Storage(e.to_string()))?;
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
async fn multiparts_of(state: &HttpState, ids: &[i64]) -> Result<HashMap<String, String>, ApiError> {
    let client = state.db.pool().get().await.map_err(|e| ApiError::Database(e.to_string()))?;
    let rows = client
        .query("SELECT key, multipart_id FROM upload_multiparts WHERE upload_id = ANY($1)", &[&ids])
        .await
        .map_err(|e| ApiError::Database(e.to_string()))?;
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
pub async fn abort(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: AbortRequest = read_json(req, state.limits.max_json_body).await?;
    if body.uploads.len() > state.limits.max_paths {
        return Err(ApiError::bad(format!(
            "too many upload ids: {} (at most {})",
            body.uploads.len(),
            state.limits.max_paths
        )));
    }
    let (aborted_uploads, aborted_multiparts) = abort_sessions(state, caller, &body.uploads).await;
    tracing::info!(sessions = aborted_uploads, multiparts = aborted_multiparts, "push aborted by the client");
    Ok(response::json(StatusCode::OK, &AbortResponse { aborted_uploads, aborted_multiparts }))
}

/// Finishes the multipart upload of `key` from the client's part ETags. A refusal by S3 (bad or missing
/// part) aborts the upload: the client must push again. Transient failures leave it for a retry.
async fn complete_multipart(
    state: &HttpState,
    sessions: &[i64],
    key: &ObjectKey,
    upload_id: &str,
    etags: &[String],
) -> Result<(), ApiError> {
    let Store::S3(s3) = &*state.store else { return Ok(()) };
    if etags.len() as u64 > crate::store::s3::MAX_PARTS {
        return Err(ApiError::bad(format!("{} parts reported for {key}", etags.len())));
    }
    if let Some(e) = etags.iter().find(|e| !valid_etag(e)) {
        return Err(ApiError::bad(format!("malformed part ETag {:?} for {key}", clip(e))));
    }
    if let Err(e) = s3.complete_multipart(key, upload_id, etags.to_vec()).await {
        if e.is_transient() {
            return Err(ApiError::Storage(e.to_string()));
        }
        abort_multipart(state, key, upload_id).await;
        forget_multipart(state, sessions, key).await;
        return Err(ApiError::conflict(format!("completing the multipart upload of {key}: {e}; push again")));
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
async fn owned_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> Result<Vec<i64>, ApiError> {
    let client = state.db.pool().get().await.map_err(|e| ApiError::Database(e.to_string()))?;
    let rows = client
        .query(
            "SELECT id FROM uploads WHERE id = ANY($1) AND token_id IS NOT DISTINCT FROM $2",
            &[&ids, &caller.session_owner()],
        )
        .await
        .map_err(|e| ApiError::Database(e.to_string()))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The session id, NarHash and NAR key of an upload route (`/api/v1/uploads/{id}/nar/{nix32}…`), or why
/// not (for a 400).
pub(super) fn nar_upload_target(id: &str, hash: &str) -> Result<(i64, Sha256Hash, ObjectKey), String> {
    let Ok(id) = id.parse::<i64>() else { return Err(format!("invalid upload id {:?}", clip(id))) };
    match Sha256Hash::parse(&format!("sha256:{hash}")) {
        Ok(h) if h.to_nix32() == hash => Ok((id, h, ObjectKey::nar(&h))),
        _ => Err(format!("invalid NAR hash {:?} (expected 52 nix32 characters)", clip(hash))),
    }
}

/// The NarSize `caller`'s session `id` announced for the NAR `key` it was told to upload (404 when it was
/// not, or is another token's session), and the stored file when another push stored that NAR meanwhile
/// (with its FileHash).
pub(super) async fn planned_nar(
    state: &HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<(u64, Option<(u64, Sha256Hash)>), ApiError> {
    let nar_size = match state.db.planned_nar_size(UploadId(id), caller.session_owner(), key).await {
        Ok(Some(n)) => n,
        Ok(None) => {
            return Err(ApiError::NotFound(format!("upload {id} does not exist or was not told to upload {key}")));
        }
        Err(e) => return Err(ApiError::Database(e.to_string())),
    };
    let files = state.db.nar_files(std::slice::from_ref(key)).await.map_err(|e| ApiError::Database(e.to_string()))?;
    let stored = files.get(key.as_str()).and_then(|f| f.file_hash.map(|h| (f.size, h)));
    Ok((nar_size, stored))
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

/// Refuses (404, or 503 when the database cannot say) unless upload session `id` of `caller` claimed
/// `key`. Every upload route checks this before accepting a byte.
pub(super) async fn refuse_unclaimed(
    state: &HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<(), ApiError> {
    match session_claims(state, caller, id, key).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(ApiError::NotFound(format!("upload {id} does not exist or did not claim {key}"))),
        Err(e) => Err(ApiError::Database(e)),
    }
}

/// Names in each input the build log of its deriver when the log is in the store: logs the database
/// knows in one query, the others looked for in the store (and recorded with the narinfo).
async fn add_stored_logs(state: &HttpState, inputs: &mut [PublishInput<'_>]) -> Result<(), ApiError> {
    let keys: Vec<ObjectKey> = inputs.iter().filter_map(|i| i.info.deriver.as_ref()).map(ObjectKey::log).collect();
    let unknown: HashSet<ObjectKey> =
        state.db.missing(&keys).await.map_err(|e| ApiError::Database(e.to_string()))?.into_iter().collect();
    for input in inputs {
        let Some(drv) = &input.info.deriver else { continue };
        let key = ObjectKey::log(drv);
        if unknown.contains(&key) {
            match state.store.head(&key).await {
                Ok(Some(meta)) => {
                    input.unrecorded.push(NewObject { key: key.clone(), size: meta.size, refs: Vec::new() });
                }
                Ok(None) => continue,
                Err(e) => return Err(ApiError::Storage(e.to_string())),
            }
        }
        input.log = Some(key);
    }
    Ok(())
}

/// `paths` (dependencies first) in levels: each path in the level after the last of its references
/// among `paths`, so no two paths of a level refer to each other.
fn levels<'a>(paths: &[&'a PathInfo]) -> Vec<Vec<&'a PathInfo>> {
    let mut level_of: HashMap<&StorePath, usize> = HashMap::with_capacity(paths.len());
    let mut levels: Vec<Vec<&PathInfo>> = Vec::new();
    for &p in paths {
        let level = p
            .references
            .iter()
            .filter(|r| **r != p.path)
            .filter_map(|r| level_of.get(r).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level_of.insert(&p.path, level);
        if levels.len() <= level {
            levels.resize_with(level + 1, Vec::new);
        }
        levels[level].push(p);
    }
    levels
}

/// `POST /api/v1/complete`.
pub async fn complete(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: CompleteRequest = read_json(req, state.limits.max_json_body).await?;
    let CompleteRequest { uploads, roots, paths, nars, listings: listing_wires } = body;
    let closure = validate_off_workers(state, roots, paths).await?;
    // One session for the whole push (rooted at its first root), or one per root from older servers.
    if uploads.is_empty() || (uploads.len() != 1 && uploads.len() != closure.roots.len()) {
        return Err(ApiError::bad(format!("{} upload ids for {} roots", uploads.len(), closure.roots.len())));
    }
    // Each session must still exist (GC aborts stale ones), be the caller's and belong to its root.
    let sessions: BTreeMap<i64, String> = {
        let client = match state.db.pool().get().await {
            Ok(c) => c,
            Err(e) => return Err(ApiError::Database(e.to_string())),
        };
        match client
            .query(
                "SELECT id, root FROM uploads WHERE id = ANY($1) AND token_id IS NOT DISTINCT FROM $2",
                &[&uploads, &caller.session_owner()],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect(),
            Err(e) => return Err(ApiError::Database(e.to_string())),
        }
    };
    for (id, root) in uploads.iter().zip(&closure.roots) {
        if sessions.get(id).map(String::as_str) != Some(ObjectKey::narinfo(root).as_str()) {
            return Err(ApiError::conflict(format!(
                "upload {id} for {} does not exist (expired?); push again",
                root.basename()
            )));
        }
    }
    let mut files: HashMap<Sha256Hash, (Sha256Hash, u64)> = HashMap::new();
    let mut parts: HashMap<Sha256Hash, &[String]> = HashMap::new();
    for n in &nars {
        let Ok(nh) = Sha256Hash::parse(&n.nar_hash) else {
            return Err(ApiError::bad(format!("nars: NarHash {:?} is not a sha256 hash", clip(&n.nar_hash))));
        };
        let Ok(fh) = Sha256Hash::parse(&n.file_hash) else {
            return Err(ApiError::bad(format!("nars: FileHash {:?} is not a sha256 hash", clip(&n.file_hash))));
        };
        files.insert(nh, (fh, n.file_size));
        parts.insert(nh, &n.parts);
    }
    let todo = missing_paths(state, &closure).await?;
    // Finish the multipart uploads the client filled (a retried complete finds them finished already).
    let started = multiparts_of(state, &uploads).await?;
    if !started.is_empty() {
        let mut done = HashSet::new();
        for p in &todo {
            let key = ObjectKey::nar(&p.nar_hash);
            let (Some(upload_id), Some(etags)) = (started.get(key.as_str()), parts.get(&p.nar_hash)) else { continue };
            if etags.is_empty() || !done.insert(key.clone()) {
                continue;
            }
            complete_multipart(state, &uploads, &key, upload_id, etags).await?;
        }
    }
    let stored = stored_nars(state, &todo, &files).await?;
    let mut listings: HashMap<StorePath, &serde_json::Value> = HashMap::new();
    for l in &listing_wires {
        let Ok(p) = state.store_dir.parse_path(&l.path) else {
            return Err(ApiError::bad(format!("listing for {:?}: not a store path", clip(&l.path))));
        };
        if l.listing.get("version").and_then(serde_json::Value::as_u64) != Some(1) || l.listing.get("root").is_none() {
            return Err(ApiError::bad(format!("listing for {}: not a version 1 listing", p.basename())));
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
    // A level at a time (paths whose missing references are all in earlier levels): each level's
    // listings written together, its logs looked up together and its narinfos published together
    // (one store write, one statement: Publisher::publish_many), dependencies before dependents.
    for level in levels(&todo) {
        let mut inputs = Vec::with_capacity(level.len());
        let mut listing_objects = Vec::new();
        for p in &level {
            let mut input = PublishInput::new(p, stored[&p.nar_hash]);
            if let Some(json) = listings.get(&p.path) {
                let text = json.to_string();
                if text.len() > state.limits.max_listing {
                    return Err(ApiError::bad(format!(
                        "listing for {} is larger than {} bytes",
                        p.path.basename(),
                        state.limits.max_listing
                    )));
                }
                let key = ObjectKey::listing(&p.path);
                input.unrecorded.push(NewObject { key: key.clone(), size: text.len() as u64, refs: Vec::new() });
                input.listing = Some(key.clone());
                listing_objects.push(SmallObject { key, body: Bytes::from(text), content_type: "application/json" });
            }
            inputs.push(input);
        }
        if let Err(e) = state.store.put_many(listing_objects).await {
            return Err(ApiError::Storage(e.to_string()));
        }
        add_stored_logs(state, &mut inputs).await?;
        if let Err(e) = publisher.publish_many(&inputs, now).await {
            let first = level.first().map_or_else(String::new, |p| p.path.basename().clone());
            let what = if level.len() == 1 { first } else { format!("{first} and {} more", level.len() - 1) };
            tracing::warn!("publishing {what}: {e}");
            state.metrics.uploads_failed.fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::publish(&what, &e));
        }
        for p in &level {
            state.metrics.uploads_ok.fetch_add(1, Ordering::Relaxed);
            add_saturating(&state.metrics.nar_bytes, p.nar_size);
            add_saturating(&state.metrics.bytes_uploaded, stored[&p.nar_hash].file_size);
        }
    }
    let ids: Vec<UploadId> = uploads.iter().map(|i| UploadId(*i)).collect();
    let root_keys: Vec<ObjectKey> = closure.roots.iter().map(ObjectKey::narinfo).collect();
    match state.db.finish_uploads(&ids, &root_keys, now).await {
        Ok(()) => {}
        Err(crate::db::DbError::UploadExpired(id)) => {
            return Err(ApiError::conflict(format!("upload {} expired meanwhile; push again", id.0)));
        }
        Err(e) => return Err(ApiError::Database(e.to_string())),
    }
    tracing::info!(published = todo.len(), paths = closure.paths.len(), "push completed");
    Ok(response::json(
        StatusCode::OK,
        &CompleteResponse { published: todo.len(), already_present: closure.paths.len() - todo.len() },
    ))
}

/// Adds to a byte counter without wrapping around (NarSizes are client-supplied).
fn add_saturating(counter: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

/// The stored file of every NAR the paths of `todo` need, checked before anything is published (so a
/// missing one publishes nothing). A NAR whose FileHash the database knows (the relay computed it, or an
/// earlier push published it) is taken as recorded, and a client claiming another FileHash or FileSize
/// for it gets a 409; otherwise the client's FileHash and FileSize are used after a `HEAD` confirms the
/// size (presigned uploads: the server never sees the bytes).
async fn stored_nars(
    state: &HttpState,
    todo: &[&PathInfo],
    sent: &HashMap<Sha256Hash, (Sha256Hash, u64)>,
) -> Result<HashMap<Sha256Hash, StoredNar>, ApiError> {
    let keys: Vec<ObjectKey> = todo.iter().map(|p| ObjectKey::nar(&p.nar_hash)).collect();
    let known = state.db.nar_files(&keys).await.map_err(|e| ApiError::Database(e.to_string()))?;
    let mut stored: HashMap<Sha256Hash, StoredNar> = HashMap::new();
    for (p, key) in todo.iter().zip(&keys) {
        if stored.contains_key(&p.nar_hash) {
            continue;
        }
        let claimed = sent.get(&p.nar_hash).copied();
        if let Some(f) = known.get(key.as_str())
            && let Some(file_hash) = f.file_hash
        {
            if let Some((fh, size)) = claimed
                && (fh, size) != (file_hash, f.size)
            {
                return Err(ApiError::conflict(format!(
                    "the NAR of {} is stored as {file_hash} ({} bytes), not {fh} ({size} bytes) as sent",
                    p.path.basename(),
                    f.size
                )));
            }
            stored.insert(p.nar_hash, StoredNar { file_hash, file_size: f.size });
            continue;
        }
        let Some((file_hash, file_size)) = claimed else {
            return Err(ApiError::bad(format!("no FileHash/FileSize sent for the NAR of {}", p.path.basename())));
        };
        match state.store.head(key).await {
            Ok(Some(meta)) if meta.size == file_size => {}
            Ok(Some(meta)) => {
                return Err(ApiError::conflict(format!(
                    "the NAR of {} has {} bytes in the store, not {file_size}",
                    p.path.basename(),
                    meta.size
                )));
            }
            Ok(None) => {
                return Err(ApiError::conflict(format!("the NAR of {} was not uploaded ({key})", p.path.basename())));
            }
            Err(e) => return Err(ApiError::Storage(e.to_string())),
        }
        stored.insert(p.nar_hash, StoredNar { file_hash, file_size });
    }
    Ok(stored)
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

    fn lim(max_paths: usize) -> ClosureLimits {
        ClosureLimits { max_paths, max_roots: 4, max_nar_size: 1 << 20 }
    }

    const A: &str = "0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const B: &str = "1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
    const C: &str = "2c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";

    #[test]
    fn byte_counters_saturate_instead_of_wrapping() {
        let c = std::sync::atomic::AtomicU64::new(u64::MAX - 1);
        add_saturating(&c, 976);
        assert_eq!(c.load(Ordering::Relaxed), u64::MAX);
    }

    #[test]
    fn roots_are_capped_and_counted_as_sent() {
        let sd = StoreDir::default();
        let roots: Vec<String> = (0..5).map(|_| format!("/nix/store/{A}-p")).collect();
        let e = validate_closure(&sd, &roots, &[w(A, &[])], lim(10)).expect_err("5 roots, at most 4");
        assert!(e.contains("too many roots: 5 (at most 4"), "{e}");
        let c = validate_closure(&sd, &roots[..4], &[w(A, &[])], lim(10)).expect("duplicates count once");
        assert_eq!(c.roots.len(), 1);
    }

    #[test]
    fn closure_is_ordered_dependencies_first() {
        let sd = StoreDir::default();
        let paths = [w(A, &[A, B, C]), w(B, &[C]), w(C, &[])];
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &paths, lim(10)).expect("valid");
        let order: Vec<&str> = c.paths.iter().map(|p| p.path.hash_part()).collect();
        assert_eq!(order, [C, B, A]);
    }

    #[test]
    fn cycles_missing_references_and_too_many_paths_are_refused() {
        let sd = StoreDir::default();
        let root = [format!("/nix/store/{A}-p")];
        let e = validate_closure(&sd, &root, &[w(A, &[B]), w(B, &[A])], lim(10)).expect_err("cycle");
        assert!(e.contains("cycle"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[C])], lim(10)).expect_err("missing");
        assert!(e.contains("not in the request"), "{e}");
        let e = validate_closure(&sd, &root, &[w(A, &[]), w(B, &[])], lim(1)).expect_err("too many");
        assert!(e.contains("too many"), "{e}");
        let e = validate_closure(&sd, &[format!("/nix/store/{B}-p")], &[w(A, &[])], lim(10)).expect_err("root");
        assert!(e.contains("not among the paths"), "{e}");
    }

    #[test]
    fn levels_put_each_path_after_its_references_and_no_path_beside_one() {
        const D: &str = "3c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl";
        let sd = StoreDir::default();
        // A refers to itself, B and D; B to C; C and D to nothing. D is already cached (not in todo).
        let paths = [w(A, &[A, B, D]), w(B, &[C]), w(C, &[]), w(D, &[])];
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &paths, lim(10)).expect("valid");
        let todo: Vec<&PathInfo> = c.paths.iter().filter(|p| p.path.hash_part() != D).collect();
        let names: Vec<Vec<&str>> =
            levels(&todo).iter().map(|l| l.iter().map(|p| p.path.hash_part()).collect()).collect();
        assert_eq!(names, [vec![C], vec![B], vec![A]]);
        // Independent paths share a level.
        let c = validate_closure(&sd, &[format!("/nix/store/{A}-p")], &[w(A, &[B, C]), w(B, &[]), w(C, &[])], lim(10))
            .expect("valid");
        let todo: Vec<&PathInfo> = c.paths.iter().collect();
        let sizes: Vec<usize> = levels(&todo).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 1]);
    }
}
