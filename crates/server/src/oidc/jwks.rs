//! An issuer's signing keys: found through its discovery document (`<issuer>/.well-known/openid-configuration`,
//! whose `issuer` must be the configured one, and its `jwks_uri`), fetched, and cached in memory.
//!
//! Why the cache behaves as it does:
//! - A token whose `kid` the cache lacks makes it fetch again (the issuer rotated its keys), but at most
//!   once per [`KeyTiming::min_refetch`]: tokens with made-up `kid`s must not turn the server into a
//!   fetching machine aimed at the issuer.
//! - Keys older than [`KeyTiming::max_age`] are fetched again on the next use, so a key the issuer
//!   withdrew stops being accepted within that time.
//! - When the issuer cannot be reached, the keys already held keep verifying: an outage of the issuer
//!   must not stop pushes signed with keys we know.
//! - One fetch at a time per issuer; other requests wait for it instead of fetching too.
//!
//! Symmetric keys (`kty: oct`) and encryption keys (`use: enc`) in a JWKS are ignored: a public document
//! cannot hold a secret worth trusting.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Largest discovery document or JWKS read (bytes): they are a few KiB; this bounds a broken issuer.
const MAX_DOCUMENT: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// When keys are fetched again.
#[derive(Clone, Copy, Debug)]
pub struct KeyTiming {
    /// Least time between two fetches of one issuer's keys (refreshing for an unknown `kid`, or retrying
    /// an issuer that was down).
    pub min_refetch: Duration,
    /// Keys older than this are fetched again on their next use (the old ones serve if that fails).
    pub max_age: Duration,
}

impl Default for KeyTiming {
    fn default() -> Self {
        KeyTiming { min_refetch: Duration::from_secs(30), max_age: Duration::from_hours(1) }
    }
}

/// A verification key of the issuer.
#[derive(Clone)]
pub struct Key {
    /// The key.
    pub decoding: DecodingKey,
    /// RSA, EC or Ed: a token's `alg` must be of this family.
    pub family: AlgorithmFamily,
    /// The JWK's `alg`, when it names one: a token's `alg` must then be exactly it.
    pub alg: Option<Algorithm>,
}

/// Why no key could be had for a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The issuer's keys (fetched, or just refetched) have no such `kid`.
    #[error("no key {kid:?} in the JWKS of {issuer}")]
    UnknownKid {
        /// The issuer.
        issuer: String,
        /// The token's `kid`.
        kid: String,
    },
    /// No keys were ever fetched and the issuer cannot be reached now (or was tried too recently).
    #[error("the keys of {issuer} are unavailable: {reason}")]
    Unavailable {
        /// The issuer.
        issuer: String,
        /// The last fetch's error.
        reason: String,
    },
}

/// Why a fetch failed (logged; never sent to a client).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer.
    #[error("GET {url}: {source}")]
    Transport {
        /// What was fetched.
        url: String,
        /// reqwest's error.
        source: reqwest::Error,
    },
    /// An error status.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// What was fetched.
        url: String,
        /// The status.
        status: u16,
    },
    /// Not the document expected.
    #[error("GET {url}: {reason}")]
    Document {
        /// What was fetched.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

struct KeySet {
    keys: HashMap<String, Key>,
    fetched: Instant,
}

#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    error: Option<String>,
}

/// The cached keys of one issuer.
pub struct IssuerKeys {
    issuer: String,
    http: reqwest::Client,
    timing: KeyTiming,
    cached: RwLock<Option<Arc<KeySet>>>,
    attempt: Mutex<Attempt>,
    fetching: tokio::sync::Mutex<()>,
}

