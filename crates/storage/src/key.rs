//! Object keys of the bucket layout (DESIGN.md), built only from validated parts.
//!
//! Two ways in: the typed constructors (the upload pipeline, from parsed store paths and hashes) and
//! [`ObjectKey::parse`] (the read proxy and GC, from request paths and listed keys). `parse` accepts exactly
//! the layout and nothing that could escape it: no `..`, no absolute paths, no empty segments, no bytes
//! outside the layout's alphabet, nothing longer than [`MAX_KEY_LEN`].

use niks3_nix::base32;
use niks3_nix::hash::Sha256Hash;
use niks3_nix::store_path::StorePath;
use niks3_spool::store_path;

/// Longest key `parse` accepts; the longest legal key (a `log/` key with a 211-character name) is shorter.
pub(crate) const MAX_KEY_LEN: usize = 300;

/// How much of a rejected input an error quotes.
const QUOTE_LEN: usize = 80;

/// Length of a nix32 SHA-256 (`nar/<hash>.nar.zst`).
const NIX32_SHA256_LEN: usize = 52;

/// NAR file extensions `parse` accepts: ours (`.nar.zst`) and those other writers (stock `nix copy`) use, so
/// the read proxy and GC can handle a bucket that also holds NARs niks3 did not write.
const NAR_EXTENSIONS: [&str; 4] = [".nar.zst", ".nar.xz", ".nar.bz2", ".nar"];

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

    /// True for objects whose content never changes under the same key (NARs are named by their hash), so
    /// they may be cached forever by HTTP clients and CDNs.
    pub(crate) fn is_immutable(self) -> bool {
        matches!(self, ObjectKind::Nar)
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

impl KeyError {
    fn new(input: &str, reason: impl Into<String>) -> Self {
        let input = match input.char_indices().nth(QUOTE_LEN) {
            Some((cut, _)) => format!("{}…", &input[..cut]),
            None => input.to_owned(),
        };
        KeyError { input, reason: reason.into() }
    }
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
    ///
    /// The hash is written in base16, as Nix's `DrvOutput::to_string` does; the output name must be a legal
    /// Nix output name (letters, digits, `+-._?=`, not starting with `.`, at most 211 characters).
    pub fn realisation(drv_hash: &Sha256Hash, output: &str) -> Result<Self, KeyError> {
        let key = format!("realisations/sha256:{}!{output}.doi", drv_hash.to_hex());
        check_output_name(output).map_err(|reason| KeyError::new(&key, reason))?;
        Ok(ObjectKey(key))
    }
    /// Parses a request path or stored key back into a key, accepting only the layout above (used by the
    /// read proxy and GC). Rejects `..`, absolute paths, bad hash alphabets, overlong names.
    pub fn parse(key: &str) -> Result<(ObjectKind, Self), KeyError> {
        let kind = classify(key).map_err(|reason| KeyError::new(key, reason))?;
        Ok((kind, ObjectKey(key.to_owned())))
    }
    /// The key as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// What kind of object this is.
    pub fn kind(&self) -> ObjectKind {
        let k = self.0.as_str();
        if k == "nix-cache-info" {
            ObjectKind::CacheInfo
        } else if k.starts_with("nar/") {
            ObjectKind::Nar
        } else if k.starts_with("log/") {
            ObjectKind::Log
        } else if k.starts_with("realisations/") {
            ObjectKind::Realisation
        } else if k.ends_with(".narinfo") {
            ObjectKind::NarInfo
        } else {
            ObjectKind::Listing
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Characters any key of the layout may contain: store path name characters plus the separators the
/// layout itself uses (`/`, and `:`/`!` in realisation keys).
fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "+-._?=/:!".contains(c)
}

/// The kind of a key, or why it is not one.
fn classify(key: &str) -> Result<ObjectKind, String> {
    if key.is_empty() {
        return Err("empty key".to_owned());
    }
    if key.len() > MAX_KEY_LEN {
        return Err(format!("longer than {MAX_KEY_LEN} bytes ({} bytes)", key.len()));
    }
    if let Some(c) = key.chars().find(|&c| !is_key_char(c)) {
        return Err(format!("character {c:?} is not allowed in a key"));
    }
    if key.starts_with('/') {
        return Err("absolute path".to_owned());
    }
    if key.split('/').any(|seg| seg == "." || seg == "..") {
        return Err("`.` or `..` path segment".to_owned());
    }
    if key.split('/').any(str::is_empty) {
        return Err("empty path segment (`//` or trailing `/`)".to_owned());
    }

    if key == "nix-cache-info" {
        return Ok(ObjectKind::CacheInfo);
    }
    if let Some(rest) = key.strip_prefix("nar/") {
        let ext = NAR_EXTENSIONS
            .iter()
            .find(|ext| rest.ends_with(**ext))
            .ok_or_else(|| format!("a NAR key must end with one of {NAR_EXTENSIONS:?}"))?;
        check_nix32_sha256(&rest[..rest.len() - ext.len()])?;
        return Ok(ObjectKind::Nar);
    }
    if let Some(rest) = key.strip_prefix("log/") {
        let drv = StorePath::from_basename(rest).map_err(|e| e.to_string())?;
        if !drv.is_derivation() {
            return Err("a log key must name a .drv store path".to_owned());
        }
        return Ok(ObjectKind::Log);
    }
    if let Some(rest) = key.strip_prefix("realisations/") {
        let id = rest.strip_suffix(".doi").ok_or("a realisation key must end with .doi")?;
        let (hash, output) = id.split_once('!').ok_or("a realisation key must be <sha256:hash>!<output>.doi")?;
        let hex = hash.strip_prefix("sha256:").ok_or("a realisation hash must start with sha256:")?;
        if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)) {
            return Err("a realisation hash must be 64 lower-case hex digits".to_owned());
        }
        check_output_name(output)?;
        return Ok(ObjectKind::Realisation);
    }
    if key.contains('/') {
        return Err("unknown key prefix".to_owned());
    }
    if let Some(hash) = key.strip_suffix(".narinfo") {
        store_path::validate_hash_part(hash)?;
        return Ok(ObjectKind::NarInfo);
    }
    if let Some(hash) = key.strip_suffix(".ls") {
        store_path::validate_hash_part(hash)?;
        return Ok(ObjectKind::Listing);
    }
    Err("not a key of the cache layout".to_owned())
}

/// A 52-character nix32 SHA-256 digest.
fn check_nix32_sha256(hash: &str) -> Result<(), String> {
    if hash.len() != NIX32_SHA256_LEN {
        return Err(format!("NAR hash must be {NIX32_SHA256_LEN} nix32 characters, got {}", hash.len()));
    }
    base32::decode(hash).map(|_| ()).map_err(|e| format!("NAR hash: {e}"))
}

/// A Nix output name (`out`, `dev`, `lib32`, …): Nix holds output names to the store path name rules.
fn check_output_name(output: &str) -> Result<(), String> {
    store_path::validate_name(output).map_err(|e| format!("output {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0c6kzph7l0dcbfmjap64f0czdafn3b7x";
    const NAR: &str = "1q4an56arzi4glhxcz0sm6fc8fqcx0y8n5zhbp5l1xa1i3a8s8h8";

    fn reject(key: &str) -> KeyError {
        match ObjectKey::parse(key) {
            Ok(k) => panic!("{key:?} accepted as {k:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn crafted_keys_are_rejected_with_the_input_named() {
        let long = "a".repeat(400);
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("../x", "`..`"),
            ("/etc/passwd", "absolute"),
            ("nar/../../x", "`..`"),
            ("nar/./x.nar.zst", "`.`"),
            ("nar//x.nar.zst", "empty path segment"),
            ("nar/", "empty path segment"),
            ("a\0b.narinfo", "not allowed"),
            ("nar/x y.nar.zst", "not allowed"),
            ("nar/é.nar.zst", "not allowed"),
            ("nar\\..\\x", "not allowed"),
            ("%2e%2e/x", "not allowed"),
            (&long, "longer than 300"),
            ("nix-cache-info2", "not a key"),
            ("etc/passwd", "unknown key prefix"),
            ("foo.narinfo", "32 characters"),
            ("0c6kzph7l0dcbfmjap64f0czdafn3b7e.narinfo", "alphabet"),
            ("0C6KZPH7L0DCBFMJAP64F0CZDAFN3B7X.narinfo", "alphabet"),
            ("nar/abc.nar.zst", "52 nix32"),
            ("nar/1q4an56arzi4glhxcz0sm6fc8fqcx0y8n5zhbp5l1xa1i3a8s8h8.tar", "must end"),
            ("nar/uq4an56arzi4glhxcz0sm6fc8fqcx0y8n5zhbp5l1xa1i3a8s8h8.nar.zst", "NAR hash"),
            ("log/0c6kzph7l0dcbfmjap64f0czdafn3b7x-hello", ".drv"),
            ("log/hello.drv", "invalid"),
            ("realisations/sha256:00!out.doi", "64 lower-case hex"),
            ("realisations/md5:00!out.doi", "sha256:"),
            ("realisations/x.doi", "<sha256:hash>!<output>"),
            ("realisations/x", ".doi"),
        ];
        for (key, why) in cases {
            let e = reject(key);
            assert!(e.reason.contains(why), "{key:?}: reason {:?} lacks {why:?}", e.reason);
            assert!(e.input.chars().count() <= QUOTE_LEN + 1, "{key:?}: input not truncated");
            assert!(e.to_string().starts_with("invalid object key"), "{e}");
        }
        let e = reject(&long);
        assert!(e.input.ends_with('…') && e.input.starts_with("aaaa"), "{:?}", e.input);
    }

    #[test]
    fn nul_is_shown_escaped() {
        let e = reject("a\0b.narinfo");
        assert!(e.to_string().contains("\\0"), "{e}");
    }

    #[test]
    fn layout_keys_parse_with_their_kind() {
        let rhash = "a".repeat(64);
        let cases = [
            ("nix-cache-info".to_owned(), ObjectKind::CacheInfo),
            (format!("{HASH}.narinfo"), ObjectKind::NarInfo),
            (format!("{HASH}.ls"), ObjectKind::Listing),
            (format!("nar/{NAR}.nar.zst"), ObjectKind::Nar),
            (format!("nar/{NAR}.nar.xz"), ObjectKind::Nar),
            (format!("nar/{NAR}.nar"), ObjectKind::Nar),
            (format!("log/{HASH}-hello-2.12.drv"), ObjectKind::Log),
            (format!("realisations/sha256:{rhash}!out.doi"), ObjectKind::Realisation),
        ];
        for (key, kind) in cases {
            let (k, parsed) = ObjectKey::parse(&key).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(k, kind, "{key}");
            assert_eq!(parsed.kind(), kind, "{key}");
            assert_eq!(parsed.as_str(), key);
            assert_eq!(parsed.to_string(), key);
        }
    }

    #[test]
    fn constructors_produce_keys_that_parse_back() {
        let path = StorePath::from_basename(&format!("{HASH}-hello-2.12")).expect("valid store path");
        let drv = StorePath::from_basename(&format!("{HASH}-hello-2.12.drv")).expect("valid drv path");
        let nar_hash = Sha256Hash([7; 32]);
        let keys = [
            (ObjectKey::cache_info(), ObjectKind::CacheInfo),
            (ObjectKey::narinfo(&path), ObjectKind::NarInfo),
            (ObjectKey::listing(&path), ObjectKind::Listing),
            (ObjectKey::nar(&nar_hash), ObjectKind::Nar),
            (ObjectKey::log(&drv), ObjectKind::Log),
            (ObjectKey::realisation(&nar_hash, "out").expect("valid output"), ObjectKind::Realisation),
        ];
        for (key, kind) in keys {
            assert_eq!(key.kind(), kind, "{key}");
            assert_eq!(ObjectKey::parse(key.as_str()), Ok((kind, key.clone())), "{key}");
        }
        assert_eq!(ObjectKey::narinfo(&path).as_str(), format!("{HASH}.narinfo"));
        assert_eq!(ObjectKey::nar(&nar_hash).as_str(), format!("nar/{}.nar.zst", nar_hash.to_nix32()));
        assert_eq!(
            ObjectKey::realisation(&nar_hash, "dev").expect("valid output").as_str(),
            format!("realisations/sha256:{}!dev.doi", "07".repeat(32))
        );
    }

    #[test]
    fn realisation_rejects_bad_output_names() {
        let h = Sha256Hash([1; 32]);
        for bad in ["", ".hidden", "a/b", "../x", "a!b", "a b", "a\0", &"o".repeat(212)] {
            let e = ObjectKey::realisation(&h, bad).expect_err(bad);
            assert!(e.input.starts_with("realisations/sha256:"), "{e}");
        }
    }
}
