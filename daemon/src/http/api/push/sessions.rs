//! Upload sessions as the upload routes see them: which session a caller owns, what it claimed and which
//! NARs it was told to upload, and its multipart uploads.

use super::clip;
use crate::db::UploadId;
use crate::http::HttpState;
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use crate::nix::hash::Sha256Hash;
use crate::store::{ObjectKey, Store};
use std::collections::HashMap;

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
pub(super) async fn session_claims(
    state: &HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<bool, String> {
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
pub(crate) async fn refuse_unclaimed(
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

/// Of sessions `ids`, those `caller` opened (another token's session is treated as unknown).
pub(super) async fn owned_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> Result<Vec<i64>, ApiError> {
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

/// The multipart uploads recorded for sessions `ids`: key → upload id.
pub(super) async fn multiparts_of(state: &HttpState, ids: &[i64]) -> Result<HashMap<String, String>, ApiError> {
    let client = state.db.pool().get().await.map_err(|e| ApiError::Database(e.to_string()))?;
    let rows = client
        .query("SELECT key, multipart_id FROM upload_multiparts WHERE upload_id = ANY($1)", &[&ids])
        .await
        .map_err(|e| ApiError::Database(e.to_string()))?;
    Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
}

/// Best effort: aborts multipart upload `upload_id` of `key` (what fails here, GC retries).
pub(super) async fn abort_multipart(state: &HttpState, key: &ObjectKey, upload_id: &str) {
    if let Store::S3(s3) = &*state.store
        && let Err(e) = s3.abort_multipart(key, upload_id).await
    {
        tracing::warn!(error = %e, "could not abort a multipart upload; GC will retry");
    }
}
