//! `POST /api/v1/uploads/{id}/nar/{nix32}/presign` (S3 backend): a presigned `PUT` URL bound to one
//! compressed NAR file, asked for once the client has compressed it. `Content-Length` and
//! `x-amz-checksum-sha256` are signed headers, so the URL accepts exactly that file and nothing else
//! (security review #19: an unbound URL takes any body up to 5 GiB, bypassing the upload limit, and can
//! replace the object for as long as it lives).
//!
//! The session must have been told to upload that NAR (it is missing from the cache), the size must be
//! one zstd can produce from the announced NarSize and fit in one part; a NAR stored meanwhile by another
//! push is a 409 (complete reuses the stored one).

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::error::ApiError;
use super::push::{clip, nar_upload_target, planned_nar};
use super::read_json;
use http::StatusCode;
use niks3_api::protocol::{PresignRequest, PresignResponse};
use niks3_local::nar_stream::max_compressed_size;
use niks3_nix::hash::Sha256Hash;
use niks3_storage::Storage;
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
    let Storage::S3(s3) = &*state.store else {
        return Err(ApiError::NotFound("this server relays NARs (no presigned URLs)".to_owned()));
    };
    let nar_size = match planned_nar(state, caller, id, &key).await? {
        (_, Some(_)) => {
            return Err(ApiError::conflict(format!(
                "{key} was stored meanwhile by another push; complete without uploading it"
            )));
        }
        (n, None) => n,
    };
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
