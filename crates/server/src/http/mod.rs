//! The HTTP face (warp): the read proxy (a Nix binary cache over HTTP), the push API, the landing page,
//! `/health` and `/metrics`. Never builds object keys from raw request strings: everything goes through
//! [`niks3_storage::ObjectKey::parse`] or validated store paths.
//!
//! One file per thing a user asks for: [`cacheinfo`], [`proxy`] (narinfo, NARs, listings, logs,
//! realisations), [`landing`], [`health`], [`metrics`], [`api`]; `private.rs` guards the read routes of a
//! private cache. This file only binds the socket, routes a request to one of them and counts the answer
//! in the metrics.

pub mod api;
pub mod cacheinfo;
pub mod health;
pub mod landing;
pub mod listener;
pub mod metrics;
mod private;
pub mod proxy;
mod response;

use crate::db::Db;
use crate::metrics::Metrics;
use bytes::{Buf, Bytes};
use futures::TryStreamExt;
use niks3_nix::signing::{PublicKey, SecretKey};
use niks3_nix::store_path::StoreDir;
use niks3_storage::Storage;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use warp::Filter;

pub use api::ApiLimits;

/// What went wrong starting the HTTP server.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket could not be bound (in use, permission, …).
    #[error("binding HTTP listener on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error from `bind(2)`.
        source: std::io::Error,
    },
}

/// Everything a request handler needs. Built once by `niks3 serve` and shared (read-only) by all requests.
pub struct HttpState {
    /// Where the objects live.
    pub store: Arc<Storage>,
    /// Bookkeeping (health checks, the push API, GC).
    pub db: Db,
    /// `StoreDir` announced in `nix-cache-info` and used to validate pushed paths.
    pub store_dir: StoreDir,
    /// `Priority` announced in `nix-cache-info` (lower is preferred by Nix; default 30).
    pub priority: u32,
    /// Public keys shown on the landing page (what clients put in `trusted-public-keys`).
    pub public_keys: Vec<PublicKey>,
    /// Keys the push API signs narinfos with (shared with the local pipeline).
    pub sign_keys: Arc<Vec<SecretKey>>,
    /// The public substituter URL printed on the landing page (e.g. `https://cache.example.org`).
    pub cache_url: String,
    /// Human name of the cache for the landing page (default: the host name).
    pub cache_name: String,
    /// Counters exported at `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The bearer token of the API; `None` disables `/api/v1/` (it answers 404).
    pub api_token: Option<niks3_api::token::ApiToken>,
    /// `--private`: reading the cache needs a `read` token (see `private.rs`).
    pub private: bool,
    /// `--oidc-config`: the trusted OIDC issuers and their rules; `None`: JWTs are not accepted.
    pub oidc: Option<Arc<crate::oidc::Oidc>>,
    /// Per-token API request rate (`--api-requests-per-minute`).
    pub api_rate: api::rate::ApiRate,
    /// Size and count limits of API requests.
    pub limits: ApiLimits,
    /// Connection count and header timeout (see [`listener`]).
    pub connection_limits: listener::Limits,
}

impl HttpState {
    /// The state `niks3 serve` and the tests start from: the public keys derived from `sign_keys` (so the
    /// landing page can never show a key the server does not sign with), the API off, the default
    /// limits, `/nix/store`, priority 30, the host's name. Callers set the rest with struct update syntax
    /// (`HttpState { cache_url, ..HttpState::new(…) }`).
    pub fn new(store: Arc<Storage>, db: Db, sign_keys: Arc<Vec<SecretKey>>, metrics: Arc<Metrics>) -> Self {
        HttpState {
            store,
            db,
            store_dir: StoreDir::default(),
            priority: 30,
            public_keys: sign_keys.iter().map(SecretKey::public).collect(),
            sign_keys,
            cache_url: String::new(),
            cache_name: crate::config::hostname(),
            metrics,
            api_token: None,
            private: false,
            oidc: None,
            api_rate: api::rate::ApiRate::new(api::rate::DEFAULT_PER_MINUTE),
            limits: ApiLimits::default(),
            connection_limits: listener::Limits::default(),
        }
    }
}

