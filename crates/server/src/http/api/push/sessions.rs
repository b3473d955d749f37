//! Upload sessions as the upload routes see them: which session a caller owns, what it claimed and which
//! NARs it was told to upload, and its multipart uploads.

use super::clip;
use crate::db::UploadId;
use crate::http::HttpState;
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use niks3_nix::hash::Sha256Hash;
use niks3_storage::ObjectKey;

/// The session id, NarHash and NAR key of an upload route (`/api/v1/uploads/{id}/nar/{nix32}…`), or why
/// not (for a 400).
pub(crate) fn nar_upload_target(id: &str, hash: &str) -> Result<(i64, Sha256Hash, ObjectKey), String> {
    let Ok(id) = id.parse::<i64>() else { return Err(format!("invalid upload id {:?}", clip(id))) };
    match Sha256Hash::parse(&format!("sha256:{hash}")) {
        Ok(h) if h.to_nix32() == hash => Ok((id, h, ObjectKey::nar(&h))),
        _ => Err(format!("invalid NAR hash {:?} (expected 52 nix32 characters)", clip(hash))),
    }
}

/// The NarSize `caller`'s session `id` announced for the NAR `key` it was told to upload (404 when it was
/// not, or is another token's session), and the stored file when another push stored that NAR meanwhile
/// (with its FileHash).
pub(crate) async fn planned_nar(
    state: &HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<(u64, Option<(u64, Sha256Hash)>), ApiError> {
    let nar_size = match state.db.planned_nar_size(UploadId(id), &caller.session_owner(), key).await {
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

/// Refuses (404, or 503 when the database cannot say) unless upload session `id` of `caller` claimed
/// `key`. Every upload route checks this before accepting a byte.
pub(crate) async fn refuse_unclaimed(
    state: &HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<(), ApiError> {
    if state.db.session_claims(id, key, &caller.session_owner()).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("upload {id} does not exist or did not claim {key}")))
    }
}

/// Of sessions `ids`, those `caller` opened (another token's session is treated as unknown).
pub(super) async fn owned_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> Result<Vec<i64>, ApiError> {
    Ok(state.db.owned_sessions(ids, &caller.session_owner()).await?.into_keys().collect())
}

/// Best effort: aborts multipart upload `upload_id` of `key` (what fails here, GC retries).
pub(super) async fn abort_multipart(state: &HttpState, key: &ObjectKey, upload_id: &str) {
    if let Err(e) = state.store.abort_multipart(key, upload_id).await {
        tracing::warn!(error = %e, "could not abort a multipart upload; GC will retry");
    }
}
