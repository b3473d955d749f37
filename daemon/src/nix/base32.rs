//! Nix's base32 ("nixbase32"): alphabet `0123456789abcdfghijklmnpqrsvwxyz`, least significant bits first,
//! as used in store path hashes and `sha256:` hashes.

/// Why a nixbase32 string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base32Error {
    /// A character outside Nix's alphabet, with its position.
    #[error("invalid nixbase32 character {ch:?} at position {pos}")]
    InvalidChar { ch: char, pos: usize },
    /// Bits left over that a valid encoding never has.
    #[error("invalid nixbase32 string (non-zero padding bits)")]
    Padding,
}

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes bytes as Nix does.
pub fn encode(bytes: &[u8]) -> String {
    todo!("{bytes:?}")
}

/// Decodes a nixbase32 string; the output length is `s.len() * 5 / 8`.
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    todo!("{s}")
}
