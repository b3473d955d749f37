//! `POST /api/v1/touch`: a pusher's heartbeat. Its sessions' leases are marked touched now, so a long
//! upload keeps the paths it leased; a pusher that stops sending it (it died, or its server did) loses
//! them `--push-lease-timeout` later to the next push (db/leases.rs).

use super::sessions::owned_sessions;
use crate::http::api::auth::Caller;
use crate::http::api::error::ApiError;
use crate::http::api::read_json;
use crate::http::{HttpState, Request, response};
use http::StatusCode;
use niks3_api::protocol::{TouchRequest, TouchResponse};
use std::sync::Arc;
use warp::reply::Response;

/// `POST /api/v1/touch`.
pub async fn touch(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: TouchRequest = read_json(req, 64 << 10).await?;
    if body.uploads.len() > super::MAX_ROOTS {
        return Err(ApiError::bad(format!("too many upload ids: {}", body.uploads.len())));
    }
    let owned = owned_sessions(state, caller, &body.uploads).await?;
    let touched = state.db.touch_leases(&owned, chrono::Utc::now()).await?;
    Ok(response::json(StatusCode::OK, &TouchResponse { touched }))
}
