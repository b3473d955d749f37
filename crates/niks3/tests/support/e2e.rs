//! Shared pieces of the end-to-end tests: a real `niks3 serve` process fed by the real `niks3-hook`
//! through real `nix-build`s, a real PostgreSQL (testkit's, or the server's embedded one) and the local or
//! Garage backend. The Nix is the host's single-user one unless a test brings its own [`NixEnv`] (the
//! trixie chroot's, or with a `nix-daemon`) to [`World::with_nix`].
#![allow(clippy::missing_panics_doc, reason = "test support: panics are test failures")]
#![allow(clippy::duration_suboptimal_units, reason = "timeouts read best in seconds")]

pub mod ca;

use niks3_testkit::nix::NixEnv;
use niks3_testkit::postgres::Postgres;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `niks3` binary under test.
pub fn niks3_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_niks3"))
}

/// The `niks3-hook` binary, built into the same target directory (built on demand).
pub fn hook_bin() -> PathBuf {
    let bin = niks3_bin();
    let hook = bin.parent().expect("target dir").join("niks3-hook");
    if !hook.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let target_dir = bin.parent().and_then(Path::parent).expect("target dir");
        let status = Command::new(cargo)
            .args(["build", "-p", "niks3-spool", "--bin", "niks3-hook"])
            .env("CARGO_TARGET_DIR", target_dir)
            .status()
            .expect("running cargo build -p niks3-spool");
        assert!(status.success(), "cargo build -p niks3-spool failed");
    }
    hook
}

/// A free TCP port on 127.0.0.1 outside the ephemeral range (see `niks3_testkit::ports`).
pub fn free_port() -> u16 {
    niks3_testkit::ports::free_port().expect("a free port on 127.0.0.1")
}

/// Polls `cond` every 100 ms until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cond()
}

/// Which object store the server uses.
pub enum Backend {
    /// `--storage-dir <dir>`.
    Local(PathBuf),
    /// Garage.
    S3(Box<niks3_testkit::garage::Garage>),
}

/// Who runs the builds, and so the hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The test's own Nix commands (root, no daemon); the hook is set in their `nix.conf`.
    SingleUser,
    /// A `nix-daemon` of the test's own: the hook is set in the daemon's `nix.conf` and gets the spool
    /// directories from the daemon's environment.
    MultiUser,
}

/// One test's world: Nix with the hook installed, PostgreSQL, directories.
///
/// Paths (`dir`, [`World::spool`], the local backend's directory …) are the host's names; what goes on a
/// command line run through `nix` goes through [`NixEnv::nix_path`] (they differ in a chroot).
pub struct World {
    pub nix: NixEnv,
    /// testkit's PostgreSQL; `None` when `niks3 serve` runs its embedded one.
    pub pg: Option<Postgres>,
    pub db_url: Option<String>,
    pub dir: tempfile::TempDir,
    pub backend: Backend,
    pub port: u16,
    /// The S3 endpoint `niks3 serve` is given instead of Garage's own (a fault proxy in front of it).
    pub s3_endpoint: Option<String>,
}

impl World {
    /// A world with the local backend in `<dir>/cache`.
    pub fn local() -> World {
        let dir = tempfile::Builder::new().prefix("niks3-e2e-").tempdir().expect("tempdir");
        let cache = dir.path().join("cache");
        World::with_backend(dir, Backend::Local(cache))
    }

    /// A world with a fresh Garage bucket.
    pub fn s3() -> World {
        let dir = tempfile::Builder::new().prefix("niks3-e2e-").tempdir().expect("tempdir");
        let garage = niks3_testkit::garage::Garage::start().expect("start garage");
        World::with_backend(dir, Backend::S3(Box::new(garage)))
    }

    fn with_backend(dir: tempfile::TempDir, backend: Backend) -> World {
        let nix = NixEnv::new().expect("nix env");
        let pg = Postgres::start().expect("postgres");
        let db_url = Some(pg.url());
        World { nix, pg: Some(pg), db_url, dir, backend, port: free_port(), s3_endpoint: None }
            .with_hook(Mode::SingleUser)
    }

    /// A world on `nix` (any Nix, with its configuration as the test made it; a daemon is started here for
    /// [`Mode::MultiUser`]), the local backend in `<dir>/cache`, and `niks3 serve` on its embedded
    /// PostgreSQL: everything where `nix`'s programs can reach it.
    pub fn with_nix(nix: NixEnv, mode: Mode) -> World {
        let dir = nix.tempdir("niks3-e2e-").expect("tempdir");
        // The embedded PostgreSQL runs as the `postgres` user: it must be able to traverse to the state dir.
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        let cache = dir.path().join("cache");
        World { nix, pg: None, db_url: None, dir, backend: Backend::Local(cache), port: free_port(), s3_endpoint: None }
            .with_hook(mode)
    }

