//! NAR (Nix ARchive) serialisation of a path on disk, streamed, and a streaming NAR reader.
//!
//! The writer produces exactly the bytes of `nix-store --dump`: entries sorted by raw name bytes,
//! only the executable bit kept, symlink targets verbatim, names as raw bytes. It never holds more than a
//! small buffer: callers wrap the output in [`crate::hash::HashingWriter`] to get NarHash/NarSize.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// What went wrong while writing or reading a NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarError {
    /// Reading the file system failed at `path`.
    #[error("reading {path:?}: {source}")]
    Io {
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Writing the NAR to its sink failed.
    #[error("writing NAR: {0}")]
    Write(std::io::Error),
    /// Writing a NAR: `path` is nested deeper than [`MAX_DUMP_DEPTH`] directories.
    #[error("{path:?} is nested deeper than {MAX_DUMP_DEPTH} directories; niks3 does not archive such trees")]
    TooDeep {
        /// The directory past the limit.
        path: PathBuf,
    },
    /// A file type NAR cannot represent (socket, device, fifo) at `path`.
    #[error("{path:?} has an unsupported file type")]
    UnsupportedFileType {
        /// The file or directory concerned.
        path: PathBuf,
    },
    /// Reading a NAR: the stream is malformed at byte `offset`.
    #[error("malformed NAR at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset in the NAR where the problem was found.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
}

/// The magic string every NAR starts with.
pub(crate) const NAR_MAGIC: &[u8] = b"nix-archive-1";

/// Size of the buffer file contents are streamed through.
const COPY_BUF: usize = 64 * 1024;

/// Longest token (name, symlink target, keyword) the reader accepts; file contents are not tokens.
/// Linux limits names to 255 bytes and symlink targets to 4095; this leaves room and bounds memory.
pub(crate) const MAX_TOKEN_LEN: u64 = 64 * 1024;

/// Deepest directory nesting the reader accepts (PATH_MAX / 2: no real tree is deeper).
pub const MAX_DEPTH: usize = 2048;

/// Deepest directory nesting the writer archives. It recurses once per level (~4 KiB of stack each in a
/// debug build), and a chain of directories as deep as a path can name (~2000) overflows the 2 MiB stack
/// of a tokio thread, which aborts the whole process: a build output must not be able to crash the
/// cache. Real store paths nest a few dozen levels; a deeper one fails to upload with
/// [`NarError::TooDeep`] (a clear, permanent error: the entry is quarantined with it).
pub const MAX_DUMP_DEPTH: usize = 256;

/// Writes the NAR serialisation of `path` to `out`. Returns the number of bytes written.
pub fn dump_path(path: &Path, out: &mut dyn Write) -> Result<u64, NarError> {
    dump_path_tree(path, out).map(|(written, _)| written)
}

/// Writes the NAR serialisation of `path` to `out` and returns, with the number of bytes written, the
/// tree of what was written (the same [`NarNode`]s [`read_tree`] would parse back, offsets included), so
/// the `.ls` listing comes from the one walk that produced the bytes instead of a second parse of them.
/// The tree holds one small node per file, never file contents.
pub fn dump_path_tree(path: &Path, out: &mut dyn Write) -> Result<(u64, NarNode), NarError> {
    let mut w =
        NarWriter { out: std::io::BufWriter::with_capacity(8 * 1024, out), written: 0, buf: vec![0u8; COPY_BUF] };
    w.token(NAR_MAGIC)?;
    let tree = w.node(path, 0)?;
    w.out.flush().map_err(NarError::Write)?;
    Ok((w.written, tree))
}

struct NarWriter<W: Write> {
    out: W,
    written: u64,
    /// The one read buffer for file contents, reused for every file.
    buf: Vec<u8>,
}

impl<W: Write> NarWriter<W> {
    fn raw(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.out.write_all(bytes).map_err(NarError::Write)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = padding_len(len);
        if pad > 0 {
            self.raw(&[0u8; 8][..pad])?;
        }
        Ok(())
    }

    fn token(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        self.raw(&(bytes.len() as u64).to_le_bytes())?;
        self.raw(bytes)?;
        self.padding(bytes.len() as u64)
    }

