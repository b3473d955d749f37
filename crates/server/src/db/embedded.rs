//! The embedded default: a private PostgreSQL cluster in the state directory, created with the system's
//! `initdb` and run with `pg_ctl` on a unix socket inside it (as an unprivileged system user when we run as
//! root, since PostgreSQL refuses root).
//!
//! Layout: `dir/postgres/` (socket, logs) and `dir/postgres/data/` (the cluster). A server already running
//! on that data directory (a leftover of a crashed niks3, or a second niks3 on the same state directory)
//! is adopted rather than fought over; it is then left running when this value is dropped. A server this
//! value started is stopped (`pg_ctl stop -m fast`) on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::Command;

/// Where PostgreSQL server binaries are looked for, besides `$PATH`.
const SEARCH_ROOTS: [&str; 3] = ["/usr/lib/postgresql", "/usr/local/pgsql/bin", "/opt/postgresql"];

/// The longest unix socket path the kernel accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Why the private cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries were found.
    #[error(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in {searched:?}; install the postgresql package or pass --db"
    )]
    NotInstalled {
        /// The directories looked in.
        searched: Vec<PathBuf>,
    },
    /// A command failed; `log` points at its output.
    #[error("{command} failed (see {log:?}): {reason}")]
    Command {
        /// What was run.
        command: String,
        /// Where its output went.
        log: PathBuf,
        /// Exit status and the log's last line, or why it could not run.
        reason: String,
    },
    /// File system error.
    #[error("{path:?}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A directory above the state directory is closed to others, so the server user cannot reach its
    /// data; niks3 does not open up directories that are not its own.
    #[error(
        "the embedded PostgreSQL runs as {user:?} and cannot reach {dir:?}: {blocked:?} is not searchable by others (mode {mode:o}); choose a state directory outside it, or allow others to search it (chmod o+x)"
    )]
    Unreachable {
        /// The server user.
        user: String,
        /// The cluster's directory.
        dir: PathBuf,
        /// The ancestor that blocks the way.
        blocked: PathBuf,
        /// Its mode.
        mode: u32,
    },
    /// The state directory's path is too long for a unix socket inside it.
    #[error("socket path {path:?} is longer than {MAX_SOCKET_PATH} bytes; use a shorter state directory")]
    SocketPathTooLong {
        /// The socket path that would be needed.
        path: PathBuf,
    },
}

/// A running private cluster; stopped (fast mode) on drop if this value started it.
pub struct EmbeddedPostgres {
    dir: PathBuf,
    bin: PathBuf,
    run_as: Option<String>,
    started_here: bool,
}

