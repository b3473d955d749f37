//! SHA-256 hashes as Nix prints and parses them, and a writer that hashes and counts what passes through.

use std::io::Write;

/// A SHA-256 digest (NarHash, FileHash).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

/// Why a hash string could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashError {
    /// Not `sha256:<nix32|base16>` nor SRI `sha256-<base64>`.
    #[error("invalid sha256 hash {input:?}: {reason}")]
    Invalid { input: String, reason: String },
}

impl Sha256Hash {
    /// Parses `sha256:<52 nix32 chars>`, `sha256:<64 hex chars>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        todo!("{s}")
    }
    /// `sha256:<nix32>`, the form narinfo files and fingerprints use.
    pub fn to_nix_string(&self) -> String {
        todo!()
    }
    /// The bare 52-character nix32 digest (used in `nar/<nix32>.nar.zst` keys).
    pub fn to_nix32(&self) -> String {
        todo!()
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        todo!()
    }
}

impl std::fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Hash({})", self.to_nix_string())
    }
}

impl std::fmt::Display for Sha256Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_nix_string())
    }
}

/// Wraps a writer; hashes (SHA-256) and counts every byte written through it, so a stream is hashed once
/// on its way somewhere else instead of being read twice.
pub struct HashingWriter<W> {
    inner: W,
    hasher: sha2::Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Starts hashing in front of `inner`.
    pub fn new(inner: W) -> Self {
        use sha2::Digest;
        Self { inner, hasher: sha2::Sha256::new(), count: 0 }
    }
    /// The digest and byte count so far, and the inner writer back.
    pub fn finish(self) -> (Sha256Hash, u64, W) {
        use sha2::Digest;
        (Sha256Hash(self.hasher.finalize().into()), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        use sha2::Digest;
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
