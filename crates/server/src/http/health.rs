//! `/health`: 200 when both PostgreSQL and the object store answer, 503 (with what failed; a private cache
//! only says `unavailable`) otherwise.
//! Meant for load balancers and systemd/Kubernetes probes, and open to anyone: it says which dependency is
//! down and nothing more (the details, with bucket names, endpoints and file paths, go to the server's log;
//! security review, finding 17). A local Nix store the drainer cannot read is shown as `"nix"` with status
//! `"degraded"` but still 200: the server goes on serving the cache, and entries wait in the spool.

use super::{HttpState, Request, response};
use http::StatusCode;
use niks3_storage::ObjectKey;
use std::time::Duration;
use warp::reply::Response;

/// How long each check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers `GET/HEAD /health` with `{"status":"ok"|"unavailable","db":…,"store":…}`.
pub async fn handle(state: &HttpState, _req: &Request) -> Response {
    let key = ObjectKey::cache_info();
    let (db, store) = tokio::join!(
        tokio::time::timeout(CHECK_TIMEOUT, state.db.ping()),
        tokio::time::timeout(CHECK_TIMEOUT, state.store.head(&key)),
    );
    let db = match db {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(("unreachable", e.to_string())),
        Err(_) => Err(("timed out", "timed out".to_owned())),
    };
    let store = match store {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(("unreachable", e.to_string())),
        Err(_) => Err(("timed out", "timed out".to_owned())),
    };
    let healthy = db.is_ok() && store.is_ok();
    let show = |r: &Result<(), (&'static str, String)>| match r {
        Ok(()) => "ok",
        Err((public, _)) => public,
    };
    let detail = |r: &Result<(), (&'static str, String)>| match r {
        Ok(()) => "ok".to_owned(),
        Err((_, detail)) => detail.clone(),
    };
    if !healthy {
        tracing::warn!(db = %detail(&db), store = %detail(&store), "health check failed");
    }
    let nix_unreadable = state.metrics.nix_unreadable();
    let status = match (healthy, nix_unreadable) {
        (false, _) => "unavailable",
        (true, true) => "degraded",
        (true, false) => "ok",
    };
    // A private cache tells anonymous callers only whether it works.
    if state.private {
        let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        return response::json(code, &serde_json::json!({ "status": status }));
    }
    let body = serde_json::json!({
        "status": status,
        "db": show(&db),
        "store": show(&store),
        // The cause is in the log (logged once when it began); here only that the store is unreadable.
        "nix": if nix_unreadable { "cannot read the local Nix store" } else { "ok" },
    });
    response::json(if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }, &body)
}
