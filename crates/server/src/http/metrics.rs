//! `/metrics`: the server's counters in the Prometheus text exposition format
//! ([`crate::metrics::Metrics::render`]).

use super::{HttpState, Request, response};
use bytes::Bytes;
use http::StatusCode;
use warp::reply::Response;

/// Answers `GET/HEAD /metrics`.
pub fn handle(state: &HttpState, req: &Request) -> Response {
    let body = state.metrics.render();
    response::bytes(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        response::NO_STORE,
        Bytes::from(body),
        req.method == http::Method::HEAD,
    )
}
