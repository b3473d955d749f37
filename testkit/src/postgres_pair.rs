//! A throwaway PostgreSQL primary with one streaming standby, from the system's server binaries, for
//! failover tests. The primary starts from the same cached template as [`Postgres`](crate::postgres::Postgres)
//! (`wal_level=replica`, `hot_standby=on`, and the template's `pg_hba.conf` already trusts `local
//! replication` connections); the standby is a `pg_basebackup -R` copy of it that streams the primary's WAL
//! through a replication slot. Each server has its own directory (`primary/`, `standby/`) holding its unix
//! socket, data directory and log; no TCP. Both are killed when the [`PostgresPair`] is dropped.
//!
//! Replication is asynchronous, as in most deployments: the primary reports a commit once its own WAL has it,
//! without waiting for the standby. So a crash of the primary ([`PostgresPair::stop_primary`]) followed by
//! [`PostgresPair::promote_standby`] loses every transaction that was committed on the primary but not yet
//! streamed to the standby: a client was told "committed", and after the failover the row is not there.
//! [`PostgresPair::wait_replayed`] closes that window when a test wants a deterministic failover; a test of
//! what the loss does to niks3 leaves it open.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::postgres::{
    as_postgres, chown_to_postgres, createdb, ensure_template, kill_quietly, make_traversable, pg_ctl_start,
    pg_ctl_stop_immediate, run, server_bin,
};

/// Server options on top of the common ones: what streaming replication needs, said explicitly although
/// they are PostgreSQL 15's defaults too.
const REPLICATION_OPTS: &str = "-c wal_level=replica -c max_wal_senders=10 -c max_replication_slots=10 \
                                -c hot_standby=on";

/// How long promotion and catching up may take before the helpers give up.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of the two servers. They keep these names after a failover: the promoted `Standby` is then the
/// primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Server {
    /// The server that starts as the primary.
    Primary,
    /// The server that starts as the streaming standby.
    Standby,
}

impl Server {
    fn name(self) -> &'static str {
        match self {
            Server::Primary => "primary",
            Server::Standby => "standby",
        }
    }
}

/// A running primary and streaming standby with a `niks3` database; both killed on drop. See the module doc.
pub struct PostgresPair {
    dir: tempfile::TempDir,
    bin: PathBuf,
    promoted: bool,
}

