//! Opening spool directories and entries without following symlinks or blocking on FIFOs, and working
//! inside a directory once it is open.
//!
//! Why this exists: the hook runs as root (inside nix-daemon) but writes into directories owned by the
//! less-privileged spool owner, who can rename `tmp/` or `new/` away and put a symlink (or another
//! directory) in its place at any moment. Any operation by path name re-resolves those names and can be
//! redirected outside the spool (security review 2026-12, finding #1: root created entries in a root-only
//! directory and chowned a root-only file). So the spool's directories are opened once, refusing a
//! symlink as the last component, checked with `fstat`, and every later create, rename and fsync goes
//! through the open directory, whatever its path points at by then.
//!
//! std has no `openat`/`renameat` and the workspace forbids `unsafe`, so [`Dir`] names a file inside an
//! open directory as `/proc/self/fd/<fd>/<name>`: the kernel resolves `/proc/self/fd/<fd>` to the
//! directory the descriptor refers to (not to the path it was opened by) and looks `<name>` up in it,
//! which is what `openat(fd, name, …)` does. niks3 is Linux-only (see flake.nix); without `/proc` these
//! operations fail and nothing is written.
//!
//! The drainer's side of the library works through [`Dir`] too, and reads entries with [`read_regular`]
//! (finding #12): a plain `File::open` follows a symlink planted in `new/` (and the parser then quoted
//! the target's first line) and blocks forever on a FIFO.

use std::ffi::OsStr;
use std::fs::{File, Metadata, OpenOptions, Permissions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// `O_NOFOLLOW`: fail with `ELOOP` when the last component is a symlink. Its value differs between
/// architectures and std does not export it.
#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "x86")))]
const O_NOFOLLOW: i32 = 0o400_000;
#[cfg(all(target_os = "linux", any(target_arch = "aarch64", target_arch = "arm")))]
const O_NOFOLLOW: i32 = 0o100_000;
/// `O_NONBLOCK`: opening a FIFO returns at once instead of waiting for a writer.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm")
))]
const O_NONBLOCK: i32 = 0o4_000;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "x86", target_arch = "aarch64", target_arch = "arm")
)))]
compile_error!("the spool knows Linux's open(2) flag values on x86, x86_64, arm and aarch64 only");

/// `ELOOP`, what `O_NOFOLLOW` reports for a symlink (40 on every Linux architecture above).
const ELOOP: i32 = 40;

/// Why a file could not be opened safely.
#[derive(Debug)]
pub(crate) enum OpenError {
    /// The file is not of the kind required; `found` says what it is ("a symlink", "a FIFO", …).
    WrongType {
        /// What was found instead.
        found: &'static str,
    },
    /// The OS refused (missing file, permissions, …), or reading failed.
    Io(std::io::Error),
}

/// A directory held open: files are created, renamed, listed and removed inside it, never through the
/// path it was opened by (which is kept for messages only).
#[derive(Debug)]
pub(crate) struct Dir {
    file: File,
    meta: Metadata,
    path: PathBuf,
}

impl Dir {
    /// Opens `path` as a directory, refusing a symlink as its last component (earlier components are
    /// followed: they belong to whoever set the path) and anything that is not a directory.
    pub(crate) fn open(path: &Path) -> Result<Dir, OpenError> {
        Dir::open_as(path, path.to_owned())
    }

    /// Opens the subdirectory `name` of this directory, refusing a symlink or anything not a directory.
    pub(crate) fn open_sub(&self, name: &str) -> Result<Dir, OpenError> {
        Dir::open_as(&self.inside(name), self.shown(name))
    }

    fn open_as(open: &Path, path: PathBuf) -> Result<Dir, OpenError> {
        let (file, meta) = open_nofollow(open)?;
        if !meta.is_dir() {
            return Err(OpenError::WrongType { found: kind(&meta) });
        }
        Ok(Dir { file, meta, path })
    }

    /// What `name` in this directory is called in messages (the path it was opened by, joined).
    pub(crate) fn shown(&self, name: impl AsRef<OsStr>) -> PathBuf {
        self.path.join(name.as_ref())
    }

