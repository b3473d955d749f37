//! What an API token is and what it may do: the scopes, the names, and the secrets `niks3 token create`
//! makes. Storing and looking tokens up is [`crate::db`]'s job ([`crate::db::Db::create_token`] and
//! friends); checking a request's bearer token is [`crate::http::api::auth`]'s.
//!
//! Why scopes at all: every builder, CI job and the GC timer used to share one token, so any one of them
//! leaking let the holder wipe the cache through GC (security review #3). Each holder now gets a token
//! naming only what it needs, and each token can be revoked on its own.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// Prefix of the secrets `niks3 token create` prints, so secret scanners and humans can tell what they are.
pub const SECRET_PREFIX: &str = "niks3_";

/// Random bytes in a secret: 256 bits, hex-encoded after [`SECRET_PREFIX`].
const SECRET_BYTES: usize = 32;

/// Longest token name (the database's CHECK says the same).
pub const MAX_NAME_LEN: usize = 64;

/// One thing a token may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    /// Read a private cache. Defined for the private-cache work to come; nothing requires it yet.
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

/// The scopes a token holds (a small set; `admin` implies every other scope).
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
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
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
}
