//! ed25519 signing keys in Nix's `name:base64` format and narinfo signatures (`name:base64(sig)`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use std::path::{Path, PathBuf};

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key file failed.
    #[error("reading key file {path:?}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key text is malformed; the key material itself never appears in the message.
    #[error("invalid {what} key{}: {reason}", .file.as_ref().map(|f| format!(" in {}", f.display())).unwrap_or_default())]
    Invalid {
        /// Which kind of key (`secret` or `public`).
        what: &'static str,
        /// The key file, when the key came from one.
        file: Option<PathBuf>,
        /// What is wrong with it.
        reason: String,
    },
}

/// A secret signing key (`name:base64(64 bytes)`, as `nix key generate-secret` writes).
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

/// A public key (`name:base64(32 bytes)`), as listed in `trusted-public-keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl SecretKey {
    /// A fresh random key named `name`.
    pub fn generate(name: &str) -> Result<Self, KeyError> {
        validate_name(name, "secret", None)?;
        let seed: [u8; 32] = rand::random();
        Ok(SecretKey { name: name.to_owned(), key: ed25519_dalek::SigningKey::from_bytes(&seed) })
    }
    /// Parses `name:base64(64 bytes)` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        Self::parse_in(text, None)
    }

    fn parse_in(text: &str, file: Option<&Path>) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(text, "secret", file)?;
        let invalid = |reason: &str| invalid("secret", file, reason);
        let pair: [u8; 64] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| invalid(&format!("expected 64 bytes of key material, found {}", bytes.len())))?;
        // Nix (libsodium) signs with the public half stored in the file: a mismatch would sign garbage.
        let key = ed25519_dalek::SigningKey::from_keypair_bytes(&pair)
            .map_err(|_| invalid("the public half does not match the secret half"))?;
        Ok(SecretKey { name, key })
    }
    /// Reads and parses a key file; errors name the file, never the key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.to_owned(), source })?;
        Self::parse_in(&text, Some(path))
    }
    /// The key name (the part before the colon).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `name:base64(64 bytes)` without a trailing newline, as Nix writes it.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey { name: self.name.clone(), key: self.key.verifying_key() }
    }
    /// Signs `msg` and returns `name:base64(signature)`, the value of a narinfo `Sig:` line.
    pub fn sign(&self, msg: &[u8]) -> String {
        use ed25519_dalek::Signer;
        format!("{}:{}", self.name, B64.encode(self.key.sign(msg).to_bytes()))
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({}:<redacted>)", self.name)
    }
}

impl PublicKey {
    /// Parses `name:base64(32 bytes)`.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (name, bytes) = split_key(text, "public", None)?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            invalid("public", None, &format!("expected 32 bytes of key material, found {}", bytes.len()))
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw)
            .map_err(|_| invalid("public", None, "not a valid ed25519 point"))?;
        Ok(PublicKey { name, key })
    }
    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `name:base64(32 bytes)`.
    pub fn to_nix_string(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
    /// True when `sig` (`name:base64`) is this key's valid signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else { return false };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = B64.decode(b64.trim()) else { return false };
        let Ok(raw) = <[u8; 64]>::try_from(bytes.as_slice()) else { return false };
        let signature = ed25519_dalek::Signature::from_bytes(&raw);
        // Strict verification, like libsodium's crypto_sign_verify_detached that Nix uses.
        self.key.verify_strict(msg, &signature).is_ok()
    }
}

fn invalid(what: &'static str, file: Option<&Path>, reason: &str) -> KeyError {
    KeyError::Invalid { what, file: file.map(Path::to_owned), reason: reason.to_owned() }
}

/// A key name as Nix accepts it: non-empty, no `:`; we also refuse whitespace and control characters so
/// that `Sig:` lines and `trusted-public-keys` lists stay parseable.
fn validate_name(name: &str, what: &'static str, file: Option<&Path>) -> Result<(), KeyError> {
    if name.is_empty() {
        return Err(invalid(what, file, "empty key name"));
    }
    if name.chars().any(|c| c == ':' || c.is_whitespace() || c.is_control()) {
        return Err(invalid(what, file, "key name contains `:`, whitespace or control characters"));
    }
    Ok(())
}