impl EmbeddedPostgres {
    /// Initialises `dir/postgres` on first use, starts the server (or adopts one already running there)
    /// and creates the `niks3` database.
    pub async fn start(dir: &Path) -> Result<Self, EmbeddedError> {
        let bin = find_bin()?;
        let pg_dir = absolute(&dir.join("postgres"))?;
        let socket = pg_dir.join(".s.PGSQL.5432");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EmbeddedError::SocketPathTooLong { path: socket });
        }
        let run_as = if niks3_local::child_env::is_root() { Some(server_user().await?) } else { None };
        create_private_dir(&pg_dir, run_as.as_deref()).await?;
        let mut pg = EmbeddedPostgres { dir: pg_dir, bin, run_as, started_here: false };
        pg.init_once().await?;
        if pg.running() {
            tracing::info!(dir = %pg.dir.display(), "adopting the PostgreSQL server already running there");
        } else {
            pg.start_server().await?;
            pg.started_here = true;
        }
        pg.create_database().await?;
        Ok(pg)
    }

    /// The connection string for [`crate::db::Db::connect`].
    pub fn url(&self) -> String {
        format!("host={} user=postgres dbname=niks3", self.dir.display())
    }

    /// The server log, for error messages and operators.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// True when this value started the server (and will stop it on drop), false when it adopted one.
    pub fn started_here(&self) -> bool {
        self.started_here
    }

    /// Stops the server now (fast mode: sessions are disconnected, data is flushed), whoever started it.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        self.started_here = false;
        let data = self.dir.join("data");
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(&data).args(["stop", "-m", "fast", "-w", "-t", "60"]);
        run(cmd, "pg_ctl stop", &self.dir.join("pg_ctl.log"), &self.log_path()).await
    }

    /// A command running PostgreSQL program `name` as the server user.
    fn pg_command(&self, name: &str) -> Command {
        let program = self.bin.join(name);
        let mut c = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={user}")).arg(format!("--regid={user}")).arg("--init-groups").arg(program);
                c
            }
            None => Command::new(program),
        };
        niks3_local::child_env::scrub(&mut c);
        c
    }

    /// Runs initdb once: into `data.new`, renamed to `data` only when complete, so an interrupted first
    /// start is simply redone.
    async fn init_once(&self) -> Result<(), EmbeddedError> {
        let data = self.dir.join("data");
        if data.join("PG_VERSION").exists() {
            return Ok(());
        }
        let tmp = self.dir.join("data.new");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|source| EmbeddedError::Io { path: tmp.clone(), source })?;
        }
        let log = self.dir.join("initdb.log");
        let mut cmd = self.pg_command("initdb");
        cmd.arg("-D").arg(&tmp).args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"]);
        run(cmd, "initdb", &log, &log).await?;
        std::fs::rename(&tmp, &data).map_err(|source| EmbeddedError::Io { path: data.clone(), source })?;
        tracing::info!(data = %data.display(), "created the private PostgreSQL cluster");
        Ok(())
    }

    /// True when the postmaster recorded in `postmaster.pid` is alive.
    fn running(&self) -> bool {
        let Ok(text) = std::fs::read_to_string(self.dir.join("data/postmaster.pid")) else {
            return false;
        };
        let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<u32>().ok()) else {
            return false;
        };
        // The pid must be a live postgres process, not a reused pid.
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim().starts_with("postgres"))
            && self.dir.join(".s.PGSQL.5432").exists()
    }

    async fn start_server(&self) -> Result<(), EmbeddedError> {
        let log = self.log_path();
        let opts = format!("-c listen_addresses='' -c unix_socket_directories='{}'", self.dir.display());
        let mut cmd = self.pg_command("pg_ctl");
        cmd.arg("-D").arg(self.dir.join("data")).arg("-l").arg(&log).args(["-w", "-t", "60", "-o", &opts, "start"]);
        run(cmd, "pg_ctl start", &self.dir.join("pg_ctl.log"), &log).await
    }

    /// Creates the `niks3` database unless it exists.
    async fn create_database(&self) -> Result<(), EmbeddedError> {
        let log = self.log_path();
        let fail = |reason: String| EmbeddedError::Command {
            command: "CREATE DATABASE niks3".into(),
            log: log.clone(),
            reason,
        };
        let cfg = format!("host={} user=postgres dbname=postgres", self.dir.display());
        let (client, conn) =
            tokio_postgres::connect(&cfg, tokio_postgres::NoTls).await.map_err(|e| fail(e.to_string()))?;
        let task = tokio::spawn(conn);
        let exists = client
            .query_opt("SELECT 1 FROM pg_database WHERE datname = 'niks3'", &[])
            .await
            .map_err(|e| fail(e.to_string()))?
            .is_some();
        if !exists {
            match client.batch_execute("CREATE DATABASE niks3").await {
                Ok(()) => {}
                // Another process created it at the same moment.
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
                Err(e) => return Err(fail(e.to_string())),
            }
        }
        drop(client);
        let _ = task.await;
        Ok(())
    }
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if !self.started_here {
            return;
        }
        // Drop cannot await; pg_ctl stop is quick and must finish before the process exits.
        let program = self.bin.join("pg_ctl");
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = std::process::Command::new("setpriv");
                c.arg(format!("--reuid={user}")).arg(format!("--regid={user}")).arg("--init-groups").arg(program);
                c
            }
            None => std::process::Command::new(program),
        };
        niks3_local::child_env::scrub_std(&mut cmd);
        let status = cmd
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["stop", "-m", "fast", "-w", "-t", "60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            tracing::warn!(log = %self.log_path().display(), "stopping the private PostgreSQL failed");
        }
    }
}

