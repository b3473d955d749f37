//! `POST /api/v1/gc`: runs the collector ([`crate::gc::run`]) with the caller's options and answers its
//! five figures as JSON; the figures of a real (not dry) run also go to `/metrics`.
//!
//! Options below [`API_OPTION_FLOOR`] (forgetting closures pushed within the last hour, dropping uploads
//! younger than that) are refused unless an `admin` token asks with `force`: with `gc` scope alone a
//! token can collect what is old, never wipe what was just pushed.

use super::super::{HttpState, Request, response};
use super::auth::Caller;
use super::error::ApiError;
use super::read_json;
use crate::db::audit::AuditAction;
use crate::gc::{API_OPTION_FLOOR, GcError, GcOptions};
use http::StatusCode;
use niks3_api::protocol::GcRequest;
use std::sync::Arc;
use std::time::Duration;
use warp::reply::Response;

/// `POST /api/v1/gc`.
pub async fn handle(state: &Arc<HttpState>, req: Request, caller: &Caller) -> Result<Response, ApiError> {
    let body: GcRequest = read_json(req, 64 << 10).await?;
    below_floor(&body, caller)?;
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
                let mut detail = serde_json::json!({ "figures": figures, "options": body });
                if let Some(oidc) = caller.audit_detail() {
                    detail["oidc"] = oidc;
                }
                if let Err(e) = state.db.audit(&caller.name, AuditAction::Gc, "", &detail, chrono::Utc::now()).await {
                    tracing::warn!("recording the GC run in the audit trail: {e}");
                }
            }
            Ok(response::json(StatusCode::OK, &figures))
        }
        Err(e @ GcError::AlreadyRunning) => Err(ApiError::conflict(e.to_string())),
        Err(e @ GcError::Options { .. }) => Err(ApiError::bad(e.to_string())),
        // The database's own text stays in the log.
        Err(GcError::Db(e)) => Err(e.into()),
        Err(e @ GcError::Storage { .. }) => Err(ApiError::Storage(e.to_string())),
    }
}

/// Refuses options below [`API_OPTION_FLOOR`]: 403 for a token that is not `admin`, 400 for an admin
/// request without `force`.
fn below_floor(body: &GcRequest, caller: &Caller) -> Result<(), ApiError> {
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
        return Ok(());
    }
    let low = low.join(" and ");
    Err(if caller.scopes.is_admin() {
        ApiError::bad(format!("{low} is below the floor of {floor} s; send \"force\": true to go lower on purpose"))
    } else {
        ApiError::Forbidden(format!(
            "{low} is below the floor of {floor} s; only an admin token with \"force\": true may go lower \
             (token {:?} has scopes: {})",
            caller.name, caller.scopes
        ))
    })
}
