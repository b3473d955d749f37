//! The push API under `/api/v1/` (see docs/api.md): bearer-token auth on every route ([`auth`]), each
//! route's scope checked here, bounded request bodies, then [`push`] (announce a closure, upload NARs,
//! complete or abort), [`realisations`] and [`gc`].

pub mod auth;
pub mod error;
pub mod gc;
pub mod presign;
pub mod push;
pub mod rate;
pub mod realisations;
pub mod relay;

use super::{HttpState, Request, response};
use bytes::{Bytes, BytesMut};
use error::ApiError;
use futures::StreamExt;
use http::StatusCode;
use niks3_api::token::Scope;
use std::sync::Arc;
use warp::reply::Response;

/// Limits on what one API request may carry.
#[derive(Clone, Copy, Debug)]
pub struct ApiLimits {
    /// Largest JSON body accepted (bytes).
    pub max_json_body: usize,
    /// Most store paths in one push/complete request.
    pub max_paths: usize,
    /// Largest NAR accepted through `PUT /api/v1/uploads/…` (compressed bytes).
    pub max_nar_upload: u64,
    /// Largest build log accepted through `PUT /api/v1/uploads/{id}/log/{drv}`.
    pub max_log_upload: u64,
    /// Largest `.ls` listing accepted in a complete request (serialised JSON bytes).
    pub max_listing: usize,
    /// How long presigned upload URLs stay valid.
    pub presign_expiry: std::time::Duration,
    /// How long a push's write leases outlive its last sign of life (`--push-lease-timeout`).
    pub lease_timeout: std::time::Duration,
    /// Upload sessions a scoped token may have open at once (`--max-upload-sessions`); 0: no limit.
    pub max_sessions_per_token: u32,
    /// Missing paths with a larger NAR are left out of pushes (`--max-nar-size`; a push may ask for a
    /// smaller limit of its own).
    pub max_nar_size: Option<u64>,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_json_body: 64 << 20,
            max_paths: 100_000,
            max_nar_upload: 64 << 30,
            max_log_upload: 64 << 20,
            max_listing: 16 << 20,
            presign_expiry: std::time::Duration::from_hours(1),
            lease_timeout: std::time::Duration::from_mins(2),
            max_sessions_per_token: 64,
            max_nar_size: None,
        }
    }
}

/// Routes `/api/<rest>`: the bearer token first (401, nothing read), then the route (404/405), then the
/// token's scope (403): `push` for the push routes, `gc` for GC. Returns the metrics route label too.
pub async fn handle(state: &Arc<HttpState>, req: Request, rest: &str) -> (&'static str, Response) {
    let Some(seed) = &state.api_token else { return ("api", response::not_found()) };
    let auth = req.headers.get(http::header::AUTHORIZATION);
    let caller = match auth::authenticate(seed, &state.db, state.oidc.as_deref(), auth, chrono::Utc::now()).await {
        Ok(c) => c,
        Err(e @ auth::Unauthenticated::Refused) => {
            let mut r = response::json_error(StatusCode::UNAUTHORIZED, e.to_string());
            response::set(&mut r, http::header::WWW_AUTHENTICATE, "Bearer");
            return ("api-auth", r);
        }
        Err(e @ (auth::Unauthenticated::Unavailable(_) | auth::Unauthenticated::OidcUnavailable(_))) => {
            tracing::warn!("{e}");
            return ("api-auth", response::json_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()));
        }
    };
    if let Err(wait) = state.api_rate.check(&caller.name) {
        let secs = wait.as_secs() + 1;
        let mut r = response::json_error(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "token {:?} sent more than {} API requests in a minute; retry in {secs} s",
                caller.name,
                state.api_rate.per_minute()
            ),
        );
        response::set(&mut r, http::header::RETRY_AFTER, &secs.to_string());
        return ("api-rate", r);
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let post = req.method == http::Method::POST;
    let put = req.method == http::Method::PUT;
    let needs = match segs.as_slice() {
        ["v1", "gc"] if post => Scope::Gc,
        ["v1", "push" | "complete" | "abort" | "touch" | "realisations"]
        | ["v1", "uploads", _, "nar", _, "presign" | "part"]
            if post =>
        {
            Scope::Push
        }
        ["v1", "uploads", _, "nar" | "log", _] if put => Scope::Push,
        ["v1", "push" | "complete" | "abort" | "touch" | "gc" | "realisations"]
        | ["v1", "uploads", _, "nar" | "log", _]
        | ["v1", "uploads", _, "nar", _, "presign" | "part"] => {
            return ("api", ApiError::MethodNotAllowed.into_response());
        }
        _ => return ("api", ApiError::NotFound("no such API route".to_owned()).into_response()),
    };
    if !caller.allows(needs) {
        let msg = format!(
            "token {:?} (scopes: {}) may not do this: the route needs the {needs} scope; \
             create a token with `niks3 token create --scope {needs}`",
            caller.name, caller.scopes
        );
        return ("api-forbidden", response::json_error(StatusCode::FORBIDDEN, msg));
    }
    let (label, answer) = match segs.as_slice() {
        ["v1", "push"] => ("api-push", push::announce(state, req, &caller).await),
        ["v1", "complete"] => ("api-complete", push::complete(state, req, &caller).await),
        ["v1", "abort"] => ("api-abort", push::abort(state, req, &caller).await),
        ["v1", "touch"] => ("api-touch", push::touch(state, req, &caller).await),
        ["v1", "uploads", id, "nar", hash] => {
            let (id, hash) = ((*id).to_owned(), (*hash).to_owned());
            ("api-upload", relay::upload_nar(state, req, &caller, &id, &hash).await)
        }
        ["v1", "uploads", id, "log", drv] => {
            let (id, drv) = ((*id).to_owned(), (*drv).to_owned());
            ("api-upload-log", relay::upload_log(state, req, &caller, &id, &drv).await)
        }
        ["v1", "uploads", id, "nar", hash, "presign"] => {
            let (id, hash) = ((*id).to_owned(), (*hash).to_owned());
            ("api-presign", presign::handle(state, req, &caller, &id, &hash).await)
        }
        ["v1", "uploads", id, "nar", hash, "part"] => {
            let (id, hash) = ((*id).to_owned(), (*hash).to_owned());
            ("api-presign-part", presign::handle_part(state, req, &caller, &id, &hash).await)
        }
        ["v1", "realisations"] => ("api-realisations", realisations::handle(state, req).await),
        ["v1", "gc"] => ("api-gc", gc::handle(state, req, &caller).await),
        _ => ("api", Err(ApiError::NotFound("no such API route".to_owned()))),
    };
    (label, answer.unwrap_or_else(ApiError::into_response))
}

/// Reads a whole body of at most `limit` bytes (413 beyond; `what` names the body in the message).
pub(crate) async fn read_body(req: Request, limit: u64, what: &str) -> Result<Bytes, ApiError> {
    let mut body = req.body;
    let mut buf = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk: Bytes = chunk.map_err(|e| ApiError::bad(format!("reading the {what}: {e}")))?;
        if (buf.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::TooLarge(format!("{what} larger than {limit} bytes")));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads a JSON body of at most `limit` bytes and parses it; a bad body is a 400, a big one a 413.
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(req: Request, limit: usize) -> Result<T, ApiError> {
    let buf = read_body(req, limit as u64, "request body").await?;
    serde_json::from_slice(&buf).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}
