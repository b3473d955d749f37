//! A throwaway PostgreSQL cluster from the system's server binaries: a unix socket in a temporary
//! directory (no TCP port to collide on), run as the `postgres` system user when we are root (initdb and
//! postgres refuse root), fsync off. `synchronous_commit` stays on: a committed transaction must survive
//! [`Postgres::stop`] (an immediate shutdown), or outage tests would see commits vanish.
//!
//! Starting is fast because `initdb` (about a second) runs once per machine into a cached template data
//! directory; every cluster starts from a copy of it (about 0.3 s in all). The cluster is killed
//! (`pg_ctl stop -m immediate`) when the [`Postgres`] value is dropped.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counts databases made by [`Postgres::create_database`] so names never repeat within a process.
static NEXT_DB: AtomicU64 = AtomicU64::new(0);

/// A running throwaway cluster with a `niks3` database; killed on drop.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Postgres {
    /// Starts a fresh cluster (from the cached template; the first call on a machine runs `initdb`).
    pub fn start() -> io::Result<Self> {
        let bin = server_bin()?;
        let template = ensure_template(&bin)?;
        let dir = tempfile::Builder::new().prefix("niks3-pg-").tempdir()?;
        make_traversable(dir.path())?;
        chown_to_postgres(dir.path())?;
        let data = dir.path().join("data");
        run(Command::new("cp").arg("-a").arg(&template).arg(&data), "cp -a template")?;
        let pg = Postgres { dir, bin };
        pg.restart()?;
        Ok(pg)
    }

    /// The connection string of the `niks3` database (`host=<socket dir> user=postgres dbname=niks3`).
    pub fn url(&self) -> String {
        self.url_for("niks3")
    }

    /// The connection string of database `dbname` in this cluster.
    pub fn url_for(&self, dbname: &str) -> String {
        format!("host={} user=postgres dbname={dbname}", self.dir.path().display())
    }

    /// The directory holding the socket, the data directory and the server log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server log, for test failure messages.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    /// Creates a new empty database in this cluster and returns its connection string, so tests can share
    /// one cluster yet never see each other's rows.
    pub fn create_database(&self) -> io::Result<String> {
        let name = createdb(&self.bin, self.dir.path())?;
        Ok(self.url_for(&name))
    }

    /// Kills the server at once (`-m immediate`), as a crash or outage would; [`Postgres::restart`] brings
    /// it back with its data.
    pub fn stop(&self) -> io::Result<()> {
        pg_ctl_stop_immediate(&self.bin, &self.dir.path().join("data"))
    }

    /// Starts the server again on the same data and socket (after [`Postgres::stop`]).
    pub fn restart(&self) -> io::Result<()> {
        pg_ctl_start(&self.bin, &self.dir.path().join("data"), self.dir.path(), &self.log_path(), "")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        kill_quietly(&self.bin, &self.dir.path().join("data"));
    }
}

/// Creates a database with a name unique in this process (`t<pid>_<n>`) on the server whose socket is in
/// `socket_dir`; returns the name.
pub(crate) fn createdb(bin: &Path, socket_dir: &Path) -> io::Result<String> {
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{}_{n}", std::process::id());
    run(as_postgres(&bin.join("createdb")).arg("-h").arg(socket_dir).args(["-U", "postgres", &name]), "createdb")?;
    Ok(name)
}

/// Starts the server on `data` with its socket in `socket_dir` (no TCP), fsync off, and `extra` server
/// options (`-c name=value …`); waits until it accepts connections. The error names `log`.
pub(crate) fn pg_ctl_start(bin: &Path, data: &Path, socket_dir: &Path, log: &Path, extra: &str) -> io::Result<()> {
    let opts = format!(
        "-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off -c full_page_writes=off \
         -c max_connections=200 {extra}",
        socket_dir.display()
    );
    run(
        as_postgres(&bin.join("pg_ctl")).arg("-D").arg(data).arg("-l").arg(log).args(["-w", "-o", &opts, "start"]),
        "pg_ctl start",
    )
    .map_err(|e| io::Error::other(format!("{e} (server log: {})", log.display())))
}

/// Stops the server on `data` at once (`-m immediate`: no checkpoint, like a crash) and waits until it is gone.
pub(crate) fn pg_ctl_stop_immediate(bin: &Path, data: &Path) -> io::Result<()> {
    run(as_postgres(&bin.join("pg_ctl")).arg("-D").arg(data).args(["stop", "-m", "immediate", "-w"]), "pg_ctl stop")
}

