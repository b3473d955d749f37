//! OIDC: CI jobs push without a long-lived secret. A job presents the JWT its platform issued it (GitHub
//! Actions, GitLab, Kubernetes…) as its bearer token; [`Oidc::authenticate`] verifies it against the
//! issuer's published keys ([`jwks`]; [`verify`]) and turns its claims into scopes by the rules of
//! `--oidc-config` ([`config`], [`rules`]).
//!
//! Who the caller is, for logs, the audit trail, rate limits and upload-session ownership:
//! `oidc:<issuer>#<sub>` ([`OidcIdentity::name`]). Nothing is stored about a subject: its token is
//! verified on every request, like a scoped token is looked up on every request.
//!
//! This room never reads the database and never answers HTTP: it says who a token belongs to and what it
//! may do, or why not (for the log only; the client hears "missing, invalid or expired").

pub mod config;
pub mod jwks;
pub mod rules;
pub mod verify;

use config::{OidcConfig, OidcConfigError};
use jwks::{IssuerKeys, KeyTiming};
use niks3_api::token::Scopes;
use rules::Rule;
use std::collections::BTreeMap;
use std::path::Path;
use verify::{Rejected, TrustedIssuer};

/// The trusted issuers of one server, their rules and their cached keys.
pub struct Oidc {
    issuers: Vec<Issuer>,
    leeway_seconds: u64,
}

struct Issuer {
    url: String,
    audience: String,
    rules: Vec<Rule>,
    keys: IssuerKeys,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuers", &self.issuers.iter().map(|i| i.url.as_str()).collect::<Vec<_>>())
            .field("leeway_seconds", &self.leeway_seconds)
            .finish()
    }
}

/// A caller that presented a valid JWT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcIdentity {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The claims of the rule that decided its scopes (claim → value), for the audit trail.
    pub matched: BTreeMap<String, String>,
}

impl OidcIdentity {
    /// `oidc:<issuer>#<sub>`: its name in logs, the audit trail, rate limits and as the owner of its
    /// upload sessions.
    pub fn name(&self) -> String {
        format!("oidc:{}#{}", self.issuer, self.subject)
    }
}

/// Why an OIDC token did not get the caller in.
#[derive(Debug, thiserror::Error)]
pub enum OidcRefusal {
    /// The token is not valid (401).
    #[error("OIDC token refused: {0}")]
    Rejected(#[from] Rejected),
    /// The token's issuer is trusted but its keys could not be had and none are cached (503: retry).
    #[error("{0}")]
    Unavailable(String),
}

impl Oidc {
    /// Reads `--oidc-config`; the keys are fetched when the first token of each issuer arrives.
    pub fn load(path: &Path) -> Result<Self, OidcConfigError> {
        Ok(Self::new(OidcConfig::load(path)?, KeyTiming::default()))
    }

    /// From a checked configuration, fetching keys with `timing`.
    pub fn new(config: OidcConfig, timing: KeyTiming) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .user_agent(concat!("niks3/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let issuers = config
            .issuers
            .into_iter()
            .map(|c| Issuer {
                keys: IssuerKeys::new(&c.issuer, http.clone(), timing),
                url: c.issuer,
                audience: c.audience,
                rules: c.rules,
            })
            .collect();
        Oidc { issuers, leeway_seconds: config.leeway_seconds }
    }

    /// The configured issuers' URLs (for the start-up log).
    pub fn issuers(&self) -> Vec<&str> {
        self.issuers.iter().map(|i| i.url.as_str()).collect()
    }

    /// Verifies `token` as of `now` (Unix seconds) and applies its issuer's rules: who it is and what it
    /// may do (possibly nothing: the route's scope check then answers 403).
    pub async fn authenticate(&self, token: &str, now: i64) -> Result<(OidcIdentity, Scopes), OidcRefusal> {
        let trusted: Vec<TrustedIssuer<'_>> = self
            .issuers
            .iter()
            .map(|i| TrustedIssuer { issuer: &i.url, audience: &i.audience, keys: &i.keys })
            .collect();
        let verified = match verify::verify(token, &trusted, now, self.leeway_seconds).await {
            Ok(v) => v,
            Err(Rejected::Key(e @ jwks::KeyError::Unavailable { .. })) => {
                return Err(OidcRefusal::Unavailable(e.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        let issuer = self.issuers.iter().find(|i| i.url == verified.issuer);
        let grant = issuer.map(|i| rules::grant(&i.rules, &verified.claims)).unwrap_or_default();
        let identity = OidcIdentity { issuer: verified.issuer, subject: verified.subject, matched: grant.matched };
        Ok((identity, grant.scopes))
    }
}

pub use verify::looks_like_jwt;
