//! Who is calling the API: the bearer token of a request is either the seed token (loaded from a file or
//! the environment, at least [`MIN_TOKEN_LEN`] characters, compared in constant time over SHA-256 digests,
//! never printed; it is `admin`) or a scoped token of `niks3 token create`, looked up in PostgreSQL by the
//! SHA-256 of what was presented ([`crate::db::Db::authenticate_token`]). Looking a digest up in an
//! index tells an attacker nothing about the secret itself, and each request sees revocations made by any
//! server sharing the database.

use crate::db::Db;
use crate::db::tokens::{TokenDbError, TokenId};
use crate::token::{Scope, Scopes};
use std::path::{Path, PathBuf};
use subtle::ConstantTimeEq;

/// Shortest token accepted: shorter ones are guessable, so the server refuses to start with one.
pub const MIN_TOKEN_LEN: usize = 36;

/// Why a token cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The token is shorter than [`MIN_TOKEN_LEN`] (the token itself is never shown).
    #[error("the API token{} has {len} characters; at least {MIN_TOKEN_LEN} are required", .source_desc)]
    TooShort {
        /// Its length in characters.
        len: usize,
        /// Where it came from (` in <file>`, or empty).
        source_desc: String,
    },
    /// The token contains whitespace or control characters inside it.
    #[error("the API token{} contains whitespace or control characters", .source_desc)]
    BadCharacters {
        /// Where it came from (` in <file>`, or empty).
        source_desc: String,
    },
    /// The token file could not be read.
    #[error("reading API token file {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// A validated API token. `Debug` is redacted; only a SHA-256 of it is kept for comparisons.
#[derive(Clone)]
pub struct ApiToken {
    digest: [u8; 32],
    secret: String,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// Validates a token value (surrounding whitespace, e.g. a trailing newline, is ignored).
    pub fn new(value: &str) -> Result<Self, AuthError> {
        Self::validate(value, String::new())
    }

    /// Reads a token file (e.g. `--api-token-file`); errors name the file, never the token.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Io { path: path.to_owned(), source })?;
        Self::validate(&text, format!(" in {}", path.display()))
    }

    fn validate(value: &str, source_desc: String) -> Result<Self, AuthError> {
        let v = value.trim();
        if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AuthError::BadCharacters { source_desc });
        }
        let len = v.chars().count();
        if len < MIN_TOKEN_LEN {
            return Err(AuthError::TooShort { len, source_desc });
        }
        Ok(ApiToken { digest: crate::token::digest(v), secret: v.to_owned() })
    }

    /// A fresh random token (48 hex characters) for first start.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut b);
        let v = hex::encode(b);
        ApiToken { digest: crate::token::digest(&v), secret: v }
    }

    /// The token value, for writing it to a file with mode 0600 or into an `Authorization` header.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// True when `presented` equals this token. Both sides are hashed first, so the comparison takes the
    /// same time whatever the presented length, and is constant-time over the digests.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_digest(&crate::token::digest(presented))
    }

    /// True when `digest` is the SHA-256 of this token (constant-time).
    fn matches_digest(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }

    /// True when the `Authorization` header is `Bearer <this token>`.
    pub fn authorizes(&self, authorization: Option<&http::HeaderValue>) -> bool {
        bearer(authorization).is_some_and(|t| self.matches(t))
    }
}

/// The token of an `Authorization: Bearer <token>` header, trimmed; the scheme in any case (RFC 9110
/// §11.1: auth schemes are case-insensitive).
fn bearer(authorization: Option<&http::HeaderValue>) -> Option<&str> {
    let v = authorization.and_then(|v| v.to_str().ok())?;
    let (scheme, token) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
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
    pub fn session_owner(&self) -> Option<i64> {
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
    #[error("missing, unknown, revoked or expired API token")]
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
    let presented = bearer(authorization).ok_or(Unauthenticated::Refused)?;
    let digest = crate::token::digest(presented);
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
    fn short_tokens_are_refused_without_showing_them() {
        let e = ApiToken::new("abcdefghijklmnopqrstuvwxyz012345678").expect_err("35 chars");
        let msg = e.to_string();
        assert!(msg.contains("35 characters"), "{msg}");
        assert!(!msg.contains("abcdef"), "{msg}");
        assert!(matches!(
            ApiToken::new("a b c d e f g h i j k l m n o p q r s t"),
            Err(AuthError::BadCharacters { .. })
        ));
    }

    #[test]
    fn bearer_header_must_match_exactly() {
        let t = ApiToken::new("0123456789abcdef0123456789abcdef0123\n").expect("36 chars");
        let hv = |s: &str| http::HeaderValue::from_str(s).expect("header");
        assert!(t.authorizes(Some(&hv("Bearer 0123456789abcdef0123456789abcdef0123"))));
        assert!(t.authorizes(Some(&hv("BEARER 0123456789abcdef0123456789abcdef0123"))), "any case");
        assert!(!t.authorizes(Some(&hv("Bearer0123456789abcdef0123456789abcdef0123"))));
        assert!(!t.authorizes(Some(&hv("Bearer 0123456789abcdef0123456789abcdef012"))));
        assert!(!t.authorizes(Some(&hv("Bearer 0123456789abcdef0123456789abcdef01234"))));
        assert!(!t.authorizes(Some(&hv("Basic 0123456789abcdef0123456789abcdef0123"))));
        assert!(!t.authorizes(None));
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
        assert!(ApiToken::generate().expose_secret().len() >= MIN_TOKEN_LEN);
    }
}
