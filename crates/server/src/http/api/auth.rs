//! Who is calling the API (or reading a private cache): the token of a request (Bearer, or the password
//! of HTTP Basic as Nix sends it from its `netrc-file`) is either the seed token (loaded from a file or
//! the environment, at least [`MIN_TOKEN_LEN`] characters, compared in constant time over SHA-256 digests,
//! never printed; it is `admin`) or a scoped token of `niks3 token create`, looked up in PostgreSQL by the
//! SHA-256 of what was presented ([`crate::db::Db::authenticate_token`]). Looking a digest up in an
//! index tells an attacker nothing about the secret itself, and each request sees revocations made by any
//! server sharing the database.

use crate::db::Db;
use crate::db::tokens::{TokenDbError, TokenId};
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

/// Who sent an API request whose token checked out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's row; `None` for the seed token.
    pub token: Option<TokenId>,
    /// The token's name for logs (`seed` for the seed token).
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
}

impl Caller {
    /// The seed token: the server's own admin token.
    pub fn seed() -> Self {
        Caller { token: None, name: "seed".to_owned(), scopes: Scopes::admin() }
    }

    /// The `uploads.token_id` of the sessions this caller opens and may touch (`None`: the seed token).
    pub(crate) fn session_owner(&self) -> Option<i64> {
        self.token.map(|t| t.0)
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
}

/// Checks the `Authorization` header against the seed token and the tokens in the database, as of `now`.
pub async fn authenticate(
    seed: &ApiToken,
    db: &Db,
    authorization: Option<&http::HeaderValue>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Caller, Unauthenticated> {
    let presented = presented(authorization).ok_or(Unauthenticated::Refused)?;
    let digest = niks3_api::token::digest(&presented);
    if seed.matches_digest(&digest) {
        return Ok(Caller::seed());
    }
    // Nothing this short was ever issued: no need to ask the database.
    if presented.chars().count() < MIN_TOKEN_LEN {
        return Err(Unauthenticated::Refused);
    }
    match db.authenticate_token(&digest, now).await? {
        Some(t) => Ok(Caller { token: Some(t.id), name: t.name, scopes: t.scopes }),
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
