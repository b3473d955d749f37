//! The `--oidc-config` file: which issuers are trusted (their URL and the audience their tokens must be
//! minted for) and, per issuer, the rules that turn a token's claims into scopes. TOML or JSON, told
//! apart by the file's extension; unknown keys are errors, so a misspelt `audiance` is not silently a
//! rule-less issuer.
//!
//! ```toml
//! [[issuers]]
//! issuer = "https://token.actions.githubusercontent.com"
//! audience = "https://cache.example.org"
//!
//! [[issuers.rules]]                     # checked in order; the first rule that matches decides
//! claims = { event_name = "pull_request" }
//! scopes = []                           # pull requests may do nothing
//!
//! [[issuers.rules]]
//! claims = { repository = "org/*", ref = "refs/heads/main" }
//! scopes = ["push"]
//! ```

use super::rules::{Rule, RuleError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Clock skew allowed on `exp`, `nbf` and `iat` unless the file says otherwise (seconds).
pub const DEFAULT_LEEWAY_SECONDS: u64 = 60;
/// The most clock skew a file may allow: past this a stolen, expired token would live on for long.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    /// Clock skew allowed on `exp`, `nbf` and `iat` (seconds).
    leeway_seconds: Option<u64>,
    /// The trusted issuers.
    issuers: Vec<FileIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIssuer {
    issuer: String,
    audience: String,
    #[serde(default)]
    rules: Vec<FileRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRule {
    #[serde(default)]
    claims: BTreeMap<String, String>,
    scopes: Vec<String>,
}

/// One trusted issuer, checked.
#[derive(Debug)]
pub struct IssuerConfig {
    /// The issuer exactly as its tokens' `iss` says (no trailing slash added or removed).
    pub issuer: String,
    /// What a token's `aud` must contain.
    pub audience: String,
    /// Claims → scopes, first match wins.
    pub rules: Vec<Rule>,
}

/// The whole file, checked.
#[derive(Debug)]
pub struct OidcConfig {
    /// Clock skew allowed on `exp`, `nbf` and `iat` (seconds).
    pub leeway_seconds: u64,
    /// The trusted issuers (distinct URLs).
    pub issuers: Vec<IssuerConfig>,
}

/// Why the `--oidc-config` file cannot be used; each says the file and what in it.
#[derive(Debug, thiserror::Error)]
pub enum OidcConfigError {
    /// The file could not be read.
    #[error("reading the OIDC config {path:?}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The extension is neither `.toml` nor `.json`.
    #[error("the OIDC config {0:?} must end in .toml or .json (that is how its format is told)")]
    Format(PathBuf),
    /// TOML syntax or shape.
    #[error("the OIDC config {path:?}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line and column included).
        message: String,
    },
    /// A value is out of bounds or malformed.
    #[error("the OIDC config {path:?}: {what}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the issuer or rule.
        what: String,
    },
}

