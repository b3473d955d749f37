//! Checking one JWT: its header (an asymmetric `alg`, a `kid`), its issuer (one of the configured ones,
//! read from the unverified payload only to pick whose keys to try), its signature against that issuer's
//! key, its audience, and its times (`exp`, `nbf`, `iat`, with the configured leeway, against the `now`
//! the caller passes, so tests need no clock).
//!
//! `alg: none` and the HMAC algorithms are refused before any key is looked at: with HS256 a token
//! "signed" with an issuer's *public* key would verify if that key were used as the secret, the classic
//! algorithm-confusion forgery.

use super::jwks::{IssuerKeys, KeyError};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, Validation};
use std::str::FromStr;

/// The algorithms accepted: RSA (PKCS#1 v1.5 and PSS), ECDSA and EdDSA.
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// Why a JWT was refused. Logged at debug level; a client only ever hears "missing, invalid or expired".
#[derive(Debug, thiserror::Error)]
pub enum Rejected {
    /// Not three base64url parts with a JSON header and payload.
    #[error("not a well-formed JWT: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("alg \"none\" (unsigned) is refused")]
    Unsigned,
    /// An algorithm not in [`ASYMMETRIC`] (HS256 and friends among them).
    #[error("alg {0:?} is refused: only RS*, PS*, ES256, ES384 and EdDSA are accepted")]
    Algorithm(String),
    /// No `kid` in the header.
    #[error("no kid in the header")]
    NoKid,
    /// `iss` is missing or not a configured issuer.
    #[error("issuer {0:?} is not trusted (not in --oidc-config)")]
    UnknownIssuer(String),
    /// The key's type or `alg` does not fit the token's `alg`.
    #[error("key {kid:?} is not a key for {alg:?}")]
    KeyMismatch {
        /// The key.
        kid: String,
        /// The token's alg.
        alg: Algorithm,
    },
    /// The issuer has no such key.
    #[error(transparent)]
    Key(KeyError),
    /// The signature does not verify.
    #[error("bad signature")]
    Signature,
    /// `aud` does not name the configured audience.
    #[error("audience is not {0:?}")]
    Audience(String),
    /// A claim the checks need is missing or of the wrong type.
    #[error("claim {0:?} missing or malformed")]
    Claim(String),
    /// Past `exp` (plus the leeway).
    #[error("expired at {exp} (now {now}, leeway {leeway} s)")]
    Expired {
        /// The token's exp.
        exp: i64,
        /// The time checked against.
        now: i64,
        /// The leeway.
        leeway: u64,
    },
    /// Before `nbf` or `iat` (minus the leeway).
    #[error("not valid yet: {claim} is {at} (now {now}, leeway {leeway} s)")]
    NotYetValid {
        /// `nbf` or `iat`.
        claim: &'static str,
        /// Its value.
        at: i64,
        /// The time checked against.
        now: i64,
        /// The leeway.
        leeway: u64,
    },
    /// Any other failure jsonwebtoken reports.
    #[error("{0}")]
    Other(String),
}

/// A verified token's issuer, subject and all its claims.
#[derive(Debug)]
pub struct Verified {
    /// `iss`.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// Every claim of the payload.
    pub claims: serde_json::Map<String, serde_json::Value>,
}

/// The part of the configuration a check needs about one issuer.
pub struct TrustedIssuer<'a> {
    /// Its URL (`iss`).
    pub issuer: &'a str,
    /// The audience tokens must carry.
    pub audience: &'a str,
    /// Its keys.
    pub keys: &'a IssuerKeys,
}

fn part_json(part: &str, what: &str) -> Result<serde_json::Value, Rejected> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|e| Rejected::Malformed(format!("{what}: {e}")))?;
    serde_json::from_slice(&bytes).map_err(|e| Rejected::Malformed(format!("{what}: {e}")))
}

/// True when `token` has the shape of a JWT (three base64url parts, the first a JSON object with an
/// `alg`): such a bearer token is checked as OIDC, anything else as a niks3 token.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(h), Some(_), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    part_json(h, "header").is_ok_and(|v| v.get("alg").is_some())
}

