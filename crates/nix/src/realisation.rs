//! Realisations of content-addressed derivations: what `realisations/<id>.doi` holds and how it is signed
//! (reading them from the local Nix store is `niks3-local`'s).
//!
//! Why: a floating content-addressed (or deferred input-addressed) derivation has no output path in its
//! `.drv`; a client with `experimental-features = ca-derivations` learns the path from the cache's
//! realisation for `<hash modulo of the drv>!<output>` and then substitutes that path as usual. Nix 2.8
//! writes the object as `Realisation::toJSON().dump()`: compact JSON with the keys sorted
//! (`dependentRealisations`, `id`, `outPath`, `signatures`); the signed fingerprint is the same JSON
//! without `signatures`. Both are reproduced here byte for byte (tested against files Nix wrote).
//!
//! The drv hash modulo is never computed here: Nix reports it (`nix realisation info --json <drv>`), and
//! [`Realisation::from_json_value`] reads what it says.

use crate::hash::Sha256Hash;
use crate::signing::{PublicKey, SecretKey};
use crate::store_path::StorePath;
use std::collections::{BTreeMap, BTreeSet};

/// Why a realisation (or its id) is not one Nix would write.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RealisationError {
    /// An id is not `sha256:<hash>!<output name>`.
    #[error("invalid realisation id {id:?}: {reason}")]
    Id {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The JSON is not a realisation (missing field, wrong type, bad store path).
    #[error("invalid realisation JSON: {0}")]
    Json(String),
}

/// `DrvOutput`: the derivation's hash modulo and an output name; the realisation's identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DrvOutput {
    /// SHA-256 hash modulo of the derivation.
    pub drv_hash: Sha256Hash,
    /// The output name, checked against Nix's rules (the same rules the hook applies, `niks3_spool::check_output_name`).
    pub output: String,
}

impl DrvOutput {
    /// Parses `sha256:<hash>!<output>` (the hash in any form Nix prints; written back in base16).
    pub fn parse(s: &str) -> Result<Self, RealisationError> {
        let bad = |reason: String| RealisationError::Id { id: s.chars().take(200).collect(), reason };
        let (hash, output) = s.split_once('!').ok_or_else(|| bad("expected <hash>!<output>".to_owned()))?;
        let drv_hash = Sha256Hash::parse(hash).map_err(|e| bad(e.to_string()))?;
        niks3_spool::check_output_name(output).map_err(|e| bad(e.to_owned()))?;
        Ok(DrvOutput { drv_hash, output: output.to_owned() })
    }
}

impl std::fmt::Display for DrvOutput {
    /// `DrvOutput::to_string()` of Nix: `sha256:<base16>!<output>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}!{}", self.drv_hash.to_hex(), self.output)
    }
}

/// One realisation: which store path an output of a derivation (identified by its hash modulo) produced,
/// and the realisations of its inputs that this path refers to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Realisation {
    /// Which output of which derivation.
    pub id: DrvOutput,
    /// The store path it produced.
    pub out_path: StorePath,
    /// `name:base64` signatures of [`Realisation::fingerprint`].
    pub signatures: BTreeSet<String>,
    /// Realisations of inputs whose outputs `out_path` refers to (a client substitutes them first).
    pub dependents: BTreeMap<DrvOutput, StorePath>,
}

/// The JSON as Nix reads and writes it; field order here is the sorted order Nix dumps.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Json {
    #[serde(default)]
    dependent_realisations: BTreeMap<String, String>,
    id: String,
    out_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signatures: Option<BTreeSet<String>>,
}

