//! `niks3 drain --server URL [--server URL2 …] --auth-token-file F [--spool-dir DIR] [--gcroots-dir DIR]
//! [--once]`: the builder-side drainer. The pipeline's [`niks3_local::drain::Drainer`] (claim, process, ack only after
//! success, remove GC roots, retry transient failures with backoff, quarantine bad entries) with the push
//! client as its processor, so a remote builder's spool gets the same durability as the server's own.
//! With several servers (sharing one bucket and database) a push goes to the first that answers
//! ([`niks3_client::failover::Failover`]).

use anyhow::Context as _;
use niks3_client::ApiClient;
use niks3_client::failover::Failover;
use niks3_client::push::Pusher;
use niks3_local::drain::{DrainConfig, Drainer};
use niks3_local::nix::LocalNix;
use niks3_server::metrics::Metrics;
use std::path::PathBuf;
use std::sync::Arc;

/// Arguments of `niks3 drain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The niks3 server to push to. Repeat it (or give a comma-separated list in the environment) for
    /// several servers sharing one bucket and database: a push goes to the next when one does not answer.
    #[arg(long, env = "NIKS3_SERVER_URL", value_delimiter = ',', required = true)]
    pub server: Vec<String>,
    /// An API token or an OIDC token.
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
    /// The spool the post-build hook fills.
    #[arg(long, env = "NIKS3_SPOOL_DIR", default_value = "/var/lib/niks3/spool")]
    pub spool_dir: PathBuf,
    /// Where the hook keeps GC roots for queued paths.
    #[arg(long, env = "NIKS3_GCROOTS_DIR", default_value = "/nix/var/nix/gcroots/niks3")]
    pub gcroots_dir: PathBuf,
    /// The store directory, jobs and zstd level.
    #[command(flatten)]
    pub nar: niks3_server::config::NarArgs,
    /// Exit once the spool is empty instead of waiting for new entries.
    #[arg(long)]
    pub once: bool,
}

/// Runs `niks3 drain`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = args.credentials.load()?;
    let store_dir = args.nar.store_dir()?;
    let jobs = args.nar.jobs();
    let clients = args.server.iter().map(|s| ApiClient::new(s, token.clone())).collect::<Result<Vec<_>, _>>()?;
    let nix = LocalNix::default();
    let (level, max_nar_size) = (args.nar.compression_level, args.nar.max_nar_size);
    let pusher = Failover::new(clients, |api| {
        Pusher::new(api, nix.clone(), store_dir.clone(), jobs)
            .with_compression_level(level)
            .with_max_nar_size(max_nar_size)
    })?;
    let servers = pusher.servers().collect::<Vec<_>>().join(", ");
    let mut config = DrainConfig::new(args.spool_dir.clone(), args.gcroots_dir.clone(), store_dir, nix, jobs);
    config.once = args.once;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async move {
        let drainer = Drainer::new(config, Arc::new(pusher), Arc::new(Metrics::default()))
            .with_context(|| format!("opening the spool {}", args.spool_dir.display()))?;
        tracing::info!(servers, spool = %args.spool_dir.display(), "draining the spool");
        let stats = drainer.run(super::shutdown_signal()).await?;
        tracing::info!(acked = stats.acked, quarantined = stats.quarantined, "drainer stopped");
        anyhow::Ok(())
    })
}
