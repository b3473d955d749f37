//! Who is calling the API (or reading a private cache): the token of a request (Bearer, or the password
//! of HTTP Basic as Nix sends it from its `netrc-file`) is either the seed token (loaded from a file or
//! the environment, at least [`MIN_TOKEN_LEN`] characters, compared in constant time over SHA-256 digests,
//! never printed; it is `admin`) or a scoped token of `niks3 token create`, looked up in PostgreSQL by the
//! SHA-256 of what was presented ([`crate::db::Db::authenticate_token`]). Looking a digest up in an
//! index tells an attacker nothing about the secret itself, and each request sees revocations made by any
//! server sharing the database. A token shaped like a JWT, when `--oidc-config` is set, is an OIDC token
//! instead: verified and given scopes by [`crate::oidc`].

use crate::db::Db;
use crate::db::tokens::{TokenDbError, TokenId};
use crate::db::uploads::SessionOwner;
use crate::oidc::{Oidc, OidcIdentity, OidcRefusal};
use niks3_api::token::{ApiToken, MIN_TOKEN_LEN, Scope, Scopes};

/// The token a request presents: `Authorization: Bearer <token>`, or `Basic` with the token as the
/// password (any user name) — what Nix sends for a substituter listed in its `netrc-file`. The scheme in
/// any case (RFC 9110 §11.1: auth schemes are case-insensitive).
fn presented(authorization: Option<&http::HeaderValue>) -> Option<String> {
    use base64::Engine as _;
    let v = authorization.and_then(|v| v.to_str().ok())?;
    let (scheme, rest) = v.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).ok()?;
    let (_, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some(password.to_owned())
}

/// Whose credential a request carried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// The seed token.
    Seed,
    /// A scoped token (its row).
    Token(TokenId),
    /// A verified OIDC token.
    Oidc(OidcIdentity),
}

/// Who sent an API request whose token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Whose credential it is.
    pub principal: Principal,
    /// The name for logs, the audit trail and rate limits: the token's name, `seed`, or
    /// `oidc:<issuer>#<sub>`.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
}

impl Caller {
    /// The seed token: the server's own admin token.
    pub fn seed() -> Self {
        Caller { principal: Principal::Seed, name: "seed".to_owned(), scopes: Scopes::admin() }
    }

    /// Who owns the upload sessions this caller opens and may touch: each scoped token and each OIDC
    /// subject its own, the seed token those of the server.
    pub(crate) fn session_owner(&self) -> SessionOwner {
        match &self.principal {
            Principal::Seed => SessionOwner::Server,
            Principal::Token(t) => SessionOwner::Token(*t),
            Principal::Oidc(_) => SessionOwner::Oidc(self.name.clone()),
        }
    }

    /// What the audit trail keeps about this caller beside its name: for an OIDC caller, the claims the
    /// rule that gave it its scopes matched.
    pub(crate) fn audit_detail(&self) -> Option<serde_json::Value> {
        match &self.principal {
            Principal::Oidc(id) => Some(serde_json::json!({
                "issuer": id.issuer, "subject": id.subject, "matched_claims": id.matched,
            })),
            Principal::Seed | Principal::Token(_) => None,
        }
    }

    /// True when the caller may use routes needing `scope`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.allows(scope)
    }
}

/// Why a request was not authenticated.
#[derive(Debug, thiserror::Error)]
pub enum Unauthenticated {
    /// No token, or one that is unknown, revoked or expired: 401.
    #[error("missing, invalid or expired API token")]
    Refused,
    /// The database could not be asked: 503 (the token may well be valid).
    #[error("checking the API token: {0}")]
    Unavailable(#[from] TokenDbError),
    /// An OIDC token's issuer is trusted but its keys could not be fetched, and none are cached: 503.
    #[error("checking the OIDC token: {0}")]
    OidcUnavailable(String),
}

/// Checks the `Authorization` header against the seed token, the OIDC issuers (`oidc`, when the token
/// is a JWT) and the tokens in the database, as of `now`.
pub async fn authenticate(
    seed: &ApiToken,
    db: &Db,
    oidc: Option<&Oidc>,
    authorization: Option<&http::HeaderValue>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Caller, Unauthenticated> {
    let presented = presented(authorization).ok_or(Unauthenticated::Refused)?;
    let digest = niks3_api::token::digest(&presented);
    if seed.matches_digest(&digest) {
        return Ok(Caller::seed());
    }
    if let Some(oidc) = oidc
        && crate::oidc::looks_like_jwt(&presented)
    {
        return match oidc.authenticate(&presented, now.timestamp()).await {
            Ok((identity, scopes)) => {
                let name = identity.name();
                tracing::debug!(caller = %name, %scopes, matched = ?identity.matched, "OIDC token accepted");
                Ok(Caller { principal: Principal::Oidc(identity), name, scopes })
            }
            Err(OidcRefusal::Rejected(why)) => {
                tracing::info!("OIDC token refused: {why}");
                Err(Unauthenticated::Refused)
            }
            Err(OidcRefusal::Unavailable(why)) => Err(Unauthenticated::OidcUnavailable(why)),
        };
    }
    // Nothing this short was ever issued: no need to ask the database.
    if presented.chars().count() < MIN_TOKEN_LEN {
        return Err(Unauthenticated::Refused);
    }
    match db.authenticate_token(&digest, now).await? {
        Some(t) => Ok(Caller { principal: Principal::Token(t.id), name: t.name, scopes: t.scopes }),
        None => Err(Unauthenticated::Refused),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_read_from_bearer_or_as_the_basic_password_and_from_nothing_else() {
        use base64::Engine as _;
        let hv = |s: &str| http::HeaderValue::from_str(s).expect("header");
        let t = "0123456789abcdef0123456789abcdef0123";
        let basic = |cred: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(cred));
        assert_eq!(presented(Some(&hv(&format!("Bearer {t}")))).as_deref(), Some(t));
        assert_eq!(presented(Some(&hv(&format!("BEARER {t} ")))).as_deref(), Some(t), "any case, trimmed");
        assert_eq!(presented(Some(&hv(&basic(&format!("nix:{t}"))))).as_deref(), Some(t), "netrc: any user");
        assert_eq!(presented(Some(&hv(&basic(&format!(":{t}"))))).as_deref(), Some(t), "empty user name");
        assert_eq!(presented(Some(&hv(&format!("Bearer{t}")))), None);
        assert_eq!(presented(Some(&hv(&basic(t)))), None, "Basic without a password");
        assert_eq!(presented(Some(&hv("Basic !!not base64!!"))), None);
        assert_eq!(presented(Some(&hv(&format!("Digest {t}")))), None);
        assert_eq!(presented(None), None);
    }
}