    /// Writes one node, `depth` directories below the root, and returns what it wrote.
    fn node(&mut self, path: &Path, depth: usize) -> Result<NarNode, NarError> {
        let io = |source| NarError::Io { path: path.to_owned(), source };
        let meta = std::fs::symlink_metadata(path).map_err(io)?;
        let ft = meta.file_type();
        self.token(b"(")?;
        self.token(b"type")?;
        let node = if ft.is_file() {
            self.token(b"regular")?;
            let executable = meta.permissions().mode() & 0o100 != 0;
            if executable {
                self.token(b"executable")?;
                self.token(b"")?;
            }
            self.token(b"contents")?;
            let size = meta.len();
            // The contents start after their 8-byte length.
            let nar_offset = self.written + 8;
            self.contents(path, size)?;
            NarNode::Regular { size, executable, nar_offset }
        } else if ft.is_symlink() {
            let target = std::fs::read_link(path).map_err(io)?;
            self.token(b"symlink")?;
            self.token(b"target")?;
            let target = target.into_os_string().into_vec();
            self.token(&target)?;
            NarNode::Symlink { target }
        } else if ft.is_dir() {
            if depth >= MAX_DUMP_DEPTH {
                return Err(NarError::TooDeep { path: path.to_owned() });
            }
            self.token(b"directory")?;
            let mut names: Vec<OsString> = std::fs::read_dir(path)
                .map_err(io)?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()
                .map_err(io)?;
            names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
            let mut entries = Vec::with_capacity(names.len());
            for name in names {
                self.token(b"entry")?;
                self.token(b"(")?;
                self.token(b"name")?;
                self.token(name.as_bytes())?;
                self.token(b"node")?;
                let child = self.node(&path.join(&name), depth + 1)?;
                self.token(b")")?;
                entries.push((name.into_vec(), child));
            }
            NarNode::Directory { entries }
        } else {
            return Err(NarError::UnsupportedFileType { path: path.to_owned() });
        };
        self.token(b")")?;
        Ok(node)
    }

    /// Streams a file's contents, `size` bytes as `stat` said; a file that grows or shrinks meanwhile is
    /// an error rather than a NAR whose length prefix lies.
    fn contents(&mut self, path: &Path, size: u64) -> Result<(), NarError> {
        let io = |source| NarError::Io { path: path.to_owned(), source };
        let mut file = std::fs::File::open(path).map_err(io)?;
        self.raw(&size.to_le_bytes())?;
        let mut left = size;
        while left > 0 {
            let want = usize::try_from(left.min(COPY_BUF as u64)).unwrap_or(COPY_BUF);
            let n = match file.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        format!("file shrank while being archived ({left} of {size} bytes missing)"),
                    )));
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io(e)),
            };
            self.out.write_all(&self.buf[..n]).map_err(NarError::Write)?;
            self.written += n as u64;
            left -= n as u64;
        }
        let mut probe = [0u8; 1];
        if file.read(&mut probe).map_err(io)? != 0 {
            return Err(io(std::io::Error::other("file grew while being archived")));
        }
        self.padding(size)
    }
}

fn padding_len(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// One node of a NAR, as the reader reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NarNode {
    /// A regular file: size, executable bit and the offset of its contents in the NAR.
    Regular {
        /// Length of the contents in bytes.
        size: u64,
        /// Whether the owner-execute bit is set.
        executable: bool,
        /// Where the contents start in the NAR (the `narOffset` of listings).
        nar_offset: u64,
    },
    /// A symlink and its target, raw bytes.
    Symlink {
        /// The link target, raw bytes.
        target: Vec<u8>,
    },
    /// A directory and its entries, sorted by raw name bytes.
    Directory {
        /// Name (raw bytes) and node of each entry, sorted by name.
        entries: Vec<(Vec<u8>, NarNode)>,
    },
}

