//! What niks3 passes on to the programs it starts (`nix-daemon --stdio`, `nix-store`, `nix`, PostgreSQL's
//! `pg_ctl`/`initdb`/`postgres`): everything but its own `NIKS3_*` variables.
//!
//! Why: those carry secrets when set in the environment (`NIKS3_API_TOKEN`, `NIKS3_S3_SECRET_KEY`,
//! `NIKS3_DB` with a password), and a child running as another user (the embedded PostgreSQL runs as
//! `postgres`) could read them from its own `/proc/PID/environ` (security review, finding 13). The rest
//! of the environment (PATH, locale, `NIX_*`) is what makes the children work as the user expects.

use std::ffi::OsString;

/// Whether this process runs as root: then the defaults are the system's paths, and the children that
/// refuse root (PostgreSQL's) run as another user. The owner of /proc/self is the effective user (no
/// unsafe libc call needed).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The names of niks3's own variables in this process's environment.
pub(crate) fn own_vars() -> Vec<OsString> {
    std::env::vars_os().map(|(k, _)| k).filter(|k| k.to_string_lossy().starts_with("NIKS3_")).collect()
}

/// Removes niks3's own variables from a tokio command's environment.
pub fn scrub(cmd: &mut tokio::process::Command) -> &mut tokio::process::Command {
    for k in own_vars() {
        cmd.env_remove(k);
    }
    cmd
}

/// Removes niks3's own variables from a std command's environment.
pub fn scrub_std(cmd: &mut std::process::Command) -> &mut std::process::Command {
    for k in own_vars() {
        cmd.env_remove(k);
    }
    cmd
}
