//! What the local Nix store knows about its paths (NarHash, NarSize, references, deriver, CA), read
//! through the nix-daemon worker protocol ([`crate::daemon`]) so that it works with every Nix version
//! from 2.3 to the newest and Lix; build logs from Nix's log files ([`crate::build_log`]), or
//! `nix-store --read-log` where those are out of sight; realisations through the `nix` command line (a
//! realisation's id needs the derivation's hash modulo, which only Nix computes).
//!
//! Errors are split by whose fault they are ([`PathInfoError::is_environment`]): a path that is not
//! valid is the entry's problem; anything else (Nix missing, the daemon refusing the connection, an answer
//! we cannot read) is niks3's environment, and the entry must wait for it to be fixed, never be
//! quarantined for it.

use crate::build_log::LogDir;
use crate::daemon::{Connection, DaemonError, RawPathInfo};
use niks3_nix::hash::Sha256Hash;
use niks3_nix::pathinfo::{OrderError, PathInfo, topo_sort};
use niks3_nix::store_path::{StoreDir, StorePath};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Why the local store could not be queried.
#[derive(Debug, thiserror::Error)]
pub enum PathInfoError {
    /// A `nix` command could not be started.
    #[error("running {program}: {source}")]
    Spawn {
        /// The command that was run.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A `nix` command failed; `stderr` is what it said.
    #[error("{program} failed for {paths:?}: {stderr}")]
    Failed {
        /// The command that was run.
        program: String,
        /// The paths it was asked about.
        paths: Vec<String>,
        /// What it printed on stderr (truncated).
        stderr: String,
    },
    /// Nix answered something we could not understand.
    #[error("unexpected answer from {program}: {reason}")]
    Parse {
        /// The command or protocol operation.
        program: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The store has no such path (never built here, or deleted by a GC since).
    #[error("{path} is not valid in the local Nix store")]
    NotValid {
        /// The path (full).
        path: String,
    },
    /// Talking to the Nix daemon failed.
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    /// A build log file exists but could not be read.
    #[error("reading the build log {}: {source}", .path.display())]
    ReadLog {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A blocking task (reading a log file) died before answering.
    #[error("{during}: {reason}")]
    Blocking {
        /// What it was doing.
        during: &'static str,
        /// The panic or cancellation.
        reason: String,
    },
    /// The store's references have no dependency order (a path outside the closure, or a cycle).
    #[error("the store's references: {0}")]
    Order(#[from] OrderError),
    /// The daemon did not answer in time (it was replaced by a fresh connection).
    #[error("the Nix daemon did not answer {during} within {}s", .after.as_secs())]
    TimedOut {
        /// The request.
        during: &'static str,
        /// How long we waited.
        after: Duration,
    },
}

impl PathInfoError {
    /// True when the store could not be read (Nix missing or broken, daemon down, an answer in an unknown
    /// format): retrying once the environment is fixed will succeed. False only when Nix said a path is
    /// not valid, which no retry changes.
    pub fn is_environment(&self) -> bool {
        !matches!(self, PathInfoError::NotValid { .. })
    }
}

/// The local Nix store: one worker-protocol connection (to a child `nix-daemon --stdio`, opened on first
/// use and again after it broke) shared by every clone, and the `nix` commands for logs and realisations.
#[derive(Clone, Debug)]
pub struct LocalNix {
    /// Directory containing `nix`, `nix-store` and `nix-daemon`; `None` means `$PATH`.
    pub bin_dir: Option<PathBuf>,
    /// Longest build log uploaded; a longer one is cut there with a note (a build controls its log's
    /// size, and Nix's `max-build-log-size` is unlimited by default).
    pub max_log_bytes: u64,
    conn: Arc<tokio::sync::Mutex<Option<Connection>>>,
    /// Set once `nix` refused `<drv>^*` (Nix < 2.13): see [`LocalNix::realisations`].
    pub(crate) old_installable_syntax: Arc<std::sync::atomic::AtomicBool>,
    /// Nix's log directory when given to [`LocalNix::with_log_dir`]; `None`: the one Nix computes from
    /// the environment ([`LogDir::locate`]).
    log_dir: Option<PathBuf>,
    /// Where build logs come from, decided on the first [`LocalNix::build_log`].
    logs: Arc<OnceLock<LogSource>>,
}

/// Where [`LocalNix::build_log`] finds logs.
#[derive(Debug)]
enum LogSource {
    /// Nix's log files, read here.
    Files(LogDir),
    /// `nix-store --read-log`, because the files are out of sight.
    Command,
}

impl LogSource {
    /// Blocking (it lists the directory); logs the outcome once at INFO when it is the command.
    fn decide(log_dir: Option<PathBuf>) -> LogSource {
        let env = |k| std::env::var_os(k);
        let located = match log_dir {
            Some(d) => Ok(d),
            None => LogDir::locate(env("NIX_LOG_DIR").as_deref(), env("NIX_REMOTE").as_deref()),
        };
        match located.and_then(|d| LogDir::open(&d)) {
            Ok(dir) => {
                tracing::debug!(?dir, "build logs read from Nix's log directory");
                LogSource::Files(dir)
            }
            Err(why) => {
                tracing::info!(reason = %why, "build logs will be read with nix-store --read-log, one process each");
                LogSource::Command
            }
        }
    }
}

/// Default of [`LocalNix::max_log_bytes`]: far above any useful log, far below memory trouble.
pub(crate) const MAX_LOG_BYTES: u64 = 64 << 20;

impl Default for LocalNix {
    fn default() -> Self {
        LocalNix {
            bin_dir: None,
            max_log_bytes: MAX_LOG_BYTES,
            conn: Arc::default(),
            old_installable_syntax: Arc::default(),
            log_dir: None,
            logs: Arc::default(),
        }
    }
}

/// Longest a single protocol call may take (a 10 000-path closure takes well under a second).
const CALL_TIMEOUT: Duration = Duration::from_mins(2);

impl LocalNix {
    /// Nix from `bin_dir` (`None`: from `$PATH`).
    pub fn new(bin_dir: Option<PathBuf>) -> Self {
        LocalNix { bin_dir, ..LocalNix::default() }
    }

    /// Build logs from the Nix log directory `dir` (the one holding `drvs/`) instead of the one Nix
    /// computes from the environment; `nix-store --read-log` still when `dir/drvs` cannot be listed.
    #[must_use]
    pub fn with_log_dir(self, dir: PathBuf) -> Self {
        LocalNix { log_dir: Some(dir), logs: Arc::default(), ..self }
    }

    /// The Nix the daemon connection reports (`Nix 2.26.3 (protocol 1.35)`), opening it if needed.
    pub async fn version(&self) -> Result<String, PathInfoError> {
        self.with_connection("the handshake", |c| Box::pin(async move { Ok(c.version()) })).await
    }

    /// Runs `f` on the connection (opened if there is none); a connection that failed or timed out is
    /// dropped (killing its child) so that the next call starts afresh.
    async fn with_connection<T>(
        &self,
        during: &'static str,
        f: impl for<'c> FnOnce(
            &'c mut Connection,
        ) -> std::pin::Pin<Box<dyn Future<Output = Result<T, DaemonError>> + Send + 'c>>,
    ) -> Result<T, PathInfoError> {
        let mut guard = self.conn.lock().await;
        let mut conn = match guard.take() {
            Some(conn) => conn,
            None => match tokio::time::timeout(CALL_TIMEOUT, Connection::open(&self.program("nix-daemon"))).await {
                Ok(Ok(conn)) => {
                    tracing::debug!(connection = ?conn, "connected to the Nix store");
                    conn
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => return Err(PathInfoError::TimedOut { during: "the handshake", after: CALL_TIMEOUT }),
            },
        };
        // The connection goes back only when it is known to be in step: after an answer, or after the
        // daemon refused one request (it goes on with the next). Anything else drops it, killing the child.
        match tokio::time::timeout(CALL_TIMEOUT, f(&mut conn)).await {
            Ok(Ok(v)) => {
                *guard = Some(conn);
                Ok(v)
            }
            Ok(Err(e)) => {
                if matches!(e, DaemonError::Remote { .. }) {
                    *guard = Some(conn);
                }
                Err(e.into())
            }
            Err(_) => Err(PathInfoError::TimedOut { during, after: CALL_TIMEOUT }),
        }
    }

    /// The metadata of `paths` (in input order), in one pipelined burst; [`PathInfoError::NotValid`] names
    /// the first path the store does not have.
    pub async fn path_infos(&self, store_dir: &StoreDir, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let asked: Vec<String> = paths.iter().map(|p| store_dir.display(p)).collect();
        let answers = {
            let asked = asked.clone();
            self.with_connection("QueryPathInfo", move |c| Box::pin(async move { c.query_path_infos(&asked).await }))
                .await?
        };
        paths
            .iter()
            .zip(asked)
            .zip(answers)
            .map(|((path, full), answer)| match answer {
                Some(raw) => path_info(store_dir, path.clone(), raw),
                None => Err(PathInfoError::NotValid { path: full }),
            })
            .collect()
    }

    /// The closures of `paths` (every path reachable through references, each once), in dependency
    /// order: a path comes after all of its references. Asked level by level (all of a level's paths in
    /// one pipelined burst), so a closure of N paths costs N small answers and one round trip per level.
    pub async fn closure(&self, store_dir: &StoreDir, paths: &[StorePath]) -> Result<Vec<PathInfo>, PathInfoError> {
        let mut merged: HashMap<StorePath, PathInfo> = HashMap::with_capacity(paths.len());
        let mut frontier: Vec<StorePath> = paths.to_vec();
        frontier.sort();
        frontier.dedup();
        while !frontier.is_empty() {
            let mut next = Vec::new();
            for info in self.path_infos(store_dir, &frontier).await? {
                next.extend(info.references.iter().filter(|r| !merged.contains_key(*r) && **r != info.path).cloned());
                merged.insert(info.path.clone(), info);
            }
            next.sort();
            next.dedup();
            next.retain(|p| !merged.contains_key(p));
            frontier = next;
        }
        Ok(topo_sort(merged.into_values().collect())?)
    }

    /// The outputs of a derivation that have a path in the store's records (used when the hook got no
    /// OUT_PATHS); a floating content-addressed output never built here has none.
    pub async fn derivation_outputs(
        &self,
        store_dir: &StoreDir,
        drv: &StorePath,
    ) -> Result<Vec<StorePath>, PathInfoError> {
        let full = store_dir.display(drv);
        if !self.is_valid(store_dir, drv).await? {
            return Err(PathInfoError::NotValid { path: full });
        }
        let map = self
            .with_connection("QueryDerivationOutputMap", move |c| {
                Box::pin(async move { c.derivation_output_map(&full).await })
            })
            .await?;
        map.into_iter()
            .filter_map(|(_, p)| p)
            .map(|p| store_dir.parse_path(&p).map_err(|e| parse_err("QueryDerivationOutputMap", &e.to_string())))
            .collect()
    }

    /// True when `path` is valid in the local store.
    pub async fn is_valid(&self, store_dir: &StoreDir, path: &StorePath) -> Result<bool, PathInfoError> {
        let asked = vec![store_dir.display(path)];
        let valid = self
            .with_connection("QueryValidPaths", move |c| Box::pin(async move { c.query_valid_paths(&asked).await }))
            .await?;
        Ok(!valid.is_empty())
    }

    /// The build log of `drv`, or `None` when Nix has none: read from Nix's log files when they are in
    /// sight (decided on the first call, for every clone), else with `nix-store --read-log`. At most
    /// [`LocalNix::max_log_bytes`] are read (then a line says the log was cut), so a build that printed
    /// gigabytes costs no more memory than that.
    pub async fn build_log(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Option<Vec<u8>>, PathInfoError> {
        // Nix looks a non-derivation's deriver up first; the command does that.
        if drv.is_derivation() {
            let (logs, log_dir, basename, max) =
                (Arc::clone(&self.logs), self.log_dir.clone(), drv.basename(), self.max_log_bytes);
            let read = tokio::task::spawn_blocking(move || match logs.get_or_init(|| LogSource::decide(log_dir)) {
                LogSource::Files(dir) => Some(dir.read(&basename, max)),
                LogSource::Command => None,
            })
            .await
            .map_err(|e| PathInfoError::Blocking { during: "reading a build log", reason: e.to_string() })?;
            if let Some(read) = read {
                return read;
            }
        }
        self.read_log_command(store_dir, drv).await
    }

    /// `nix-store --read-log`; the child is stopped once it printed more than
    /// [`LocalNix::max_log_bytes`].
    async fn read_log_command(&self, store_dir: &StoreDir, drv: &StorePath) -> Result<Option<Vec<u8>>, PathInfoError> {
        use tokio::io::AsyncReadExt as _;
        const P: &str = "nix-store --read-log";
        let args = vec![store_dir.display(drv)];
        let mut cmd = self.command("nix-store");
        cmd.args(["--read-log", "--"]).args(&args);
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| PathInfoError::Spawn { program: P.to_owned(), source })?;
        let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(parse_err(P, "child pipes missing"));
        };
        let mut log = Vec::new();
        let read = stdout.take(self.max_log_bytes.saturating_add(1)).read_to_end(&mut log).await;
        if log.len() as u64 > self.max_log_bytes {
            let _ = child.kill().await;
            return Ok(Some(crate::build_log::cut_at(log, self.max_log_bytes)));
        }
        read.map_err(|source| PathInfoError::Spawn { program: P.to_owned(), source })?;
        let mut err = Vec::new();
        let _ = (&mut stderr).take(MAX_STDERR as u64).read_to_end(&mut err).await;
        let status = child.wait().await.map_err(|source| PathInfoError::Spawn { program: P.to_owned(), source })?;
        if status.success() {
            return Ok(Some(log));
        }
        let stderr = String::from_utf8_lossy(&err).trim().to_owned();
        // Nix 2.8 and 2.26: "error: build log of derivation '…' is not available"
        if stderr.contains("is not available") {
            return Ok(None);
        }
        Err(PathInfoError::Failed { program: P.to_owned(), paths: args, stderr })
    }

    fn program(&self, program: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(program),
            None => PathBuf::from(program),
        }
    }

    /// A command for a Nix program, without niks3's own secrets (`NIKS3_*`) in its environment.
    pub(crate) fn command(&self, program: &str) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(self.program(program));
        cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
        crate::child_env::scrub(&mut cmd);
        cmd
    }
}

/// A [`PathInfo`] from the daemon's answer for `path`.
fn path_info(store_dir: &StoreDir, path: StorePath, raw: RawPathInfo) -> Result<PathInfo, PathInfoError> {
    const P: &str = "QueryPathInfo";
    let nar_hash = parse_nar_hash(&raw.nar_hash).map_err(|e| parse_err(P, &e))?;
    let mut references = raw
        .references
        .iter()
        .map(|x| store_dir.parse_path(x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| parse_err(P, &e.to_string()))?;
    references.sort();
    references.dedup();
    let deriver = match raw.deriver {
        Some(d) => Some(store_dir.parse_path(&d).map_err(|e| parse_err(P, &e.to_string()))?),
        None => None,
    };
    Ok(PathInfo { path, nar_hash, nar_size: raw.nar_size, references, deriver, ca: raw.ca })
}

/// The daemon sends base16 without the algorithm prefix; any form Nix prints (`sha256:…`, SRI) is
/// accepted too.
fn parse_nar_hash(s: &str) -> Result<Sha256Hash, String> {
    let prefixed = if s.contains([':', '-']) { s.to_owned() } else { format!("sha256:{s}") };
    Sha256Hash::parse(&prefixed).map_err(|e| format!("NarHash {s:?}: {e}"))
}

/// Longest stderr kept in an error (Nix can be chatty; the first lines say what went wrong).
const MAX_STDERR: usize = 4096;

pub(crate) async fn run(
    mut cmd: tokio::process::Command,
    program: &str,
    paths: &[String],
) -> Result<Vec<u8>, PathInfoError> {
    let out = cmd.output().await.map_err(|source| PathInfoError::Spawn { program: program.to_owned(), source })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if stderr.len() > MAX_STDERR {
            let mut cut = MAX_STDERR;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
            stderr.push_str(" …");
        }
        if stderr.is_empty() {
            stderr = out.status.to_string();
        }
        return Err(PathInfoError::Failed { program: program.to_owned(), paths: paths.to_vec(), stderr });
    }
    Ok(out.stdout)
}

fn parse_err(program: &str, reason: &str) -> PathInfoError {
    PathInfoError::Parse { program: program.to_owned(), reason: reason.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nar_hashes_are_read_in_every_form_nix_sends() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let h = parse_nar_hash(hex).expect("base16, as the daemon sends it");
        assert_eq!(h, Sha256Hash::digest(b""));
        assert_eq!(parse_nar_hash(&h.to_nix_string()).expect("sha256:nix32"), h);
        assert_eq!(parse_nar_hash(&h.to_sri()).expect("SRI"), h);
        assert!(parse_nar_hash("e3b0").is_err());
        assert!(parse_nar_hash(&hex.replace('e', "g")).is_err());
    }
}