impl PostgresPair {
    /// Starts the primary from the cached template, makes the standby with `pg_basebackup -R` (replication
    /// slot `niks3_standby`, WAL streamed during the copy) and starts it; returns once both accept
    /// connections.
    pub fn start() -> io::Result<Self> {
        let bin = server_bin()?;
        let template = ensure_template(&bin)?;
        let dir = tempfile::Builder::new().prefix("niks3-pgpair-").tempdir()?;
        make_traversable(dir.path())?;
        chown_to_postgres(dir.path())?;
        let pair = PostgresPair { dir, bin, promoted: false };
        for s in [Server::Primary, Server::Standby] {
            std::fs::create_dir(pair.socket_dir(s))?;
            std::fs::set_permissions(pair.socket_dir(s), std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            chown_to_postgres(&pair.socket_dir(s))?;
        }
        run(Command::new("cp").arg("-a").arg(&template).arg(pair.data_dir(Server::Primary)), "cp -a template")?;
        pair.start_server(Server::Primary)?;
        run(
            as_postgres(&pair.bin.join("pg_basebackup"))
                .arg("-h")
                .arg(pair.socket_dir(Server::Primary))
                .args(["-U", "postgres", "-D"])
                .arg(pair.data_dir(Server::Standby))
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync", "-C", "-S", "niks3_standby"]),
            "pg_basebackup",
        )
        .map_err(|e| io::Error::other(format!("{e} (primary log: {})", pair.log_path(Server::Primary).display())))?;
        pair.start_server(Server::Standby)?;
        Ok(pair)
    }

    /// The multi-host connection string of the `niks3` database:
    /// `host=<primary socket dir>,<standby socket dir> user=postgres dbname=niks3
    /// target_session_attrs=read-write`. libpq and tokio-postgres try the hosts in order and keep the first
    /// that accepts writes, so it follows a failover.
    pub fn url(&self) -> String {
        self.url_for("niks3")
    }

    /// Like [`PostgresPair::url`], for database `dbname`.
    pub fn url_for(&self, dbname: &str) -> String {
        format!(
            "host={},{} user=postgres dbname={dbname} target_session_attrs=read-write",
            self.socket_dir(Server::Primary).display(),
            self.socket_dir(Server::Standby).display()
        )
    }

    /// The single-host connection string of the `niks3` database on the primary.
    pub fn primary_url(&self) -> String {
        self.server_url(Server::Primary, "niks3")
    }

    /// The single-host connection string of the `niks3` database on the standby (read-only until promoted).
    pub fn standby_url(&self) -> String {
        self.server_url(Server::Standby, "niks3")
    }

    /// The single-host connection string of database `dbname` on `server`.
    pub fn server_url(&self, server: Server, dbname: &str) -> String {
        format!("host={} user=postgres dbname={dbname}", self.socket_dir(server).display())
    }

    /// Creates a new empty database on the primary (the standby replays it) and returns its multi-host
    /// connection string, so tests can share a pair yet never see each other's rows.
    pub fn create_database(&self) -> io::Result<String> {
        let name = createdb(&self.bin, &self.socket_dir(self.writable()))
            .map_err(|e| io::Error::other(format!("{e} (log: {})", self.log_path(self.writable()).display())))?;
        Ok(self.url_for(&name))
    }

    /// The directory holding both servers' directories.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `server`'s directory: its unix socket, `data/` and `postgres.log`.
    pub fn socket_dir(&self, server: Server) -> PathBuf {
        self.dir.path().join(server.name())
    }

    /// `server`'s log, for test failure messages.
    pub fn log_path(&self, server: Server) -> PathBuf {
        self.socket_dir(server).join("postgres.log")
    }

    /// Both logs, for failure messages: `primary: <path>, standby: <path>`.
    pub fn log_paths(&self) -> String {
        format!(
            "primary: {}, standby: {}",
            self.log_path(Server::Primary).display(),
            self.log_path(Server::Standby).display()
        )
    }

    /// Kills the primary at once (`pg_ctl stop -m immediate`: no checkpoint, no final WAL sent), as a crash
    /// would. What it committed but had not streamed yet is on its disk only (see the module doc).
    pub fn stop_primary(&self) -> io::Result<()> {
        pg_ctl_stop_immediate(&self.bin, &self.data_dir(Server::Primary))
    }

    /// Starts the stopped primary again on its data. Only before [`PostgresPair::promote_standby`]: after a
    /// promotion it would be a second primary with a diverged history (split brain), and the multi-host
    /// [`PostgresPair::url`] would pick it, being listed first; so that is refused.
    pub fn restart_primary(&self) -> io::Result<()> {
        if self.promoted {
            return Err(io::Error::other(
                "restart_primary after promote_standby would make a second primary (split brain); refused",
            ));
        }
        self.start_server(Server::Primary)
    }

    /// Promotes the standby (`pg_ctl promote -w`) and waits until it accepts writes (not in recovery,
    /// `transaction_read_only` off, which is what `target_session_attrs=read-write` checks).
    pub fn promote_standby(&mut self) -> io::Result<()> {
        run(
            as_postgres(&self.bin.join("pg_ctl")).arg("-D").arg(self.data_dir(Server::Standby)).args(["promote", "-w"]),
            "pg_ctl promote",
        )
        .map_err(|e| io::Error::other(format!("{e} (standby log: {})", self.log_path(Server::Standby).display())))?;
        self.promoted = true;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let state = self
                .psql(Server::Standby, "SELECT pg_is_in_recovery()::text || current_setting('transaction_read_only')");
            match state {
                Ok(s) if s == "falseoff" => return Ok(()),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                other => {
                    return Err(io::Error::other(format!(
                        "promoted standby does not accept writes within {WAIT_TIMEOUT:?} (last: {other:?}); \
                         standby log: {}",
                        self.log_path(Server::Standby).display()
                    )));
                }
            }
        }
    }