    /// The directory itself, as a path that resolves through the open descriptor.
    pub(crate) fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// `name` inside this directory, as a path that resolves through the open descriptor. Only for
    /// operations that do not follow a symlink in the last component (create-new, rename, unlink,
    /// lstat, the `O_NOFOLLOW` opens of this module). `name` is one file name, never a path.
    pub(crate) fn inside(&self, name: impl AsRef<OsStr>) -> PathBuf {
        let mut p = self.fd_path();
        p.push(name.as_ref());
        p
    }

    /// Creates a new regular file `name` with `mode` (before the umask); fails if anything named `name`
    /// exists, a symlink included (`O_EXCL` never follows one).
    pub(crate) fn create_new(&self, name: impl AsRef<OsStr>, mode: u32) -> std::io::Result<File> {
        OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(O_NOFOLLOW).open(self.inside(name))
    }

    /// Whether anything (a symlink included, not followed) is named `name` in this directory.
    pub(crate) fn has(&self, name: impl AsRef<OsStr>) -> bool {
        self.inside(name).symlink_metadata().is_ok()
    }

    /// Renames `name` in this directory to `to_name` in `to` (both on the same file system).
    pub(crate) fn rename(&self, name: impl AsRef<OsStr>, to: &Dir, to_name: impl AsRef<OsStr>) -> std::io::Result<()> {
        std::fs::rename(self.inside(name), to.inside(to_name))
    }

    /// Removes the file `name` (a symlink itself, never its target).
    pub(crate) fn remove(&self, name: impl AsRef<OsStr>) -> std::io::Result<()> {
        std::fs::remove_file(self.inside(name))
    }

    /// fsyncs the directory, making creates and renames in it durable.
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_all()
    }

    /// The path it was opened by, for messages.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The directory's owner and group, as they were when it was opened.
    pub(crate) fn owner(&self) -> (u32, u32) {
        (self.meta.uid(), self.meta.gid())
    }
}

/// Opens `path` for reading only if it is a regular file (a symlink is refused unfollowed, a FIFO or
/// device unopened for data) and reads at most `max + 1` bytes of it, so a caller can tell "too large".
pub(crate) fn read_regular(path: &Path, max: u64) -> Result<Vec<u8>, OpenError> {
    let (file, meta) = open_nofollow(path)?;
    if !meta.is_file() {
        return Err(OpenError::WrongType { found: kind(&meta) });
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes).map_err(OpenError::Io)?;
    Ok(bytes)
}

/// Creates or truncates `path` for writing with exactly `mode` (also when it existed with another mode),
/// refusing to follow a symlink there.
pub(crate) fn create_or_truncate(path: &Path, mode: u32) -> std::io::Result<File> {
    let file =
        OpenOptions::new().write(true).create(true).truncate(true).mode(mode).custom_flags(O_NOFOLLOW).open(path)?;
    file.set_permissions(Permissions::from_mode(mode))?;
    Ok(file)
}

/// Opens `path` only if it is a regular file (for `fstat` or `fchmod` through the descriptor).
pub(crate) fn open_regular(path: &Path) -> Result<File, OpenError> {
    let (file, meta) = open_nofollow(path)?;
    if !meta.is_file() {
        return Err(OpenError::WrongType { found: kind(&meta) });
    }
    Ok(file)
}

/// Opens read-only with `O_NOFOLLOW|O_NONBLOCK` and `fstat`s what was opened: the type check is on the
/// object itself, so nothing can be swapped in between the check and the use.
fn open_nofollow(path: &Path) -> Result<(File, Metadata), OpenError> {
    let file = OpenOptions::new().read(true).custom_flags(O_NOFOLLOW | O_NONBLOCK).open(path).map_err(|e| {
        if e.raw_os_error() == Some(ELOOP) { OpenError::WrongType { found: "a symlink" } } else { OpenError::Io(e) }
    })?;
    let meta = file.metadata().map_err(OpenError::Io)?;
    Ok((file, meta))
}

/// What kind of file `meta` describes, for messages.
fn kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_file() {
        "a regular file"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_block_device() || t.is_char_device() {
        "a device"
    } else {
        "a symlink"
    }
}
