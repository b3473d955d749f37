//! `POST /api/v1/gc`: runs the collector and answers its five figures.

use super::super::{HttpState, Request, response};
use http::StatusCode;
use std::sync::Arc;
use warp::reply::Response;

/// `POST /api/v1/gc`.
pub async fn handle(_state: &Arc<HttpState>, _req: Request) -> Response {
    response::json_error(StatusCode::NOT_IMPLEMENTED, "not implemented yet")
}
