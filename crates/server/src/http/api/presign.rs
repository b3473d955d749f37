//! Presigned `PUT` URLs bound to bytes that exist (S3 backend), asked for once the client has compressed
//! them: an unbound URL takes any body up to 5 GiB, bypassing the upload limit, and can replace the
//! object for as long as it lives (security review #19); and a URL signed before its bytes exist
//! cannot carry a checksum, so S3 would store a body corrupted on the wire (issue 18).
//!
//! - `POST /api/v1/uploads/{id}/nar/{nix32}/presign`: one whole compressed NAR (at most one part);
//!   `Content-Length` and `x-amz-checksum-sha256` are signed headers.
//! - `POST /api/v1/uploads/{id}/nar/{nix32}/part`: one part of the session's multipart upload of that
//!   NAR; `Content-Length` and `Content-MD5` are signed headers.
//!
//! Either way the session must have been told to upload that NAR (it is missing from the cache) and the
//! size must be one the announced NarSize allows; a NAR stored meanwhile by another push is a 409
//! (complete reuses the stored one).

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::error::ApiError;
use super::push::{clip, nar_upload_target, planned_nar};
use super::read_json;
use http::StatusCode;
use niks3_api::protocol::{PartPresignRequest, PresignRequest, PresignResponse};
use niks3_local::nar_stream::max_compressed_size;
use niks3_nix::hash::Sha256Hash;
use niks3_storage::s3::S3Store;
use niks3_storage::{ObjectKey, Storage};
use std::sync::Arc;
use warp::reply::Response;

/// How long a bound URL lives: it can only ever upload the one file, so this only bounds how long a
/// slow client may take to start.
const BOUND_PUT_EXPIRY: std::time::Duration = std::time::Duration::from_hours(1);

/// `POST /api/v1/uploads/{id}/nar/{nix32}/presign`.
pub async fn handle(
    state: &Arc<HttpState>,
    req: Request,
    caller: &Caller,
    id: &str,
    hash: &str,
) -> Result<Response, ApiError> {
    let (id, _, key) = nar_upload_target(id, hash).map_err(ApiError::bad)?;
    let body: PresignRequest = read_json(req, 4096).await?;
    let Ok(file_hash) = Sha256Hash::parse(&body.file_hash) else {
        return Err(ApiError::bad(format!("file_hash {:?} is not a sha256 hash", clip(&body.file_hash))));
    };
    let (s3, nar_size) = missing_nar(state, caller, id, &key).await?;
    let largest = max_compressed_size(nar_size).min(s3.part_size());
    if body.file_size == 0 || body.file_size > largest {
        return Err(ApiError::TooLarge(format!(
            "a compressed NAR of {nar_size} bytes going up in one PUT has 1..={largest} bytes, not {}",
            body.file_size
        )));
    }
    let expiry = BOUND_PUT_EXPIRY.min(state.limits.presign_expiry);
    let url = s3.presign_put_bound(&key, expiry, body.file_size, &file_hash).await?;
    let checksum = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(file_hash.0)
    };
    let headers = [
        ("content-length".to_owned(), body.file_size.to_string()),
        (niks3_storage::s3::CHECKSUM_HEADER.to_owned(), checksum),
    ]
    .into_iter()
    .collect();
    Ok(response::json(StatusCode::OK, &PresignResponse { upload_url: url, headers }))
}

/// `POST /api/v1/uploads/{id}/nar/{nix32}/part`: a URL for one part of the multipart upload the session
/// started for that NAR at announce, bound to the part's size and MD5. The part number must be one the
/// announced NarSize can need and the size at most the upload's part size (S3 itself refuses, at
/// completion, a part other than the last that is shorter).
pub async fn handle_part(
    state: &Arc<HttpState>,
    req: Request,
    caller: &Caller,
    id: &str,
    hash: &str,
) -> Result<Response, ApiError> {
    use base64::Engine;
    let (id, _, key) = nar_upload_target(id, hash).map_err(ApiError::bad)?;
    let body: PartPresignRequest = read_json(req, 4096).await?;
    let md5: [u8; 16] = base64::engine::general_purpose::STANDARD
        .decode(&body.md5)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| ApiError::bad(format!("md5 {:?} is not a base64 MD5 (16 bytes)", clip(&body.md5))))?;
    let (s3, nar_size) = missing_nar(state, caller, id, &key).await?;
    let upload_id = state.db.multiparts_of(&[id]).await?.remove(key.as_str()).ok_or_else(|| {
        ApiError::NotFound(format!("upload {id} has no multipart upload of {key} (it goes up in one PUT)"))
    })?;
    let max_size = max_compressed_size(nar_size);
    let part_size = s3.part_size_for(max_size);
    let parts = max_size.div_ceil(part_size);
    if body.part == 0 || u64::from(body.part) > parts {
        return Err(ApiError::bad(format!(
            "part {} of {key}: a NAR of {nar_size} bytes in parts of {part_size} bytes has parts 1..={parts}",
            body.part
        )));
    }
    if body.size == 0 || body.size > part_size {
        return Err(ApiError::TooLarge(format!(
            "part {} of {key} has 1..={part_size} bytes, not {}",
            body.part, body.size
        )));
    }
    let expiry = BOUND_PUT_EXPIRY.min(state.limits.presign_expiry);
    let url = s3.presign_part_bound(&key, &upload_id, body.part, expiry, body.size, &md5).await?;
    // The header as signed (canonical base64), whatever spelling of it the client sent.
    let content_md5 = base64::engine::general_purpose::STANDARD.encode(md5);
    let headers = [("content-length".to_owned(), body.size.to_string()), ("content-md5".to_owned(), content_md5)]
        .into_iter()
        .collect();
    Ok(response::json(StatusCode::OK, &PresignResponse { upload_url: url, headers }))
}

/// The S3 store and the announced NarSize of NAR `key`, which session `id` of `caller` was told to upload
/// and nobody has stored meanwhile (409: complete reuses the stored one).
async fn missing_nar<'a>(
    state: &'a HttpState,
    caller: &Caller,
    id: i64,
    key: &ObjectKey,
) -> Result<(&'a S3Store, u64), ApiError> {
    let Storage::S3(s3) = &*state.store else {
        return Err(ApiError::NotFound("this server relays NARs (no presigned URLs)".to_owned()));
    };
    match planned_nar(state, caller, id, key).await? {
        (_, Some(_)) => Err(ApiError::conflict(format!(
            "{key} was stored meanwhile by another push; complete without uploading it"
        ))),
        (n, None) => Ok((s3, n)),
    }
}
