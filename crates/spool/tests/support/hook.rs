//! Shared test support: a private, offline Nix configuration (as testkit/src/nix.rs writes),
//! helpers to run the real `niks3-hook` binary, and mounts for the unwritable-spool cases.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// A private Nix config dir and cache dir: builds are local, offline, unsandboxed.
pub struct Nix {
    pub dir: tempfile::TempDir,
}

impl Nix {
    pub fn new() -> Nix {
        let dir = tempfile::tempdir().expect("tempdir for nix config");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir etc");
        std::fs::create_dir_all(dir.path().join("xdg")).expect("mkdir xdg");
        std::fs::write(
            dir.path().join("etc/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\nexperimental-features = nix-command\n\
             narinfo-cache-positive-ttl = 0\nnarinfo-cache-negative-ttl = 0\nmax-jobs = 1\n",
        )
        .expect("write nix.conf");
        Nix { dir }
    }

    /// A command for a Nix tool with the private config and none of the caller's Nix settings.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("NIX_CONF_DIR", self.dir.path().join("etc"))
            .env("NIX_USER_CONF_FILES", self.dir.path().join("etc/user.conf"))
            .env("XDG_CACHE_HOME", self.dir.path().join("xdg"))
            .env_remove("NIX_REMOTE")
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_PATH");
        c
    }

    /// Runs a Nix tool, panicking with its stderr if it fails; returns trimmed stdout.
    pub fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(out.status.success(), "{program} {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 stdout").trim().to_owned()
    }

    /// Writes a Nix expression file into the config dir and returns its path.
    pub fn expr(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).expect("write expression");
        p
    }
}

/// A string unique to this test run, so every derivation really gets built.
pub fn salt() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos();
    format!("t{nanos}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// The hook binary built by cargo for this test run.
pub fn hook_bin() -> &'static str {
    env!("CARGO_BIN_EXE_niks3-hook")
}

/// Runs the hook with exactly `env` (plus PATH) and returns its output.
pub fn run_hook(env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(hook_bin());
    c.env_clear();
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run niks3-hook")
}

/// stderr as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Entry files in a spool subdirectory, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

/// Runs `mount`/`umount`; fails the test with a clear message when mounting is not permitted.
pub fn mount(args: &[&str]) {
    let out = Command::new("mount").args(args).output().expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?} failed (these tests need root with CAP_SYS_ADMIN): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Unmounts on drop, so a failing assertion does not leave mounts behind.
pub struct Mounted(pub PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