    /// Installs `niks3-hook` with this world's spool and GC roots directory: in the test's `nix.conf`
    /// through a wrapper script that exports them, or as a daemon's hook with them in the daemon's
    /// environment.
    fn with_hook(mut self, mode: Mode) -> World {
        let hook = hook_bin();
        let bins = hook.parent().expect("target dir");
        self.nix.share_dir(bins).expect("the binaries under test visible to Nix");
        // The hook only queues into an existing spool (it never creates one under a wrong owner).
        niks3_spool::Spool::open(&self.spool()).expect("create the spool");
        let (spool, gcroots) = (self.nix.nix_path(&self.spool()), self.nix.nix_path(&self.gcroots()));
        let env = [("NIKS3_SPOOL_DIR", spool.as_os_str()), ("NIKS3_GCROOTS_DIR", gcroots.as_os_str())];
        match mode {
            Mode::SingleUser => self.nix.set_post_build_hook_with_env(&hook, &env).expect("set hook"),
            Mode::MultiUser => self.nix.start_daemon(Some(&hook), &env).expect("start nix-daemon"),
        }
        self
    }

    /// testkit's PostgreSQL (worlds made by [`World::local`] and [`World::s3`] have one).
    pub fn pg(&self) -> &Postgres {
        self.pg.as_ref().expect("this world's server runs its embedded PostgreSQL")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }
    pub fn spool(&self) -> PathBuf {
        self.dir.path().join("spool")
    }
    pub fn gcroots(&self) -> PathBuf {
        self.dir.path().join("gcroots")
    }
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `path` as `niks3` (run through [`World::nix`]) names it, as a string for a command line.
    pub fn arg(&self, path: &Path) -> String {
        self.nix.nix_path(path).display().to_string()
    }

    /// The arguments `niks3 serve` gets (no `--db` when it runs its embedded PostgreSQL).
    pub fn serve_args(&self) -> Vec<String> {
        let mut args = vec![
            "serve".to_owned(),
            "--state-dir".to_owned(),
            self.arg(&self.state()),
            "--spool-dir".to_owned(),
            self.arg(&self.spool()),
            "--gcroots-dir".to_owned(),
            self.arg(&self.gcroots()),
            "--http-addr".to_owned(),
            format!("127.0.0.1:{}", self.port),
            "--jobs".to_owned(),
            "2".to_owned(),
        ];
        if let Some(db) = &self.db_url {
            args.extend(["--db".to_owned(), db.clone()]);
        }
        match &self.backend {
            Backend::Local(dir) => args.extend(["--storage-dir".to_owned(), self.arg(dir)]),
            Backend::S3(g) => args.extend([
                "--s3-endpoint".to_owned(),
                self.s3_endpoint.clone().unwrap_or_else(|| g.endpoint.clone()),
                "--s3-bucket".to_owned(),
                g.bucket.clone(),
                "--s3-region".to_owned(),
                g.region.clone(),
            ]),
        }
        args
    }

    /// Starts `niks3 serve`; its stderr goes to `<dir>/serve-N.log`.
    pub fn serve(&self) -> Server {
        self.serve_with(|_| {})
    }

    /// [`World::serve`] with `adjust` applied to the command before it starts (extra environment).
    pub fn serve_with(&self, adjust: impl FnOnce(&mut Command)) -> Server {
        let n = std::fs::read_dir(self.dir.path()).map_or(0, Iterator::count);
        let log = self.dir.path().join(format!("serve-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = self.nix.command(niks3_bin());
        cmd.args(self.serve_args()).stdout(Stdio::null()).stderr(file).env("RUST_LOG", "info,niks3=debug");
        if let Backend::S3(g) = &self.backend {
            cmd.env("NIKS3_S3_ACCESS_KEY", &g.access_key).env("NIKS3_S3_SECRET_KEY", &g.secret_key);
        }
        adjust(&mut cmd);
        Server::spawn(cmd, log)
    }

    /// Waits until the read proxy answers `nix-cache-info` with 200.
    pub fn wait_http(&self, server: &Server) {
        let ok = wait_for(Duration::from_secs(30), || self.http_status("/nix-cache-info") == Some(200));
        assert!(ok, "the read proxy never served nix-cache-info:\n{}", server.log_text());
    }

    /// The public key the server generated (after it started once).
    pub fn public_key(&self) -> String {
        let keys = self.state().join("keys");
        let ok = wait_for(Duration::from_secs(20), || {
            std::fs::read_dir(&keys)
                .is_ok_and(|d| d.filter_map(Result::ok).any(|e| e.path().extension().is_some_and(|x| x == "pub")))
        });
        assert!(ok, "no public key generated in {}", keys.display());
        let pubfile = std::fs::read_dir(&keys)
            .expect("keys")
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "pub"))
            .expect("pub file");
        std::fs::read_to_string(pubfile).expect("read pub").trim().to_owned()
    }

