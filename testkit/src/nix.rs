//! A private, offline Nix for tests: the real `nix`, `nix-build` and `nix-store` binaries, configured so
//! that they never touch the network or the machine's own Nix settings.
//!
//! Two Nix installations: the host's (Debian bookworm's Nix 2.8, [`NixEnv::new`]) and the one in the trixie
//! chroot (Nix 2.26, [`NixEnv::in_chroot`]), each with its own `/nix/store`. Either runs single-user (the
//! test's commands open the store themselves, as root) or multi-user: [`NixEnv::start_daemon`] starts a
//! real `nix-daemon` that every later command talks to, and that runs the builds and the `post-build-hook`.
//!
//! Every [`NixEnv`] has its own `NIX_CONF_DIR` (`sandbox = false`, `substituters =`, narinfo cache TTLs 0,
//! `nix-command` enabled …), its own `XDG_CACHE_HOME` and a random salt, so derivations built through it
//! are always built afresh (and a post-build hook really runs) even when another test built the "same"
//! expression a second earlier.
//!
//! Paths have two names in a chroot: the host's ([`NixEnv::dir`], what the test reads and writes) and the
//! one its programs see ([`NixEnv::nix_path`]), which is what goes on their command lines. For the host's
//! Nix both are the same.
//!
//! ```no_run
//! use niks3_testkit::nix::NixEnv;
//! let env = NixEnv::new()?;
//! let out = env.build_script("hello", "echo hi > $out")?;          // one fresh store path
//! let paths = env.build(r#"{ salt }: { a = derivation { name = "a"; inherit salt;
//!     system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo a > $out" ]; }; }"#, "a")?;
//! let dump = env.command("nix-store").args(["--dump", &out]).output()?;  // any nix command, right env
//! let chroot = env.chroot_store("client")?;                         // for `--store /abs/dir`
//! # Ok::<(), std::io::Error>(())
//! ```

use crate::chroot::Chroot;
use crate::nix_daemon::NixDaemon;
use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A private Nix configuration in a temporary directory (removed on drop), for the host's Nix or a
/// chroot's, optionally with its own `nix-daemon`.
///
/// Everything a test runs through [`NixEnv::command`] (or, for the host's Nix, with [`NixEnv::envs`]
/// applied to its own `Command`, e.g. a tokio one) sees only this configuration.
pub struct NixEnv {
    // Declared first, so dropped first: the daemon dies before its directory is removed.
    daemon: Option<NixDaemon>,
    dir: tempfile::TempDir,
    salt: String,
    chroot: Option<Chroot>,
}

