//! Content addresses (`ca` in narinfos and path info) and the store paths they determine.
//!
//! A content-addressed store path is not a name chosen by whoever built it: Nix computes it from the
//! content hash, the name and the references (`makeStorePath`, `makeFixedOutputPath`, `makeTextPath` in
//! Nix's `store-api.cc`). A narinfo that claims `CA: fixed:r:sha256:…` for a path the hash does not
//! produce is a lie a client would believe (it trusts the signature), so the push API recomputes the path
//! from the claim and refuses a mismatch ([`check_store_path`]).
//!
//! Only the forms Nix writes are accepted: `text:sha256:<hash>`, `fixed:<algo>:<hash>` and
//! `fixed:r:<algo>:<hash>` with algo md5, sha1, sha256 or sha512 and the digest in nix32 or base16.
//! Anything else (e.g. the experimental `fixed:git:`) is refused as unsupported rather than signed blind.

use super::base32;
use super::hash::Sha256Hash;
use super::store_path::{StoreDir, StorePath};

/// Why a content address was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CaError {
    /// Not a content address as Nix prints them.
    #[error("malformed content address: {0}")]
    Malformed(&'static str),
    /// A form Nix knows but this server does not check (so it will not sign it).
    #[error("unsupported content address method {0:?} (only text:sha256, fixed: and fixed:r: are accepted)")]
    Unsupported(String),
    /// The content address and references produce another store path than the one claimed.
    #[error("the content address and references give {expected}, not {claimed}")]
    Mismatch {
        /// The basename the claim really determines.
        expected: String,
        /// The basename that was claimed.
        claimed: String,
    },
    /// The references are impossible for this kind of content address.
    #[error("{0}")]
    BadReferences(&'static str),
}

/// How the content was hashed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    /// `text:` — a file written by `builtins.toFile` or a derivation (sha256 of its bytes).
    Text,
    /// `fixed:` — the flat file's bytes.
    Flat,
    /// `fixed:r:` — the NAR serialisation.
    Recursive,
}

/// A parsed content address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ContentAddress {
    method: Method,
    /// Algorithm name as Nix prints it (`sha256`, …).
    algo: &'static str,
    digest: Vec<u8>,
}

impl ContentAddress {
    /// Parses a `ca` value.
    pub fn parse(s: &str) -> Result<Self, CaError> {
        let (method, rest) = if let Some(rest) = s.strip_prefix("text:") {
            (Method::Text, rest)
        } else if let Some(rest) = s.strip_prefix("fixed:") {
            match rest.strip_prefix("r:") {
                Some(rest) => (Method::Recursive, rest),
                None => (Method::Flat, rest),
            }
        } else {
            return Err(CaError::Malformed("expected text: or fixed:"));
        };
        let (algo, digest) = rest.split_once(':').ok_or(CaError::Malformed("expected <algo>:<digest>"))?;
        let (algo, size): (&'static str, usize) = match algo {
            "md5" => ("md5", 16),
            "sha1" => ("sha1", 20),
            "sha256" => ("sha256", 32),
            "sha512" => ("sha512", 64),
            other => {
                let method = other.chars().take(16).collect();
                return Err(CaError::Unsupported(method));
            }
        };
        if method == Method::Text && algo != "sha256" {
            return Err(CaError::Malformed("text: content addresses are always sha256"));
        }
        let digest = if digest.len() == base32::encoded_len(size) {
            base32::decode(digest).map_err(|_| CaError::Malformed("bad nix32 digest"))?
        } else if digest.len() == 2 * size {
            hex::decode(digest).map_err(|_| CaError::Malformed("bad base16 digest"))?
        } else {
            return Err(CaError::Malformed("digest has the wrong length for its algorithm"));
        };
        if digest.len() != size {
            return Err(CaError::Malformed("digest has the wrong length for its algorithm"));
        }
        Ok(ContentAddress { method, algo, digest })
    }

