//! `--private`: a cache only its own machines can read. Every read route (narinfos, NARs, listings, logs,
//! realisations, `nix-cache-info`, `/metrics`) needs a token with the `read` scope (an `admin` token
//! will do), presented as Nix presents credentials from its `netrc-file` — HTTP Basic, the token as the
//! password and any user name — or as a Bearer token. The landing page stays open (it shows the netrc
//! lines a client needs, nothing secret) and so does `/health`, which then says only ok or not.
//!
//! A refusal says which scope was missing, never why a token is not accepted beyond "invalid or
//! expired": a caller learns nothing about tokens it does not hold.

use super::api::auth::{self, Unauthenticated};
use super::{HttpState, response};
use http::StatusCode;
use niks3_api::token::Scope;
use warp::reply::Response;

/// `Ok` when the request may read this private cache, else the 401/403/503 to answer.
pub(super) async fn admit(state: &HttpState, headers: &http::HeaderMap) -> Result<(), Response> {
    let unauthorized = || {
        let mut r = response::json_error(
            StatusCode::UNAUTHORIZED,
            "this cache is private: reading it needs a token with the read scope (the password of Nix's \
             netrc-file entry for this host, or a Bearer token); missing, invalid or expired",
        );
        response::set(&mut r, http::header::WWW_AUTHENTICATE, "Basic realm=\"niks3\"");
        r
    };
    // Without the seed token the API is off, and so is every way in.
    let Some(seed) = &state.api_token else { return Err(unauthorized()) };
    let caller = match auth::authenticate(
        seed,
        &state.db,
        state.oidc.as_deref(),
        headers.get(http::header::AUTHORIZATION),
        chrono::Utc::now(),
    )
    .await
    {
        Ok(c) => c,
        Err(Unauthenticated::Refused) => return Err(unauthorized()),
        Err(e @ Unauthenticated::Unavailable(_)) => {
            tracing::warn!("{e}");
            return Err(response::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "checking the token: database unavailable",
            ));
        }
        Err(e @ Unauthenticated::OidcUnavailable(_)) => {
            tracing::warn!("{e}");
            return Err(response::json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "checking the token: the OIDC issuer's keys are unavailable",
            ));
        }
    };
    if caller.allows(Scope::Read) {
        return Ok(());
    }
    Err(response::json_error(
        StatusCode::FORBIDDEN,
        format!(
            "token {:?} (scopes: {}) may not read this private cache: it needs the read scope \
             (`niks3 token create --scope read`)",
            caller.name, caller.scopes
        ),
    ))
}

/// Turns a `public` Cache-Control of an admitted read into `private`: a shared cache (a CDN, a proxy in
/// front of niks3) must not keep what only token holders may read and hand it to anyone.
pub(super) fn keep_private(resp: &mut Response) {
    let cc = resp.headers().get(http::header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).map(str::to_owned);
    if let Some(rest) = cc.as_deref().and_then(|v| v.strip_prefix("public")) {
        response::set(resp, http::header::CACHE_CONTROL, &format!("private{rest}"));
    }
}
