//! `POST /api/v1/realisations`: publishes realisations of content-addressed derivation outputs pushed by a
//! client (`niks3 drain --server`), through the same step the local pipeline uses
//! ([`crate::upload::publish::Publisher::publish_realisation`]): each is checked, re-signed with the
//! server's keys and written only once its output's narinfo and the realisations it depends on are in the
//! cache (else 409: push those first, then retry).

use super::super::{HttpState, Request, response};
use super::protocol::{RealisationsRequest, RealisationsResponse};
use super::read_json;
use crate::nix::realisation::Realisation;
use crate::upload::UploadError;
use crate::upload::publish::Publisher;
use http::StatusCode;
use std::sync::Arc;
use warp::reply::Response;

/// `POST /api/v1/realisations`.
pub async fn handle(state: &Arc<HttpState>, req: Request) -> Response {
    let body: RealisationsRequest = match read_json(req, state.limits.max_json_body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if body.realisations.len() > state.limits.max_paths {
        return response::json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{} realisations in one request (at most {})", body.realisations.len(), state.limits.max_paths),
        );
    }
    let mut parsed = Vec::with_capacity(body.realisations.len());
    for (i, v) in body.realisations.iter().enumerate() {
        match Realisation::from_json(v.to_string().as_bytes()) {
            Ok(r) => parsed.push(r),
            Err(e) => return response::json_error(StatusCode::BAD_REQUEST, format!("realisation {i}: {e}")),
        }
    }
    let publisher = Publisher::new(
        Arc::clone(&state.store),
        state.db.clone(),
        state.store_dir.clone(),
        Arc::clone(&state.sign_keys),
    );
    for r in &parsed {
        match publisher.publish_realisation(r, chrono::Utc::now()).await {
            Ok(_) => {}
            Err(e @ UploadError::RealisationIncomplete { .. }) => {
                return response::json_error(StatusCode::CONFLICT, e.to_string());
            }
            // Permanent, unlike 409 (push what is missing, then retry): the first realisation stays.
            Err(e @ UploadError::RealisationConflict { .. }) => {
                return response::json_error(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
            }
            Err(e @ UploadError::Db(_)) => {
                tracing::warn!("database error publishing a realisation: {e}");
                return response::json_error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable");
            }
            Err(e @ UploadError::Store(_)) => {
                tracing::warn!("store error publishing a realisation: {e}");
                return response::json_error(StatusCode::BAD_GATEWAY, "object store error");
            }
            Err(e) => return response::json_error(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }
    response::json(StatusCode::OK, &RealisationsResponse { published: parsed.len() })
}