impl OidcConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self, OidcConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| OidcConfigError::Io { path: path.to_owned(), source })?;
        let parse = |message: String| OidcConfigError::Parse { path: path.to_owned(), message };
        let file: FileConfig = match path.extension().and_then(|e| e.to_str()) {
            Some("toml") => toml::from_str(&text).map_err(|e| parse(e.to_string()))?,
            Some("json") => serde_json::from_str(&text).map_err(|e| parse(e.to_string()))?,
            _ => return Err(OidcConfigError::Format(path.to_owned())),
        };
        Self::check(file).map_err(|what| OidcConfigError::Invalid { path: path.to_owned(), what })
    }

    /// Parses a TOML text (for tests and embedding); errors carry no file name.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        Self::check(toml::from_str(text).map_err(|e| e.to_string())?)
    }

    fn check(file: FileConfig) -> Result<Self, String> {
        let leeway_seconds = file.leeway_seconds.unwrap_or(DEFAULT_LEEWAY_SECONDS);
        if leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(format!("leeway_seconds = {leeway_seconds}: at most {MAX_LEEWAY_SECONDS}"));
        }
        if file.issuers.is_empty() {
            return Err("no [[issuers]]: list at least one trusted issuer".to_owned());
        }
        let mut issuers: Vec<IssuerConfig> = Vec::with_capacity(file.issuers.len());
        for (i, fi) in file.issuers.into_iter().enumerate() {
            check_issuer_url(&fi.issuer).map_err(|e| format!("issuer #{} {:?}: {e}", i + 1, fi.issuer))?;
            if issuers.iter().any(|o| o.issuer == fi.issuer) {
                return Err(format!("issuer {:?} is listed twice", fi.issuer));
            }
            if fi.audience.trim().is_empty() {
                return Err(format!("issuer {:?}: the audience is empty", fi.issuer));
            }
            let rules = fi
                .rules
                .into_iter()
                .enumerate()
                .map(|(j, r)| Rule::new(&r.claims, &r.scopes).map_err(|e: RuleError| (j, e)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|(j, e)| format!("issuer {:?}, rule #{}: {e}", fi.issuer, j + 1))?;
            if rules.is_empty() {
                return Err(format!("issuer {:?} has no rules: its tokens could do nothing", fi.issuer));
            }
            issuers.push(IssuerConfig { issuer: fi.issuer, audience: fi.audience, rules });
        }
        Ok(OidcConfig { leeway_seconds, issuers })
    }
}

/// An issuer is fetched from (its discovery document and keys): it must be `https://`, or `http://` on
/// the loopback interface only (a local test provider); anything else could be read or changed on the
/// way, and whoever changes the keys mints tokens.
pub(crate) fn check_issuer_url(url: &str) -> Result<(), String> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    let ok = url.strip_prefix("https://").is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'))
        || loopback
            .iter()
            .any(|p| url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
    if ok { Ok(()) } else { Err("must be an https:// URL (http:// only on 127.0.0.1, localhost or [::1])".to_owned()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GITHUB: &str = r#"
        [[issuers]]
        issuer = "https://token.actions.githubusercontent.com"
        audience = "https://cache.example.org"
        [[issuers.rules]]
        claims = { event_name = "pull_request" }
        scopes = []
        [[issuers.rules]]
        claims = { repository = "org/*", ref = "refs/heads/main" }
        scopes = ["push"]
    "#;

    #[test]
    fn the_github_example_parses_with_the_default_leeway() {
        let c = OidcConfig::from_toml(GITHUB).expect("config");
        assert_eq!(c.leeway_seconds, DEFAULT_LEEWAY_SECONDS);
        assert_eq!(c.issuers.len(), 1);
        assert_eq!(c.issuers[0].rules.len(), 2);
    }

    #[test]
    fn mistakes_are_refused_naming_what_is_wrong() {
        let typo = GITHUB.replace("audience", "audiance");
        assert!(OidcConfig::from_toml(&typo).expect_err("typo").contains("audiance"));
        let http = GITHUB.replace("https://token", "http://token");
        assert!(OidcConfig::from_toml(&http).expect_err("http").contains("https://"));
        let twice = format!("{GITHUB}{}", &GITHUB[GITHUB.find("[[issuers]]").expect("issuers")..]);
        assert!(OidcConfig::from_toml(&twice).expect_err("twice").contains("listed twice"));
        let scope = GITHUB.replace(r#"["push"]"#, r#"["root"]"#);
        assert!(OidcConfig::from_toml(&scope).expect_err("scope").contains("rule #2"));
        let leeway = format!("leeway_seconds = 3600\n{GITHUB}");
        assert!(OidcConfig::from_toml(&leeway).expect_err("leeway").contains("at most"));
        assert!(OidcConfig::from_toml("issuers = []").is_err());
    }

    #[test]
    fn only_https_or_loopback_http_issuers_are_fetched_from() {
        for ok in ["https://token.actions.githubusercontent.com", "http://127.0.0.1:8080", "http://localhost/x"] {
            check_issuer_url(ok).expect(ok);
        }
        for bad in ["http://example.org", "http://127.0.0.1.evil.org", "https://", "ftp://x", "http://localhostx"] {
            assert!(check_issuer_url(bad).is_err(), "{bad}");
        }
    }
}
