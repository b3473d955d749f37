//! The command line: one file per subcommand, each with its own clap `Args` and a `run`.

pub mod audit;
pub mod credentials;
pub mod drain;
pub mod gc;
pub mod key;
pub mod pin;
pub mod push;
pub mod serve;
pub mod spool;
pub mod token;

use clap::{Parser, Subcommand};

/// niks3 — a Nix binary cache that fills itself.
#[derive(Parser, Debug)]
#[command(name = "niks3", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the cache server: drain the spool, upload, serve the cache and the API.
    Serve(Box<serve::Args>),
    /// Push the closures of local store paths to a niks3 server.
    Push(push::Args),
    /// Empty this builder's spool into a remote niks3 server (the builder-side drainer).
    Drain(drain::Args),
    /// Run garbage collection on a niks3 server.
    Gc(gc::Args),
    /// Manage signing keys (same file formats as `nix key`).
    #[command(subcommand)]
    Key(key::Command),
    /// Inspect the local spool; put quarantined entries back in the queue.
    #[command(subcommand)]
    Spool(spool::Command),
    /// Manage scoped, revocable API tokens (in the server's database).
    #[command(subcommand)]
    Token(token::Command),
    /// Pin store paths so GC never collects their closures (in the server's database).
    #[command(subcommand)]
    Pin(pin::Command),
    /// Who pushed which closure, ran GC, pinned a path or changed a token, and when (the server's
    /// database).
    Audit(audit::Args),
}

/// Dispatches to the subcommand.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Push(a) => push::run(a),
        Command::Drain(a) => drain::run(a),
        Command::Gc(a) => gc::run(a),
        Command::Key(c) => key::run(c),
        Command::Spool(c) => spool::run(c),
        Command::Token(c) => token::run(c),
        Command::Pin(c) => pin::run(c),
        Command::Audit(a) => audit::run(a),
    }
}

/// Connects to the database `choice` names (migrating it), starting or adopting the embedded cluster when
/// that is the choice; keep the returned cluster alive while the database is used (it stops on drop if
/// this call started it).
pub(crate) async fn open_db(
    choice: &niks3_server::config::DbChoice,
) -> anyhow::Result<(niks3_server::db::Db, Option<niks3_server::db::embedded::EmbeddedPostgres>)> {
    use anyhow::Context as _;
    use niks3_server::db::embedded::EmbeddedPostgres;
    let (url, embedded) = match choice {
        niks3_server::config::DbChoice::Url(url) => (url.clone(), None),
        niks3_server::config::DbChoice::Embedded(dir) => {
            let pg = EmbeddedPostgres::start(dir).await.context("starting the embedded PostgreSQL")?;
            (pg.url(), Some(pg))
        }
    };
    Ok((niks3_server::db::Db::connect(&url).await?, embedded))
}

/// Logs to stderr; `RUST_LOG` overrides the level chosen by `-v`.
pub fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

/// Resolves when SIGTERM or SIGINT arrives (`niks3 serve` and `niks3 drain` stop cleanly on either). If
/// the handlers cannot be installed it says so and never resolves: stop with SIGKILL then.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (term, int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot install the SIGTERM/SIGINT handlers; stop with SIGKILL");
            return std::future::pending().await;
        }
    };
    let (mut term, mut int) = (term, int);
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}

/// A plain-text table as the `list` commands print it: the head row, then `rows`, each column as wide as
/// its widest cell, two spaces apart, no trailing blanks.
fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    use std::fmt::Write as _;
    let mut widths = head.map(str::len);
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let head = head.map(str::to_owned);
    for r in std::iter::once(&head).chain(rows) {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}
