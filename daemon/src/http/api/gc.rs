//! `POST /api/v1/gc`: runs the collector ([`crate::gc::run`]) with the caller's options and answers its
//! five figures as JSON; the figures of a real (not dry) run also go to `/metrics`.

use super::super::{HttpState, Request, response};
use super::protocol::GcRequest;
use super::read_json;
use crate::gc::{GcError, GcOptions};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;

/// `POST /api/v1/gc`.
pub async fn handle(state: &Arc<HttpState>, req: Request) -> Response {
    let body: GcRequest = match read_json(req, 64 << 10).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let opts = GcOptions {
        older_than: Duration::from_secs(body.older_than_secs),
        failed_uploads_older_than: Duration::from_secs(body.failed_uploads_older_than_secs),
        force: body.force,
        dry_run: body.dry_run,
    };
    match crate::gc::run(&state.db, &state.store, opts, chrono::Utc::now()).await {
        Ok(figures) => {
            if !body.dry_run {
                state.metrics.record_gc(figures);
            }
            response::json(StatusCode::OK, &figures)
        }
        Err(e @ GcError::AlreadyRunning) => response::json_error(StatusCode::CONFLICT, e.to_string()),
        Err(e @ GcError::Options { .. }) => response::json_error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::warn!("GC failed: {e}");
            response::json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
        }
    }
}