/// Binds the listener (separately from [`serve_listener`] so that a caller learns the port of `:0` and
/// bind failures are errors, not panics).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, HttpError> {
    tokio::net::TcpListener::bind(addr).await.map_err(|source| HttpError::Bind { addr, source })
}

/// Serves on an already bound listener until `shutdown` completes.
pub async fn serve_listener(
    state: Arc<HttpState>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "HTTP server listening");
    }
    let limits = state.connection_limits;
    listener::serve(warp::service(routes(state)), listener, limits, shutdown).await;
}

/// The request body as a stream of chunks (read lazily: the NAR upload route streams it to the store).
pub(crate) type RequestBody = std::pin::Pin<Box<dyn futures::Stream<Item = Result<Bytes, warp::Error>> + Send + Sync>>;

/// One request, as the handlers see it.
pub struct Request {
    /// GET, HEAD, POST, PUT, …
    pub method: http::Method,
    /// The raw (percent-encoded) path, starting with `/`.
    pub path: String,
    /// The request headers.
    pub headers: http::HeaderMap,
    /// The body, unread.
    pub body: RequestBody,
}

/// The single warp filter: every request goes to [`handle`].
pub fn routes(
    state: Arc<HttpState>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = warp::Rejection> + Clone + Send + Sync + 'static {
    warp::method()
        .and(warp::path::full())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream().map(box_body))
        .then(move |method, path: warp::path::FullPath, headers, body| {
            let req = Request { method, path: path.as_str().to_owned(), headers, body };
            handle(Arc::clone(&state), req)
        })
}

fn box_body<S, B>(s: S) -> RequestBody
where
    S: futures::Stream<Item = Result<B, warp::Error>> + Send + Sync + 'static,
    B: Buf,
{
    Box::pin(s.map_ok(|mut b| b.copy_to_bytes(b.remaining())))
}

/// Routes one request and records its answer in the metrics under a bounded route label.
pub async fn handle(state: Arc<HttpState>, req: Request) -> warp::reply::Response {
    let (route, resp) = dispatch(&state, req).await;
    state.metrics.record_http(route, resp.status().as_u16());
    resp
}

async fn dispatch(state: &Arc<HttpState>, req: Request) -> (&'static str, warp::reply::Response) {
    let path = req.path.as_str();
    if let Some(rest) = path.strip_prefix("/api/") {
        let rest = rest.to_owned();
        return api::handle(state, req, &rest).await;
    }
    let read_only = req.method == http::Method::GET || req.method == http::Method::HEAD;
    if state.private && read_only && !matches!(path, "/" | "/health") {
        if let Err(refused) = private::admit(state, &req.headers).await {
            return ("private", refused);
        }
        let (route, mut resp) = route(state, req).await;
        private::keep_private(&mut resp);
        return (route, resp);
    }
    route(state, req).await
}

/// The route a non-API request goes to.
async fn route(state: &Arc<HttpState>, req: Request) -> (&'static str, warp::reply::Response) {
    let path = req.path.as_str();
    let read_only = req.method == http::Method::GET || req.method == http::Method::HEAD;
    match path {
        "/" => ("landing", if read_only { landing::handle(state, &req) } else { response::method_not_allowed() }),
        "/health" => {
            ("health", if read_only { health::handle(state, &req).await } else { response::method_not_allowed() })
        }
        "/metrics" => {
            ("metrics", if read_only { metrics::handle(state, &req) } else { response::method_not_allowed() })
        }
        "/nix-cache-info" => {
            ("cache-info", if read_only { cacheinfo::handle(state, &req) } else { response::method_not_allowed() })
        }
        _ if !read_only => ("other", response::method_not_allowed()),
        _ => proxy::handle(state, &req).await,
    }
}