impl NixEnv {
    /// A private configuration for the host's Nix. Fails if the temporary directory cannot be written.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("niks3-nixenv-").tempdir()?;
        NixEnv::init(dir, None)
    }

    /// A private configuration for the Nix inside `chroot`; its directory is in the chroot's `/tmp`.
    pub fn in_chroot(chroot: &Chroot) -> io::Result<Self> {
        let dir = chroot.tempdir("niks3-nixenv-")?;
        NixEnv::init(dir, Some(chroot.clone()))
    }

    fn init(dir: tempfile::TempDir, chroot: Option<Chroot>) -> io::Result<Self> {
        for sub in ["etc", "xdg-cache", "exprs", "stores"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let salt = format!("s{}", hex::encode(rand::random::<[u8; 12]>()));
        let env = NixEnv { daemon: None, dir, salt, chroot };
        std::fs::write(env.conf_path(), base_conf(&env.host_path(Path::new("/etc/group"))))?;
        Ok(env)
    }

    /// The temporary directory holding the configuration, expressions and chroot stores (the host's name).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The chroot this environment's Nix lives in, if it is not the host's.
    pub fn chroot(&self) -> Option<&Chroot> {
        self.chroot.as_ref()
    }

    /// What this environment's programs call the host path `host`: for a chroot, the path inside it (a host
    /// path outside the chroot is returned unchanged, as for directories bound with
    /// [`NixEnv::share_dir`]); for the host's Nix, `host` itself.
    pub fn nix_path(&self, host: &Path) -> PathBuf {
        self.chroot.as_ref().and_then(|c| c.inner_path(host)).unwrap_or_else(|| host.to_path_buf())
    }

    /// What the host calls `path`, a path as this environment's programs see it (a store path, say).
    pub fn host_path(&self, path: &Path) -> PathBuf {
        match &self.chroot {
            Some(c) => c.host_path(path),
            None => path.to_path_buf(),
        }
    }

    /// A new temporary directory this environment's programs can reach (in the chroot's `/tmp` for a
    /// chroot's Nix); they call it [`NixEnv::nix_path`] of its path.
    pub fn tempdir(&self, prefix: &str) -> io::Result<tempfile::TempDir> {
        match &self.chroot {
            Some(c) => c.tempdir(prefix),
            None => tempfile::Builder::new().prefix(prefix).tempdir(),
        }
    }

    /// Makes the host directory `dir` visible to this environment's programs under its own name (a
    /// read-only bind mount into a chroot; nothing to do for the host's Nix), e.g. the directory of the
    /// binaries under test.
    pub fn share_dir(&self, dir: &Path) -> io::Result<()> {
        match &self.chroot {
            Some(c) => c.bind_same_path(dir),
            None => Ok(()),
        }
    }

    /// Starts a real `nix-daemon` for this environment (multi-user Nix): every later command goes through
    /// it (`NIX_REMOTE=daemon`), and it runs the builds. Its `nix.conf` is this environment's as it is now
    /// (so add lines with [`NixEnv::conf_extra`] before) plus `post-build-hook = <post_build_hook>` when
    /// given; `daemon_env` is added to its environment, so a hook sees it (the client's environment never
    /// reaches a hook). Stopped, with its workers, when the environment is dropped.
    pub fn start_daemon(&mut self, post_build_hook: Option<&Path>, daemon_env: &[(&str, &OsStr)]) -> io::Result<()> {
        if self.daemon.is_some() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, "this NixEnv already has a nix-daemon"));
        }
        let etc = self.dir.path().join("daemon-etc");
        std::fs::create_dir_all(&etc)?;
        let mut conf = std::fs::read_to_string(self.conf_path())?;
        if let Some(hook) = post_build_hook {
            conf = format!("{conf}post-build-hook = {}\n", hook.display());
        }
        std::fs::write(etc.join("nix.conf"), conf)?;
        let socket = self.dir.path().join("daemon.socket");
        let mut cmd = self.command("nix-daemon");
        cmd.env("NIX_CONF_DIR", self.nix_path(&etc))
            .env("NIX_USER_CONF_FILES", self.nix_path(&etc.join("user.conf")))
            .env("NIX_DAEMON_SOCKET_PATH", self.nix_path(&socket))
            .env_remove("NIX_REMOTE")
            .envs(daemon_env.iter().copied());
        self.daemon = Some(NixDaemon::spawn(cmd, &socket, &self.dir.path().join("daemon.log"))?);
        Ok(())
    }

    /// The running `nix-daemon`, if [`NixEnv::start_daemon`] started one.
    pub fn daemon(&self) -> Option<&NixDaemon> {
        self.daemon.as_ref()
    }

    /// `nix --version`'s number, e.g. `2.8.0` or `2.26.3`.
    pub fn nix_version(&self) -> io::Result<String> {
        let out = self.run(self.command("nix").arg("--version"))?;
        out.split_whitespace()
            .last()
            .map(str::to_owned)
            .ok_or_else(|| io::Error::other(format!("nix --version printed {out:?}")))
    }

    /// This environment's random salt; [`NixEnv::build`] passes it as `--argstr salt`.
    pub fn salt(&self) -> &str {
        &self.salt
    }

    /// The `nix.conf` in use (append to it with [`NixEnv::conf_extra`]).
    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("etc").join("nix.conf")
    }

    /// Appends `line` (e.g. `"max-jobs = 2"`) to this environment's `nix.conf`.
    pub fn conf_extra(&self, line: &str) -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().append(true).open(self.conf_path())?;
        writeln!(f, "{line}")
    }

    /// Sets Nix's `post-build-hook` to `program` (an absolute path as Nix sees it) for every later build
    /// (single-user; a daemon's hook is given to [`NixEnv::start_daemon`]).
    pub fn set_post_build_hook(&self, program: &Path) -> io::Result<()> {
        self.conf_extra(&format!("post-build-hook = {}", program.display()))
    }

    /// Sets Nix's `post-build-hook` to a wrapper script (in this environment's directory) that exports
    /// `hook_env` and runs `program` (a path as Nix sees it): how a single-user Nix gives its hook an
    /// environment, as [`NixEnv::start_daemon`] does for a daemon's.
    pub fn set_post_build_hook_with_env(&self, program: &Path, hook_env: &[(&str, &OsStr)]) -> io::Result<()> {
        let mut script = String::from("#!/bin/sh\n");
        for (k, v) in hook_env {
            script = format!("{script}export {k}={}\n", sh_quote(&v.to_string_lossy()));
        }
        script = format!("{script}exec {}\n", sh_quote(&program.to_string_lossy()));
        let wrapper = self.dir.path().join("post-build-hook.sh");
        std::fs::write(&wrapper, script)?;
        std::fs::set_permissions(&wrapper, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        self.set_post_build_hook(&self.nix_path(&wrapper))
    }

    /// The environment variables that select this configuration, with paths as its programs see them:
    /// `NIX_CONF_DIR` …, and `NIX_REMOTE=daemon` with `NIX_DAEMON_SOCKET_PATH` once a daemon runs;
    /// otherwise they unset `NIX_REMOTE`, `NIX_CONFIG`, `NIX_PATH` (`None` means "remove"). Apply them to
    /// commands not made by [`NixEnv::command`].
    pub fn envs(&self) -> Vec<(&'static str, Option<OsString>)> {
        let etc = self.dir.path().join("etc");
        let os = |p: PathBuf| Some(self.nix_path(&p).into_os_string());
        let mut envs = vec![
            ("NIX_CONF_DIR", os(etc.clone())),
            ("NIX_USER_CONF_FILES", os(etc.join("user.conf"))),
            ("XDG_CACHE_HOME", os(self.dir.path().join("xdg-cache"))),
            ("NIX_CONFIG", None),
            ("NIX_PATH", None),
        ];
        if self.daemon.is_some() {
            envs.push(("NIX_REMOTE", Some("daemon".into())));
            envs.push(("NIX_DAEMON_SOCKET_PATH", os(self.dir.path().join("daemon.socket"))));
        } else {
            envs.push(("NIX_REMOTE", None));
        }
        envs
    }

    /// A `Command` for `program` (`nix`, `nix-store`, `nix-build`, or any program that calls them, such as
    /// `niks3`) with this environment applied. In a chroot, `program` runs inside it with a clean
    /// environment ([`Chroot::command`]); its arguments are paths as it sees them ([`NixEnv::nix_path`]).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = match &self.chroot {
            Some(c) => c.command(program),
            None => Command::new(program),
        };
        for (k, v) in self.envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// Runs `cmd` and returns its stdout as text; a non-zero exit becomes an error carrying stderr.
    pub fn run(&self, cmd: &mut Command) -> io::Result<String> {
        let out = cmd.output()?;
        check(cmd, &out)?;
        String::from_utf8(out.stdout).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Builds attribute `attr` of the Nix expression `expr` (text; a function of `{ salt }` gets this
    /// environment's salt) with `nix-build --no-out-link` and returns its output paths. `attr` may be empty
    /// to build the whole expression.
    pub fn build(&self, expr: &str, attr: &str) -> io::Result<Vec<String>> {
        self.build_with(expr, attr, &[])
    }

    /// Like [`NixEnv::build`] with extra `nix-build` arguments (e.g. `["--option", "post-build-hook", …]`).
    pub fn build_with(&self, expr: &str, attr: &str, extra_args: &[&str]) -> io::Result<Vec<String>> {
        let file = self.write_expr(expr)?;
        let mut cmd = self.command("nix-build");
        cmd.arg("--no-out-link").arg(self.nix_path(&file)).args(["--argstr", "salt", &self.salt]);
        if !attr.is_empty() {
            cmd.args(["-A", attr]);
        }
        cmd.args(extra_args);
        let out = self.run(&mut cmd)?;
        Ok(out.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }

    /// Builds one derivation named `name` whose builder runs `script` with `/bin/sh -c` (no `PATH`: use
    /// absolute paths such as `/bin/mkdir`; `$out` is the output) and returns its output path. The salt
    /// is part of the derivation, so the path is new for every `NixEnv`.
    pub fn build_script(&self, name: &str, script: &str) -> io::Result<String> {
        let expr = format!(
            "{{ salt }}: derivation {{ name = {}; inherit salt; system = builtins.currentSystem; \
             builder = \"/bin/sh\"; args = [ \"-c\" {} ]; }}",
            nix_string(name),
            nix_string(script)
        );
        let mut paths = self.build(&expr, "")?;
        match (paths.pop(), paths.is_empty()) {
            (Some(p), true) => Ok(p),
            _ => Err(io::Error::other(format!("nix-build of {name} did not print exactly one path"))),
        }
    }

    /// The `.drv` that produced `out_path` (`nix-store -q --deriver`).
    pub fn deriver(&self, out_path: &str) -> io::Result<String> {
        Ok(self.run(self.command("nix-store").args(["-q", "--deriver", out_path]))?.trim().to_owned())
    }

    /// A fresh, empty directory to use as a chroot store (`nix copy --to /abs/dir`, `--store /abs/dir`):
    /// paths substituted there keep their `/nix/store/…` names but live under this directory. The host's
    /// name: give Nix [`NixEnv::nix_path`] of it.
    pub fn chroot_store(&self, name: &str) -> io::Result<PathBuf> {
        let p = self.dir.path().join("stores").join(name);
        if p.exists() {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("chroot store {name} exists")));
        }
        std::fs::create_dir_all(&p)?;
        Ok(p)
    }

    /// `nix copy --from <from>` of `paths` into a fresh chroot store `name`, trusting only `public_key`
    /// (signatures required, as Nix requires by default): what a client of the cache does. The store's
    /// directory, or why it failed (nix's stderr).
    pub fn substitute<P: AsRef<std::ffi::OsStr>>(
        &self,
        from: &str,
        name: &str,
        paths: &[P],
        public_key: &str,
    ) -> Result<PathBuf, String> {
        self.substitute_with(from, name, paths, public_key, &[])
    }

    /// [`NixEnv::substitute`] with extra `nix copy` arguments (e.g. `["--option", "netrc-file", F]`).
    pub fn substitute_with<P: AsRef<std::ffi::OsStr>>(
        &self,
        from: &str,
        name: &str,
        paths: &[P],
        public_key: &str,
        extra_args: &[&str],
    ) -> Result<PathBuf, String> {
        let store = self.chroot_store(name).map_err(|e| format!("chroot store {name}: {e}"))?;
        let out = self
            .command("nix")
            .args(["copy", "--from", from, "--to"])
            .arg(self.nix_path(&store))
            .args(["--option", "require-sigs", "true", "--option", "trusted-public-keys", public_key])
            .args(extra_args)
            .args(paths)
            .output()
            .map_err(|e| format!("running nix copy: {e}"))?;
        if out.status.success() { Ok(store) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
    }

    fn write_expr(&self, expr: &str) -> io::Result<PathBuf> {
        let f = self.dir.path().join("exprs").join(format!("e{}.nix", hex::encode(rand::random::<[u8; 8]>())));
        std::fs::write(&f, expr)?;
        Ok(f)
    }
}

/// The base configuration (offline: no sandbox, no substituters); builds run as `nixbld` users when
/// `etc_group` (the Nix installation's `/etc/group`) has that group.
fn base_conf(etc_group: &Path) -> String {
    let users_group = if group_exists(etc_group, "nixbld") { "nixbld" } else { "" };
    format!(
        "# private niks3 test configuration (NIX_CONF_DIR)\n\
         sandbox = false\n\
         build-users-group = {users_group}\n\
         substituters =\n\
         experimental-features = nix-command\n\
         narinfo-cache-positive-ttl = 0\n\
         narinfo-cache-negative-ttl = 0\n\
         max-jobs = 1\n"
    )
}

fn group_exists(etc_group: &Path, name: &str) -> bool {
    std::fs::read_to_string(etc_group).is_ok_and(|g| g.lines().any(|l| l.split(':').next() == Some(name)))
}

/// Quotes `s` for the shell (single quotes; a `'` inside becomes `'\''`).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Quotes `s` as a Nix string literal.
pub fn nix_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("\\$"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn check(cmd: &Command, out: &Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{} {:?} failed ({}): {}",
        cmd.get_program().display(),
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A hook script in `env`'s directory that appends `$DRV_PATH $HOOK_MARK` to `hook.log` there.
    fn recording_hook(env: &NixEnv) -> (PathBuf, PathBuf) {
        let log = env.dir().join("hook.log");
        let hook = env.dir().join("hook.sh");
        let script = format!("#!/bin/sh\necho \"$DRV_PATH $HOOK_MARK\" >> {}\n", env.nix_path(&log).display());
        std::fs::write(&hook, script).expect("write hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        (env.nix_path(&hook), log)
    }

    /// The host's Nix, and the trixie chroot's when it is there.
    fn each_nix(test: &str) -> Vec<(&'static str, Option<Chroot>)> {
        let mut all = vec![("host", None)];
        if let Some(c) = Chroot::trixie_or_skip(test).expect("trixie chroot") {
            all.push(("trixie", Some(c)));
        }
        all
    }

    fn env_for(chroot: Option<&Chroot>) -> NixEnv {
        chroot.map_or_else(NixEnv::new, NixEnv::in_chroot).expect("nix env")
    }

    #[test]
    fn builds_fresh_paths_and_runs_the_post_build_hook() {
        for (name, chroot) in each_nix("builds_fresh_paths_and_runs_the_post_build_hook") {
            let env = env_for(chroot.as_ref());
            let (hook, log) = recording_hook(&env);
            env.set_post_build_hook(&hook).expect("hook");
            let out = env.build_script("testkit-hello", "echo \"hi $salt\" > $out").expect("build");
            assert!(out.starts_with("/nix/store/") && out.ends_with("-testkit-hello"), "{name}: {out}");
            let content = std::fs::read_to_string(env.host_path(Path::new(&out))).expect("output");
            assert_eq!(content, format!("hi {}\n", env.salt()), "{name}");
            let drv = env.deriver(&out).expect("deriver");
            assert_eq!(std::fs::read_to_string(&log).expect("hook ran"), format!("{drv} \n"), "{name}");
            // Another environment has another salt, so the same script is a new path.
            let other = env_for(chroot.as_ref());
            assert_ne!(other.build_script("testkit-hello", "echo \"hi $salt\" > $out").expect("build"), out);
            let store = env.chroot_store("c").expect("chroot store");
            assert!(store.is_dir());
            assert!(env.chroot_store("c").is_err(), "a chroot store is fresh");
        }
    }

    #[test]
    fn a_daemon_runs_the_builds_and_the_hook_in_its_own_environment() {
        for (name, chroot) in each_nix("a_daemon_runs_the_builds_and_the_hook_in_its_own_environment") {
            let mut env = env_for(chroot.as_ref());
            let (hook, log) = recording_hook(&env);
            env.start_daemon(Some(&hook), &[("HOOK_MARK", OsStr::new("from-the-daemon"))]).expect("nix-daemon");
            assert!(env.envs().contains(&("NIX_REMOTE", Some("daemon".into()))), "{name}");
            let out = env.build_script("testkit-daemon", "echo \"hi $salt\" > $out").expect("build");
            let drv = env.deriver(&out).expect("deriver");
            assert_eq!(std::fs::read_to_string(&log).expect("hook ran"), format!("{drv} from-the-daemon\n"), "{name}");
            let daemon_log = env.daemon().expect("daemon").log_text();
            assert!(daemon_log.contains("accepted connection"), "{name}: the client used the daemon: {daemon_log}");
            assert!(env.start_daemon(None, &[]).is_err(), "one daemon per environment");
            let pid = env.daemon().expect("daemon").pid();
            drop(env);
            assert!(!Path::new(&format!("/proc/{pid}")).exists(), "{name}: nix-daemon {pid} stopped on drop");
        }
    }

    #[test]
    fn failures_carry_stderr() {
        let env = NixEnv::new().expect("nix env");
        let err = env.build_script("testkit-fails", "echo boom >&2; exit 3").expect_err("builder fails");
        assert!(err.to_string().contains("boom") || err.to_string().contains("failed"), "{err}");
    }

    #[test]
    fn a_hook_wrapper_exports_its_environment() {
        for (name, chroot) in each_nix("a_hook_wrapper_exports_its_environment") {
            let env = env_for(chroot.as_ref());
            let (hook, log) = recording_hook(&env);
            env.set_post_build_hook_with_env(&hook, &[("HOOK_MARK", OsStr::new("it's quoted"))]).expect("hook");
            let out = env.build_script("testkit-wrapped", "echo \"hi $salt\" > $out").expect("build");
            let drv = env.deriver(&out).expect("deriver");
            assert_eq!(std::fs::read_to_string(&log).expect("hook ran"), format!("{drv} it's quoted\n"), "{name}");
        }
    }

    #[test]
    fn nix_strings_are_quoted() {
        assert_eq!(nix_string("a\"b\\c${d}\n"), "\"a\\\"b\\\\c\\${d}\\n\"");
    }
}
