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
    Invalid {
        /// The input as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl Sha256Hash {
    /// Parses `sha256:<52 nix32 chars>`, `sha256:<64 hex chars>` or SRI `sha256-<base64>`.
    pub fn parse(s: &str) -> Result<Self, HashError> {
        let invalid = |reason: &str| HashError::Invalid { input: s.to_owned(), reason: reason.to_owned() };
        if let Some(b64) = s.strip_prefix("sha256-") {
            return Self::from_base64(b64).ok_or_else(|| invalid("SRI digest is not 44 characters of base64"));
        }
        let Some(digest) = s.strip_prefix("sha256:") else {
            return Err(invalid("expected a sha256: or sha256- prefix"));
        };
        match digest.len() {
            52 => {
                let bytes = crate::base32::decode(digest).map_err(|e| invalid(&e.to_string()))?;
                Self::from_slice(&bytes).ok_or_else(|| invalid("nix32 digest is not 32 bytes"))
            }
            64 => {
                let bytes = hex::decode(digest).map_err(|e| invalid(&format!("bad base16 digest: {e}")))?;
                Self::from_slice(&bytes).ok_or_else(|| invalid("base16 digest is not 32 bytes"))
            }
            44 => Self::from_base64(digest).ok_or_else(|| invalid("bad base64 digest")),
            n => Err(invalid(&format!("digest has {n} characters, expected 52 (nix32), 64 (base16) or 44 (base64)"))),
        }
    }
    /// `sha256:<nix32>`, the form narinfo files and fingerprints use.
    pub fn to_nix_string(&self) -> String {
        format!("sha256:{}", self.to_nix32())
    }
    /// The bare 52-character nix32 digest (used in `nar/<nix32>.nar.zst` keys).
    pub fn to_nix32(&self) -> String {
        crate::base32::encode(&self.0)
    }
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
    /// SRI form `sha256-<base64>`, as `nix hash path` and `nix path-info --json` print it.
    pub fn to_sri(&self) -> String {
        use base64::Engine;
        format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(self.0))
    }
    /// The SHA-256 of `data` (for small in-memory inputs; streams go through [`HashingWriter`]).
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256Hash(sha2::Sha256::digest(data).into())
    }

    fn from_slice(bytes: &[u8]) -> Option<Self> {
        <[u8; 32]>::try_from(bytes).ok().map(Sha256Hash)
    }

    fn from_base64(b64: &str) -> Option<Self> {
        use base64::Engine;
        if b64.len() != 44 {
            return None;
        }
        let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        Self::from_slice(&bytes)
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
    /// The inner writer, e.g. to abort it when the stream turned out bad.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
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

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const EMPTY_NIX32: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
    const EMPTY_SRI: &str = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";

    #[test]
    fn parses_all_forms_nix_prints() {
        let h = Sha256Hash::digest(b"");
        assert_eq!(Sha256Hash::parse(&format!("sha256:{EMPTY_NIX32}")).expect("nix32"), h);
        assert_eq!(Sha256Hash::parse(&format!("sha256:{EMPTY_HEX}")).expect("hex"), h);
        assert_eq!(Sha256Hash::parse(EMPTY_SRI).expect("sri"), h);
        assert_eq!(Sha256Hash::parse("sha256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=").expect("b64"), h);
        assert_eq!(h.to_hex(), EMPTY_HEX);
        assert_eq!(h.to_nix32(), EMPTY_NIX32);
        assert_eq!(h.to_nix_string(), format!("sha256:{EMPTY_NIX32}"));
        assert_eq!(h.to_sri(), EMPTY_SRI);
        assert_eq!(format!("{h:?}"), format!("Sha256Hash(sha256:{EMPTY_NIX32})"));
    }

    #[test]
    fn rejects_bad_hashes_naming_the_input() {
        for bad in [
            "",
            "sha256:",
            "md5:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e",
            "sha256:zzdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73",
            "sha256:g3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuF=",
            "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU",
            "sha256:0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7",
        ] {
            let err = Sha256Hash::parse(bad).expect_err(bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn hashing_writer_counts_and_hashes() {
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"hello ").expect("vec write");
        w.write_all(b"world").expect("vec write");
        let (h, n, inner) = w.finish();
        assert_eq!(n, 11);
        assert_eq!(inner, b"hello world");
        assert_eq!(h, Sha256Hash::digest(b"hello world"));
    }

    proptest::proptest! {
        #[test]
        fn forms_roundtrip(bytes in proptest::array::uniform32(proptest::num::u8::ANY)) {
            let h = Sha256Hash(bytes);
            proptest::prop_assert_eq!(Sha256Hash::parse(&h.to_nix_string()).expect("nix"), h);
            proptest::prop_assert_eq!(Sha256Hash::parse(&format!("sha256:{}", h.to_hex())).expect("hex"), h);
            proptest::prop_assert_eq!(Sha256Hash::parse(&h.to_sri()).expect("sri"), h);
        }

        #[test]
        fn parse_never_panics(s in "(sha256[:-])?\\PC{0,70}") {
            let _ = Sha256Hash::parse(&s);
        }
    }
}
