//! What `niks3 push` and `niks3 drain` authenticate with: an API token (`--auth-token-file`,
//! `NIKS3_AUTH_TOKEN`, or the one a local server generated), or an OIDC token — a JWT from
//! `--oidc-token-file` or `NIKS3_OIDC_TOKEN`, or, inside GitHub Actions, one requested for
//! `--oidc-audience` ([`niks3_client::oidc`]). Either is sent as the Bearer token; the server tells them
//! apart.

use anyhow::Context as _;
use niks3_api::token::ApiToken;
use niks3_client::oidc::{REQUEST_TOKEN_VAR, REQUEST_URL_VAR};
use std::path::PathBuf;

/// The credential flags of the pushing commands.
#[derive(clap::Args, Debug, Default)]
pub struct Credentials {
    /// File holding the API token (default: the token a local `niks3 serve` generated, if readable).
    #[arg(long, env = "NIKS3_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// File holding an OIDC token (a JWT of an issuer the server trusts) to use instead of an API token;
    /// `NIKS3_OIDC_TOKEN` may hold the JWT itself.
    #[arg(long, env = "NIKS3_OIDC_TOKEN_FILE", conflicts_with = "auth_token_file")]
    pub oidc_token_file: Option<PathBuf>,
    /// Inside GitHub Actions (`permissions: id-token: write`): request an OIDC token for this audience,
    /// the one the server's --oidc-config names for GitHub's issuer.
    #[arg(long, env = "NIKS3_OIDC_AUDIENCE", conflicts_with_all = ["auth_token_file", "oidc_token_file"])]
    pub oidc_audience: Option<String>,
}

impl Credentials {
    /// The token to send: what a flag names first (`--oidc-token-file`, `--auth-token-file`, a token
    /// requested from GitHub Actions for `--oidc-audience`), else `NIKS3_OIDC_TOKEN`, else the API token
    /// of the environment or of a local server ([`super::push::load_token`]).
    pub fn load(&self) -> anyhow::Result<ApiToken> {
        if let Some(f) = &self.oidc_token_file {
            return ApiToken::from_file(f).with_context(|| format!("the OIDC token in {}", f.display()));
        }
        if let Some(f) = &self.auth_token_file {
            return super::push::load_token(Some(f));
        }
        if let Some(audience) = &self.oidc_audience {
            let var = |name: &str| {
                std::env::var(name).ok().filter(|v| !v.is_empty()).with_context(|| {
                    format!(
                        "--oidc-audience: {name} is not set; outside GitHub Actions pass --oidc-token-file, and \
                         inside give the job `permissions: id-token: write`"
                    )
                })
            };
            let (url, request_token) = (var(REQUEST_URL_VAR)?, var(REQUEST_TOKEN_VAR)?);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let jwt = rt.block_on(niks3_client::oidc::github_actions_token(&url, &request_token, audience))?;
            return ApiToken::new(&jwt).context("the OIDC token GitHub Actions answered");
        }
        if let Some(v) = std::env::var("NIKS3_OIDC_TOKEN").ok().filter(|v| !v.trim().is_empty()) {
            return ApiToken::new(&v).context("NIKS3_OIDC_TOKEN");
        }
        super::push::load_token(None)
    }
}
