//! Store paths (`<store dir>/<32 nix32 chars>-<name>`) and the store directory they live in.
//!
//! Everything that becomes an object key or a file path passes through here first, so the checks are
//! strict: bad hash alphabet or length, empty/overlong names, names with `/`, NUL, leading `.`, or
//! characters outside Nix's set are rejected with an error that names the input. The rules themselves
//! are the hook's (`niks3_spool::store_path`): what the hook queues and what the daemon accepts cannot drift.

use std::path::{Path, PathBuf};

use niks3_spool::store_path;

/// Why a store path or store directory was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    /// The path is not under the store directory (or is the store directory itself).
    #[error("{path:?} is not in the Nix store {store_dir:?}")]
    NotInStore {
        /// The file or directory concerned.
        path: String,
        /// The store directory it should be in.
        store_dir: String,
    },
    /// The basename is malformed; `reason` says how.
    #[error("invalid store path {input:?}: {reason}")]
    Invalid {
        /// The input as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store directory is not an absolute, normalised path.
    #[error("invalid store directory {input:?}: {reason}")]
    InvalidStoreDir {
        /// The input as given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
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
        let invalid =
            |reason: &str| StorePathError::InvalidStoreDir { input: dir.to_owned(), reason: reason.to_owned() };
        if !dir.starts_with('/') {
            return Err(invalid("not an absolute path"));
        }
        if dir.len() == 1 {
            return Err(invalid("the root directory cannot be a store"));
        }
        if dir.ends_with('/') {
            return Err(invalid("trailing slash"));
        }
        if dir.contains('\0') {
            return Err(invalid("contains NUL"));
        }
        for component in dir[1..].split('/') {
            match component {
                "" => return Err(invalid("empty path component (`//`)")),
                "." | ".." => return Err(invalid("`.` or `..` component")),
                _ => {}
            }
        }
        Ok(StoreDir(dir.to_owned()))
    }
    /// The directory as a string, e.g. `/nix/store`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Parses a full path such as `/nix/store/<hash>-name`; a sub-path inside a store path is rejected.
    pub fn parse_path(&self, path: &str) -> Result<StorePath, StorePathError> {
        let not_in_store = || StorePathError::NotInStore { path: path.to_owned(), store_dir: self.0.clone() };
        let base =
            path.strip_prefix(self.0.as_str()).and_then(|rest| rest.strip_prefix('/')).ok_or_else(not_in_store)?;
        if base.is_empty() {
            return Err(not_in_store());
        }
        if base.contains('/') {
            return Err(StorePathError::Invalid {
                input: path.to_owned(),
                reason: "a path inside a store path, not a store path".to_owned(),
            });
        }
        StorePath::from_basename(base).map_err(|e| match e {
            StorePathError::Invalid { reason, .. } => StorePathError::Invalid { input: path.to_owned(), reason },
            other => other,
        })
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

/// Length of the hash part of a store path (160 bits in nix32).
pub const HASH_LEN: usize = store_path::HASH_LEN;

/// Longest name Nix accepts (`<hash>-<name>` then fits in 244 bytes).
pub const MAX_NAME_LEN: usize = store_path::MAX_NAME_LEN;

/// A validated store path, independent of the store directory.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash: String,
    name: String,
}

impl StorePath {
    /// Parses `<32 nix32 chars>-<name>`, by the hook's rules (one set of rules for both).
    pub fn from_basename(basename: &str) -> Result<Self, StorePathError> {
        store_path::validate_basename(basename)
            .map_err(|reason| StorePathError::Invalid { input: basename.to_owned(), reason })?;
        // validated: the hash part is ASCII and followed by `-`
        let (hash, dash_name) = basename.split_at(HASH_LEN);
        Ok(StorePath { hash: hash.to_owned(), name: dash_name[1..].to_owned() })
    }
    /// Parses a bare 32-character hash part (as in `<hash>.narinfo`).
    pub fn validate_hash_part(hash: &str) -> Result<(), StorePathError> {
        store_path::validate_hash_part(hash)
            .map_err(|reason| StorePathError::Invalid { input: hash.to_owned(), reason })
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
    #[allow(clippy::case_sensitive_file_extension_comparisons, reason = "Nix itself compares `.drv` exactly")]
    pub fn is_derivation(&self) -> bool {
        self.name.ends_with(".drv")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0mdqa9w1p6cmli6976v4wi0sw9r4p5pr";

    #[test]
    fn parses_valid_paths() {
        let dir = StoreDir::default();
        let p = dir.parse_path(&format!("/nix/store/{H}-hello-2.12.1")).expect("valid");
        assert_eq!(p.hash_part(), H);
        assert_eq!(p.name(), "hello-2.12.1");
        assert_eq!(p.basename(), format!("{H}-hello-2.12.1"));
        assert_eq!(dir.display(&p), format!("/nix/store/{H}-hello-2.12.1"));
        assert!(!p.is_derivation());
        let d = StorePath::from_basename(&format!("{H}-x+y_z?a=b-1.0.drv")).expect("valid drv");
        assert!(d.is_derivation());
        StorePath::from_basename(&format!("{H}-{}", "a".repeat(MAX_NAME_LEN))).expect("longest name");
        let other = StoreDir::new("/gnu/store").expect("valid dir");
        assert_eq!(other.display(&p), format!("/gnu/store/{H}-hello-2.12.1"));
        assert_eq!(other.path_of(&p), PathBuf::from(format!("/gnu/store/{H}-hello-2.12.1")));
    }

    #[test]
    fn rejects_bad_basenames_naming_the_input() {
        let long = format!("{H}-{}", "a".repeat(MAX_NAME_LEN + 1));
        for bad in [
            String::new(),
            H.to_owned(),
            format!("{H}-"),
            format!("{H}_name"),
            format!("{H}-.hidden"),
            format!("{H}-.."),
            format!("{H}-a/b"),
            format!("{H}-a\0b"),
            format!("{H}-a b"),
            format!("{H}-caf\u{e9}"),
            format!("e{}-name", &H[1..]),
            format!("{}-name", &H[1..]),
            format!("\u{e9}{}-name", &H[2..]),
            long,
        ] {
            let err = StorePath::from_basename(&bad).expect_err(&bad);
            assert!(matches!(err, StorePathError::Invalid { ref input, .. } if *input == bad), "{err:?}");
        }
        assert!(StorePath::validate_hash_part(H).is_ok());
        assert!(StorePath::validate_hash_part(&H[1..]).is_err());
        assert!(StorePath::validate_hash_part(&format!("{}u", &H[1..])).is_err());
    }

    #[test]
    fn rejects_paths_outside_or_inside_the_store() {
        let dir = StoreDir::default();
        for (bad, not_in_store) in [
            ("/nix/store".to_owned(), true),
            ("/nix/store/".to_owned(), true),
            (format!("/nix/storefoo/{H}-a"), true),
            (format!("/gnu/store/{H}-a"), true),
            (format!("nix/store/{H}-a"), true),
            (format!("/nix/store/{H}-a/bin/sh"), false),
            (format!("/nix/store/../store/{H}-a"), false),
            (format!("/nix/store/{H}-a/"), false),
        ] {
            let err = dir.parse_path(&bad).expect_err(&bad);
            assert_eq!(matches!(err, StorePathError::NotInStore { .. }), not_in_store, "{bad}: {err:?}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn store_dir_validation() {
        assert_eq!(StoreDir::new("/nix/store").expect("default"), StoreDir::default());
        for bad in ["", "nix/store", "/", "/nix/store/", "/nix//store", "/nix/./store", "/nix/../store", "/a\0b"] {
            let err = StoreDir::new(bad).expect_err(bad);
            assert!(matches!(err, StorePathError::InvalidStoreDir { .. }), "{err:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,300}") {
            let _ = StorePath::from_basename(&s);
            let _ = StorePath::validate_hash_part(&s);
            let _ = StoreDir::default().parse_path(&s);
            let _ = StoreDir::default().parse_path(&format!("/nix/store/{s}"));
            let _ = StoreDir::new(&s);
        }

        #[test]
        fn valid_names_roundtrip(name in "[A-Za-z0-9+\\-_?=][A-Za-z0-9+\\-._?=]{0,210}") {
            let base = format!("{H}-{name}");
            let p = StorePath::from_basename(&base).expect("valid by construction");
            proptest::prop_assert_eq!(p.basename(), base);
        }
    }
}