/// For `Drop`: stops the server on `data` at once if it runs, ignoring every error.
pub(crate) fn kill_quietly(bin: &Path, data: &Path) {
    let _ = as_postgres(&bin.join("pg_ctl"))
        .arg("-D")
        .arg(data)
        .args(["stop", "-m", "immediate"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The newest `/usr/lib/postgresql/<major>/bin` that has `initdb`.
pub fn server_bin() -> io::Result<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| io::Error::new(e.kind(), format!("/usr/lib/postgresql: {e} (install postgresql)")))?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let major = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b).ok_or_else(|| io::Error::other("no /usr/lib/postgresql/*/bin/initdb"))
}

/// True when this process runs as root (then PostgreSQL must run as the `postgres` user).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A command running `program` as the `postgres` user when we are root, as ourselves otherwise.
pub(crate) fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// Runs a command to completion; its output goes into the error when it fails.
pub(crate) fn run(cmd: &mut Command, what: &str) -> io::Result<()> {
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Gives `path` to the `postgres` user when we are root (it must own its data and socket directory).
pub(crate) fn chown_to_postgres(path: &Path) -> io::Result<()> {
    if is_root() {
        run(Command::new("chown").arg("postgres:").arg(path), "chown postgres")?;
    }
    Ok(())
}

/// Makes `path` private to its owner and every parent traversable, so the server user can reach it.
pub(crate) fn make_traversable(path: &Path) -> io::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))?;
    let mut p = path.parent();
    while let Some(dir) = p {
        let meta = std::fs::metadata(dir)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 && is_root() {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | 0o001))?;
        }
        p = dir.parent();
    }
    Ok(())
}

/// The cached template data directory for the server in `bin` (initdb + a `niks3` database, cleanly shut
/// down), created once per machine. Concurrent test processes each build their own and the first rename
/// wins, so nobody ever copies a half-made template.
pub(crate) fn ensure_template(bin: &Path) -> io::Result<PathBuf> {
    let major = bin.parent().and_then(Path::file_name).and_then(|s| s.to_str()).unwrap_or("pg");
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    let base = std::env::temp_dir().join(format!("niks3-testkit-pg{major}-u{uid}"));
    let template = base.join("template");
    if template.join("PG_VERSION").exists() {
        return Ok(template);
    }
    std::fs::create_dir_all(&base)?;
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))?;
    let work = tempfile::Builder::new().prefix("build-").tempdir_in(&base)?;
    make_traversable(work.path())?;
    chown_to_postgres(work.path())?;
    let data = work.path().join("data");
    run(
        as_postgres(&bin.join("initdb")).arg("-D").arg(&data).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]),
        "initdb",
    )?;
    let opts = format!("-c listen_addresses='' -c unix_socket_directories='{}' -c fsync=off", work.path().display());
    let log = work.path().join("postgres.log");
    run(
        as_postgres(&bin.join("pg_ctl")).arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-o", &opts, "start"]),
        "pg_ctl start (template)",
    )?;
    let created = run(
        as_postgres(&bin.join("createdb")).arg("-h").arg(work.path()).args(["-U", "postgres", "niks3"]),
        "createdb niks3 (template)",
    );
    run(as_postgres(&bin.join("pg_ctl")).arg("-D").arg(&data).args(["stop", "-m", "fast", "-w"]), "pg_ctl stop")?;
    created?;
    match std::fs::rename(&data, &template) {
        Ok(()) => Ok(template),
        // Another process won the race: use its template.
        Err(_) if template.join("PG_VERSION").exists() => Ok(template),
        Err(e) => Err(io::Error::new(e.kind(), format!("rename {} -> {}: {e}", data.display(), template.display()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_stops_restarts_and_makes_databases() {
        let t = std::time::Instant::now();
        let pg = Postgres::start().expect("start cluster");
        eprintln!("started in {:?}", t.elapsed());
        assert!(pg.dir().join(".s.PGSQL.5432").exists(), "socket present");
        let url = pg.create_database().expect("createdb");
        assert!(url.contains("dbname=t"), "{url}");
        pg.stop().expect("stop");
        assert!(!pg.dir().join(".s.PGSQL.5432").exists(), "socket gone after stop");
        pg.restart().expect("restart");
        assert!(pg.dir().join(".s.PGSQL.5432").exists(), "socket back");
    }
}
