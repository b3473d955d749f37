//! The Debian trixie chroot with Nix 2.26 that `scripts/trixie-nix-chroot.sh` makes, so that tests run a
//! second, newer Nix next to the host's Nix 2.8 ([`crate::nix::NixEnv::in_chroot`]).
//!
//! The chroot has its own `/nix/store` and its own users. Its commands run as `chroot ROOT program` with a
//! clean environment ([`Chroot::command`]). They share the host's network (a server started inside listens
//! on the host's 127.0.0.1) and see host directories only where [`Chroot::bind_same_path`] mounted them.
//!
//! What every test needs mounted (`/proc`, `/dev` read-only, `/dev/pts`, `/dev/shm`) is mounted on first use,
//! under a lock because tests run concurrently in several processes, and stays mounted afterwards: another
//! test may be using it, and the next test run finds it in place. `/dev` and the directories of
//! [`Chroot::bind_same_path`] are bound read-only so that `rm -rf ROOT` can never reach into the host's `/dev`
//! or a target directory.

use std::ffi::OsStr;
use std::io::{self, Write as _};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Where `scripts/install-deps.sh --test` puts the chroot unless [`ROOT_VAR`] says otherwise.
pub const DEFAULT_ROOT: &str = "/var/cache/niks3-test/trixie";

/// The environment variable naming another chroot directory (read by the scripts and by [`Chroot::trixie`]).
pub const ROOT_VAR: &str = "NIKS3_TEST_TRIXIE_CHROOT";

/// `PATH` inside the chroot.
const INNER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A complete trixie chroot with its mounts in place.
#[derive(Clone, Debug)]
pub struct Chroot {
    root: PathBuf,
}

impl Chroot {
    /// The chroot at `$NIKS3_TEST_TRIXIE_CHROOT` (default [`DEFAULT_ROOT`]), with its mounts in place. An
    /// error of kind `NotFound` says how to make it when it is missing.
    pub fn trixie() -> io::Result<Chroot> {
        let root = std::env::var_os(ROOT_VAR).map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from);
        Chroot::open(&root)
    }

    /// [`Chroot::trixie`] for a test that needs it: `Ok(None)` after a loud message on stderr when the chroot
    /// is missing, so a developer without it still runs the rest of the suite. Under CI (`CI=true`) a missing
    /// chroot is an error instead: CI must run every case.
    pub fn trixie_or_skip(test: &str) -> io::Result<Option<Chroot>> {
        match Chroot::trixie() {
            Ok(c) => Ok(Some(c)),
            Err(e) if e.kind() == io::ErrorKind::NotFound && std::env::var("CI").as_deref() != Ok("true") => {
                // Straight to stderr: the test harness captures `eprintln!` of a passing test.
                let _ = writeln!(
                    io::stderr(),
                    "\n!!!!! SKIPPED {test}: {e}\n!!!!! (CI=true turns this into a failure; \
                     scripts/test.sh makes the chroot)\n"
                );
                Ok(None)
            }
            Err(e) => Err(io::Error::new(e.kind(), format!("{test}: {e}"))),
        }
    }

    /// The chroot at `root`, its mounts in place. Fails (`NotFound`) unless it has `nix` and `nix-daemon`.
    pub fn open(root: &Path) -> io::Result<Chroot> {
        for bin in ["usr/bin/nix", "usr/bin/nix-daemon"] {
            if !root.join(bin).is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no Nix chroot at {} ({bin} is missing): run scripts/trixie-nix-chroot.sh {0} as root",
                        root.display()
                    ),
                ));
            }
        }
        // Canonical, so that it matches the mount points in /proc/self/mountinfo.
        let root = root.canonicalize().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", root.display())))?;
        let chroot = Chroot { root };
        chroot.with_lock(|| {
            chroot.mount_once(&["-t", "proc", "proc"], "proc")?;
            chroot.mount_once(&["--bind", "-o", "ro", "/dev"], "dev")?;
            chroot.mount_once(&["--bind", "/dev/pts"], "dev/pts")?;
            chroot.mount_once(&["--bind", "/dev/shm"], "dev/shm")
        })?;
        Ok(chroot)
    }

    /// The chroot's directory on the host.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The host's name for `inner`, a path as programs inside the chroot see it.
    pub fn host_path(&self, inner: &Path) -> PathBuf {
        let rel: PathBuf = inner.components().filter(|c| !matches!(c, Component::RootDir)).collect();
        self.root.join(rel)
    }

    /// The name programs inside the chroot see for `host`, a host path under [`Chroot::root`]; `None` for a
    /// path outside it.
    pub fn inner_path(&self, host: &Path) -> Option<PathBuf> {
        host.strip_prefix(&self.root).ok().map(|rel| Path::new("/").join(rel))
    }

    /// A new temporary directory in the chroot's `/tmp` (removed on drop); its inner name is
    /// [`Chroot::inner_path`] of its path.
    pub fn tempdir(&self, prefix: &str) -> io::Result<tempfile::TempDir> {
        tempfile::Builder::new().prefix(prefix).tempdir_in(self.root.join("tmp"))
    }

    /// Makes the host directory `dir` visible inside the chroot under the same absolute path (a read-only
    /// bind mount), e.g. the target directory of the binaries under test. Idempotent and safe to call from
    /// concurrent tests; a mount whose directory was replaced since (`cargo clean`) is mounted afresh.
    pub fn bind_same_path(&self, dir: &Path) -> io::Result<()> {
        let dir = dir.canonicalize().map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        let inner = dir.strip_prefix("/").unwrap_or(&dir).to_path_buf();
        let target = self.root.join(&inner);
        self.with_lock(|| {
            if is_mountpoint(&target)? {
                if same_file(&dir, &target) {
                    return Ok(());
                }
                run(Command::new("umount").arg("-l").arg(&target), "umount a stale bind mount")?;
            }
            std::fs::create_dir_all(&target)
                .map_err(|e| io::Error::new(e.kind(), format!("mkdir {}: {e}", target.display())))?;
            run(Command::new("mount").args(["--bind", "-o", "ro"]).arg(&dir).arg(&target), "mount --bind")
        })
    }

    /// A `Command` running `program` (a path inside the chroot, or a name found on its `PATH`) inside the
    /// chroot as root, with nothing of this process's environment but `PATH=/usr/…/bin…` and `HOME=/root`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("/usr/sbin/chroot");
        cmd.arg(&self.root).arg(program).env_clear().env("PATH", INNER_PATH).env("HOME", "/root");
        cmd
    }

    /// Runs `f` holding the chroot's mount lock (an exclusive `flock` on `ROOT/.niks3-testkit.lock`).
    fn with_lock<T>(&self, f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let path = self.root.join(".niks3-testkit.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        file.lock().map_err(|e| io::Error::new(e.kind(), format!("locking {}: {e}", path.display())))?;
        f()
    }

    /// Mounts `ROOT/inner` with `mount <args> ROOT/inner` unless something is mounted there already.
    fn mount_once(&self, args: &[&str], inner: &str) -> io::Result<()> {
        let target = self.root.join(inner);
        if is_mountpoint(&target)? {
            return Ok(());
        }
        run(Command::new("mount").args(args).arg(&target), &format!("mount {}", target.display()))
    }
}

