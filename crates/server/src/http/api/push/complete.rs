//! `POST /api/v1/complete`: completes the multipart uploads from the parts' ETags, checks every missing
//! NAR is in the store with the announced size, then publishes the narinfos a level of the closure at a
//! time (through [`crate::upload::publish::Publisher`], the same step the local pipeline uses) and ends
//! the session.

use super::clip;
use super::sessions::abort_multipart;
use super::validate::{missing_paths, skip_oversized, validate_off_workers};
use crate::db::audit::PushAudit;
use crate::db::leases::{Holder, stale_before};
use crate::db::{NewObject, UploadId};
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use crate::http::api::read_json;
use crate::http::{HttpState, Request, response};
use crate::upload::publish::{PublishInput, Publisher, StoredNar};
use bytes::Bytes;
use http::StatusCode;
use niks3_api::protocol::{CompleteRequest, CompleteResponse};
use niks3_nix::hash::Sha256Hash;
use niks3_nix::pathinfo::PathInfo;
use niks3_nix::store_path::StorePath;
use niks3_storage::{ObjectKey, SmallObject};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use warp::reply::Response;

/// `POST /api/v1/complete`.
pub async fn complete(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: CompleteRequest = read_json(req, state.limits.max_json_body).await?;
    let CompleteRequest { uploads, roots, paths, nars, listings: listing_wires, max_nar_size } = body;
    let closure = validate_off_workers(state, roots, paths).await?;
    // One session for the whole push (rooted at its first root), or one per root from older servers.
    if uploads.is_empty() || (uploads.len() != 1 && uploads.len() != closure.roots.len()) {
        return Err(ApiError::bad(format!("{} upload ids for {} roots", uploads.len(), closure.roots.len())));
    }
    // Each session must still exist (GC aborts stale ones), be the caller's and belong to its root.
    let sessions = state.db.owned_sessions(&uploads, &caller.session_owner()).await?;
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
    let (missing, skipped) = skip_oversized(state, max_nar_size, missing_paths(state, &closure).await?);
    // Referrers of the skipped paths are published naming them (the closure is recorded as incomplete).
    let skipped_keys: HashSet<ObjectKey> = skipped.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    // The missing paths this push leased it publishes; the others another push is uploading, and this
    // one waits for them (db/leases.rs). Nothing is taken here: this push's client uploaded the NARs of
    // its own leases only, so a path whose holder gave up means pushing again.
    let lease_keys: Vec<ObjectKey> = missing.iter().map(|p| ObjectKey::narinfo(&p.path)).collect();
    let ours = state.db.held_leases(&uploads, &lease_keys, chrono::Utc::now()).await?;
    let (todo, foreign): (Vec<&PathInfo>, Vec<&PathInfo>) =
        missing.iter().partition(|p| ours.contains(&ObjectKey::narinfo(&p.path)));
    // Finish the multipart uploads the client filled (a retried complete finds them finished already).
    let started = state.db.multiparts_of(&uploads).await?;
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
    // A level at a time (paths whose missing references are all in earlier levels): each level's
    // listings written together, its logs looked up together and its narinfos published together
    // (one store write, one statement: Publisher::publish_many), dependencies before dependents. Before
    // a level, the paths of other pushes it refers to must be published: every push orders levels by
    // the paths' own heights, so a push waits only for lower paths, and the push it waits for has
    // published all of its own paths below the level it is at — no circle of waits.
    let foreign_keys: HashSet<&StorePath> = foreign.iter().map(|p| &p.path).collect();
    for level in levels(&closure.paths, &todo) {
        let needed: Vec<&StorePath> = level
            .iter()
            .flat_map(|p| p.references.iter())
            .filter(|r| foreign_keys.contains(r))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        wait_published(state, &uploads, &needed).await?;
        let now = chrono::Utc::now();
        let mut inputs = Vec::with_capacity(level.len());
        let mut listing_objects = Vec::new();
        for p in &level {
            let mut input = PublishInput::new(p, stored[&p.nar_hash]);
            input.skipped_references = Some(&skipped_keys);
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
    // The whole closure is published when this answers (a drainer acknowledges its entry then).
    wait_published(state, &uploads, &foreign.iter().map(|p| &p.path).collect::<Vec<_>>()).await?;
    let now = chrono::Utc::now();
    let ids: Vec<UploadId> = uploads.iter().map(|i| UploadId(*i)).collect();
    let root_keys: Vec<ObjectKey> = closure.roots.iter().map(ObjectKey::narinfo).collect();
    let skipped_paths: Vec<String> = skipped.iter().map(|p| state.store_dir.display(&p.path)).collect();
    let audit = PushAudit {
        who: &caller.name,
        roots: closure.roots.iter().map(|r| state.store_dir.display(r)).collect(),
        detail: {
            let mut d = serde_json::json!({ "published": todo.len(), "closure_paths": closure.paths.len() });
            if !skipped_paths.is_empty() {
                d["skipped"] = serde_json::json!(skipped_paths);
            }
            if let Some(oidc) = caller.audit_detail() {
                d["oidc"] = oidc;
            }
            d
        },
    };
    match state.db.finish_uploads(&ids, &root_keys, &skipped_paths, Some(&audit), now).await {
        Ok(()) => {}
        Err(crate::db::DbError::UploadExpired(id)) => {
            return Err(ApiError::conflict(format!("upload {} expired meanwhile; push again", id.0)));
        }
        Err(e) => return Err(ApiError::Database(e.to_string())),
    }
    for p in &skipped {
        state.metrics.paths_skipped.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            path = %state.store_dir.display(&p.path),
            nar_size = p.nar_size,
            "skipped: its NAR is over the size limit (referrers are published without it)"
        );
    }
    tracing::info!(published = todo.len(), skipped = skipped.len(), paths = closure.paths.len(), "push completed");
    Ok(response::json(
        StatusCode::OK,
        &CompleteResponse { published: todo.len(), already_present: closure.paths.len() - todo.len() - skipped.len() },
    ))
}

/// Longest a complete waits for another push to publish paths this one needs.
const MAX_LEASE_WAIT: Duration = Duration::from_mins(10);
/// How often a waiting complete looks again.
const LEASE_POLL: Duration = Duration::from_millis(200);

/// Waits until every path of `paths` is published by the push leasing it, keeping the leases of
/// `sessions` touched meanwhile (this push is alive). A path nobody leases any more while it is still
/// missing (its pusher died and the lease went stale, or the push was aborted) is a 409: this push must
/// be made again, and will then upload the path itself. After [`MAX_LEASE_WAIT`], a 503.
async fn wait_published(state: &HttpState, sessions: &[i64], paths: &[&StorePath]) -> Result<(), ApiError> {
    let mut pending: Vec<ObjectKey> = paths.iter().map(|p| ObjectKey::narinfo(p)).collect();
    let started = Instant::now();
    let mut touched = Instant::now();
    while !pending.is_empty() {
        let now = chrono::Utc::now();
        let holders = state.db.lease_holders(&pending, stale_before(now, state.limits.lease_timeout)).await?;
        pending.retain(|k| holders.get(k) != Some(&Holder::Published));
        if let Some(k) = pending.iter().find(|k| holders.get(*k).is_none_or(|h| *h == Holder::Nobody)) {
            return Err(ApiError::conflict(format!(
                "{k}: the push that was uploading it stopped before publishing it; push again"
            )));
        }
        if pending.is_empty() {
            break;
        }
        if started.elapsed() > MAX_LEASE_WAIT {
            return Err(ApiError::Unavailable(format!(
                "{} paths still being pushed by other pushes after {} s (first: {}); push again",
                pending.len(),
                MAX_LEASE_WAIT.as_secs(),
                pending[0]
            )));
        }
        if touched.elapsed() > state.limits.lease_timeout / 4 {
            state.db.touch_leases(sessions, now).await?;
            touched = Instant::now();
        }
        tokio::time::sleep(LEASE_POLL).await;
    }
    Ok(())
}

/// The stored file of every NAR the paths of `todo` need, checked before anything is published (so a
/// missing one publishes nothing). A NAR whose FileHash the database knows (the relay computed it, or an
/// earlier push published it) is taken as recorded, and a client claiming another FileHash or FileSize
/// for it gets a 409; otherwise the client's FileHash and FileSize are used after a `HEAD` confirms the
/// size (presigned uploads: the server never sees the bytes).
pub(super) async fn stored_nars(
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

/// Finishes the multipart upload of `key` from the client's part ETags (only S3 stores have them: the
/// announce recorded one). A refusal by S3 (bad or missing part) aborts the upload: the client must push
/// again. Transient failures leave it for a retry.
pub(super) async fn complete_multipart(
    state: &HttpState,
    sessions: &[i64],
    key: &ObjectKey,
    upload_id: &str,
    etags: &[String],
) -> Result<(), ApiError> {
    if etags.len() as u64 > niks3_storage::s3::MAX_PARTS {
        return Err(ApiError::bad(format!("{} parts reported for {key}", etags.len())));
    }
    if let Some(e) = etags.iter().find(|e| !valid_etag(e)) {
        return Err(ApiError::bad(format!("malformed part ETag {:?} for {key}", clip(e))));
    }
    if let Err(e) = state.store.complete_multipart(key, upload_id, etags.to_vec()).await {
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
pub(super) async fn forget_multipart(state: &HttpState, sessions: &[i64], key: &ObjectKey) {
    if let Err(e) = state.db.forget_multipart(sessions, key).await {
        tracing::warn!("forgetting the multipart upload of {key}: {e}");
    }
}

/// An ETag as S3 servers send them (quoted hex, maybe `-N`): it goes into an XML body unescaped.
pub(super) fn valid_etag(e: &str) -> bool {
    !e.is_empty()
        && e.len() <= 256
        && e.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'"' | b'-' | b'_' | b'.'))
}

/// Names in each input the build log of its deriver when the log is in the store: logs the database
/// knows in one query, the others looked for in the store (and recorded with the narinfo).
pub(super) async fn add_stored_logs(state: &HttpState, inputs: &mut [PublishInput<'_>]) -> Result<(), ApiError> {
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

/// The paths of `todo` in levels by their height in the whole `closure` (dependencies first): a path's
/// height is one more than its highest reference's, 0 for a path without references. No two paths of
/// a level refer to each other, and every path comes after its references.
///
/// The height is the path's own (its closure never changes), not its place among the paths this push
/// lacks: every push through every server orders paths the same way, which is what keeps pushes waiting
/// for each other's leased paths from waiting in a circle (see [`complete`]).
pub(super) fn levels<'a>(closure: &[PathInfo], todo: &[&'a PathInfo]) -> Vec<Vec<&'a PathInfo>> {
    let mut height: HashMap<&StorePath, usize> = HashMap::with_capacity(closure.len());
    for p in closure {
        let h = p.references.iter().filter(|r| **r != p.path).filter_map(|r| height.get(r)).map(|h| h + 1).max();
        height.insert(&p.path, h.unwrap_or(0));
    }
    let mut levels: std::collections::BTreeMap<usize, Vec<&PathInfo>> = std::collections::BTreeMap::new();
    for &p in todo {
        levels.entry(height.get(&p.path).copied().unwrap_or(0)).or_default().push(p);
    }
    levels.into_values().collect()
}

/// Adds to a byte counter without wrapping around (NarSizes are client-supplied).
pub(super) fn add_saturating(counter: &std::sync::atomic::AtomicU64, n: u64) {
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_add(n)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counters_saturate_instead_of_wrapping() {
        let c = std::sync::atomic::AtomicU64::new(u64::MAX - 1);
        add_saturating(&c, 976);
        assert_eq!(c.load(Ordering::Relaxed), u64::MAX);
    }
}
