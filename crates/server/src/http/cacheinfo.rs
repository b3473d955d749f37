//! `/nix-cache-info`: generated from the configuration (StoreDir, WantMassQuery, Priority), so the file
//! a client sees always matches how the server validates and signs paths, whatever the bucket holds.

use super::{HttpState, Request, response};
use bytes::Bytes;
use http::StatusCode;
use warp::reply::Response;

/// The text of `nix-cache-info` for this configuration.
pub fn text(state: &HttpState) -> String {
    format!("StoreDir: {}\nWantMassQuery: 1\nPriority: {}\n", state.store_dir.as_str(), state.priority)
}

/// Answers `GET/HEAD /nix-cache-info`.
pub fn handle(state: &HttpState, req: &Request) -> Response {
    let head = req.method == http::Method::HEAD;
    response::bytes(StatusCode::OK, "text/x-nix-cache-info", "public, max-age=300", Bytes::from(text(state)), head)
}