/// True when `path` is a mount point of this process's mount namespace (`/proc/self/mountinfo`).
fn is_mountpoint(path: &Path) -> io::Result<bool> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    let want = path.as_os_str().to_string_lossy();
    Ok(info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape_mountinfo(m) == want))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape_mountinfo(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| u8::from_str_radix(std::str::from_utf8(d).ok()?, 8).ok());
        match (b[i], octal) {
            (b'\\', Some(v)) => {
                out.push(v);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// True when `a` and `b` are the same inode (a bind mount of a directory shows its inode).
fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Runs `cmd`; a failure becomes an error carrying its stderr.
fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.output().map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!("{what} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_between_host_and_chroot() {
        let c = Chroot { root: PathBuf::from("/var/x/root") };
        assert_eq!(c.host_path(Path::new("/nix/store/a")), PathBuf::from("/var/x/root/nix/store/a"));
        assert_eq!(c.inner_path(Path::new("/var/x/root/tmp/d")), Some(PathBuf::from("/tmp/d")));
        assert_eq!(c.inner_path(Path::new("/var/x/rootless")), None);
        assert_eq!(unescape_mountinfo(r"/a\040b\134c"), "/a b\\c");
    }

    #[test]
    fn runs_nix_inside_the_chroot_with_the_test_binaries_visible() {
        let Some(c) = Chroot::trixie_or_skip("runs_nix_inside_the_chroot").expect("chroot") else { return };
        let out = c.command("nix").arg("--version").output().expect("chroot nix --version");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("nix (Nix) 2."), "{out:?}");
        // target/debug, as the end-to-end tests bind it for niks3 and niks3-hook.
        let exe = std::env::current_exe().expect("current exe");
        let dir = exe.parent().and_then(Path::parent).expect("target dir");
        c.bind_same_path(dir).expect("bind");
        c.bind_same_path(dir).expect("bind again");
        assert!(c.host_path(&exe).is_file(), "{} visible inside", exe.display());
        let tmp = c.tempdir("niks3-chroot-test-").expect("tempdir");
        let inner = c.inner_path(tmp.path()).expect("inner");
        let out = c.command("/bin/ls").arg("-d").arg(&inner).output().expect("ls");
        assert!(out.status.success(), "{out:?}");
    }
}
