//! Rules that turn a verified token's claims into scopes. A rule lists claims and a glob pattern for
//! each; it matches when every listed claim is present and matches its pattern. An issuer's rules are
//! tried in order and the first that matches decides, so a rule with no scopes placed first
//! (`event_name = "pull_request"` → nothing) shuts out what later, broader rules would let in. A token
//! no rule matches may do nothing.
//!
//! Patterns are `globset` globs: `*` is any run of characters, `/` included (`org/*` matches GitLab's
//! nested `org/group/project` too), `?` one character, `[abc]` a class, `{a,b}` alternatives, `\`
//! escapes. They match the whole value, case-sensitively. String claims are matched as they are;
//! numbers and booleans as their JSON text (`true`, `42`); other claims (arrays, objects) never match.

use globset::{GlobBuilder, GlobMatcher};
use niks3_api::token::{Scope, Scopes};
use std::collections::BTreeMap;

/// One rule: claim patterns and the scopes a match grants.
#[derive(Clone, Debug)]
pub struct Rule {
    patterns: Vec<(String, GlobMatcher)>,
    scopes: Scopes,
}

/// Why a rule in the config is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A pattern globset cannot compile.
    #[error("claim {claim:?}: pattern {pattern:?}: {reason}")]
    Pattern {
        /// The claim.
        claim: String,
        /// Its pattern.
        pattern: String,
        /// globset's reason.
        reason: String,
    },
    /// A scope name that does not exist.
    #[error("{0}")]
    Scope(#[from] niks3_api::token::TokenError),
    /// An empty claim name.
    #[error("a claim name is empty")]
    EmptyClaim,
}

/// What a token's claims earned: the scopes, and the claims of the rule that decided (its name → the
/// token's value), for the audit trail.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// What the caller may do (possibly nothing).
    pub scopes: Scopes,
    /// The claims the deciding rule matched; empty when no rule matched.
    pub matched: BTreeMap<String, String>,
}

impl Rule {
    /// A rule from the config file's `claims` table and `scopes` list (which may be empty).
    pub fn new(claims: &BTreeMap<String, String>, scopes: &[String]) -> Result<Self, RuleError> {
        let mut patterns = Vec::with_capacity(claims.len());
        for (claim, pattern) in claims {
            if claim.is_empty() {
                return Err(RuleError::EmptyClaim);
            }
            let glob = GlobBuilder::new(pattern)
                .literal_separator(false)
                .backslash_escape(true)
                .empty_alternates(true)
                .build()
                .map_err(|e| RuleError::Pattern {
                    claim: claim.clone(),
                    pattern: pattern.clone(),
                    reason: e.kind().to_string(),
                })?;
            patterns.push((claim.clone(), glob.compile_matcher()));
        }
        let scopes: Vec<Scope> = scopes.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
        Ok(Rule { patterns, scopes: Scopes::new(scopes).unwrap_or_default() })
    }

    /// The claims this rule matched (claim → value), or `None` when it does not match `claims`.
    fn matches(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<BTreeMap<String, String>> {
        let mut matched = BTreeMap::new();
        for (claim, matcher) in &self.patterns {
            let value = match claims.get(claim)? {
                serde_json::Value::String(s) => s.clone(),
                v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => v.to_string(),
                _ => return None,
            };
            if !matcher.is_match(&value) {
                return None;
            }
            matched.insert(claim.clone(), value);
        }
        Some(matched)
    }
}

/// The grant of the first rule of `rules` that matches `claims`; nothing when none does.
pub fn grant(rules: &[Rule], claims: &serde_json::Map<String, serde_json::Value>) -> Grant {
    rules
        .iter()
        .find_map(|r| r.matches(claims).map(|matched| Grant { scopes: r.scopes.clone(), matched }))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(claims: &[(&str, &str)], scopes: &[&str]) -> Rule {
        let claims = claims.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        Rule::new(&claims, &scopes).expect("rule")
    }

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        match v {
            serde_json::Value::Object(m) => m,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn the_first_matching_rule_decides_and_a_nothing_rule_shuts_out() {
        let rules = [
            rule(&[("event_name", "pull_request")], &[]),
            rule(&[("repository", "org/*"), ("ref", "refs/heads/main")], &["push"]),
        ];
        let main = claims(serde_json::json!({"repository": "org/app", "ref": "refs/heads/main", "event_name": "push"}));
        let g = grant(&rules, &main);
        assert_eq!(g.scopes.to_string(), "push");
        assert_eq!(g.matched.get("repository").map(String::as_str), Some("org/app"));
        assert!(!g.matched.contains_key("event_name"), "only the deciding rule's claims are kept");
        let pr = claims(
            serde_json::json!({"repository": "org/app", "ref": "refs/heads/main", "event_name": "pull_request"}),
        );
        let g = grant(&rules, &pr);
        assert!(!g.scopes.allows(Scope::Push));
        assert_eq!(g.matched.get("event_name").map(String::as_str), Some("pull_request"));
        for other in [
            serde_json::json!({"repository": "evil/app", "ref": "refs/heads/main"}),
            serde_json::json!({"repository": "org/app", "ref": "refs/heads/main2"}),
            serde_json::json!({"repository": "org/app"}),
            serde_json::json!({"repository": ["org/app"], "ref": "refs/heads/main"}),
        ] {
            assert_eq!(grant(&rules, &claims(other.clone())), Grant::default(), "{other}");
        }
    }

    #[test]
    fn patterns_match_whole_values_and_scalars_as_json_text() {
        let r = [rule(&[("repository", "org/*"), ("ref_protected", "true"), ("run", "4?")], &["push", "read"])];
        let ok = claims(serde_json::json!({"repository": "org/group/app", "ref_protected": true, "run": 42}));
        assert_eq!(grant(&r, &ok).scopes.to_string(), "read,push");
        let prefix = claims(serde_json::json!({"repository": "xorg/app", "ref_protected": true, "run": 42}));
        assert_eq!(grant(&r, &prefix), Grant::default());
        let bad = Rule::new(&[("x".to_owned(), "[".to_owned())].into(), &[]).expect_err("unclosed class");
        assert!(bad.to_string().contains("claim \"x\""), "{bad}");
    }
}