/// Reads and validates a whole NAR from `input` (streaming; file contents are skipped, not stored),
/// returning its tree. Rejects unsorted or duplicate entries, bad names (`.`, `..`, `/`, NUL, empty),
/// and trailing garbage.
pub fn read_tree(input: &mut dyn Read) -> Result<NarNode, NarError> {
    let mut r = NarReader { input, offset: 0 };
    r.expect(NAR_MAGIC)?;
    let root = r.tree()?;
    let mut probe = [0u8; 1];
    loop {
        match r.input.read(&mut probe) {
            Ok(0) => return Ok(root),
            Ok(_) => return Err(r.malformed("trailing data after the NAR")),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(r.io_error(&e)),
        }
    }
}

struct NarReader<'a> {
    input: &'a mut dyn Read,
    offset: u64,
}

/// A directory being read: its entries so far and the name of the entry whose node is being read.
struct OpenDir {
    entries: Vec<(Vec<u8>, NarNode)>,
    pending: Vec<u8>,
}

impl NarReader<'_> {
    fn malformed(&self, reason: impl Into<String>) -> NarError {
        NarError::Malformed { offset: self.offset, reason: reason.into() }
    }

    fn io_error(&self, e: &std::io::Error) -> NarError {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            self.malformed("unexpected end of NAR")
        } else {
            self.malformed(format!("read error: {e}"))
        }
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.input.read_exact(buf).map_err(|e| self.io_error(&e))?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    fn u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let pad = padding_len(len);
        let mut b = [0u8; 8];
        self.exact(&mut b[..pad])?;
        if b.iter().any(|&x| x != 0) {
            return Err(self.malformed("non-zero padding"));
        }
        Ok(())
    }

    fn token(&mut self) -> Result<Vec<u8>, NarError> {
        let len = self.u64()?;
        if len > MAX_TOKEN_LEN {
            return Err(self.malformed(format!("string of {len} bytes is longer than {MAX_TOKEN_LEN}")));
        }
        let mut v = vec![0u8; len as usize];
        self.exact(&mut v)?;
        self.padding(len)?;
        Ok(v)
    }

    fn expect(&mut self, want: &[u8]) -> Result<(), NarError> {
        let start = self.offset;
        let got = self.token()?;
        if got != want {
            return Err(NarError::Malformed {
                offset: start,
                reason: format!(
                    "expected {:?}, found {:?}",
                    String::from_utf8_lossy(want),
                    String::from_utf8_lossy(&got[..got.len().min(64)])
                ),
            });
        }
        Ok(())
    }

    /// Skips `size` bytes of file contents and their padding.
    fn skip_contents(&mut self, size: u64) -> Result<(), NarError> {
        let copied = std::io::copy(&mut (&mut *self.input).take(size), &mut std::io::sink())
            .map_err(|e| NarError::Malformed { offset: self.offset, reason: format!("copying contents: {e}") })?;
        self.offset += copied;
        if copied != size {
            return Err(self.malformed(format!("unexpected end of NAR inside a file ({copied} of {size} bytes)")));
        }
        self.padding(size)
    }

    /// Reads `( type …`: a whole file or symlink node (returned), or the start of a directory (`None`; its
    /// entries and `)` follow).
    fn node_start(&mut self) -> Result<Option<NarNode>, NarError> {
        self.expect(b"(")?;
        self.expect(b"type")?;
        let type_at = self.offset;
        let ty = self.token()?;
        match ty.as_slice() {
            b"regular" => {
                let mut executable = false;
                let kw_at = self.offset;
                let mut kw = self.token()?;
                if kw == b"executable" {
                    executable = true;
                    if !self.token()?.is_empty() {
                        return Err(self.malformed("`executable` must be followed by an empty string"));
                    }
                    kw = self.token()?;
                }
                if kw != b"contents" {
                    return Err(NarError::Malformed { offset: kw_at, reason: "expected `contents`".to_owned() });
                }
                let size = self.u64()?;
                let nar_offset = self.offset;
                self.skip_contents(size)?;
                self.expect(b")")?;
                Ok(Some(NarNode::Regular { size, executable, nar_offset }))
            }
            b"symlink" => {
                self.expect(b"target")?;
                let target = self.token()?;
                if target.is_empty() || target.contains(&0) {
                    return Err(self.malformed("symlink target is empty or contains NUL"));
                }
                self.expect(b")")?;
                Ok(Some(NarNode::Symlink { target }))
            }
            b"directory" => Ok(None),
            other => Err(NarError::Malformed {
                offset: type_at,
                reason: format!("unknown node type {:?}", String::from_utf8_lossy(&other[..other.len().min(64)])),
            }),
        }
    }

    /// Reads the next directory item: `Some(name)` after `entry ( name <name> node`, `None` at `)`.
    /// Checks the name and that it sorts strictly after `prev`.
    fn dir_item(&mut self, prev: Option<&[u8]>) -> Result<Option<Vec<u8>>, NarError> {
        let at = self.offset;
        let kw = self.token()?;
        if kw == b")" {
            return Ok(None);
        }
        if kw != b"entry" {
            return Err(NarError::Malformed { offset: at, reason: "expected `entry` or `)` in a directory".into() });
        }
        self.expect(b"(")?;
        self.expect(b"name")?;
        let name_at = self.offset;
        let name = self.token()?;
        let bad = |reason: &str| NarError::Malformed { offset: name_at, reason: reason.to_owned() };
        if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0) {
            return Err(bad("invalid entry name (empty, `.`, `..`, or containing `/` or NUL)"));
        }
        if let Some(prev) = prev
            && name.as_slice() <= prev
        {
            return Err(bad("directory entries are not sorted or have duplicates"));
        }
        self.expect(b"node")?;
        Ok(Some(name))
    }

    /// Reads the root node and everything below it, with an explicit stack so that hostile nesting
    /// cannot overflow ours.
    fn tree(&mut self) -> Result<NarNode, NarError> {
        let mut stack: Vec<OpenDir> = Vec::new();
        // `None`: a directory was just opened; `Some(node)`: a node was just completed.
        let mut step = self.node_start()?;
        loop {
            match step {
                None => {
                    if stack.len() >= MAX_DEPTH {
                        return Err(self.malformed(format!("directories nested deeper than {MAX_DEPTH}")));
                    }
                    stack.push(OpenDir { entries: Vec::new(), pending: Vec::new() });
                }
                Some(node) => {
                    let Some(top) = stack.last_mut() else { return Ok(node) };
                    let name = std::mem::take(&mut top.pending);
                    top.entries.push((name, node));
                    self.expect(b")")?; // closes this directory entry
                }
            }
            let Some(top) = stack.last_mut() else { return Err(self.malformed("internal: no open directory")) };
            let prev = top.entries.last().map(|(n, _)| n.as_slice());
            if let Some(name) = self.dir_item(prev)? {
                top.pending = name;
                step = self.node_start()?;
            } else {
                let entries = stack.pop().map(|d| d.entries).unwrap_or_default();
                step = Some(NarNode::Directory { entries });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + padding_len(s.len() as u64), 0);
    }

    fn nar(tokens: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for t in tokens {
            tok(&mut out, t);
        }
        out
    }

    #[test]
    fn dumps_and_reads_a_small_tree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("sub/empty")).expect("mkdir");
        std::fs::write(root.join("b"), b"hello").expect("write");
        std::fs::write(root.join("sub/x"), b"").expect("write");
        std::fs::set_permissions(root.join("sub/x"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("b", root.join("a")).expect("symlink");
        let mut out = Vec::new();
        let n = dump_path(&root, &mut out).expect("dump");
        assert_eq!(n, out.len() as u64);
        let tree = read_tree(&mut out.as_slice()).expect("read back");
        let mut again = Vec::new();
        assert_eq!(dump_path_tree(&root, &mut again).expect("dump with tree"), (n, tree.clone()));
        assert_eq!(again, out);
        let NarNode::Directory { entries } = tree else { panic!("root is a directory") };
        let names: Vec<&[u8]> = entries.iter().map(|(n, _)| n.as_slice()).collect();
        assert_eq!(names, [b"a".as_slice(), b"b", b"sub"]);
        assert_eq!(entries[0].1, NarNode::Symlink { target: b"b".to_vec() });
        let NarNode::Regular { size: 5, executable: false, nar_offset } = entries[1].1 else { panic!("b is a file") };
        assert_eq!(&out[nar_offset as usize..nar_offset as usize + 5], b"hello");
        let NarNode::Directory { entries: sub } = &entries[2].1 else { panic!("sub is a directory") };
        assert_eq!(sub[0].1, NarNode::Directory { entries: Vec::new() });
        assert!(matches!(sub[1].1, NarNode::Regular { size: 0, executable: true, .. }));
    }

    #[test]
    fn a_single_file_is_a_nar_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("f");
        std::fs::write(&f, b"12345678").expect("write");
        let mut out = Vec::new();
        dump_path(&f, &mut out).expect("dump");
        let mut expected = nar(&[NAR_MAGIC, b"(", b"type", b"regular", b"contents"]);
        tok(&mut expected, b"12345678");
        tok(&mut expected, b")");
        assert_eq!(out, expected);
    }

    #[test]
    fn missing_path_is_an_io_error_naming_it() {
        let err = dump_path(Path::new("/nonexistent/niks3"), &mut Vec::new()).expect_err("missing");
        assert!(err.to_string().contains("/nonexistent/niks3"), "{err}");
    }

    #[test]
    fn unsupported_file_types_are_rejected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("s");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let err = dump_path(&sock, &mut Vec::new()).expect_err("socket");
        assert!(matches!(err, NarError::UnsupportedFileType { .. }), "{err:?}");
    }

    #[test]
    fn reader_rejects_malformed_nars() {
        // A directory holding one symlink to `x` per name, in the order given.
        let symlinks = |names: &[&[u8]]| {
            let mut v: Vec<&[u8]> = vec![NAR_MAGIC, b"(", b"type", b"directory"];
            for name in names {
                v.extend_from_slice(&[b"entry", b"(", b"name", name, b"node", b"(", b"type", b"symlink"]);
                v.extend_from_slice(&[b"target", b"x", b")", b")"]);
            }
            v.push(b")");
            nar(&v)
        };
        let file = |name: &[u8]| symlinks(&[name]);
        assert!(read_tree(&mut file(b"ok").as_slice()).is_ok());
        for bad in [b"".as_slice(), b".", b"..", b"a/b", b"a\0b"] {
            let err = read_tree(&mut file(bad).as_slice()).expect_err("bad name");
            assert!(err.to_string().contains("invalid entry name"), "{err}");
        }
        let unsorted = symlinks(&[b"b", b"a"]);
        assert!(read_tree(&mut unsorted.as_slice()).expect_err("unsorted").to_string().contains("not sorted"));
        let mut trailing = file(b"ok");
        trailing.push(0);
        assert!(read_tree(&mut trailing.as_slice()).expect_err("trailing").to_string().contains("trailing"));
        let mut badpad = nar(&[NAR_MAGIC, b"(", b"type", b"symlink", b"target", b"x"]);
        let last = badpad.len() - 1;
        badpad[last] = 1;
        assert!(read_tree(&mut badpad.as_slice()).expect_err("padding").to_string().contains("padding"));
        let wrong_magic = nar(&[b"nix-archive-2", b"("]);
        assert!(read_tree(&mut wrong_magic.as_slice()).is_err());
        let huge = {
            let mut v = nar(&[NAR_MAGIC]);
            v.extend_from_slice(&u64::MAX.to_le_bytes());
            v
        };
        assert!(read_tree(&mut huge.as_slice()).expect_err("huge").to_string().contains("longer than"));
    }

    #[test]
    fn reader_bounds_nesting_without_overflowing_the_stack() {
        let mut v = nar(&[NAR_MAGIC]);
        for _ in 0..=MAX_DEPTH {
            for t in [b"(".as_slice(), b"type", b"directory", b"entry", b"(", b"name", b"d", b"node"] {
                tok(&mut v, t);
            }
        }
        let err = read_tree(&mut v.as_slice()).expect_err("too deep");
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    /// The deepest tree the reader accepts, read, (not) listed and dropped on a thread with a 2 MiB stack
    /// (a tokio worker's or blocking thread's): none of it may overflow (found by the fuzzing work: the
    /// listing of a 2047-deep NAR overflowed such a stack, which aborts the whole process).
    #[test]
    fn the_deepest_accepted_tree_is_read_listed_and_dropped_on_a_small_stack() {
        let mut v = nar(&[NAR_MAGIC]);
        for _ in 0..MAX_DEPTH - 1 {
            for t in [b"(".as_slice(), b"type", b"directory", b"entry", b"(", b"name", b"d", b"node"] {
                tok(&mut v, t);
            }
        }
        for t in [b"(".as_slice(), b"type", b"regular", b"contents", b"x", b")"] {
            tok(&mut v, t);
        }
        for _ in 0..MAX_DEPTH - 1 {
            tok(&mut v, b")");
            tok(&mut v, b")");
        }
        let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(move || {
            let tree = read_tree(&mut v.as_slice()).expect("as deep as allowed");
            let listing = crate::listing::listing_json(&tree);
            drop(tree);
            listing.is_none()
        });
        let skipped = worker.expect("spawn").join().expect("no stack overflow");
        assert!(skipped, "a tree deeper than the listing's limit gets no listing");
    }

    /// A directory chain as deep as a path name allows (PATH_MAX) is refused, and one at the writer's
    /// limit archived, on a 2 MiB stack (a tokio thread's): the writer recurses once per level and must
    /// not overflow where a build output can reach.
    #[test]
    fn deep_directories_are_refused_or_archived_without_overflowing_a_small_stack() {
        let dir = tempfile::tempdir().expect("tempdir");
        let chain = |name: &str, levels: usize| {
            let root = dir.path().join(name);
            let deepest = (0..levels).fold(root.clone(), |p, _| p.join("d"));
            std::fs::create_dir_all(&deepest).expect("deep directories");
            std::fs::write(deepest.join("f"), b"x").expect("file");
            root
        };
        let too_deep = chain("too-deep", (4000 - dir.path().as_os_str().len()) / 2);
        let at_limit = chain("at-limit", MAX_DUMP_DEPTH - 1);
        let worker = std::thread::Builder::new().stack_size(2 << 20).spawn(move || {
            let err = dump_path_tree(&too_deep, &mut std::io::sink()).expect_err("too deep");
            let (written, tree) = dump_path_tree(&at_limit, &mut std::io::sink()).expect("at the limit");
            (err, written, crate::listing::listing_json(&tree).is_some())
        });
        let (err, written, listed) = worker.expect("spawn").join().expect("no stack overflow");
        assert!(matches!(err, NarError::TooDeep { .. }), "{err}");
        assert!(err.to_string().contains("nested deeper than 256"), "{err}");
        assert!(written > 100 * MAX_DUMP_DEPTH as u64, "{written}");
        assert!(listed, "what the writer archives gets a listing");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        #[test]
        fn reader_never_panics_on_garbage(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = read_tree(&mut bytes.as_slice());
            let mut with_magic = nar(&[NAR_MAGIC, b"("]);
            with_magic.extend_from_slice(&bytes);
            let _ = read_tree(&mut with_magic.as_slice());
        }

        #[test]
        fn reader_never_panics_on_mutated_nars(flips in proptest::collection::vec((0usize..2000, 0u8..8), 1..4), cut in 0usize..2000) {
            let dir = tempfile::tempdir().expect("tempdir");
            let root = dir.path().join("r");
            std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
            std::fs::write(root.join("a/f"), b"contents of f").expect("write");
            std::os::unix::fs::symlink("a/f", root.join("l")).expect("symlink");
            let mut v = Vec::new();
            dump_path(&root, &mut v).expect("dump");
            for (pos, bit) in flips {
                let i = pos % v.len();
                v[i] ^= 1 << bit;
            }
            v.truncate(cut.max(1));
            let _ = read_tree(&mut v.as_slice());
        }

        #[test]
        fn reader_rejects_every_truncation(cut in 0usize..400) {
            let mut v = nar(&[NAR_MAGIC, b"(", b"type", b"directory", b"entry", b"(", b"name", b"f", b"node",
                b"(", b"type", b"regular", b"executable", b"", b"contents"]);
            tok(&mut v, b"some file contents");
            for t in [b")".as_slice(), b")", b")"] {
                tok(&mut v, t);
            }
            proptest::prop_assert!(read_tree(&mut v.as_slice()).is_ok());
            if cut < v.len() {
                proptest::prop_assert!(read_tree(&mut &v[..cut]).is_err());
            }
        }
    }
}
