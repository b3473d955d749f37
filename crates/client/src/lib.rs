//! The HTTP client of the niks3 API, shared by `niks3 push`, `niks3 drain` and `niks3 gc`: the JSON
//! calls ([`ApiClient`]) and the push procedure ([`push::Pusher`]: closure → what is missing → NARs
//! serialised, checked and compressed here → uploaded straight to S3 when the server hands out presigned
//! URLs → complete). Never prints the token or a presigned URL (both are credentials).
//!
//! It knows the server only through the contract (`niks3-api`), never its code.

#![forbid(unsafe_code)]

pub mod failover;
pub mod oidc;
pub mod push;

use niks3_api::protocol::{
    AbortRequest, AbortResponse, CompleteRequest, CompleteResponse, GcRequest, PushRequest, PushResponse,
    RealisationsRequest, RealisationsResponse, TouchRequest, TouchResponse,
};
use niks3_api::token::ApiToken;
use niks3_local::realisations::ResolveError;
use std::time::Duration;

/// What went wrong talking to a niks3 server (or preparing what to send it).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server URL or token is unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// The request did not get an answer (connection refused, timeout, TLS, body error). The URL is left
    /// out on purpose: presigned URLs carry a signature.
    #[error("{what}: {source}")]
    Transport {
        /// The operation (`POST /api/v1/push`, `uploading the NAR of …`).
        what: String,
        /// The underlying error, without its URL.
        source: reqwest::Error,
    },
    /// The server (or S3) answered with an error status.
    #[error("{what}: HTTP {status}: {message}")]
    Status {
        /// The operation.
        what: String,
        /// The HTTP status.
        status: u16,
        /// The error message the server gave (its `error` field, or the start of the body).
        message: String,
    },
    /// The server answered something that is not the expected JSON.
    #[error("{what}: unexpected answer: {reason}")]
    Protocol {
        /// The operation.
        what: String,
        /// Why it could not be understood.
        reason: String,
    },
    /// The local Nix store could not tell us about the paths.
    #[error(transparent)]
    PathInfo(#[from] niks3_local::nix::PathInfoError),
    /// Serialising a path failed, or it does not match what Nix recorded (modified after build).
    #[error(transparent)]
    Nar(#[from] niks3_local::nar_stream::NarStreamError),
    /// Resolving the realisations a pushed realisation depends on failed.
    #[error(transparent)]
    Realisations(#[from] niks3_local::realisations::ResolveError<std::convert::Infallible>),
    /// A task serialising a path died (panicked or was cancelled).
    #[error("serialising a path: {0}")]
    Task(String),
    /// A local argument is not a store path.
    #[error("{0}")]
    BadPath(String),
    /// Local file I/O (temporary files).
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

impl ClientError {
    /// The local Nix store query behind this error, when the store could not be read.
    pub fn nix_environment(&self) -> Option<&niks3_local::nix::PathInfoError> {
        match self {
            ClientError::PathInfo(e) | ClientError::Realisations(ResolveError::PathInfo(e)) if e.is_environment() => {
                Some(e)
            }
            _ => None,
        }
    }

    /// True when retrying later may help (network, server or S3 unavailable, expired session, auth that
    /// an operator may fix). False when the input itself is bad (invalid or modified path, 400): a drainer
    /// quarantines such entries instead of retrying them forever.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. }
            | ClientError::Io { .. }
            | ClientError::Protocol { .. }
            | ClientError::Config(_) => true,
            ClientError::Status { status, .. } => !matches!(*status, 400 | 413 | 422),
            ClientError::PathInfo(e) | ClientError::Realisations(ResolveError::PathInfo(e)) => e.is_environment(),
            ClientError::Realisations(_) | ClientError::Nar(_) | ClientError::Task(_) | ClientError::BadPath(_) => {
                false
            }
        }
    }
}

/// A connection to one niks3 server's API.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: ApiToken,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("base", &self.base).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A client for the server at `base` (e.g. `http://cache:5751`), authenticating with `token`.
    pub fn new(base: &str, token: ApiToken) -> Result<Self, ClientError> {
        let base = base.trim().trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::Config(format!("server URL {base:?} must start with http:// or https://")));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .pool_idle_timeout(Duration::from_mins(1))
            .user_agent(concat!("niks3/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Config(format!("building the HTTP client: {}", e.without_url())))?;
        Ok(ApiClient { http, base, token })
    }

    /// The server URL (without a trailing slash).
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The underlying HTTP client (connection pool shared by all requests).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Adds the bearer token to a request for the server's own API routes.
    pub(crate) fn authorized(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.bearer_auth(self.token.expose_secret())
    }

    /// Adds the bearer token to a request for `url` only when `url` is on the server itself: an upload URL
    /// the server hands out may be absolute (a presigned S3 URL), and a rogue server or a man in the middle
    /// must not be able to send the token elsewhere that way (security review, finding 18).
    pub(crate) fn authorized_for(&self, rb: reqwest::RequestBuilder, url: &str) -> reqwest::RequestBuilder {
        if self.is_on_server(url) { self.authorized(rb) } else { rb }
    }

    /// True when `url` (resolved) is the server URL or below it: same scheme, host and port.
    pub(crate) fn is_on_server(&self, url: &str) -> bool {
        url.strip_prefix(&self.base)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'))
    }

    /// `url` if absolute, else the server URL joined with the path `url`.
    pub fn resolve(&self, url: &str) -> String {
        if url.starts_with('/') { format!("{}{url}", self.base) } else { url.to_owned() }
    }

    async fn post_json<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let what = format!("POST {path}");
        let rb = self.authorized(self.http.post(format!("{}{path}", self.base))).json(body).timeout(timeout);
        let resp =
            rb.send().await.map_err(|e| ClientError::Transport { what: what.clone(), source: e.without_url() })?;
        let resp = check_status(resp, &what).await?;
        let bytes =
            resp.bytes().await.map_err(|e| ClientError::Transport { what: what.clone(), source: e.without_url() })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol { what, reason: e.to_string() })
    }

    /// `POST /api/v1/push`.
    pub async fn announce(&self, req: &PushRequest) -> Result<PushResponse, ClientError> {
        self.post_json("/api/v1/push", req, Duration::from_mins(5)).await
    }

    /// `POST /api/v1/complete`.
    pub async fn complete(&self, req: &CompleteRequest) -> Result<CompleteResponse, ClientError> {
        self.post_json("/api/v1/complete", req, Duration::from_hours(1)).await
    }

    /// `POST /api/v1/realisations`.
    pub(crate) async fn publish_realisations(
        &self,
        req: &RealisationsRequest,
    ) -> Result<RealisationsResponse, ClientError> {
        self.post_json("/api/v1/realisations", req, Duration::from_mins(5)).await
    }

    /// `POST /api/v1/touch`: says upload sessions are alive (their leases are kept).
    pub async fn touch(&self, req: &TouchRequest) -> Result<TouchResponse, ClientError> {
        self.post_json("/api/v1/touch", req, Duration::from_secs(30)).await
    }

    /// `POST /api/v1/abort`: gives up upload sessions (their multipart uploads are aborted).
    pub async fn abort(&self, req: &AbortRequest) -> Result<AbortResponse, ClientError> {
        self.post_json("/api/v1/abort", req, Duration::from_mins(5)).await
    }

    /// `POST <route>` (a session's presign route): a presigned URL bound to one compressed NAR of
    /// `file_size` bytes hashing to `file_hash`, and the headers to send with it.
    pub async fn presign(
        &self,
        route: &str,
        file_size: u64,
        file_hash: &niks3_nix::hash::Sha256Hash,
    ) -> Result<niks3_api::protocol::PresignResponse, ClientError> {
        if !route.starts_with('/') {
            return Err(ClientError::Protocol {
                what: "asking for a bound upload URL".to_owned(),
                reason: "the presign route is not a path on the server".to_owned(),
            });
        }
        let req = niks3_api::protocol::PresignRequest { file_size, file_hash: file_hash.to_nix_string() };
        self.post_json(route, &req, Duration::from_mins(1)).await
    }

    /// `POST <route>` (a multipart upload's part route): a presigned URL for part `part`, bound to its
    /// `size` bytes with MD5 `md5`, and the headers to send with it.
    pub async fn presign_part(
        &self,
        route: &str,
        part: u32,
        size: u64,
        md5: &[u8; 16],
    ) -> Result<niks3_api::protocol::PresignResponse, ClientError> {
        use base64::Engine;
        if !route.starts_with('/') {
            return Err(ClientError::Protocol {
                what: format!("asking for the URL of part {part}"),
                reason: "the part route is not a path on the server".to_owned(),
            });
        }
        let md5 = base64::engine::general_purpose::STANDARD.encode(md5);
        let req = niks3_api::protocol::PartPresignRequest { part, size, md5 };
        self.post_json(route, &req, Duration::from_mins(1)).await
    }

    /// `POST /api/v1/gc`: runs GC on the server and returns its five figures.
    pub async fn gc(&self, req: &GcRequest) -> Result<niks3_api::protocol::GcFigures, ClientError> {
        self.post_json("/api/v1/gc", req, Duration::from_hours(6)).await
    }
}

