//! ed25519 signing keys in Nix's `name:base64` format and narinfo signatures (`name:base64(sig)`).

use std::path::{Path, PathBuf};

/// Why a key or signature could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading a key file failed.
    #[error("reading key file {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The key text is malformed; the key material itself never appears in the message.
    #[error("invalid {what} key{}: {reason}", .file.as_ref().map(|f| format!(" in {f:?}")).unwrap_or_default())]
    Invalid { what: &'static str, file: Option<PathBuf>, reason: String },
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
        todo!("{name}")
    }
    /// Parses `name:base64(64 bytes)` (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        todo!("{text}")
    }
    /// Reads and parses a key file; errors name the file, never the key.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        todo!("{path:?}")
    }
    /// The key name (the part before the colon).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `name:base64(64 bytes)` without a trailing newline, as Nix writes it.
    pub fn to_nix_string(&self) -> String {
        todo!("{:?}", self.key.to_bytes().len())
    }
    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        todo!()
    }
    /// Signs `msg` and returns `name:base64(signature)`, the value of a narinfo `Sig:` line.
    pub fn sign(&self, msg: &[u8]) -> String {
        todo!("{msg:?}")
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
        todo!("{text}")
    }
    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `name:base64(32 bytes)`.
    pub fn to_nix_string(&self) -> String {
        todo!("{:?}", self.key)
    }
    /// True when `sig` (`name:base64`) is this key's valid signature of `msg`.
    pub fn verify(&self, msg: &[u8], sig: &str) -> bool {
        todo!("{msg:?} {sig}")
    }
}
