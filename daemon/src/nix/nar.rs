//! NAR (Nix ARchive) serialisation of a path on disk, streamed, and a streaming NAR reader.
//!
//! The writer produces exactly the bytes of `nix-store --dump`: entries sorted by raw name bytes,
//! only the executable bit kept, symlink targets verbatim, names as raw bytes. It never holds more than a
//! small buffer: callers wrap the output in [`crate::nix::hash::HashingWriter`] to get NarHash/NarSize.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// What went wrong while writing or reading a NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// Reading the file system failed at `path`.
    #[error("reading {path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// Writing the NAR to its sink failed.
    #[error("writing NAR: {0}")]
    Write(std::io::Error),
    /// A file type NAR cannot represent (socket, device, fifo) at `path`.
    #[error("{path:?} has an unsupported file type")]
    UnsupportedFileType { path: PathBuf },
    /// Reading a NAR: the stream is malformed at byte `offset`.
    #[error("malformed NAR at byte {offset}: {reason}")]
    Malformed { offset: u64, reason: String },
}

/// Writes the NAR serialisation of `path` to `out`. Returns the number of bytes written.
pub fn dump_path(path: &Path, out: &mut dyn Write) -> Result<u64, NarError> {
    todo!("{path:?} {}", out.flush().is_ok())
}

/// One node of a NAR, as the reader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file: size, executable bit and the offset of its contents in the NAR.
    Regular { size: u64, executable: bool, nar_offset: u64 },
    /// A symlink and its target, raw bytes.
    Symlink { target: Vec<u8> },
    /// A directory and its entries, sorted by raw name bytes.
    Directory { entries: Vec<(Vec<u8>, NarNode)> },
}

/// Reads and validates a whole NAR from `input` (streaming; file contents are skipped, not stored),
/// returning its tree. Rejects unsorted or duplicate entries, bad names (`.`, `..`, `/`, NUL, empty),
/// and trailing garbage.
pub fn read_tree(input: &mut dyn Read) -> Result<NarNode, NarError> {
    todo!("{}", input.read(&mut []).is_ok())
}
