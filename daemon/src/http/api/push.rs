//! The push routes (announce, relayed NAR upload, complete). See docs/api.md.

use super::super::{HttpState, Request, response};
use http::StatusCode;
use std::sync::Arc;
use warp::reply::Response;

/// `POST /api/v1/push`.
pub async fn announce(_state: &Arc<HttpState>, _req: Request) -> Response {
    response::json_error(StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}

/// `POST /api/v1/complete`.
pub async fn complete(_state: &Arc<HttpState>, _req: Request) -> Response {
    response::json_error(StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}

/// `PUT /api/v1/uploads/{id}/nar/{nix32}`.
pub async fn upload_nar(_state: &Arc<HttpState>, _req: Request, _id: &str, _hash: &str) -> Response {
    response::json_error(StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}
