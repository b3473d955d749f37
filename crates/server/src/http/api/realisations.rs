//! `POST /api/v1/realisations`: publishes realisations of content-addressed derivation outputs pushed by a
//! client (`niks3 drain --server`), through the same step the local pipeline uses
//! ([`crate::upload::publish::Publisher::publish_realisation`]): each is checked, re-signed with the
//! server's keys and written only once its output's narinfo and the realisations it depends on are in the
//! cache (else 409: push those first, then retry).

use super::super::{HttpState, Request, response};
use super::error::ApiError;
use super::read_json;
use crate::upload::UploadError;
use crate::upload::publish::Publisher;
use http::StatusCode;
use niks3_api::protocol::{RealisationsRequest, RealisationsResponse};
use niks3_nix::realisation::Realisation;
use std::sync::Arc;
use warp::reply::Response;

/// `POST /api/v1/realisations`.
pub async fn handle(state: &Arc<HttpState>, req: Request) -> Result<Response, ApiError> {
    let body: RealisationsRequest = read_json(req, state.limits.max_json_body).await?;
    if body.realisations.len() > state.limits.max_paths {
        return Err(ApiError::TooLarge(format!(
            "{} realisations in one request (at most {})",
            body.realisations.len(),
            state.limits.max_paths
        )));
    }
    let mut parsed = Vec::with_capacity(body.realisations.len());
    for (i, v) in body.realisations.iter().enumerate() {
        let r = Realisation::from_json(v.to_string().as_bytes())
            .map_err(|e| ApiError::bad(format!("realisation {i}: {e}")))?;
        parsed.push(r);
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
            Err(e @ UploadError::RealisationIncomplete { .. }) => return Err(ApiError::conflict(e.to_string())),
            // Permanent, unlike 409 (push what is missing, then retry): the first realisation stays.
            Err(e @ UploadError::RealisationConflict { .. }) => return Err(ApiError::Unprocessable(e.to_string())),
            Err(UploadError::Db(e)) => return Err(e.into()),
            Err(UploadError::Storage(e)) => return Err(e.into()),
            Err(e) => return Err(ApiError::bad(e.to_string())),
        }
    }
    Ok(response::json(StatusCode::OK, &RealisationsResponse { published: parsed.len() }))
}