    /// The hash part of the store path named `name` with this content address and `references`
    /// (`self_reference`: the path refers to itself, listed apart as Nix does).
    pub(crate) fn store_path_hash(
        &self,
        store_dir: &StoreDir,
        name: &str,
        references: &[StorePath],
        self_reference: bool,
    ) -> Result<String, CaError> {
        let mut refs: Vec<String> = references.iter().map(|r| store_dir.display(r)).collect();
        refs.sort();
        refs.dedup();
        let typed = |kind: &str, self_ref: bool| {
            let mut t = kind.to_owned();
            for r in &refs {
                t.push(':');
                t.push_str(r);
            }
            if self_ref {
                t.push_str(":self");
            }
            t
        };
        let inner = format!("{}:{}", self.algo, hex::encode(&self.digest));
        Ok(match (self.method, self.algo) {
            (Method::Text, _) => {
                if self_reference {
                    return Err(CaError::BadReferences("a text: path cannot refer to itself"));
                }
                make_store_path(&typed("text", false), &inner, store_dir, name)
            }
            (Method::Recursive, "sha256") => make_store_path(&typed("source", self_reference), &inner, store_dir, name),
            (Method::Recursive | Method::Flat, _) => {
                if !refs.is_empty() || self_reference {
                    return Err(CaError::BadReferences("a fixed-output path of this kind has no references"));
                }
                let prefix = if self.method == Method::Recursive { "r:" } else { "" };
                let fixed = Sha256Hash::digest(format!("fixed:out:{prefix}{inner}:").as_bytes());
                make_store_path("output:out", &format!("sha256:{}", fixed.to_hex()), store_dir, name)
            }
        })
    }
}

/// Nix's `makeStorePath`: SHA-256 of `<type>:<algo>:<hex digest>:<store dir>:<name>`, folded to 160 bits,
/// in nix32.
fn make_store_path(kind: &str, inner: &str, store_dir: &StoreDir, name: &str) -> String {
    let full = Sha256Hash::digest(format!("{kind}:{inner}:{}:{name}", store_dir.as_str()).as_bytes());
    let mut folded = [0u8; 20];
    for (i, b) in full.0.iter().enumerate() {
        folded[i % 20] ^= b;
    }
    base32::encode(&folded)
}

/// Checks that `ca` (as a pusher claims it for `path` with `references`) really determines `path`.
pub fn check_store_path(
    store_dir: &StoreDir,
    path: &StorePath,
    ca: &str,
    references: &[StorePath],
) -> Result<(), CaError> {
    let parsed = ContentAddress::parse(ca)?;
    let self_reference = references.contains(path);
    let others: Vec<StorePath> = references.iter().filter(|r| *r != path).cloned().collect();
    let hash = parsed.store_path_hash(store_dir, path.name(), &others, self_reference)?;
    if hash == path.hash_part() {
        Ok(())
    } else {
        Err(CaError::Mismatch { expected: format!("{hash}-{}", path.name()), claimed: path.basename() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_and_unsupported_forms_are_refused() {
        for bad in ["", "fixed", "fixed:sha256", "text:sha1:0000000000000000000000000000000000000000", "x:sha256:00"] {
            assert!(ContentAddress::parse(bad).is_err(), "{bad:?}");
        }
        let git = ContentAddress::parse("fixed:git:sha1:0000000000000000000000000000000000000000");
        assert!(matches!(git, Err(CaError::Unsupported(_))), "{git:?}");
        let short = ContentAddress::parse("fixed:r:sha256:abc");
        assert!(matches!(short, Err(CaError::Malformed(_))), "{short:?}");
    }

    #[test]
    fn nix32_and_base16_digests_name_the_same_path() {
        let h = Sha256Hash::digest(b"x");
        let a = ContentAddress::parse(&format!("fixed:r:sha256:{}", h.to_nix32())).expect("nix32");
        let b = ContentAddress::parse(&format!("fixed:r:sha256:{}", h.to_hex())).expect("hex");
        assert_eq!(a, b);
    }
}
