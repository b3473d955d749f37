//! The embedded default: a private PostgreSQL cluster in the state directory, created with the system's
//! `initdb` and run with `pg_ctl` on a unix socket inside it (as an unprivileged system user when we run as
//! root, since PostgreSQL refuses root).

use std::path::{Path, PathBuf};

/// Why the private cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// No PostgreSQL server binaries were found.
    #[error("PostgreSQL server binaries (initdb, pg_ctl) not found in {searched:?}; install the postgresql package or pass --db")]
    NotInstalled { searched: Vec<PathBuf> },
    /// A command failed; `log` points at its output.
    #[error("{command} failed (see {log:?}): {reason}")]
    Command { command: String, log: PathBuf, reason: String },
    /// File system error.
    #[error("{path:?}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// A running private cluster; stopped (fast mode) on drop.
pub struct EmbeddedPostgres {
    dir: PathBuf,
}

impl EmbeddedPostgres {
    /// Initialises `dir/postgres` on first use, starts the server (or adopts one already running there)
    /// and creates the `niks3` database.
    pub async fn start(dir: &Path) -> Result<Self, EmbeddedError> {
        todo!("{dir:?}")
    }
    /// The connection string for [`crate::db::Db::connect`].
    pub fn url(&self) -> String {
        todo!("{:?}", self.dir)
    }
}