/// Turns an error status into [`ClientError::Status`] with the server's message.
pub(crate) async fn check_status(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, ClientError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(300).collect::<String>().trim().to_owned());
    Err(ClientError::Status { what: what.to_owned(), status: status.as_u16(), message })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_only_to_the_server_itself() {
        let token = ApiToken::new("test-token-0123456789abcdefghijklmnopqrstuvwxyz").expect("token");
        let api = ApiClient::new("http://cache.example:5751", token).expect("client");
        for on in
            ["http://cache.example:5751/api/v1/upload/1", "http://cache.example:5751", "http://cache.example:5751?x"]
        {
            assert!(api.is_on_server(on), "{on}");
        }
        for off in [
            "http://cache.example:57510/api/v1/upload/1",
            "http://cache.example:5751.evil.org/api/v1/upload/1",
            "http://cache.example:5751@evil.org/x",
            "https://cache.example:5751/api",
            "https://bucket.s3.amazonaws.com/nar/x.nar.zst?X-Amz-Signature=1",
        ] {
            assert!(!api.is_on_server(off), "{off}");
        }
        let url = api.resolve("/api/v1/upload/7");
        let req = api.authorized_for(api.http().put(&url), &url).build().expect("request");
        assert!(req.headers().contains_key(http::header::AUTHORIZATION));
        let foreign = "http://evil.org/steal";
        let req = api.authorized_for(api.http().put(foreign), foreign).build().expect("request");
        assert!(!req.headers().contains_key(http::header::AUTHORIZATION), "token sent to another host");
    }
}