/// Splits `name:base64` (surrounding whitespace ignored) into the name and the decoded bytes. Errors never
/// quote the key material.
fn split_key(text: &str, what: &'static str, file: Option<&Path>) -> Result<(String, Vec<u8>), KeyError> {
    let text = text.trim();
    let (name, b64) = text.split_once(':').ok_or_else(|| invalid(what, file, "expected `name:base64`"))?;
    validate_name(name, what, file)?;
    let bytes = B64.decode(b64).map_err(|_| invalid(what, file, "key material is not valid base64"))?;
    Ok((name.to_owned(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Generated with `nix key generate-secret --key-name test-1` (Nix 2.8).
    const NIX_SECRET: &str =
        "test-1:QNsIsIMlouCZRpmjdivHsios497y68Yv//lAqEXvvo5EGi8mY5tpttPLsUuxX4282qpDzgeIJ1MgZ8NhVNQDzg==";
    const NIX_PUBLIC: &str = "test-1:RBovJmObabbTy7FLsV+NvNqqQ84HiCdTIGfDYVTUA84=";

    #[test]
    fn parses_nix_keys_and_round_trips() {
        let sk = SecretKey::parse(&format!("  {NIX_SECRET}\n")).expect("nix secret key");
        assert_eq!(sk.name(), "test-1");
        assert_eq!(sk.to_nix_string(), NIX_SECRET);
        assert_eq!(sk.public().to_nix_string(), NIX_PUBLIC);
        assert_eq!(PublicKey::parse(NIX_PUBLIC).expect("nix public key"), sk.public());
        let sig = sk.sign(b"message");
        assert!(sig.starts_with("test-1:"));
        assert!(sk.public().verify(b"message", &sig));
        assert!(!sk.public().verify(b"messagf", &sig));
        assert!(!sk.public().verify(b"message", &sig.replacen("test-1", "test-2", 1)));
    }

    #[test]
    fn generated_keys_sign_and_verify() {
        let sk = SecretKey::generate("cache.example.org-1").expect("generate");
        let again = SecretKey::parse(&sk.to_nix_string()).expect("reparse");
        assert_eq!(again.public(), sk.public());
        assert!(sk.public().verify(b"x", &again.sign(b"x")));
        assert!(SecretKey::generate("").is_err());
        assert!(SecretKey::generate("a:b").is_err());
    }

    #[test]
    fn errors_never_contain_key_material() {
        let (_, b64) = NIX_SECRET.split_once(':').expect("colon");
        let truncated = format!("test-1:{}", &b64[..40]);
        let mismatched = {
            let mut bytes = B64.decode(b64).expect("b64");
            bytes[40] ^= 1;
            format!("test-1:{}", B64.encode(bytes))
        };
        for bad in [String::new(), b64.to_owned(), format!(":{b64}"), format!("test-1:{b64}!"), truncated, mismatched] {
            let err = SecretKey::parse(&bad).expect_err("bad secret key");
            let msg = format!("{err} {err:?}");
            assert!(!msg.contains(&b64[..16]), "{msg}");
        }
        assert!(PublicKey::parse("test-1:AAAA").is_err());
        assert!(PublicKey::parse(NIX_SECRET).is_err());
        assert_eq!(format!("{:?}", SecretKey::parse(NIX_SECRET).expect("valid")), "SecretKey(test-1:<redacted>)");
    }

    #[test]
    fn from_file_names_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("key.sec");
        let err = SecretKey::from_file(&p).expect_err("missing");
        assert!(err.to_string().contains("key.sec"), "{err}");
        std::fs::write(&p, "junk").expect("write");
        let err = SecretKey::from_file(&p).expect_err("junk");
        assert!(err.to_string().contains("key.sec"), "{err}");
        std::fs::write(&p, NIX_SECRET).expect("write");
        assert_eq!(SecretKey::from_file(&p).expect("valid").name(), "test-1");
    }

    proptest::proptest! {
        #[test]
        fn key_parsing_never_panics(s in "\\PC{0,120}") {
            let _ = SecretKey::parse(&s);
            let _ = PublicKey::parse(&s);
            let pk = PublicKey::parse(NIX_PUBLIC).expect("valid");
            let _ = pk.verify(b"m", &s);
        }
    }
}
