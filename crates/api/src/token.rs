//! What an API token is and what it may do: the seed token ([`ApiToken`], at least [`MIN_TOKEN_LEN`]
//! characters, compared in constant time over SHA-256 digests, never printed), the scopes, the names, and
//! the secrets `niks3 token create` makes. Both sides of the API need this: the client loads a token and
//! sends it, the server checks it. Storing and looking tokens up is the server's database's job.
//!
//! Why scopes at all: every builder, CI job and the GC timer used to share one token, so any one of them
//! leaking let the holder wipe the cache through GC (security review #3). Each holder now gets a token
//! naming only what it needs, and each token can be revoked on its own.

use sha2::{Digest, Sha256};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use subtle::ConstantTimeEq;

/// Prefix of the secrets `niks3 token create` prints, so secret scanners and humans can tell what they are.
pub(crate) const SECRET_PREFIX: &str = "niks3_";

/// Random bytes in a secret: 256 bits, hex-encoded after [`SECRET_PREFIX`].
const SECRET_BYTES: usize = 32;

/// Longest token name (the database's CHECK says the same).
pub const MAX_NAME_LEN: usize = 64;

/// One thing a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read a private cache (`niks3 serve --private`).
    Read,
    /// Push: announce, upload NARs and logs, complete, abort, publish realisations.
    Push,
    /// Run garbage collection within the API's floors.
    Gc,
    /// Everything, including GC options below the floors (with `force`). The seed token is admin.
    Admin,
}

impl Scope {
    /// Every scope, in the order they are listed.
    pub const ALL: [Scope; 4] = [Scope::Read, Scope::Push, Scope::Gc, Scope::Admin];

    /// The name used on the command line, in the database and in error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Push => "push",
            Scope::Gc => "gc",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, TokenError> {
        Scope::ALL.into_iter().find(|sc| sc.as_str() == s).ok_or_else(|| TokenError::UnknownScope(s.to_owned()))
    }
}

/// The scopes a token holds (a small set; `admin` implies every other scope). The default, the empty
/// set, is what an OIDC caller holds when no rule of its issuer gave it anything.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    /// The seed token's scopes.
    pub fn admin() -> Self {
        Scopes(vec![Scope::Admin])
    }

    /// A set from a list (sorted, duplicates dropped); empty is refused, since such a token could do nothing.
    pub fn new(mut scopes: Vec<Scope>) -> Result<Self, TokenError> {
        scopes.sort_unstable();
        scopes.dedup();
        if scopes.is_empty() {
            return Err(TokenError::NoScope);
        }
        Ok(Scopes(scopes))
    }

    /// Parses the names stored in the database; an unknown name fails (the CHECK constraint forbids them).
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Self, TokenError> {
        Self::new(names.iter().map(|n| n.as_ref().parse()).collect::<Result<_, _>>()?)
    }

    /// True when `scope` is held, directly or through `admin`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.0.contains(&Scope::Admin) || self.0.contains(&scope)
    }

    /// True for an admin token.
    pub fn is_admin(&self) -> bool {
        self.0.contains(&Scope::Admin)
    }

    /// The names, for the database and for `niks3 token list`.
    pub fn names(&self) -> Vec<&'static str> {
        self.0.iter().map(|s| s.as_str()).collect()
    }
}

impl fmt::Display for Scopes {
    /// `push,gc`; `none` for the empty set (an OIDC caller no rule gave anything).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.names().join(","))
    }
}

/// What is wrong with a token's name, scopes or expiry.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// A scope name that does not exist.
    #[error("unknown scope {0:?}; the scopes are read, push, gc and admin")]
    UnknownScope(String),
    /// No scope at all.
    #[error("a token needs at least one scope (read, push, gc or admin)")]
    NoScope,
    /// A name outside `[A-Za-z0-9][A-Za-z0-9._@-]{0,63}`.
    #[error(
        "invalid token name {0:?}: 1 to {MAX_NAME_LEN} characters among letters, digits, '.', '_', '@' and '-', starting with a letter or digit"
    )]
    BadName(String),
}

