//! Getting an OIDC token inside GitHub Actions: a job with `permissions: id-token: write` has
//! `ACTIONS_ID_TOKEN_REQUEST_URL` and `ACTIONS_ID_TOKEN_REQUEST_TOKEN` in its environment; a GET of that
//! URL with `&audience=<aud>` and the request token as Bearer answers `{"value": "<JWT>"}`, a token
//! signed by `https://token.actions.githubusercontent.com` whose claims name the repository, ref, event
//! and workflow. No secret is stored anywhere: the JWT lives minutes.

use crate::ClientError;
use std::time::Duration;

/// The environment variable holding GitHub's token endpoint.
pub const REQUEST_URL_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_URL";
/// The environment variable holding the bearer token for that endpoint.
pub const REQUEST_TOKEN_VAR: &str = "ACTIONS_ID_TOKEN_REQUEST_TOKEN";

/// Asks GitHub Actions' endpoint `url` (authenticating with `request_token`) for a JWT whose `aud` is
/// `audience`.
pub async fn github_actions_token(url: &str, request_token: &str, audience: &str) -> Result<String, ClientError> {
    let what = "requesting an OIDC token from GitHub Actions".to_owned();
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .user_agent(concat!("niks3/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ClientError::Config(format!("building the HTTP client: {}", e.without_url())))?;
    let resp = http
        .get(url)
        .query(&[("audience", audience)])
        .bearer_auth(request_token)
        .header(http::header::ACCEPT, "application/json")
        .timeout(Duration::from_mins(1))
        .send()
        .await
        .map_err(|e| ClientError::Transport { what: what.clone(), source: e.without_url() })?;
    let resp = crate::check_status(resp, &what).await?;
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| ClientError::Protocol { what: what.clone(), reason: e.without_url().to_string() })?;
    body.get("value")
        .and_then(|v| v.as_str())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Protocol { what, reason: "no \"value\" in the answer".to_owned() })
}