impl Realisation {
    /// Parses a `.doi` body or one element of `nix realisation info --json`.
    pub fn from_json(text: &[u8]) -> Result<Self, RealisationError> {
        let raw: Json = serde_json::from_slice(text).map_err(|e| RealisationError::Json(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// [`Realisation::from_json`] of one element of an already parsed `nix realisation info --json` answer.
    pub fn from_json_value(value: serde_json::Value) -> Result<Self, RealisationError> {
        let raw: Json = serde_json::from_value(value).map_err(|e| RealisationError::Json(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: Json) -> Result<Self, RealisationError> {
        let path =
            |p: &str| StorePath::from_basename(p).map_err(|e| RealisationError::Json(format!("store path {p:?}: {e}")));
        let mut dependents = BTreeMap::new();
        for (id, p) in &raw.dependent_realisations {
            dependents.insert(DrvOutput::parse(id)?, path(p)?);
        }
        Ok(Realisation {
            id: DrvOutput::parse(&raw.id)?,
            out_path: path(&raw.out_path)?,
            signatures: raw.signatures.unwrap_or_default(),
            dependents,
        })
    }

    fn to_raw(&self, with_signatures: bool) -> Json {
        Json {
            dependent_realisations: self.dependents.iter().map(|(k, v)| (k.to_string(), v.basename())).collect(),
            id: self.id.to_string(),
            out_path: self.out_path.basename(),
            signatures: with_signatures.then(|| self.signatures.clone()),
        }
    }

    /// The `.doi` body, exactly as Nix 2.8 writes it (`Realisation::toJSON().dump()`).
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.to_raw(true)).unwrap_or_default()
    }

    /// What a signature signs: the JSON without `signatures` (`Realisation::fingerprint()`).
    pub(crate) fn fingerprint(&self) -> String {
        serde_json::to_string(&self.to_raw(false)).unwrap_or_default()
    }

    /// Adds `key`'s signature (ed25519 is deterministic: signing twice adds nothing).
    pub fn sign(&mut self, key: &SecretKey) {
        let sig = key.sign(self.fingerprint().as_bytes());
        self.signatures.insert(sig);
    }

    /// True when at least one signature is valid for one of `keys` (what Nix's `checkSignatures` counts).
    pub fn verify(&self, keys: &[PublicKey]) -> bool {
        let fp = self.fingerprint();
        self.signatures.iter().any(|s| keys.iter().any(|k| k.verify(fp.as_bytes(), s)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway key (`nix key generate-secret --key-name test-1`) and the `.doi` files Nix 2.8 wrote
    /// with it (`secret-key-files` set while building, then `nix copy --to file://…`).
    const SECRET: &str =
        "test-1:9W7ek3acCqTp7MCwWSPMPeT8zVlHi/plTd85Z6qcPH/WswWcCpkEe4v5lKjidU22vuRwW6BKqW59wfRZGiUpmw==";
    const DOI_B: &str = r#"{"dependentRealisations":{"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546!out":"asdhy5zhkmb7ig3349h6lnvx1idxp76m-ca-a"},"id":"sha256:56084c8047e49ad5c6b51ac2d397150ecbfdfd75dca0e8e327f50f380ec91c90!out","outPath":"x58i46n2r94z9bs18d9fgz35aw402zsk-ca-b","signatures":["test-1:oXID+yV929WhiBvig8Auxs/L5CsqVqzFPgaOuew+ZyT6v+oWcdWu/HU7ibS3yW3Prdt0WmLs5CixImWQQedhDQ=="]}"#;
    const DOI_A: &str = r#"{"dependentRealisations":{},"id":"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546!out","outPath":"asdhy5zhkmb7ig3349h6lnvx1idxp76m-ca-a","signatures":["test-1:4g/dH2Rk89hp0FaiYvdRJS8yzdxzB4CBebB1BXty9PGwJCI7B9Cj7nNH9KmuySUPj4zJRpX/ZVoBrzWE5jKiBg=="]}"#;

    #[test]
    fn json_signature_and_fingerprint_match_what_nix_wrote_byte_for_byte() {
        let key = SecretKey::parse(SECRET).expect("key");
        for doi in [DOI_A, DOI_B] {
            let nix = Realisation::from_json(doi.as_bytes()).expect("parse");
            assert_eq!(nix.to_json(), doi, "round trip");
            assert!(nix.verify(&[key.public()]), "Nix's signature verifies");
            let mut ours = Realisation { signatures: BTreeSet::new(), ..nix.clone() };
            assert!(!ours.verify(&[key.public()]), "unsigned does not verify");
            ours.sign(&key);
            assert_eq!(ours.to_json(), doi, "our signature is Nix's signature");
            assert!(!ours.fingerprint().contains("signatures"));
            assert!(doi.starts_with(&ours.fingerprint()[..ours.fingerprint().len() - 1]));
        }
        let b = Realisation::from_json(DOI_B.as_bytes()).expect("parse");
        assert_eq!(b.id.output, "out");
        assert_eq!(b.out_path.name(), "ca-b");
        assert_eq!(b.dependents.values().map(StorePath::name).collect::<Vec<_>>(), vec!["ca-a"]);
        let other = SecretKey::generate("other-1").expect("key");
        assert!(!b.verify(&[other.public()]), "another key's public part does not verify it");
    }

    #[test]
    fn tampered_realisations_fail_verification() {
        let key = SecretKey::parse(SECRET).expect("key");
        let mut r = Realisation::from_json(DOI_A.as_bytes()).expect("parse");
        r.out_path = StorePath::from_basename("x58i46n2r94z9bs18d9fgz35aw402zsk-ca-b").expect("path");
        assert!(!r.verify(&[key.public()]), "signature no longer matches the out path");
    }

    #[test]
    fn bad_json_and_ids_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("{", "invalid realisation JSON"),
            (r#"{"outPath":"asdhy5zhkmb7ig3349h6lnvx1idxp76m-ca-a"}"#, "missing field `id`"),
            (r#"{"id":"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546!out"}"#, "outPath"),
            (r#"{"id":"x!out","outPath":"asdhy5zhkmb7ig3349h6lnvx1idxp76m-ca-a"}"#, "invalid realisation id"),
            (
                r#"{"id":"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546","outPath":"a"}"#,
                "<hash>!<output>",
            ),
            (
                r#"{"id":"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546!a/b","outPath":"asdhy5zhkmb7ig3349h6lnvx1idxp76m-ca-a"}"#,
                "output name",
            ),
            (
                r#"{"id":"sha256:7f8c7629935b9dc2597c4232eb381a55355fd792b5d55eee8ccb7edd915a5546!out","outPath":"../etc"}"#,
                "store path",
            ),
        ];
        for (json, why) in cases {
            let e = Realisation::from_json(json.as_bytes()).expect_err(json).to_string();
            assert!(e.contains(why), "{json}: {e} lacks {why:?}");
        }
    }
}
