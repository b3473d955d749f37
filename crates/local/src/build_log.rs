//! Build logs read straight from the files Nix writes, the way Nix's own `LocalFSStore::getBuildLog`
//! reads them (2.8 to 2.26 alike), instead of one `nix-store --read-log` process per derivation.
//!
//! Why: draining many small store paths spent 60–65% of its CPU spawning that process (17.9 CPU-ms per
//! spawn, nearly all of it exec and dynamic linking of libnixstore); opening and decompressing the file
//! here costs a small fraction of that (figures in docs/architecture.md, "Reading the local Nix store").
//!
//! The command stays as the fallback for stores whose logs are not where this module can see them (a
//! remote or chroot store, a log directory that does not exist or cannot be listed): [`LogDir::locate`]
//! says why, and the caller decides once.

use crate::nix::PathInfoError;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Nix's compiled-in `NIX_LOG_DIR` (`$localstatedir/log/nix`): the same for the official installer,
/// NixOS and Debian's nix-bin.
pub const DEFAULT_LOG_DIR: &str = "/nix/var/log/nix";

/// Why the build logs of the local store cannot be read from files here, so `nix-store --read-log`
/// must be asked.
#[derive(Debug, thiserror::Error)]
pub enum LogDirUnusable {
    /// `NIX_REMOTE` names a store whose logs are not in the log directory this process would compute
    /// (an SSH or HTTP store, a store with an unusual parameter).
    #[error("NIX_REMOTE={0:?} is a store whose logs only nix-store can find")]
    OtherStore(String),
    /// The log directory is not absolute (Nix itself refuses such a `NIX_LOG_DIR`).
    #[error("the log directory {0:?} is not an absolute path")]
    Relative(PathBuf),
    /// `<log dir>/drvs` cannot be listed (missing: no build kept a log yet, or the logs live elsewhere).
    #[error("cannot list {path:?}: {source}")]
    NoDrvs {
        /// `<log dir>/drvs`.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The `drvs` directory of a Nix log directory, known to be listable.
#[derive(Clone, Debug)]
pub struct LogDir {
    drvs: PathBuf,
}

impl LogDir {
    /// The log directory of the store Nix opens for this process's environment, as Nix computes it:
    /// the store's `log=` parameter, else its `root=` (or a chroot store's path) followed by
    /// `/nix/var/log/nix`, else `NIX_LOG_DIR` when set and non-empty, else [`DEFAULT_LOG_DIR`].
    /// `nix_remote` and `nix_log_dir` are those variables (passed in, so tests need not touch the
    /// process environment). Nix's `store =` setting in `nix.conf` is not read.
    pub fn locate(nix_log_dir: Option<&OsStr>, nix_remote: Option<&OsStr>) -> Result<PathBuf, LogDirUnusable> {
        let from_env = || match nix_log_dir {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(DEFAULT_LOG_DIR),
        };
        let remote = nix_remote.map(|r| r.to_string_lossy().into_owned()).unwrap_or_default();
        let other = || LogDirUnusable::OtherStore(remote.clone());
        let (scheme, query) = remote.split_once('?').unwrap_or((&remote, ""));
        let mut root = None;
        let mut log = None;
        for param in query.split('&').filter(|p| !p.is_empty()) {
            match param.split_once('=') {
                // Nix percent-decodes parameters; an encoded one is rare enough to leave to Nix.
                Some((_, v)) if v.contains('%') => return Err(other()),
                Some(("root", v)) => root = Some(PathBuf::from(v)),
                Some(("log", v)) => log = Some(PathBuf::from(v)),
                _ => {}
            }
        }
        match scheme {
            "" | "auto" | "daemon" | "local" => {}
            s if s.starts_with("unix://") => {}
            // A bare absolute path is a chroot store: `local?root=<path>`.
            s if s.starts_with('/') => root = Some(PathBuf::from(s)),
            _ => return Err(other()),
        }
        let dir = match (log, root) {
            (Some(log), _) => log,
            (None, Some(root)) => root.join("nix/var/log/nix"),
            (None, None) => from_env(),
        };
        if !dir.is_absolute() {
            return Err(LogDirUnusable::Relative(dir));
        }
        Ok(dir)
    }

    /// `<dir>/drvs`, if this process can list it.
    pub fn open(dir: &Path) -> Result<LogDir, LogDirUnusable> {
        let drvs = dir.join("drvs");
        match std::fs::read_dir(&drvs) {
            Ok(_) => Ok(LogDir { drvs }),
            Err(source) => Err(LogDirUnusable::NoDrvs { path: drvs, source }),
        }
    }

    /// The log of the derivation `drv_basename` (`<hash>-<name>.drv`), at most `max_bytes` of it (then
    /// cut, with a line saying so), or `None` when Nix kept none. Looked for where Nix looks, in its
    /// order: `drvs/<2>/<rest>`, then `.bz2`, then the flat layout of Nix before 1.12. A `.bz2` that
    /// does not decompress is skipped, as Nix skips it; a file that exists but cannot be read is an
    /// error. Blocking.
    pub fn read(&self, drv_basename: &str, max_bytes: u64) -> Result<Option<Vec<u8>>, PathInfoError> {
        let (Some(head), Some(tail)) = (drv_basename.get(..2), drv_basename.get(2..)) else {
            return Ok(None);
        };
        for plain in [self.drvs.join(head).join(tail), self.drvs.join(drv_basename)] {
            if let Some(file) = open_if_present(&plain)? {
                let log =
                    read_capped(file, max_bytes).map_err(|source| PathInfoError::ReadLog { path: plain, source })?;
                return Ok(Some(log));
            }
            let mut bz2 = plain.into_os_string();
            bz2.push(".bz2");
            let bz2 = PathBuf::from(bz2);
            if let Some(file) = open_if_present(&bz2)? {
                let mut file = Watched { inner: file, failed: false };
                let decoded = read_capped(bzip2::read::BzDecoder::new(&mut file), max_bytes);
                match decoded {
                    Ok(log) => return Ok(Some(log)),
                    Err(source) if file.failed => return Err(PathInfoError::ReadLog { path: bz2, source }),
                    Err(e) => {
                        tracing::debug!(file = %bz2.display(), error = %e, "corrupt build log skipped, as Nix does");
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The file at `path`, `None` when there is none (`ENOENT`, or a component that is not a directory,
/// which Nix's `pathExists` also counts as absent).
fn open_if_present(path: &Path) -> Result<Option<std::fs::File>, PathInfoError> {
    match std::fs::File::open(path) {
        Ok(f) => Ok(Some(f)),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(None),
        Err(source) => Err(PathInfoError::ReadLog { path: path.to_path_buf(), source }),
    }
}

/// At most `max_bytes + 1` bytes of `r` (never more in memory, however much `r` could give), then cut.
fn read_capped(r: impl Read, max_bytes: u64) -> io::Result<Vec<u8>> {
    let mut log = Vec::new();
    r.take(max_bytes.saturating_add(1)).read_to_end(&mut log)?;
    Ok(cut_at(log, max_bytes))
}

/// `log` cut at `max_bytes` with a line saying so, or unchanged when it is not longer.
pub(crate) fn cut_at(mut log: Vec<u8>, max_bytes: u64) -> Vec<u8> {
    if log.len() as u64 > max_bytes {
        log.truncate(usize::try_from(max_bytes).unwrap_or(usize::MAX));
        log.extend_from_slice(format!("\n[niks3: this build log was cut at {max_bytes} bytes]\n").as_bytes());
    }
    log
}

/// A reader that remembers whether reading the file itself failed, to tell a disk error from a corrupt
/// stream once the decoder has turned both into an `io::Error`.
struct Watched<R> {
    inner: R,
    failed: bool,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf);
        if read.as_ref().is_err_and(|e| e.kind() != io::ErrorKind::Interrupted) {
            self.failed = true;
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    const DRV: &str = "0123456789abcdfghijklmnpqrsvwxyz-hello.drv";

    fn bz2(data: &[u8]) -> Vec<u8> {
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::best());
        enc.write_all(data).expect("compress");
        enc.finish().expect("compress")
    }

    /// A log directory with `files` (relative to `drvs/`).
    fn logs(files: &[(&str, &[u8])]) -> (tempfile::TempDir, LogDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("drvs/01")).expect("mkdir");
        for (name, data) in files {
            std::fs::write(dir.path().join("drvs").join(name), data).expect("write");
        }
        let log_dir = LogDir::open(dir.path()).expect("usable");
        (dir, log_dir)
    }

    const SHARDED: &str = "01/23456789abcdfghijklmnpqrsvwxyz-hello.drv";

    #[test]
    fn plain_and_bz2_logs_are_read_where_nix_writes_them() {
        let (_d, dir) = logs(&[(SHARDED, b"line 1\nline 2\n")]);
        assert_eq!(dir.read(DRV, 1 << 20).expect("read"), Some(b"line 1\nline 2\n".to_vec()));

        let bz = format!("{SHARDED}.bz2");
        let (_d, dir) = logs(&[(&bz, &bz2(b"compressed\n"))]);
        assert_eq!(dir.read(DRV, 1 << 20).expect("read"), Some(b"compressed\n".to_vec()));
    }

    #[test]
    fn the_plain_file_wins_over_the_bz2_and_the_sharded_layout_over_the_flat_one() {
        let bz = format!("{SHARDED}.bz2");
        let (_d, dir) = logs(&[(SHARDED, b"plain"), (&bz, &bz2(b"bz2")), (DRV, b"flat")]);
        assert_eq!(dir.read(DRV, 100).expect("read"), Some(b"plain".to_vec()));
        let (_d, dir) = logs(&[(&bz, &bz2(b"bz2")), (DRV, b"flat")]);
        assert_eq!(dir.read(DRV, 100).expect("read"), Some(b"bz2".to_vec()));
    }

    #[test]
    fn the_flat_layout_of_old_nix_is_read_plain_and_bz2() {
        let (_d, dir) = logs(&[(DRV, b"flat\n")]);
        assert_eq!(dir.read(DRV, 100).expect("read"), Some(b"flat\n".to_vec()));
        let flat_bz = format!("{DRV}.bz2");
        let (_d, dir) = logs(&[(&flat_bz, &bz2(b"flat bz2\n"))]);
        assert_eq!(dir.read(DRV, 100).expect("read"), Some(b"flat bz2\n".to_vec()));
    }

    #[test]
    fn an_absent_log_is_none() {
        let (_d, dir) = logs(&[]);
        assert_eq!(dir.read(DRV, 100).expect("read"), None);
        // A file where Nix expects the `01` directory: absent, as for Nix's pathExists.
        let (d, _) = logs(&[]);
        std::fs::remove_dir(d.path().join("drvs/01")).expect("rmdir");
        std::fs::write(d.path().join("drvs/01"), b"x").expect("write");
        assert_eq!(LogDir::open(d.path()).expect("usable").read(DRV, 100).expect("read"), None);
        // A basename too short to shard is never Nix's either.
        assert_eq!(LogDir::open(d.path()).expect("usable").read("x", 100).expect("read"), None);
    }

    #[test]
    fn a_log_longer_than_the_cap_is_cut_plain_and_bz2() {
        let big: Vec<u8> = (0..10_000u32).flat_map(|i| format!("line {i}\n").into_bytes()).collect();
        let want = {
            let mut w = big[..1000].to_vec();
            w.extend_from_slice(b"\n[niks3: this build log was cut at 1000 bytes]\n");
            w
        };
        let (_d, dir) = logs(&[(SHARDED, &big)]);
        assert_eq!(dir.read(DRV, 1000).expect("read"), Some(want.clone()));
        let bz = format!("{SHARDED}.bz2");
        let (_d, dir) = logs(&[(&bz, &bz2(&big))]);
        assert_eq!(dir.read(DRV, 1000).expect("read"), Some(want));
        // Exactly at the cap: whole, no note.
        assert_eq!(dir.read(DRV, big.len() as u64).expect("read"), Some(big));
    }

    #[test]
    fn the_bz2_decoder_stops_at_the_cap() {
        // 64 MiB of zeros compress to a few kB; only cap + 1 bytes of them are ever decompressed.
        let mut enc = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            enc.write_all(&zeros).expect("compress");
        }
        let bomb = enc.finish().expect("compress");
        let bz = format!("{SHARDED}.bz2");
        let (_d, dir) = logs(&[(&bz, &bomb)]);
        let log = dir.read(DRV, 4096).expect("read").expect("log");
        assert_eq!(log.len(), 4096 + "\n[niks3: this build log was cut at 4096 bytes]\n".len());
    }

    #[test]
    fn a_corrupt_bz2_is_skipped_as_nix_skips_it() {
        let bz = format!("{SHARDED}.bz2");
        let mut broken = bz2(b"some log\n");
        let mid = broken.len() / 2;
        broken[mid] ^= 0xff;
        for bad in [b"not bzip2 at all".to_vec(), broken, bz2(b"truncated log")[..20].to_vec()] {
            let (_d, dir) = logs(&[(&bz, &bad)]);
            assert_eq!(dir.read(DRV, 100).expect("no error"), None);
            // Nix goes on to the flat layout.
            let (_d, dir) = logs(&[(&bz, &bad), (DRV, b"flat")]);
            assert_eq!(dir.read(DRV, 100).expect("no error"), Some(b"flat".to_vec()));
        }
    }

    #[test]
    fn a_log_that_cannot_be_read_is_an_environment_error_naming_the_file() {
        // A directory where the log should be: it exists, but reading it fails (EISDIR), as an
        // unreadable file would (permissions do not stop root, who runs the tests).
        let (d, dir) = logs(&[]);
        std::fs::create_dir(d.path().join("drvs").join(SHARDED)).expect("mkdir");
        let err = dir.read(DRV, 100).expect_err("unreadable");
        assert!(matches!(&err, PathInfoError::ReadLog { path, .. } if path.ends_with(SHARDED)), "{err}");
        assert!(err.is_environment());
        assert!(err.to_string().contains(SHARDED), "{err}");
    }

    #[test]
    fn a_log_dir_without_drvs_is_unusable() {
        let d = tempfile::tempdir().expect("tempdir");
        let err = LogDir::open(d.path()).expect_err("no drvs");
        assert!(matches!(&err, LogDirUnusable::NoDrvs { path, .. } if path == &d.path().join("drvs")), "{err}");
    }

    #[test]
    fn the_log_dir_is_computed_as_nix_computes_it() {
        let os = |s: &'static str| Some(OsStr::new(s));
        let at = |log: Option<&OsStr>, remote: Option<&OsStr>| LogDir::locate(log, remote).map_err(|e| e.to_string());
        let p = |s: &str| Ok(PathBuf::from(s));
        assert_eq!(at(None, None), p(DEFAULT_LOG_DIR));
        assert_eq!(at(os(""), None), p(DEFAULT_LOG_DIR), "an empty NIX_LOG_DIR is unset (Nix 2.26)");
        assert_eq!(at(os("/var/log/mine"), None), p("/var/log/mine"));
        for remote in ["", "auto", "daemon", "local", "unix:///run/nix.sock", "daemon?trusted=1"] {
            assert_eq!(at(os("/var/log/mine"), os(remote)), p("/var/log/mine"), "{remote}");
        }
        assert_eq!(at(os("/var/log/mine"), os("/srv/chroot")), p("/srv/chroot/nix/var/log/nix"));
        assert_eq!(at(None, os("local?root=/srv/r")), p("/srv/r/nix/var/log/nix"));
        assert_eq!(at(None, os("local?root=/srv/r&log=/srv/logs")), p("/srv/logs"));
        assert_eq!(at(None, os("daemon?log=/srv/logs")), p("/srv/logs"));
        for remote in ["ssh-ng://builder", "https://cache.nixos.org", "local?root=/a%20b", "dummy://"] {
            assert!(at(None, os(remote)).is_err_and(|e| e.contains("NIX_REMOTE")), "{remote}");
        }
        assert!(at(os("relative/logs"), None).is_err_and(|e| e.contains("not an absolute path")));
    }
}
