//! A private, offline Nix for tests: the real `nix`, `nix-build` and `nix-store` binaries, configured so
//! that they never touch the network or the machine's own Nix settings.
//!
//! Tests run as root against the real `/nix/store` (single-user Nix, no daemon). Every [`NixEnv`] has its own
//! `NIX_CONF_DIR` (`sandbox = false`, `substituters =`, narinfo cache TTLs 0, `nix-command` enabled …), its
//! own `XDG_CACHE_HOME` and a random salt, so derivations built through it are always built afresh (and a
//! post-build hook really runs) even when another test built the "same" expression a second earlier.
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

use std::ffi::OsString;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A private Nix configuration in a temporary directory (removed on drop).
///
/// Everything a test runs through [`NixEnv::command`] (or with [`NixEnv::envs`] applied to its own
/// `Command`, e.g. a tokio one) sees only this configuration.
pub struct NixEnv {
    dir: tempfile::TempDir,
    salt: String,
}

impl NixEnv {
    /// Creates the private configuration. Fails if the temporary directory cannot be written.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("niks3-nixenv-").tempdir()?;
        for sub in ["etc", "xdg-cache", "exprs", "stores"] {
            std::fs::create_dir_all(dir.path().join(sub))?;
        }
        let salt = format!("s{}", hex::encode(rand::random::<[u8; 12]>()));
        let env = NixEnv { dir, salt };
        std::fs::write(env.conf_path(), base_conf())?;
        Ok(env)
    }

    /// The temporary directory holding the configuration, expressions and chroot stores.
    pub fn dir(&self) -> &Path {
        self.dir.path()
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

    /// Sets Nix's `post-build-hook` to `program` (an absolute path) for every later build.
    pub fn set_post_build_hook(&self, program: &Path) -> io::Result<()> {
        self.conf_extra(&format!("post-build-hook = {}", program.display()))
    }

    /// The environment variables that select this configuration (and unset `NIX_REMOTE`, `NIX_CONFIG`,
    /// `NIX_PATH`: `None` means "remove"). Apply them to commands not made by [`NixEnv::command`].
    pub fn envs(&self) -> Vec<(&'static str, Option<OsString>)> {
        let etc = self.dir.path().join("etc");
        vec![
            ("NIX_CONF_DIR", Some(etc.clone().into_os_string())),
            ("NIX_USER_CONF_FILES", Some(etc.join("user.conf").into_os_string())),
            ("XDG_CACHE_HOME", Some(self.dir.path().join("xdg-cache").into_os_string())),
            ("NIX_REMOTE", None),
            ("NIX_CONFIG", None),
            ("NIX_PATH", None),
        ]
    }

    /// A `Command` for `program` (`nix`, `nix-store`, `nix-build`, or any program that calls them, such as
    /// `niks3`) with this environment applied.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
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
        cmd.arg("--no-out-link").arg(&file).args(["--argstr", "salt", &self.salt]);
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
    /// paths substituted there keep their `/nix/store/…` names but live under this directory.
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
        let store = self.chroot_store(name).map_err(|e| format!("chroot store {name}: {e}"))?;
        let out = self
            .command("nix")
            .args(["copy", "--from", from, "--to"])
            .arg(&store)
            .args(["--option", "require-sigs", "true", "--option", "trusted-public-keys", public_key])
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

/// The base configuration, as in /work/shared/recipes/nix-offline-demo.sh.
fn base_conf() -> String {
    let users_group = if group_exists("nixbld") { "nixbld" } else { "" };
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

fn group_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/group").is_ok_and(|g| g.lines().any(|l| l.split(':').next() == Some(name)))
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

    #[test]
    fn builds_fresh_paths_and_runs_the_post_build_hook() {
        let env = NixEnv::new().expect("nix env");
        let log = env.dir().join("hook.log");
        let hook = env.dir().join("hook.sh");
        std::fs::write(&hook, format!("#!/bin/sh\necho \"$DRV_PATH\" >> {}\n", log.display())).expect("write hook");
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        env.set_post_build_hook(&hook).expect("hook");
        let out = env.build_script("testkit-hello", "echo \"hi $salt\" > $out").expect("build");
        assert!(out.starts_with("/nix/store/") && out.ends_with("-testkit-hello"), "{out}");
        assert_eq!(std::fs::read_to_string(&out).expect("output"), format!("hi {}\n", env.salt()));
        let drv = env.deriver(&out).expect("deriver");
        assert_eq!(std::fs::read_to_string(&log).expect("hook ran"), format!("{drv}\n"));
        // Another environment has another salt, so the same script is a new path.
        let other = NixEnv::new().expect("nix env");
        assert_ne!(other.build_script("testkit-hello", "echo \"hi $salt\" > $out").expect("build"), out);
        let chroot = env.chroot_store("c").expect("chroot");
        assert!(chroot.is_dir());
        assert!(env.chroot_store("c").is_err(), "a chroot store is fresh");
    }

    #[test]
    fn failures_carry_stderr() {
        let env = NixEnv::new().expect("nix env");
        let err = env.build_script("testkit-fails", "echo boom >&2; exit 3").expect_err("builder fails");
        assert!(err.to_string().contains("boom") || err.to_string().contains("failed"), "{err}");
    }

    #[test]
    fn nix_strings_are_quoted() {
        assert_eq!(nix_string("a\"b\\c${d}\n"), "\"a\\\"b\\\\c\\${d}\\n\"");
    }
}
