//! `POST /api/v1/push`: validates a closure, claims its keys (one upload session) and answers which paths
//! are missing and where to put each missing NAR: one presigned S3 `PUT` bound to the file, a presigned
//! multipart upload (initiated here and recorded with the session), or the relay route.

use super::abort::abort_sessions;
use super::complete::forget_multipart;
use super::sessions::abort_multipart;
use super::validate::{missing_paths, skip_oversized, validate_off_workers};
use crate::db::leases::stale_before;
use crate::db::uploads::SessionOwner;
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use crate::http::api::read_json;
use crate::http::{HttpState, Request, response};
use crate::upload::pipeline::NAR_CONTENT_TYPE;
use chrono::{DateTime, Utc};
use http::StatusCode;
use niks3_api::protocol::{HeldPartWire, MissingLog, MissingNar, MultipartWire, PushRequest, PushResponse};
use niks3_local::nar_stream::max_compressed_size;
use niks3_nix::narinfo::NarInfo;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::store_path::StorePath;
use niks3_storage::s3::S3Store;
use niks3_storage::{ObjectKey, Storage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use warp::reply::Response;

/// Multipart uploads initiated at once while answering a push (each is one S3 round trip).
pub(super) const MULTIPART_INITIATE_CONCURRENCY: usize = 8;

/// `POST /api/v1/push`.
pub async fn announce(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: PushRequest = read_json(req, state.limits.max_json_body).await?;
    let (dry_run, asked_limit) = (body.dry_run, body.max_nar_size);
    let closure = validate_off_workers(state, body.roots, body.paths).await?;
    let (missing_paths, skipped) = skip_oversized(state, asked_limit, missing_paths(state, &closure).await?);
    let skipped_paths: Vec<String> = skipped.iter().map(|p| state.store_dir.display(&p.path)).collect();
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
        let missing_nars = to_upload.iter().map(|(_, p)| missing_nar(state, p)).collect();
        return Ok(response::json(
            StatusCode::OK,
            &PushResponse {
                uploads: Vec::new(),
                missing_paths: missing_paths.iter().map(|p| state.store_dir.display(&p.path)).collect(),
                missing_nars,
                compression: "zstd".to_owned(),
                missing_logs: Vec::new(),
                skipped_paths,
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
    refuse_too_many_sessions(state, caller).await?;
    let session = match state
        .db
        .begin_upload_for(&caller.session_owner(), &ObjectKey::narinfo(first_root), &claimed, now)
        .await
    {
        Ok(id) => id,
        Err(e) => return Err(ApiError::Database(e.to_string())),
    };
    let uploads = vec![session.0];
    // Of the missing paths (and absent logs), this push uploads those whose lease it takes; a path
    // another push is uploading right now is left to it, and complete waits for its publication
    // (db/leases.rs): so overlapping closures pushed through several servers at once write each object
    // once.
    let lease_keys: Vec<ObjectKey> = missing_paths
        .iter()
        .map(|p| ObjectKey::narinfo(&p.path))
        .chain(log_keys.iter().map(|(k, _)| k.clone()))
        .collect();
    let stale_leases = stale_before(now, state.limits.lease_timeout);
    let leased = match state.db.take_leases(session, &lease_keys, now, stale_leases).await {
        Ok(l) => l,
        Err(e) => {
            abort_sessions(state, caller, &uploads).await;
            return Err(ApiError::Database(e.to_string()));
        }
    };
    let own_nars: HashSet<ObjectKey> = missing_paths
        .iter()
        .filter(|p| leased.contains(&ObjectKey::narinfo(&p.path)))
        .map(|p| ObjectKey::nar(&p.nar_hash))
        .collect();
    let to_upload: Vec<(ObjectKey, &PathInfo)> = to_upload.into_iter().filter(|(k, _)| own_nars.contains(k)).collect();
    log_keys.retain(|(k, _)| leased.contains(k));
    let planned: Vec<(ObjectKey, u64)> = to_upload.iter().map(|(k, p)| (k.clone(), p.nar_size)).collect();
    if let Err(e) = state.db.allow_nar_uploads(session, &planned).await {
        abort_sessions(state, caller, &uploads).await;
        return Err(ApiError::Database(e.to_string()));
    }
    let owner = caller.session_owner();
    let missing_nars = match plan_nar_uploads(state, session.0, &owner, stale_leases, &to_upload).await {
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
        skipped = skipped_paths.len(),
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
            skipped_paths,
        },
    ))
}

/// A scoped token or an OIDC subject may keep at most `max_sessions_per_token` upload sessions open (each
/// holds claims and leases until it ends): past that, 429 until some end. The seed token is the server's
/// own (its sessions are counted with the spool pipeline's) and is not limited.
async fn refuse_too_many_sessions(state: &HttpState, caller: &Caller) -> Result<(), ApiError> {
    let max = u64::from(state.limits.max_sessions_per_token);
    let owner = caller.session_owner();
    if max == 0 || owner == crate::db::uploads::SessionOwner::Server {
        return Ok(());
    }
    let open = state.db.open_sessions(&owner).await.map_err(|e| ApiError::Database(e.to_string()))?;
    if open >= max {
        return Err(ApiError::TooMany(format!(
            "token {:?} has {open} upload sessions open, the most allowed; complete or abort some first",
            caller.name
        )));
    }
    Ok(())
}

/// NAR rows recorded before FileHashes were kept (migration 0005) have none, so they could not be reused
/// and would be uploaded again — over a published NAR, on S3, where nothing checks the bytes first. For
/// those a narinfo refers to, the FileHash (and FileSize) is taken from that narinfo and recorded, so the
/// NAR is reused like any other; the ones nothing refers to stay unknown (replacing them harms nothing).
pub(super) async fn learn_legacy_file_hashes(
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

/// Where each missing NAR goes: the relay route (local store), one presigned PUT (S3, when the NAR fits in
/// one part even incompressible), or a presigned multipart upload (S3, larger). Multipart uploads are
/// initiated here, a few at once, and recorded under `session` so that `complete` can finish them and GC
/// abort them — or, when an earlier push of `owner` was killed part way through one (its leases untouched
/// since `stale_leases`), taken over and continued (see [`resume_multipart`]). On any failure, whatever
/// was initiated is aborted again and the error response returned (the caller's `abort_sessions` aborts
/// the continued ones, now recorded under `session`).
pub(super) async fn plan_nar_uploads(
    state: &HttpState,
    session: i64,
    owner: &SessionOwner,
    stale_leases: DateTime<Utc>,
    nars: &[(ObjectKey, &PathInfo)],
) -> Result<Vec<MissingNar>, ApiError> {
    let mut plans: Vec<Result<(MissingNar, Option<String>), ApiError>> = Vec::with_capacity(nars.len());
    for chunk in nars.chunks(MULTIPART_INITIATE_CONCURRENCY) {
        let mut futs = Vec::with_capacity(chunk.len());
        for (key, p) in chunk {
            futs.push(plan_nar_upload(state, session, owner, stale_leases, key, p));
        }
        plans.extend(futures::future::join_all(futs).await);
    }
    let mut missing = Vec::with_capacity(plans.len());
    let mut started: Vec<(ObjectKey, String)> = Vec::new();
    let mut failure = None;
    for (plan, (key, _)) in plans.into_iter().zip(nars) {
        match plan {
            Ok((m, upload_id)) => {
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
    if failure.is_none()
        && !started.is_empty()
        && let Err(e) = state.db.record_multiparts(session, &started).await
    {
        failure = Some(e.into());
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

/// Plans the upload of one NAR (see [`plan_nar_uploads`]); the multipart upload id when one was started
/// (one continued is recorded under `session` already).
pub(super) async fn plan_nar_upload(
    state: &HttpState,
    session: i64,
    owner: &SessionOwner,
    stale_leases: DateTime<Utc>,
    key: &ObjectKey,
    p: &PathInfo,
) -> Result<(MissingNar, Option<String>), ApiError> {
    let mut m = missing_nar(state, p);
    let s3 = match &*state.store {
        Storage::S3(s3) => s3,
        Storage::Local(_) => {
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
    // No part URLs yet either: the client asks `part_route` for each part, bound to its size and MD5.
    let wire = |held_parts| MultipartWire {
        part_size: s3.part_size_for(max_size),
        part_route: format!("/api/v1/uploads/{session}/nar/{}/part", p.nar_hash.to_nix32()),
        held_parts,
    };
    if let Some(held_parts) = resume_multipart(state, s3, session, owner, stale_leases, key).await {
        m.multipart = Some(wire(held_parts));
        return Ok((m, None));
    }
    let upload_id = s3.initiate_multipart(key, NAR_CONTENT_TYPE).await.map_err(|e| ApiError::Storage(e.to_string()))?;
    m.multipart = Some(wire(Vec::new()));
    Ok((m, Some(upload_id)))
}

/// Issue 18, resume: the multipart upload of `key` an earlier push of `owner` started and never finished
/// (a `niks3 push` killed part way: its session and upload stay until GC), taken over into `session` and
/// handed out again, cut exactly as before (the part size depends only on the NAR's size and the
/// configuration): the parts the bucket holds, which the client reuses when its own part has the same
/// size and MD5. Only once that push's leases went stale (it stopped touching
/// them; this push just took the path's lease, so that one is), and only for the same owner: an upload
/// is never handed to another token. `None` means start afresh: nothing to continue, or the bucket no
/// longer has it (GC aborted it, or the listing failed), whose record is then dropped.
async fn resume_multipart(
    state: &HttpState,
    s3: &S3Store,
    session: i64,
    owner: &SessionOwner,
    stale_leases: DateTime<Utc>,
    key: &ObjectKey,
) -> Option<Vec<HeldPartWire>> {
    let upload_id = match state.db.take_over_push_multipart(session, owner, key, stale_leases).await {
        Ok(Some(id)) => id,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!("looking for an interrupted multipart upload of {key}: {e}; starting afresh");
            return None;
        }
    };
    let held = match s3.list_parts(key, &upload_id).await {
        Ok(held) => held,
        Err(e) => {
            // Gone (404) or unreadable: what is left in the bucket, GC's age-based sweep aborts.
            tracing::info!("the interrupted multipart upload of {key} cannot be continued ({e}); starting afresh");
            forget_multipart(state, &[session], key).await;
            return None;
        }
    };
    let mut held_parts: Vec<HeldPartWire> =
        held.into_iter().map(|(number, part)| HeldPartWire { number, size: part.size, etag: part.etag }).collect();
    held_parts.sort_unstable_by_key(|p| p.number);
    let held_bytes: u64 = held_parts.iter().map(|p| p.size).sum();
    tracing::info!(%key, held_parts = held_parts.len(), held_bytes, "continuing an interrupted multipart upload of a push");
    Some(held_parts)
}

/// The answer's entry for the NAR of `p`, not yet told where to go.
fn missing_nar(state: &HttpState, p: &PathInfo) -> MissingNar {
    MissingNar {
        path: state.store_dir.display(&p.path),
        nar_hash: p.nar_hash.to_nix_string(),
        upload_url: String::new(),
        presigned: false,
        multipart: None,
        presign_route: None,
    }
}
