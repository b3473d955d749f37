//! `POST /api/v1/gc`: runs the collector ([`crate::gc::run`]) with the caller's options and answers its
//! five figures as JSON; the figures of a real (not dry) run also go to `/metrics`.
//!
//! Options below [`API_OPTION_FLOOR`] (forgetting closures pushed within the last hour, dropping uploads
//! younger than that) are refused unless an `admin` token asks with `force`: with `gc` scope alone a
//! token can collect what is old, never wipe what was just pushed.

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::protocol::GcRequest;
use super::read_json;
use crate::gc::{API_OPTION_FLOOR, GcError, GcOptions};
use http::StatusCode;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;

/// `POST /api/v1/gc`.
pub async fn handle(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Response {
    let body: GcRequest = match read_json(req, 64 << 10).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if let Some(r) = below_floor(&body, caller) {
        return r;
    }
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

/// The refusal of options below [`API_OPTION_FLOOR`]: 403 for a token that is not `admin`, 400 for an
/// admin request without `force`; `None` when the options may run.
fn below_floor(body: &GcRequest, caller: &Caller) -> Option<Response> {
    let floor = API_OPTION_FLOOR.as_secs();
    let low: Vec<String> = [
        ("older_than_secs", body.older_than_secs),
        ("failed_uploads_older_than_secs", body.failed_uploads_older_than_secs),
    ]
    .into_iter()
    .filter(|(_, v)| *v < floor)
    .map(|(name, v)| format!("{name} = {v}"))
    .collect();
    if low.is_empty() || (caller.scopes.is_admin() && body.force) {
        return None;
    }
    let low = low.join(" and ");
    Some(if caller.scopes.is_admin() {
        response::json_error(
            StatusCode::BAD_REQUEST,
            format!("{low} is below the floor of {floor} s; send \"force\": true to go lower on purpose"),
        )
    } else {
        response::json_error(
            StatusCode::FORBIDDEN,
            format!(
                "{low} is below the floor of {floor} s; only an admin token with \"force\": true may go lower \
                 (token {:?} has scopes: {})",
                caller.name, caller.scopes
            ),
        )
    })
}