    /// Waits until the standby has replayed all WAL the primary has written up to now
    /// (`pg_last_wal_replay_lsn() >= ` the primary's `pg_current_wal_lsn()`): every transaction committed
    /// before the call is then visible on the standby, and would survive a failover.
    pub fn wait_replayed(&self) -> io::Result<()> {
        let lsn = self.psql(Server::Primary, "SELECT pg_current_wal_lsn()")?;
        let check = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
        let deadline = Instant::now() + WAIT_TIMEOUT;
        loop {
            let caught_up = self.psql(Server::Standby, &check);
            match caught_up {
                Ok(s) if s == "t" => return Ok(()),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                other => {
                    return Err(io::Error::other(format!(
                        "standby did not replay up to {lsn} within {WAIT_TIMEOUT:?} (last: {other:?}); {}",
                        self.log_paths()
                    )));
                }
            }
        }
    }

    /// Stops the standby from receiving WAL (its `primary_conninfo` emptied, the configuration reloaded),
    /// as a standby that fell behind: from now on, what the primary commits is on the primary only, and a
    /// failover ([`PostgresPair::stop_primary`], [`PostgresPair::promote_standby`]) loses all of it. Makes
    /// asynchronous replication's window as wide as a test needs, instead of hoping to hit it.
    pub fn pause_streaming(&self) -> io::Result<()> {
        self.wait_replayed()?;
        self.psql(Server::Standby, "ALTER SYSTEM SET primary_conninfo = ''")?;
        self.psql(Server::Standby, "SELECT pg_reload_conf()")?;
        let deadline = Instant::now() + WAIT_TIMEOUT;
        while self.psql(Server::Standby, "SELECT count(*) FROM pg_stat_wal_receiver")? != "0" {
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "the standby's WAL receiver did not stop within {WAIT_TIMEOUT:?}; {}",
                    self.log_paths()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Runs one SQL command with `psql` in database `niks3` on `server`; returns its unaligned, tuples-only
    /// output, trimmed (e.g. `t`, or rows joined by newlines with `|` between columns).
    pub fn psql(&self, server: Server, sql: &str) -> io::Result<String> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir(server))
            .args(["-U", "postgres", "-d", "niks3", "-c", sql])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("run psql: {e}")))?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "psql on the {} failed ({}): {} (log: {})",
                server.name(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_path(server).display()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// The server that takes writes: the standby once promoted, else the primary.
    fn writable(&self) -> Server {
        if self.promoted { Server::Standby } else { Server::Primary }
    }

    fn data_dir(&self, server: Server) -> PathBuf {
        self.socket_dir(server).join("data")
    }

    fn start_server(&self, server: Server) -> io::Result<()> {
        pg_ctl_start(
            &self.bin,
            &self.data_dir(server),
            &self.socket_dir(server),
            &self.log_path(server),
            REPLICATION_OPTS,
        )
    }
}

impl Drop for PostgresPair {
    /// Kills both servers; removes the directory unless the thread is panicking (a failed test), so that the
    /// logs its message names are still there.
    fn drop(&mut self) {
        kill_quietly(&self.bin, &self.data_dir(Server::Standby));
        kill_quietly(&self.bin, &self.data_dir(Server::Primary));
        if std::thread::panicking() {
            self.dir.disable_cleanup(true);
            eprintln!("postgres pair directory kept for its logs: {}", self.dir.path().display());
        }
    }
}
