//! narinfo files: the lenient parser, the writer, the fingerprint that is signed, signing and verifying.

use crate::nix::hash::Sha256Hash;
use crate::nix::signing::{PublicKey, SecretKey};
use crate::nix::store_path::{StoreDir, StorePath};

/// Why a narinfo could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// A line is malformed or a field value invalid; `line` is 1-based.
    #[error("narinfo line {line}: {reason}")]
    Line { line: usize, reason: String },
    /// A mandatory field (StorePath, URL, NarHash, NarSize) is missing.
    #[error("narinfo lacks the mandatory field {0}")]
    Missing(&'static str),
}

/// The fields of a narinfo (see DESIGN.md). References are basenames, kept sorted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NarInfo {
    /// The store path this describes.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache root, e.g. `nar/<nix32>.nar.zst`.
    pub url: String,
    /// `zstd`, `xz`, `none`, … as written by whoever made the NAR file.
    pub compression: String,
    /// Hash of the compressed file, when known.
    pub file_hash: Option<Sha256Hash>,
    /// Size of the compressed file, when known.
    pub file_size: Option<u64>,
    /// Hash of the uncompressed NAR: what Nix checks on import.
    pub nar_hash: Sha256Hash,
    /// Size of the uncompressed NAR.
    pub nar_size: u64,
    /// Store paths this one refers to (sorted).
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known (a `.drv` store path).
    pub deriver: Option<StorePath>,
    /// Signatures, `name:base64`, one `Sig:` line each.
    pub sigs: Vec<String>,
    /// Content address (`CA:`), when the path is content-addressed.
    pub ca: Option<String>,
}

impl NarInfo {
    /// Parses leniently: unknown keys, blank lines and trailing newlines are ignored; StorePath must lie in
    /// `store_dir`.
    pub fn parse(text: &str, store_dir: &StoreDir) -> Result<Self, NarInfoError> {
        todo!("{text} {store_dir:?}")
    }
    /// Serialises in Nix's field order (StorePath, URL, Compression, FileHash, FileSize, NarHash, NarSize,
    /// References, Deriver, Sig…, CA), each line ending in `\n`.
    pub fn to_text(&self, store_dir: &StoreDir) -> String {
        todo!("{store_dir:?}")
    }
    /// `1;<store path>;<sha256:nix32 NarHash>;<NarSize>;<comma-joined full reference paths>`.
    pub fn fingerprint(&self, store_dir: &StoreDir) -> String {
        todo!("{store_dir:?}")
    }
    /// Adds (or replaces) the signature by `key`.
    pub fn sign(&mut self, key: &SecretKey, store_dir: &StoreDir) {
        todo!("{key:?} {store_dir:?}")
    }
    /// True when some `Sig` line is a valid signature by one of `keys`.
    pub fn verify(&self, keys: &[PublicKey], store_dir: &StoreDir) -> bool {
        todo!("{keys:?} {store_dir:?}")
    }
}