/// Verifies `token` against `issuers` as of `now` (Unix seconds).
pub async fn verify(token: &str, issuers: &[TrustedIssuer<'_>], now: i64, leeway: u64) -> Result<Verified, Rejected> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Rejected::Malformed("not three parts".to_owned()));
    };
    let header = part_json(h, "header")?;
    let alg_name = header.get("alg").and_then(|a| a.as_str()).unwrap_or_default();
    if alg_name.eq_ignore_ascii_case("none") {
        return Err(Rejected::Unsigned);
    }
    let alg = Algorithm::from_str(alg_name)
        .ok()
        .filter(|a| ASYMMETRIC.contains(a))
        .ok_or_else(|| Rejected::Algorithm(alg_name.chars().take(20).collect()))?;
    let kid = header.get("kid").and_then(|k| k.as_str()).ok_or(Rejected::NoKid)?;
    let unverified = part_json(p, "payload")?;
    let iss = unverified.get("iss").and_then(|i| i.as_str()).unwrap_or_default();
    let trusted = issuers
        .iter()
        .find(|t| t.issuer == iss)
        .ok_or_else(|| Rejected::UnknownIssuer(iss.chars().take(200).collect()))?;
    let key = trusted.keys.key(kid).await.map_err(Rejected::Key)?;
    if key.family != alg.family() || key.alg.is_some_and(|a| a != alg) {
        return Err(Rejected::KeyMismatch { kid: kid.chars().take(100).collect(), alg });
    }
    let mut validation = Validation::new(alg);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.set_issuer(&[trusted.issuer]);
    validation.set_audience(&[trusted.audience]);
    // The times are checked below against the `now` given, not the system clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key.decoding, &validation)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => Rejected::Signature,
                ErrorKind::InvalidAudience => Rejected::Audience(trusted.audience.to_owned()),
                ErrorKind::InvalidIssuer => Rejected::UnknownIssuer(iss.to_owned()),
                ErrorKind::MissingRequiredClaim(c) | ErrorKind::InvalidClaimFormat(c) => Rejected::Claim(c.clone()),
                _ => Rejected::Other(e.to_string()),
            }
        })?;
    let claims = data.claims;
    check_times(&claims, now, leeway)?;
    let subject = claims
        .get("sub")
        .and_then(|s| s.as_str())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Rejected::Claim("sub".to_owned()))?
        .to_owned();
    Ok(Verified { issuer: trusted.issuer.to_owned(), subject, claims })
}

/// `exp` (required), `nbf` and `iat` (when present) against `now`, each with `leeway` seconds of skew.
fn check_times(claims: &serde_json::Map<String, serde_json::Value>, now: i64, leeway: u64) -> Result<(), Rejected> {
    let time = |name: &str| -> Result<Option<i64>, Rejected> {
        match claims.get(name) {
            None => Ok(None),
            Some(v) => v.as_f64().map(|f| Some(f.floor() as i64)).ok_or_else(|| Rejected::Claim(name.to_owned())),
        }
    };
    let skew = i64::try_from(leeway).unwrap_or(i64::MAX);
    let exp = time("exp")?.ok_or_else(|| Rejected::Claim("exp".to_owned()))?;
    if now > exp.saturating_add(skew) {
        return Err(Rejected::Expired { exp, now, leeway });
    }
    for claim in ["nbf", "iat"] {
        if let Some(at) = time(claim)?
            && now.saturating_add(skew) < at
        {
            return Err(Rejected::NotYetValid { claim, at, now, leeway });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn times_allow_the_leeway_and_no_more() {
        let c = claims(serde_json::json!({"exp": 1000, "nbf": 900, "iat": 900}));
        check_times(&c, 950, 60).expect("inside");
        check_times(&c, 1060, 60).expect("exp + leeway");
        assert!(matches!(check_times(&c, 1061, 60), Err(Rejected::Expired { .. })));
        check_times(&c, 840, 60).expect("nbf - leeway");
        assert!(matches!(check_times(&c, 839, 60), Err(Rejected::NotYetValid { claim: "nbf", .. })));
        let future_iat = claims(serde_json::json!({"exp": 5000, "iat": 2000}));
        assert!(matches!(check_times(&future_iat, 1000, 60), Err(Rejected::NotYetValid { claim: "iat", .. })));
        assert!(matches!(check_times(&claims(serde_json::json!({})), 0, 60), Err(Rejected::Claim(_))));
        assert!(matches!(check_times(&claims(serde_json::json!({"exp": "soon"})), 0, 60), Err(Rejected::Claim(_))));
    }

    #[tokio::test]
    async fn none_and_hmac_are_refused_before_any_key_is_fetched() {
        let b64 = |v: serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let payload = b64(serde_json::json!({"iss": "https://issuer.example", "sub": "x", "exp": 9_999_999_999_i64}));
        // An issuer that cannot be reached: any fetch would fail with Unavailable, not the errors expected.
        let keys =
            IssuerKeys::new("https://issuer.example", reqwest::Client::new(), super::super::jwks::KeyTiming::default());
        let trusted = [TrustedIssuer { issuer: "https://issuer.example", audience: "a", keys: &keys }];
        for (alg, want_unsigned) in [("none", true), ("NONE", true), ("HS256", false), ("HS512", false)] {
            let token = format!("{}.{payload}.", b64(serde_json::json!({"alg": alg, "kid": "k"})));
            assert!(looks_like_jwt(&token), "{token}");
            match verify(&token, &trusted, 0, 60).await {
                Err(Rejected::Unsigned) => assert!(want_unsigned, "{alg}"),
                Err(Rejected::Algorithm(a)) => assert!(!want_unsigned && a == alg, "{alg}"),
                other => panic!("{alg}: {other:?}"),
            }
        }
        let no_kid = format!("{}.{payload}.sig", b64(serde_json::json!({"alg": "RS256"})));
        assert!(matches!(verify(&no_kid, &trusted, 0, 60).await, Err(Rejected::NoKid)));
        let stranger = b64(serde_json::json!({"iss": "https://evil.example", "sub": "x", "exp": 1}));
        let t = format!("{}.{stranger}.sig", b64(serde_json::json!({"alg": "RS256", "kid": "k"})));
        assert!(matches!(verify(&t, &trusted, 0, 60).await, Err(Rejected::UnknownIssuer(_))));
        assert!(!looks_like_jwt("niks3_0123456789abcdef"));
        assert!(!looks_like_jwt("a.b.c"));
    }
}
