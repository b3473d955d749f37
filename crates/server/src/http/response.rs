//! Small helpers to build responses with the right status, content type and caching headers.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use warp::reply::Response;

/// `Cache-Control` of a miss: Nix asks again soon after a path is pushed, so misses must not stick.
pub(crate) const CACHE_MISS: &str = "public, max-age=5";
/// `Cache-Control` of NARs: their key is their hash, so they never change.
pub(crate) const CACHE_IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of narinfos, listings, logs, realisations: short, so that GC and re-pushes show up.
pub(crate) const CACHE_SHORT: &str = "public, max-age=60";
/// `Cache-Control` of pages that must always be fresh (health, metrics, API answers).
pub(crate) const NO_STORE: &str = "no-store";

/// A response with `body`, `content_type` and `cache_control`; for HEAD the body is dropped but
/// `Content-Length` still says how long it would be.
pub fn bytes(status: StatusCode, content_type: &str, cache_control: &str, body: Bytes, head: bool) -> Response {
    let len = body.len();
    let mut resp = if head { Response::new(Bytes::new().into()) } else { Response::new(body.into()) };
    *resp.status_mut() = status;
    set(&mut resp, header::CONTENT_TYPE, content_type);
    set(&mut resp, header::CACHE_CONTROL, cache_control);
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

/// A plain-text response.
pub fn text(status: StatusCode, cache_control: &str, body: impl Into<String>) -> Response {
    let mut s: String = body.into();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    bytes(status, "text/plain; charset=utf-8", cache_control, Bytes::from(s), false)
}

/// A JSON response.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes());
    bytes(status, "application/json", NO_STORE, Bytes::from(body), false)
}

/// A JSON error `{"error": message}`.
pub(crate) fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &serde_json::json!({ "error": message.into() }))
}

/// 404 with a short negative cache lifetime.
pub(crate) fn not_found() -> Response {
    text(StatusCode::NOT_FOUND, CACHE_MISS, "not found")
}

/// 405 for anything but the methods a route supports.
pub(crate) fn method_not_allowed() -> Response {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, NO_STORE, "method not allowed");
    set(&mut r, header::ALLOW, "GET, HEAD");
    r
}

/// 502 when the object store failed; the details go to the log, not to the client.
pub(crate) fn store_failed(what: &str, err: &dyn std::fmt::Display) -> Response {
    tracing::warn!("store error serving {what}: {err}");
    text(StatusCode::BAD_GATEWAY, NO_STORE, "object store error")
}

/// Sets a header from a static-ish string (values we build are always valid header text; anything that is
/// not is skipped rather than panicking).
pub fn set(resp: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        resp.headers_mut().insert(name, v);
    }
}
