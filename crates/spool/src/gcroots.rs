//! GC roots that keep queued paths alive in the local Nix store until they are uploaded:
//! symlinks `<gcroots dir>/<store path basename>` → the store path. Nix treats any symlink under
//! `/nix/var/nix/gcroots/` that points into the store as a root, so `nix-store --gc` and
//! `nix-store --delete` leave the path alone while the link exists.

use crate::SpoolError;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

/// Adds a root for `store_path` (idempotent); creates `gcroots_dir` if missing.
pub fn add(gcroots_dir: &Path, store_path: &str) -> Result<(), SpoolError> {
    ensure(gcroots_dir, store_path).map(|_| ())
}

/// Like [`add`], but says whether this call created the root (`false`: it was already there), so a
/// caller that fails later can undo only what it did.
pub fn ensure(gcroots_dir: &Path, store_path: &str) -> Result<bool, SpoolError> {
    let link = link_path(gcroots_dir, store_path)?;
    match std::os::unix::fs::symlink(store_path, &link) {
        Ok(()) => return Ok(true),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            std::fs::create_dir_all(gcroots_dir).map_err(|source| io("create gcroots dir", gcroots_dir, source))?;
            match std::os::unix::fs::symlink(store_path, &link) {
                Ok(()) => return Ok(true),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(source) => return Err(io("create gcroot", &link, source)),
            }
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
        Err(source) => return Err(io("create gcroot", &link, source)),
    }
    // Something is already there: fine if it is our link, otherwise replace it atomically.
    match std::fs::read_link(&link) {
        Ok(target) if target.as_os_str() == store_path => Ok(false),
        _ => {
            let tmp = gcroots_dir.join(format!(".{}.tmp-{}", file_name(store_path)?, std::process::id()));
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(store_path, &tmp).map_err(|source| io("create gcroot", &tmp, source))?;
            std::fs::rename(&tmp, &link).map_err(|source| {
                let _ = std::fs::remove_file(&tmp);
                io("replace gcroot", &link, source)
            })?;
            Ok(true)
        }
    }
}

/// Removes the root for `store_path` (absent is fine).
pub fn remove(gcroots_dir: &Path, store_path: &str) -> Result<(), SpoolError> {
    let link = link_path(gcroots_dir, store_path)?;
    match std::fs::remove_file(&link) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io("remove gcroot", &link, source)),
    }
}

fn link_path(gcroots_dir: &Path, store_path: &str) -> Result<PathBuf, SpoolError> {
    Ok(gcroots_dir.join(file_name(store_path)?))
}

/// The last component of `store_path`, refusing anything that would escape the gcroots dir.
fn file_name(store_path: &str) -> Result<&str, SpoolError> {
    let base = store_path.rsplit('/').next().unwrap_or_default();
    if !store_path.starts_with('/') || base.is_empty() || base == "." || base == ".." || base.contains('\0') {
        return Err(SpoolError::Malformed {
            path: PathBuf::from(store_path),
            reason: "not an absolute path with a file name, cannot be a GC root".into(),
        });
    }
    Ok(base)
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io { op, path: path.to_owned(), source }
}
