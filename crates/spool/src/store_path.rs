//! Store path validation: the hook only queues paths that are provably inside the store, so nothing a
//! confused or hostile environment passes can make the daemon read or root an arbitrary file. The daemon
//! (`niks3::nix::store_path`, object keys) checks hashes, names and basenames with these same functions,
//! so the two sides cannot disagree on what a store path is.

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`). The daemon's nix32 codec uses this very constant.
pub const NIX32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Length of the hash part of a store path (160 bits in nix32).
pub const HASH_LEN: usize = 32;

/// Longest name Nix accepts after `<hash>-` (`<hash>-<name>` then fits in 244 bytes).
pub const MAX_NAME_LEN: usize = 211;

/// Why a string is not a store path in the given store dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidStorePath {
    /// The offending string (as given, possibly shortened for display).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

impl std::fmt::Display for InvalidStorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid store path {:?}: {}", self.path, self.reason)
    }
}

impl std::error::Error for InvalidStorePath {}

/// Normalises a store dir setting: must be absolute, trailing slashes are dropped (`/` alone is refused).
pub fn normalise_store_dir(dir: &str) -> Result<&str, InvalidStorePath> {
    let trimmed = dir.trim_end_matches('/');
    if !dir.starts_with('/') || trimmed.is_empty() || dir.contains('\0') {
        return Err(InvalidStorePath { path: dir.to_owned(), reason: "store dir must be an absolute path".into() });
    }
    Ok(trimmed)
}

/// Checks that `path` is `<store_dir>/<32 nix32 chars>-<name>` with a valid name; returns its basename.
/// `store_dir` must already be normalised (absolute, no trailing slash).
pub fn validate<'a>(store_dir: &str, path: &'a str) -> Result<&'a str, InvalidStorePath> {
    let bad = |reason: &str| InvalidStorePath { path: shorten(path), reason: reason.to_owned() };
    let base = path
        .strip_prefix(store_dir)
        .and_then(|rest| rest.strip_prefix('/'))
        .ok_or_else(|| bad(&format!("not inside the store dir {store_dir}")))?;
    validate_basename(base).map_err(|reason| bad(&reason))?;
    Ok(base)
}

/// Checks a store path basename (`<hash>-<name>`); the error says what is wrong. The daemon parses
/// basenames with this very function, so the hook never queues what the daemon would refuse.
pub fn validate_basename(base: &str) -> Result<(), String> {
    if base.contains('/') {
        return Err("has more than one component below the store dir".into());
    }
    let shape = || format!("basename is not <{HASH_LEN}-char hash>-<name>");
    if base.len() < HASH_LEN + 2 {
        return Err(shape());
    }
    let (hash, rest) = base.split_at_checked(HASH_LEN).ok_or_else(shape)?;
    validate_hash_part(hash)?;
    validate_name(rest.strip_prefix('-').ok_or_else(shape)?)
}

/// Checks a bare hash part (`<hash>` as in `<hash>.narinfo`): exactly [`HASH_LEN`] nix32 characters.
pub fn validate_hash_part(hash: &str) -> Result<(), String> {
    if hash.len() != HASH_LEN {
        return Err(format!("hash part must be {HASH_LEN} characters, got {}", hash.len()));
    }
    if let Some((pos, c)) = hash.char_indices().find(|&(_, c)| !c.is_ascii() || !NIX32.contains(&(c as u8))) {
        return Err(format!("hash contains {c:?} at position {pos}, not in Nix's base-32 alphabet"));
    }
    Ok(())
}

/// Checks a store path name as Nix does: 1..=[`MAX_NAME_LEN`] characters of `[A-Za-z0-9+-._?=]`, not
/// starting with `.`.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty name".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("name is {} bytes long, the limit is {MAX_NAME_LEN}", name.len()));
    }
    if name.starts_with('.') {
        return Err("name starts with '.'".into());
    }
    if let Some((pos, c)) = name.char_indices().find(|&(_, c)| !(c.is_ascii_alphanumeric() || "+-._?=".contains(c))) {
        return Err(format!("name contains {c:?} at position {pos}, allowed are A-Z a-z 0-9 + - . _ ? ="));
    }
    Ok(())
}

/// Keeps error lines readable when the input is huge.
fn shorten(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";

    #[test]
    fn accepts_real_store_paths() {
        assert_eq!(validate("/nix/store", GOOD), Ok("mszzps44c0d8dq4928m9byf3l2g64409-hk-test"));
        assert!(validate("/nix/store", "/nix/store/92gvrkx5bkbxcwjgqdgql0hchrldma0l-a+b-1.0_x?=y.drv").is_ok());
    }

    #[test]
    fn rejects_everything_else() {
        for (p, why) in [
            ("/nix/store/../etc/passwd", "more than one"),
            ("/tmp/mszzps44c0d8dq4928m9byf3l2g64409-x", "not inside"),
            ("/nix/storex/mszzps44c0d8dq4928m9byf3l2g64409-x", "not inside"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-x/bin", "more than one"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g6440e-x", "alphabet"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-", "basename"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-.x", "starts with"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-a b", "name contains"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-a\0b", "name contains"),
            ("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-a\nb", "name contains"),
            ("", "not inside"),
        ] {
            let e = validate("/nix/store", p).expect_err(p);
            assert!(e.reason.contains(why), "{p:?}: {e}");
        }
        let long = format!("/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-{}", "a".repeat(212));
        assert!(validate("/nix/store", &long).is_err());
    }

    #[test]
    fn store_dir_must_be_absolute() {
        assert_eq!(normalise_store_dir("/nix/store/"), Ok("/nix/store"));
        assert!(normalise_store_dir("nix/store").is_err());
        assert!(normalise_store_dir("/").is_err());
    }
}