impl IssuerKeys {
    /// Nothing fetched yet: the first token of this issuer fetches.
    pub fn new(issuer: &str, http: reqwest::Client, timing: KeyTiming) -> Self {
        IssuerKeys {
            issuer: issuer.to_owned(),
            http,
            timing,
            cached: RwLock::new(None),
            attempt: Mutex::new(Attempt::default()),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.cached.read().map_or(None, |c| c.clone())
    }

    /// The key `kid`, from the cache or (see the module doc for when) from the issuer.
    pub async fn key(&self, kid: &str) -> Result<Key, KeyError> {
        let fresh = |s: &Option<Arc<KeySet>>| {
            s.as_ref().filter(|s| s.fetched.elapsed() < self.timing.max_age).and_then(|s| s.keys.get(kid).cloned())
        };
        if let Some(k) = fresh(&self.snapshot()) {
            return Ok(k);
        }
        let _one_at_a_time = self.fetching.lock().await;
        let cached = self.snapshot();
        if let Some(k) = fresh(&cached) {
            return Ok(k);
        }
        if self.may_fetch_now() {
            match self.fetch().await {
                Ok(set) => {
                    let set = Arc::new(set);
                    tracing::info!(issuer = %self.issuer, keys = set.keys.len(), "fetched the OIDC issuer's keys");
                    if let Ok(mut c) = self.cached.write() {
                        *c = Some(Arc::clone(&set));
                    }
                    self.note_attempt(None);
                    return set.keys.get(kid).cloned().ok_or_else(|| self.unknown(kid));
                }
                Err(e) => {
                    tracing::warn!(issuer = %self.issuer, "fetching the OIDC issuer's keys: {e}; using the cached ones");
                    self.note_attempt(Some(e.to_string()));
                }
            }
        }
        match cached {
            Some(set) => set.keys.get(kid).cloned().ok_or_else(|| self.unknown(kid)),
            None => Err(KeyError::Unavailable {
                issuer: self.issuer.clone(),
                reason: self
                    .attempt
                    .lock()
                    .ok()
                    .and_then(|a| a.error.clone())
                    .unwrap_or_else(|| "not fetched yet".to_owned()),
            }),
        }
    }

    fn unknown(&self, kid: &str) -> KeyError {
        KeyError::UnknownKid { issuer: self.issuer.clone(), kid: kid.chars().take(100).collect() }
    }

    /// True (and the attempt recorded) when the last fetch was at least `min_refetch` ago.
    fn may_fetch_now(&self) -> bool {
        let Ok(mut a) = self.attempt.lock() else { return false };
        if a.at.is_some_and(|at| at.elapsed() < self.timing.min_refetch) {
            return false;
        }
        a.at = Some(Instant::now());
        true
    }

    fn note_attempt(&self, error: Option<String>) {
        if let Ok(mut a) = self.attempt.lock() {
            a.error = error;
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let discovery_url = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
        let discovery: serde_json::Value = self.get_json(&discovery_url).await?;
        let doc = |reason: String| FetchError::Document { url: discovery_url.clone(), reason };
        if discovery.get("issuer").and_then(|v| v.as_str()) != Some(self.issuer.as_str()) {
            return Err(doc(format!("its issuer is not {:?} (OpenID Connect Discovery §4.3)", self.issuer)));
        }
        let jwks_uri =
            discovery.get("jwks_uri").and_then(|v| v.as_str()).ok_or_else(|| doc("no jwks_uri".to_owned()))?.to_owned();
        super::config::check_issuer_url(&jwks_uri).map_err(|e| doc(format!("jwks_uri {jwks_uri:?} {e}")))?;
        let jwks: serde_json::Value = self.get_json(&jwks_uri).await?;
        let keys = parse_jwks(&jwks).map_err(|reason| FetchError::Document { url: jwks_uri.clone(), reason })?;
        Ok(KeySet { keys, fetched: Instant::now() })
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let transport = |source: reqwest::Error| FetchError::Transport { url: url.to_owned(), source };
        let mut resp = self.http.get(url).timeout(FETCH_TIMEOUT).send().await.map_err(transport)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: resp.status().as_u16() });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(FetchError::Document {
                    url: url.to_owned(),
                    reason: format!("larger than {MAX_DOCUMENT} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body)
            .map_err(|e| FetchError::Document { url: url.to_owned(), reason: format!("not JSON: {e}") })
    }
}

/// The usable signing keys of a JWKS document, by `kid`. Keys without a `kid`, symmetric keys, keys for
/// encryption and keys jsonwebtoken cannot use are left out; a document with no usable key is an error.
pub(crate) fn parse_jwks(doc: &serde_json::Value) -> Result<HashMap<String, Key>, String> {
    let list = doc.get("keys").and_then(|k| k.as_array()).ok_or("no \"keys\" array")?;
    let mut keys = HashMap::new();
    for v in list {
        let Ok(jwk) = serde_json::from_value::<Jwk>(v.clone()) else { continue };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match jwk.algorithm {
            AlgorithmParameters::RSA(_) => AlgorithmFamily::Rsa,
            AlgorithmParameters::EllipticCurve(_) => AlgorithmFamily::Ec,
            AlgorithmParameters::OctetKeyPair(_) => AlgorithmFamily::Ed,
            _ => continue,
        };
        let alg = match jwk.common.key_algorithm {
            Some(a) => match Algorithm::from_str(&a.to_string()) {
                Ok(a) if a.family() == family => Some(a),
                _ => continue,
            },
            None => None,
        };
        let Some(kid) = jwk.common.key_id.clone() else { continue };
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else { continue };
        keys.insert(kid, Key { decoding, family, alg });
    }
    if keys.is_empty() {
        return Err("no usable signing key (RSA, EC or OKP with a kid)".to_owned());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_asymmetric_signing_keys_with_a_kid_are_kept() {
        let rsa = serde_json::json!({"kty": "RSA", "kid": "r", "alg": "RS256", "use": "sig",
            "n": "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw",
            "e": "AQAB"});
        let oct = serde_json::json!({"kty": "oct", "kid": "h", "k": "c2VjcmV0"});
        let enc = {
            let mut k = rsa.clone();
            k["kid"] = "e".into();
            k["use"] = "enc".into();
            k
        };
        let no_kid = {
            let mut k = rsa.clone();
            k.as_object_mut().expect("o").remove("kid");
            k
        };
        let mislabelled = {
            let mut k = rsa.clone();
            k["kid"] = "m".into();
            k["alg"] = "HS256".into();
            k
        };
        let keys = parse_jwks(&serde_json::json!({"keys": [rsa, oct, enc, no_kid, mislabelled]})).expect("jwks");
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["r"]);
        assert_eq!(keys["r"].alg, Some(Algorithm::RS256));
        let only_oct = serde_json::json!({"keys": [{"kty": "oct", "kid": "h", "k": "c2VjcmV0"}]});
        assert!(parse_jwks(&only_oct).is_err());
        assert!(parse_jwks(&serde_json::json!({})).is_err());
    }
}
