//! Object keys of the bucket layout (DESIGN.md), built only from validated parts.

use crate::nix::hash::Sha256Hash;
use crate::nix::store_path::StorePath;

/// The kind of object a key names; also what the database records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// `nix-cache-info`
    CacheInfo,
    /// `<hash>.narinfo`
    NarInfo,
    /// `nar/<nix32 NarHash>.nar.zst`
    Nar,
    /// `<hash>.ls`
    Listing,
    /// `log/<drv basename>`
    Log,
    /// `realisations/<drv-hash>!<out>.doi`
    Realisation,
}

impl ObjectKind {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::CacheInfo => "cache-info",
            ObjectKind::NarInfo => "narinfo",
            ObjectKind::Nar => "nar",
            ObjectKind::Listing => "listing",
            ObjectKind::Log => "log",
            ObjectKind::Realisation => "realisation",
        }
    }
}

/// Why a string is not a key of the layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid object key {input:?}: {reason}")]
pub struct KeyError {
    /// The rejected input (truncated when long).
    pub input: String,
    /// Why.
    pub reason: String,
}

/// A key in the bucket layout. Constructed only through the functions below.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// `nix-cache-info`
    pub fn cache_info() -> Self {
        ObjectKey("nix-cache-info".to_owned())
    }
    /// `<hash>.narinfo`
    pub fn narinfo(path: &StorePath) -> Self {
        ObjectKey(format!("{}.narinfo", path.hash_part()))
    }
    /// `nar/<nix32 NarHash>.nar.zst`
    pub fn nar(nar_hash: &Sha256Hash) -> Self {
        ObjectKey(format!("nar/{}.nar.zst", nar_hash.to_nix32()))
    }
    /// `<hash>.ls`
    pub fn listing(path: &StorePath) -> Self {
        ObjectKey(format!("{}.ls", path.hash_part()))
    }
    /// `log/<drv basename>`
    pub fn log(drv: &StorePath) -> Self {
        ObjectKey(format!("log/{}", drv.basename()))
    }
    /// `realisations/<sha256:drv-hash>!<output>.doi`; both parts validated by the caller's parser.
    pub fn realisation(drv_hash: &Sha256Hash, output: &str) -> Result<Self, KeyError> {
        todo!("{drv_hash:?} {output}")
    }
    /// Parses a request path or stored key back into a key, accepting only the layout above (used by the
    /// read proxy and GC). Rejects `..`, absolute paths, bad hash alphabets, overlong names.
    pub fn parse(key: &str) -> Result<(ObjectKind, Self), KeyError> {
        todo!("{key}")
    }
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// What kind of object this is.
    pub fn kind(&self) -> ObjectKind {
        todo!()
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