/// Checks a token name: it shows up in logs and `niks3 token list`, so it stays short and printable.
pub fn validate_name(name: &str) -> Result<(), TokenError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok { Ok(()) } else { Err(TokenError::BadName(name.chars().take(MAX_NAME_LEN + 8).collect())) }
}

/// A freshly made secret: shown to the operator once, then only its digest is kept.
pub struct NewSecret {
    secret: String,
}

impl fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NewSecret(<redacted>)")
    }
}

impl NewSecret {
    /// 256 bits from the operating system's generator, as `niks3_<64 hex>`.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        NewSecret { secret: format!("{SECRET_PREFIX}{}", hex::encode(bytes)) }
    }

    /// The secret, to print once.
    pub fn expose(&self) -> &str {
        &self.secret
    }

    /// What the database keeps.
    pub fn digest(&self) -> [u8; 32] {
        digest(&self.secret)
    }
}

/// The SHA-256 a presented token is looked up by (the same digest the seed token is compared with).
pub fn digest(presented: &str) -> [u8; 32] {
    Sha256::digest(presented.as_bytes()).into()
}

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
        Ok(ApiToken { digest: digest(v), secret: v.to_owned() })
    }

    /// A fresh random token (48 hex characters) for first start.
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut b = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut b);
        let v = hex::encode(b);
        ApiToken { digest: digest(&v), secret: v }
    }

    /// The token value, for writing it to a file with mode 0600 or into an `Authorization` header.
    pub fn expose_secret(&self) -> &str {
        &self.secret
    }

    /// True when `presented` equals this token. Both sides are hashed first, so the comparison takes the
    /// same time whatever the presented length, and is constant-time over the digests.
    pub fn matches(&self, presented: &str) -> bool {
        self.matches_digest(&digest(presented))
    }

    /// True when `digest` is the SHA-256 of this token (constant-time).
    pub fn matches_digest(&self, digest: &[u8; 32]) -> bool {
        self.digest.ct_eq(digest).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_implies_every_scope_and_push_only_push() {
        let admin = Scopes::admin();
        assert!(Scope::ALL.iter().all(|s| admin.allows(*s)));
        let push = Scopes::new(vec![Scope::Push, Scope::Push]).expect("push");
        assert!(push.allows(Scope::Push) && !push.allows(Scope::Gc) && !push.allows(Scope::Read));
        assert_eq!(push.to_string(), "push");
        assert_eq!(Scopes::parse(&["gc", "push"]).expect("parse").to_string(), "push,gc");
        assert_eq!(Scopes::new(vec![]), Err(TokenError::NoScope));
        assert_eq!("root".parse::<Scope>(), Err(TokenError::UnknownScope("root".to_owned())));
    }

    #[test]
    fn names_are_short_and_printable() {
        for good in ["builder-1", "ci@github", "gc.timer", "A_b"] {
            validate_name(good).expect(good);
        }
        for bad in ["", "-x", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_have_256_bits_and_are_not_debug_printed() {
        let a = NewSecret::generate();
        let b = NewSecret::generate();
        assert_ne!(a.expose(), b.expose());
        let hex = a.expose().strip_prefix(SECRET_PREFIX).expect("prefix");
        assert_eq!(hex.len(), 64);
        assert!(hex.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.digest(), digest(a.expose()));
        assert!(!format!("{a:?}").contains(hex));
    }

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
    fn the_api_token_must_match_exactly_and_is_never_debug_printed() {
        let t = ApiToken::new("0123456789abcdef0123456789abcdef0123\n").expect("36 chars");
        assert!(t.matches("0123456789abcdef0123456789abcdef0123"));
        assert!(!t.matches("0123456789abcdef0123456789abcdef012"));
        assert!(!t.matches("0123456789abcdef0123456789abcdef01234"));
        assert!(t.matches_digest(&digest("0123456789abcdef0123456789abcdef0123")));
        assert_eq!(format!("{t:?}"), "ApiToken(<redacted>)");
        assert!(ApiToken::generate().expose_secret().len() >= MIN_TOKEN_LEN);
    }
}
