//! Nix's base32 ("nixbase32"): alphabet `0123456789abcdfghijklmnpqrsvwxyz`, least significant bits first,
//! as used in store path hashes and `sha256:` hashes.
//!
//! Nix's order is unusual: the string starts with the HIGH bits of the LAST byte, so a 32-byte digest and
//! its nix32 text read in opposite directions. `nix hash to-base32` is the reference (see the tests).

/// Nix's 32 characters: the digits and lower-case letters without `e`, `o`, `u` and `t` (the hook's
/// constant, so store path checks and the codec share one alphabet).
pub(crate) const ALPHABET: &[u8; 32] = niks3_spool::store_path::NIX32;

/// Why a nixbase32 string could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Base32Error {
    /// A character outside Nix's alphabet, with its position.
    #[error("invalid nixbase32 character {ch:?} at position {pos}")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte position in the input.
        pos: usize,
    },
    /// Bits left over that a valid encoding never has.
    #[error("invalid nixbase32 string (non-zero padding bits)")]
    Padding,
}

/// Length of the encoding of `n` bytes.
pub const fn encoded_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// The value of one nixbase32 character, `None` outside the alphabet.
pub(crate) fn digit_value(c: u8) -> Option<u8> {
    ALPHABET.iter().position(|&a| a == c).map(|p| p as u8)
}

/// True when `c` belongs to Nix's base32 alphabet.
pub(crate) fn is_nix32_char(c: u8) -> bool {
    digit_value(c).is_some()
}

/// Encodes bytes as Nix does.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut s = String::with_capacity(len);
    for n in (0..len).rev() {
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let lo = u16::from(bytes[i]) >> j;
        let hi = if i + 1 < bytes.len() { u16::from(bytes[i + 1]) << (8 - j) } else { 0 };
        s.push(char::from(ALPHABET[usize::from((lo | hi) & 0x1f)]));
    }
    s
}

/// Decodes a nixbase32 string; the output length is `s.len() * 5 / 8`.
#[allow(clippy::many_single_char_names, reason = "mirrors the bit arithmetic of Nix's own decoder")]
pub fn decode(s: &str) -> Result<Vec<u8>, Base32Error> {
    if let Some((pos, ch)) = s.char_indices().find(|&(_, c)| !c.is_ascii() || !is_nix32_char(c as u8)) {
        return Err(Base32Error::InvalidChar { ch, pos });
    }
    let input = s.as_bytes();
    let out_len = input.len() * 5 / 8;
    let mut out = vec![0u8; out_len];
    for n in 0..input.len() {
        let c = input[input.len() - n - 1];
        let Some(digit) = digit_value(c) else {
            return Err(Base32Error::InvalidChar { ch: char::from(c), pos: input.len() - n - 1 });
        };
        let b = n * 5;
        let i = b / 8;
        let j = b % 8;
        let wide = u16::from(digit) << j;
        if i < out_len {
            out[i] |= (wide & 0xff) as u8;
        } else if wide != 0 {
            return Err(Base32Error::Padding);
        }
        let carry = (wide >> 8) as u8;
        if i + 1 < out_len {
            out[i + 1] |= carry;
        } else if carry != 0 {
            return Err(Base32Error::Padding);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_from_nix() {
        // `nix hash to-base32 sha256:<hex>` for the sha256 of the empty string.
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes = hex::decode(hex).expect("valid hex");
        assert_eq!(encode(&bytes), "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
        assert_eq!(decode("0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73").expect("valid"), bytes);
        assert_eq!(encode(&[]), "");
        assert_eq!(encode(&[0xff]), "7z");
        assert_eq!(decode("7z").expect("valid"), vec![0xff]);
    }

    #[test]
    fn rejects_bad_characters_and_padding() {
        assert_eq!(decode("0e").expect_err("invalid"), Base32Error::InvalidChar { ch: 'e', pos: 1 });
        assert_eq!(decode("aé").expect_err("invalid"), Base32Error::InvalidChar { ch: 'é', pos: 1 });
        // 2 chars = 10 bits for 1 byte: the top two bits of the first char must be zero.
        assert_eq!(decode("8z").expect_err("invalid"), Base32Error::Padding);
        assert_eq!(decode("z").expect_err("invalid"), Base32Error::Padding);
        assert_eq!(decode("0").expect("zero bits"), Vec::<u8>::new());
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let s = encode(&bytes);
            proptest::prop_assert_eq!(s.len(), encoded_len(bytes.len()));
            proptest::prop_assert_eq!(decode(&s).expect("own encoding decodes"), bytes);
        }

        #[test]
        fn decode_never_panics(s in "\\PC{0,80}") {
            let _ = decode(&s);
        }

        #[test]
        fn decode_alphabet_never_panics(s in "[0-9a-z]{0,80}") {
            if let Ok(b) = decode(&s) {
                proptest::prop_assert_eq!(b.len(), s.len() * 5 / 8);
            }
        }
    }
}
