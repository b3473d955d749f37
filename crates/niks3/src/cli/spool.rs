//! `niks3 spool list|requeue`: look at the local spool and put quarantined entries back in the queue.
//!
//! Why requeue exists: entries are quarantined when they are garbage, but an operator may know better
//! (a path restored, or entries quarantined by an older niks3 that blamed them for an unreadable Nix
//! store). `requeue` moves them back to `new/`, where the running drainer picks them up at once; it is
//! safe to run while `niks3 serve` or `niks3 drain` runs (a rename within the spool, as the hook does).

use anyhow::Context as _;
use niks3_spool::Spool;
use std::ffi::OsString;
use std::path::PathBuf;

/// `niks3 spool` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Show the entries waiting, in flight and quarantined (with the reason of each quarantined one).
    List(Dir),
    /// Move quarantined entries back into the queue (all, or the ones named).
    Requeue {
        #[command(flatten)]
        dir: Dir,
        /// Names of entries in `quarantine/` (as `niks3 spool list` prints them); none means all.
        names: Vec<OsString>,
    },
}

/// Which spool.
#[derive(clap::Args, Debug)]
pub struct Dir {
    /// The spool the post-build hook fills.
    #[arg(long, env = "NIKS3_SPOOL_DIR", default_value = "/var/lib/niks3/spool")]
    pub spool_dir: PathBuf,
}

/// Runs `niks3 spool …`.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::List(dir) => list(&dir.spool_dir),
        Command::Requeue { dir, names } => {
            let spool = open(&dir.spool_dir)?;
            let moved = spool.requeue(&names).context("requeueing quarantined entries")?;
            for p in &moved {
                println!("requeued {}", p.display());
            }
            println!("{} entr{} back in the queue", moved.len(), if moved.len() == 1 { "y" } else { "ies" });
            Ok(())
        }
    }
}

fn open(dir: &std::path::Path) -> anyhow::Result<Spool> {
    Spool::open_existing(dir).with_context(|| format!("opening the spool {}", dir.display()))
}

fn list(dir: &std::path::Path) -> anyhow::Result<()> {
    let spool = open(dir)?;
    for (state, sub) in [("queued", "new"), ("claimed", "claimed"), ("quarantined", "quarantine")] {
        let path = spool.dir().join(sub);
        let mut names: Vec<OsString> = match std::fs::read_dir(&path) {
            Ok(rd) => rd.filter_map(Result::ok).map(|e| e.file_name()).collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("listing {}", path.display())),
        };
        names.retain(|n| !n.to_string_lossy().ends_with(".reason"));
        names.sort();
        println!("{state}: {}", names.len());
        for n in names {
            let reason = std::fs::read_to_string(path.join(format!("{}.reason", n.to_string_lossy())))
                .map(|r| format!("  ({})", r.trim()))
                .unwrap_or_default();
            println!("  {}{reason}", n.to_string_lossy());
        }
    }
    Ok(())
}
