//! Store paths (`<store dir>/<32 nix32 chars>-<name>`) and the store directory they live in.
//!
//! Everything that becomes an object key or a file path passes through here first, so the checks are
//! strict: bad hash alphabet or length, empty/overlong names, names with `/`, NUL, leading `.`, or
//! characters outside Nix's set are rejected with an error that names the input.

use std::path::{Path, PathBuf};

/// Why a store path or store directory was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    /// The path is not under the store directory (or is the store directory itself).
    #[error("{path:?} is not in the Nix store {store_dir:?}")]
    NotInStore { path: String, store_dir: String },
    /// The basename is malformed; `reason` says how.
    #[error("invalid store path {input:?}: {reason}")]
    Invalid { input: String, reason: String },
    /// The store directory is not an absolute, normalised path.
    #[error("invalid store directory {input:?}: {reason}")]
    InvalidStoreDir { input: String, reason: String },
}

/// The store directory (`StoreDir` in `nix-cache-info`), `/nix/store` unless configured otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl Default for StoreDir {
    fn default() -> Self {
        StoreDir("/nix/store".to_owned())
    }
}

impl StoreDir {
    /// Accepts an absolute path without `.`/`..` components, NUL or a trailing slash.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        todo!("{dir}")
    }
    /// The directory as a string, e.g. `/nix/store`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Parses a full path such as `/nix/store/<hash>-name`; a sub-path inside a store path is rejected.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        todo!("{path}")
    }
    /// The full path of `p` in this store.
    pub fn display(&self, p: &StorePath) -> String {
        format!("{}/{}", self.0, p.basename())
    }
    /// The full path of `p` as a filesystem path.
    pub fn path_of(&self, p: &StorePath) -> PathBuf {
        Path::new(&self.0).join(p.basename())
    }
}

/// A validated store path, independent of the store directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: String,
    name: String,
}

impl StorePath {
    /// Parses `<32 nix32 chars>-<name>`.
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        todo!("{basename}")
    }
    /// Parses a bare 32-character hash part (as in `<hash>.narinfo`).
    pub fn validate_hash_part(hash: &str) -> Result<(), StorePathError> {
        todo!("{hash}")
    }
    /// The 32-character nix32 hash part.
    pub fn hash_part(&self) -> &str {
        &self.hash
    }
    /// The name after the dash.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// `<hash>-<name>`.
    pub fn basename(&self) -> String {
        format!("{}-{}", self.hash, self.name)
    }
    /// True for `.drv` store paths.
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}