/// Runs `cmd` with its output appended to `out` (a file only we write); a failure names the command, its
/// status, the last line it printed and `log`, the file to read (the server log for the server itself).
async fn run(mut cmd: Command, what: &str, out: &Path, log: &Path) -> Result<(), EmbeddedError> {
    let io = |source| EmbeddedError::Io { path: out.to_path_buf(), source };
    let stdout = std::fs::OpenOptions::new().create(true).append(true).open(out).map_err(io)?;
    let stderr = stdout.try_clone().map_err(io)?;
    let status = cmd.stdin(Stdio::null()).stdout(stdout).stderr(stderr).status().await.map_err(|e| {
        EmbeddedError::Command { command: what.to_owned(), log: log.to_path_buf(), reason: e.to_string() }
    })?;
    if status.success() {
        Ok(())
    } else {
        let text = std::fs::read_to_string(out).unwrap_or_default();
        let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").to_owned();
        Err(EmbeddedError::Command {
            command: what.to_owned(),
            log: log.to_path_buf(),
            reason: format!("{status}; it said: {last}"),
        })
    }
}

/// Finds a directory holding both `initdb` and `pg_ctl`: the newest `/usr/lib/postgresql/<major>/bin`,
/// then the other usual places, then `$PATH`.
fn find_bin() -> Result<PathBuf, EmbeddedError> {
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("pg_ctl").is_file();
    let mut searched = Vec::new();
    let debian = Path::new(SEARCH_ROOTS[0]);
    let mut majors: Vec<(u32, PathBuf)> = std::fs::read_dir(debian)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| Some((e.file_name().to_str()?.parse::<u32>().ok()?, e.path().join("bin"))))
                .collect()
        })
        .unwrap_or_default();
    majors.sort();
    searched.push(debian.join("*/bin"));
    if let Some((_, b)) = majors.into_iter().rev().find(|(_, b)| has_both(b)) {
        return Ok(b);
    }
    let path_dirs = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    for d in SEARCH_ROOTS[1..].iter().map(PathBuf::from).chain(path_dirs) {
        if has_both(&d) {
            return Ok(d);
        }
        searched.push(d);
    }
    Err(EmbeddedError::NotInstalled { searched })
}

fn absolute(p: &Path) -> Result<PathBuf, EmbeddedError> {
    std::path::absolute(p).map_err(|source| EmbeddedError::Io { path: p.to_path_buf(), source })
}

/// The system user the server runs as when we are root: `postgres` if it exists, else `niks3` (created
/// as a system user without a home or login shell if missing).
async fn server_user() -> Result<String, EmbeddedError> {
    for user in ["postgres", "niks3"] {
        if user_exists(user).await {
            return Ok(user.to_owned());
        }
    }
    let log = PathBuf::from("/dev/null");
    let mut cmd = Command::new("useradd");
    cmd.args(["--system", "--user-group", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", "niks3"]);
    let status = cmd.stdin(Stdio::null()).status().await.map_err(|e| EmbeddedError::Command {
        command: "useradd niks3".into(),
        log: log.clone(),
        reason: e.to_string(),
    })?;
    if !status.success() && !user_exists("niks3").await {
        return Err(EmbeddedError::Command { command: "useradd niks3".into(), log, reason: status.to_string() });
    }
    Ok("niks3".to_owned())
}

async fn user_exists(user: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(user)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success())
}

/// Creates `dir` (mode 0700) owned by the server user (not recursive: initdb runs as that user), and makes
/// the state directory above it searchable; fails clearly when a directory further up is closed.
async fn create_private_dir(dir: &Path, owner: Option<&str>) -> Result<(), EmbeddedError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| EmbeddedError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    if let Some(user) = owner {
        let log = PathBuf::from("/dev/null");
        let status =
            Command::new("chown").arg(format!("{user}:")).arg(dir).status().await.map_err(|e| {
                EmbeddedError::Command { command: "chown".into(), log: log.clone(), reason: e.to_string() }
            })?;
        if !status.success() {
            return Err(EmbeddedError::Command {
                command: format!("chown {user}: {}", dir.display()),
                log,
                reason: status.to_string(),
            });
        }
        // The state directory (the cluster directory's parent) is niks3's own: it is made searchable
        // (0711: others may pass, not list). Anything above it belongs to someone else and is left as it
        // is: opening up, say, /root would expose every file under it (security review, finding 14).
        let mut p = dir.parent();
        let mut own = true;
        while let Some(d) = p {
            let mode = std::fs::metadata(d).map_err(io(d))?.permissions().mode();
            if mode & 0o001 == 0 {
                if !own {
                    return Err(EmbeddedError::Unreachable {
                        user: user.to_owned(),
                        dir: dir.to_owned(),
                        blocked: d.to_owned(),
                        mode: mode & 0o7777,
                    });
                }
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o001)).map_err(io(d))?;
            }
            own = false;
            p = d.parent();
        }
    }
    Ok(())
}
