//! The spool: a durable on-disk queue of store paths waiting to be uploaded, shared by `niks3-hook`
//! (which only enqueues) and the `niks3` daemon (which claims, acknowledges or quarantines).
//!
//! Layout under the spool directory: `tmp/` (being written), `new/` (queued), `claimed/` (being
//! processed; re-processed after a crash), `quarantine/` (could not be processed, with a `.reason` file).
//! An entry is made durable by write to `tmp/`, fsync, rename into `new/`, fsync of `new/`. Claiming is a
//! rename from `new/` to `claimed/`, atomic, so two drainers never process the same entry.
//!
//! Entry format (text, one `key=value` per line, version first), e.g.
//! ```text
//! niks3-spool-v1
//! drv=/nix/store/…-foo.drv
//! out=/nix/store/…-foo
//! out=/nix/store/…-foo-dev
//! queued=1764105600
//! ```
//! std only: the hook must stay tiny and start in well under a millisecond.

use std::path::{Path, PathBuf};

/// Why a spool operation failed; every variant names the file it concerns.
#[derive(Debug)]
pub enum SpoolError {
    /// File system error at `path`.
    Io { op: &'static str, path: PathBuf, source: std::io::Error },
    /// An entry file is not in the format above; `reason` says why.
    Malformed { path: PathBuf, reason: String },
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            SpoolError::Malformed { path, reason } => write!(f, "malformed spool entry {}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for SpoolError {}

/// One queued build: the derivation and its output paths (full paths, as Nix gave them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `DRV_PATH`, when Nix gave one.
    pub drv: Option<String>,
    /// Output paths; may be empty when Nix 2.8 passed an empty `OUT_PATHS` and the drv could not be read.
    pub outs: Vec<String>,
    /// Seconds since the Unix epoch when queued.
    pub queued: u64,
}

impl Entry {
    /// Serialises in the format above.
    pub fn to_text(&self) -> String {
        todo!()
    }
    /// Parses the format above; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpoolError> {
        todo!("{text} {path:?}")
    }
}

/// A claimed entry: its file in `claimed/` and its parsed content (or why it could not be parsed).
#[derive(Debug)]
pub struct Claimed {
    /// The file in `claimed/`.
    pub path: PathBuf,
    /// The entry, or the reason it is malformed.
    pub entry: Result<Entry, SpoolError>,
}

/// A spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
}

impl Spool {
    /// Opens a spool, creating its subdirectories if needed.
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        todo!("{dir:?}")
    }
    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The directory the daemon watches for new entries.
    pub fn new_dir(&self) -> PathBuf {
        self.dir.join("new")
    }
    /// Durably queues `entry`; returns its file in `new/`.
    pub fn enqueue(&self, entry: &Entry) -> Result<PathBuf, SpoolError> {
        todo!("{entry:?}")
    }
    /// Entries left in `claimed/` by a previous run (to re-process after a crash), oldest first.
    pub fn reclaim(&self) -> Result<Vec<Claimed>, SpoolError> {
        todo!()
    }
    /// Atomically claims up to `max` queued entries, oldest first.
    pub fn claim(&self, max: usize) -> Result<Vec<Claimed>, SpoolError> {
        todo!("{max}")
    }
    /// Number of entries waiting in `new/` plus `claimed/` (for metrics).
    pub fn depth(&self) -> Result<usize, SpoolError> {
        todo!()
    }
    /// Removes a processed entry.
    pub fn ack(&self, claimed: &Claimed) -> Result<(), SpoolError> {
        todo!("{claimed:?}")
    }
    /// Moves an entry to `quarantine/` with a `.reason` file next to it.
    pub fn quarantine(&self, claimed: &Claimed, reason: &str) -> Result<PathBuf, SpoolError> {
        todo!("{claimed:?} {reason}")
    }
}

/// GC roots that keep queued paths alive in the local Nix store until they are uploaded:
/// symlinks `<gcroots dir>/<store path basename>` → the store path.
pub mod gcroots {
    use super::SpoolError;
    use std::path::Path;

    /// Adds a root for `store_path` (idempotent).
    pub fn add(gcroots_dir: &Path, store_path: &str) -> Result<(), SpoolError> {
        todo!("{gcroots_dir:?} {store_path}")
    }
    /// Removes the root for `store_path` (absent is fine).
    pub fn remove(gcroots_dir: &Path, store_path: &str) -> Result<(), SpoolError> {
        todo!("{gcroots_dir:?} {store_path}")
    }
}