    /// Builds `attr` of `expr` with the hook installed; returns the output paths.
    pub fn build(&self, expr: &str, attr: &str) -> Vec<String> {
        self.nix.build(expr, attr).expect("nix-build")
    }

    /// `nix-store -qR`.
    pub fn closure(&self, path: &str) -> Vec<String> {
        let out = self.nix.run(self.nix.command("nix-store").args(["-qR", path])).expect("nix-store -qR");
        out.lines().map(str::to_owned).collect()
    }

    /// True when the cache has `<hash>.narinfo` for `path` (through the backend directly).
    pub fn has_narinfo(&self, path: &str) -> bool {
        let base = Path::new(path).file_name().and_then(|n| n.to_str()).expect("basename");
        let hash = &base[..32];
        match &self.backend {
            Backend::Local(dir) => dir.join(format!("{hash}.narinfo")).exists(),
            // Garage wants SigV4 even for reads: ask through the read proxy.
            Backend::S3(_) => self.http_status(&format!("/{hash}.narinfo")) == Some(200),
        }
    }

    /// The narinfo text for `path` as the read proxy serves it.
    pub fn narinfo_text(&self, path: &str) -> Option<String> {
        let base = Path::new(path).file_name().and_then(|n| n.to_str()).expect("basename");
        let out =
            Command::new("curl").args(["-sf", &format!("{}/{}.narinfo", self.url(), &base[..32])]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// HTTP status of GET `path` on the read proxy (`None` when unreachable).
    pub fn http_status(&self, path: &str) -> Option<u16> {
        http_status(&format!("{}{path}", self.url()))
    }

    /// Waits until every path of every closure of `outs` has a narinfo in the cache.
    pub fn wait_uploaded(&self, outs: &[String], server: &Server, timeout: Duration) {
        let mut all: Vec<String> = outs.iter().flat_map(|o| self.closure(o)).collect();
        all.sort();
        all.dedup();
        let ok = wait_for(timeout, || all.iter().all(|p| self.has_narinfo(p)));
        if !ok {
            let missing: Vec<&String> = all.iter().filter(|p| !self.has_narinfo(p)).collect();
            panic!("not uploaded within {timeout:?}: {missing:?}\n--- server log ---\n{}", server.log_text());
        }
    }

    /// Waits until `new/` and `claimed/` are empty (every entry acknowledged or quarantined).
    pub fn wait_drained(&self, server: &Server) {
        let ok = wait_for(Duration::from_secs(60), || {
            self.spool_entries("new").is_empty() && self.spool_entries("claimed").is_empty()
        });
        assert!(ok, "spool not drained:\n{}", server.log_text());
    }

    /// Spool entries in `sub` (`new`, `claimed`, `quarantine`), without `.reason` files.
    pub fn spool_entries(&self, sub: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.spool().join(sub))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_none_or(|x| x != "reason"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The reasons of the entries in `quarantine/`, each with its file name, for failure messages.
    pub fn quarantine_reasons(&self) -> String {
        std::fs::read_dir(self.spool().join("quarantine"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "reason"))
                    .map(|p| format!("{}: {}", p.display(), std::fs::read_to_string(&p).unwrap_or_default().trim()))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// Runs the `niks3` binary with `args` through [`World::nix`] (so in its chroot, with its daemon), asserts
    /// that it succeeded and returns its stdout and stderr.
    pub fn niks3(&self, args: &[&str]) -> String {
        let out = self
            .nix
            .command(niks3_bin())
            .args(args)
            .env_remove("NIKS3_AUTH_TOKEN")
            .env_remove("NIKS3_SERVER_URL")
            .output()
            .expect("run niks3");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "niks3 {args:?} failed ({}):\n{text}", out.status);
        text
    }

    /// Writes a raw spool entry into `new/` (as if a hook had), durably enough for a test.
    pub fn enqueue_raw(&self, name: &str, text: &[u8]) -> PathBuf {
        let new = self.spool().join("new");
        std::fs::create_dir_all(&new).expect("spool/new");
        let tmp = self.spool().join(format!("{name}.tmp-test"));
        let mut f = std::fs::File::create(&tmp).expect("tmp entry");
        f.write_all(text).expect("write entry");
        drop(f);
        let dest = new.join(name);
        std::fs::rename(&tmp, &dest).expect("rename entry");
        dest
    }

    /// Asserts that `nix store verify -r` over HTTP accepts `path`'s whole closure signed by `public_key`,
    /// and that `nix log` over HTTP shows `log_path`'s build log containing `log_line`.
    pub fn verify_over_http(&self, http: &str, public_key: &str, path: &str, log_path: &str, log_line: &str) {
        let verify = self
            .nix
            .command("nix")
            .args(["store", "verify", "--store", http, "--trusted-public-keys", public_key, "-r", path])
            .output()
            .expect("nix store verify");
        assert!(verify.status.success(), "verify: {}", String::from_utf8_lossy(&verify.stderr));
        let log = self.nix.run(self.nix.command("nix").args(["log", "--store", http, log_path])).expect("nix log");
        assert!(log.contains(log_line), "{log}");
    }
}

impl Drop for World {
    /// A server on its embedded PostgreSQL stops it when terminated; one that was killed (a failed test)
    /// leaves it running, so it is killed here by the PID in its data directory.
    fn drop(&mut self) {
        if self.pg.is_some() {
            return;
        }
        let pidfile = self.state().join("postgres").join("data").join("postmaster.pid");
        let Some(pid) =
            std::fs::read_to_string(pidfile).ok().and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
        else {
            return;
        };
        let is_postgres =
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.starts_with(b"/usr/lib/postgresql/"));
        if is_postgres {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
}

/// The HTTP status of a GET of `url` (curl, at most 5 s), or `None` when nothing answered.
pub fn http_status(url: &str) -> Option<u16> {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", url])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|c| *c != 0)
}

/// A running `niks3 serve`.
pub struct Server {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Server {
    /// Starts `cmd` (a `niks3 serve` whose stderr goes to `log`).
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Server {
        let child = cmd.spawn().expect("spawn niks3 serve");
        Server { child: Some(child), log }
    }

    /// Its stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let ok = wait_for(timeout, || self.log_text().contains(needle));
        assert!(ok, "server log never said {needle:?}:\n{}", self.log_text());
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1); a no-op once the server was killed.
    pub fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill").arg(format!("-{signal}")).arg(c.id().to_string()).status();
            assert!(
                status.as_ref().is_ok_and(std::process::ExitStatus::success),
                "kill -{signal} {}: {status:?}",
                c.id()
            );
        }
    }

    /// Sends SIGKILL and reaps.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for a clean exit (asserting exit status 0).
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let start = Instant::now();
            loop {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "niks3 serve exited with {status} after SIGTERM:\n{}", self.log_text());
                    return;
                }
                if start.elapsed() > Duration::from_secs(30) {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("niks3 serve did not stop within 30 s of SIGTERM:\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A small graph: `app` refers to `tree` (a directory with an executable and a symlink) and `hello`; `odd`
/// (names with spaces and unicode, symlinks, an executable, an empty file and directory) and `drained`
/// refer to `hello`.
pub const GRAPH: &str = include_str!("../fixtures/graph.nix");

/// The file in [`GRAPH`]'s `odd` (its `oddFile`) whose content is `snow <salt>\n`.
pub const ODD_FILE: &str = "dir with spaces/ünïcødé ☃/❄ flake.txt";

/// Checks the cache invariant on a local cache directory: every narinfo's NAR exists, and so do the
/// narinfos of all its references. Returns the number of narinfos checked.
pub fn check_local_invariant(cache: &Path) -> usize {
    let mut n = 0;
    for entry in std::fs::read_dir(cache).expect("cache dir").filter_map(Result::ok) {
        let p = entry.path();
        if p.extension().is_none_or(|x| x != "narinfo") {
            continue;
        }
        n += 1;
        let text = std::fs::read_to_string(&p).expect("narinfo");
        let field = |k: &str| text.lines().find_map(|l| l.strip_prefix(k)).map_or("", str::trim);
        let url = field("URL:");
        assert!(cache.join(url).is_file(), "{} points at missing NAR {url}", p.display());
        for r in field("References:").split_whitespace() {
            assert!(cache.join(format!("{}.narinfo", &r[..32])).is_file(), "{} lacks its reference {r}", p.display());
        }
        assert!(text.contains("\nSig: "), "{} is unsigned", p.display());
    }
    if cache.join("realisations").is_dir() {
        check_realisations(cache);
    }
    n
}

/// Every realisation in a local cache points at a narinfo that exists and at realisations that exist.
pub fn check_realisations(cache: &Path) -> usize {
    let dir = cache.join("realisations");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("realisations dir").filter_map(Result::ok) {
        let body = std::fs::read(e.path()).expect("read .doi");
        let r = niks3_nix::realisation::Realisation::from_json(&body).expect("valid .doi");
        assert!(cache.join(format!("{}.narinfo", r.out_path.hash_part())).is_file(), "{} without its narinfo", r.id);
        for dep in r.dependents.keys() {
            assert!(dir.join(format!("{dep}.doi")).is_file(), "{} without its dependent {dep}", r.id);
        }
        n += 1;
    }
    n
}
