//! `POST /api/v1/abort`: ends sessions a client gave up on, aborting their multipart uploads.

use super::sessions::{abort_multipart, owned_sessions};
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use crate::http::api::read_json;
use crate::http::{HttpState, Request, response};
use http::StatusCode;
use niks3_api::protocol::{AbortRequest, AbortResponse};
use niks3_storage::ObjectKey;
use std::sync::Arc;
use warp::reply::Response;

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

/// Ends `caller`'s sessions among `ids` after aborting their multipart uploads (best effort: what is left,
/// GC removes). Returns how many sessions and multipart uploads were ended.
pub(super) async fn abort_sessions(state: &HttpState, caller: &Caller, ids: &[i64]) -> (u64, u64) {
    let Ok(owned) = owned_sessions(state, caller, ids).await else { return (0, 0) };
    let ids = owned.as_slice();
    let mut multiparts = 0;
    if let Ok(started) = state.db.multiparts_of(ids).await {
        for (key, id) in &started {
            if let Ok((_, key)) = ObjectKey::parse(key) {
                abort_multipart(state, &key, id).await;
                multiparts += 1;
            }
        }
    }
    let mut sessions = 0;
    match state.db.end_sessions(ids).await {
        Ok(n) => sessions = n,
        Err(e) => tracing::warn!("ending aborted upload sessions: {e}"),
    }
    (sessions, multiparts)
}
