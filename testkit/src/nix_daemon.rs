//! A real `nix-daemon` for one test (multi-user Nix): [`crate::nix::NixEnv::start_daemon`] starts it on the
//! test's own socket (`NIX_DAEMON_SOCKET_PATH`, honoured by Nix 2.8 and 2.26 alike), and its clients reach
//! it with `NIX_REMOTE=daemon` and the same `NIX_DAEMON_SOCKET_PATH`.
//!
//! The daemon runs builds, and with them the `post-build-hook`, in its own environment and with its own
//! `nix.conf`; that is the point of testing with one. It is killed with the worker processes it forked (its
//! whole process group) when the [`NixDaemon`] is dropped.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a daemon may take to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `nix-daemon`; killed on drop.
pub struct NixDaemon {
    child: Child,
    log: PathBuf,
}

impl NixDaemon {
    /// Spawns `cmd` (a `nix-daemon` command with its configuration in its environment) in a process group of
    /// its own, its output going to `log`, and waits until `socket` (as this process sees it) exists.
    pub(crate) fn spawn(mut cmd: Command, socket: &Path, log: &Path) -> io::Result<NixDaemon> {
        let out =
            std::fs::File::create(log).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", log.display())))?;
        cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out).process_group(0);
        let child = cmd.spawn().map_err(|e| io::Error::new(e.kind(), format!("spawning nix-daemon: {e}")))?;
        let mut daemon = NixDaemon { child, log: log.to_path_buf() };
        let start = Instant::now();
        while !socket.exists() {
            if let Some(status) = daemon.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "nix-daemon exited ({status}) before listening:\n{}",
                    daemon.log_text()
                )));
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(io::Error::other(format!(
                    "nix-daemon made no socket {} within {START_TIMEOUT:?}:\n{}",
                    socket.display(),
                    daemon.log_text()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(daemon)
    }

    /// What the daemon printed so far (it logs each connection), for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for NixDaemon {
    fn drop(&mut self) {
        // The whole group: the daemon and the per-connection workers it forked.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
