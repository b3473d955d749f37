//! `niks3 serve`: the cache server. Resolves the configuration (embedded defaults included), starts the
//! database and the store, drains the local spool through the upload pipeline and serves HTTP, until
//! SIGTERM or SIGINT. Tells systemd READY=1 once serving. On shutdown, in-flight uploads are abandoned
//! safely: their spool entries stay claimed and are re-processed on the next start.

use anyhow::Context as _;
use niks3_local::drain::{DrainConfig, Drainer};
use niks3_local::nix::LocalNix;
use niks3_local::retry::Backoff;
use niks3_server::config::{ServeConfig, StorageChoice};
use niks3_server::db::Db;
use niks3_server::metrics::Metrics;
use niks3_server::upload::pipeline::Uploader;
use niks3_server::upload::publish::Publisher;
use niks3_storage::Storage;
use niks3_storage::local::LocalStore;
use niks3_storage::s3::S3Store;
use std::sync::Arc;
use tokio::sync::watch;

/// Arguments of `niks3 serve` (defined in the library so tests and docs share them).
pub use niks3_server::config::ServeArgs as Args;

/// Runs `niks3 serve`.
#[allow(clippy::needless_pass_by_value, reason = "the signature every subcommand shares")]
pub fn run(args: Args) -> anyhow::Result<()> {
    let args = args.read_secret_env();
    let config = ServeConfig::resolve(&args).context("configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(serve(config))
}

/// A future that resolves once shutdown was requested.
async fn on_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn serve(mut config: ServeConfig) -> anyhow::Result<()> {
    // Bound first: a port in use is a startup error, and with port 0 everything printed below names the
    // port the kernel picked.
    let listener = niks3_server::http::bind(config.http_addr).await?;
    config.bound_to(listener.local_addr().context("reading the bound HTTP address")?);
    let (stop_tx, stop_rx) = watch::channel(false);
    let signals = tokio::spawn(async move {
        super::shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    // Keep the embedded cluster alive for as long as we serve; it stops when dropped.
    let (db, _embedded) = super::open_db(&config.db).await?;
    let store = Arc::new(match &config.store {
        StorageChoice::Local(dir) => Storage::Local(LocalStore::open(dir.clone()).context("opening the local store")?),
        StorageChoice::S3(s3) => {
            let store = S3Store::new(s3.clone()).context("configuring S3")?;
            Storage::S3(match config.s3_max_parts {
                Some(n) => store.with_max_parts(n),
                None => store,
            })
        }
    });
    let metrics = Arc::new(Metrics::default());
    if let Storage::S3(s3) = &*store {
        metrics.watch_s3_throttle(Arc::clone(s3.throttle()));
    }
    let banner = config.startup_banner();
    let keys = Arc::clone(&config.sign_keys);
    let publisher = Publisher::new(Arc::clone(&store), db.clone(), config.nix_store_dir.clone(), Arc::clone(&keys));
    let uploader = Arc::new(
        Uploader::new(publisher, LocalNix::default(), Arc::clone(&metrics), config.jobs)
            .with_compression_level(config.compression_level)
            .with_max_nar_size(config.max_nar_size),
    );

    // nix-cache-info: written before READY=1 when the store is reachable, else retried in the background.
    let first_try = uploader.write_cache_info(config.priority).await;
    let cache_info = {
        let uploader = Arc::clone(&uploader);
        let priority = config.priority;
        let stop = on_shutdown(stop_rx.clone());
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut backoff = Backoff::for_uploads();
            let mut result = first_try;
            loop {
                match result {
                    Ok(()) => break,
                    Err(e) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(error = %e, retry_in = format_args!("{:.1}s", delay.as_secs_f64()), "writing nix-cache-info failed");
                        tokio::select! {
                            () = tokio::time::sleep(delay) => {}
                            () = &mut stop => break,
                        }
                        result = uploader.write_cache_info(priority).await;
                    }
                }
            }
        })
    };

    let drainer = match &config.spool_dir {
        Some(spool_dir) => {
            // Twice `jobs` entries at once: the uploader compresses at most `jobs` NARs at a time
            // whatever the number of entries, and the others meanwhile ask Nix for their closures,
            // publish, sync and acknowledge, so no core waits on that bookkeeping.
            let drain_config = DrainConfig::new(
                spool_dir.clone(),
                config.gcroots_dir.clone(),
                config.nix_store_dir.clone(),
                LocalNix::default(),
                2 * config.jobs,
            );
            let drainer = Drainer::new(
                drain_config,
                Arc::clone(&uploader),
                Arc::clone(&metrics) as Arc<dyn niks3_local::drain::DrainObserver>,
            )
            .with_context(|| format!("opening the spool {}", spool_dir.display()))?;
            Some(tokio::spawn(drainer.run(on_shutdown(stop_rx.clone()))))
        }
        None => None,
    };

    let http = start_http(
        &config,
        listener,
        Arc::clone(&store),
        db.clone(),
        Arc::clone(&keys),
        Arc::clone(&metrics),
        stop_rx.clone(),
    );

    eprint!("{banner}");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(cache_url = %config.cache_url, http_addr = %config.http_addr, "serving");
    if let Some(oidc) = &config.oidc {
        tracing::info!(issuers = ?oidc.issuers(), "accepting OIDC tokens of these issuers (--oidc-config)");
    }

    on_shutdown(stop_rx.clone()).await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(d) = drainer {
        match d.await {
            Ok(Ok(stats)) => tracing::info!(acked = stats.acked, quarantined = stats.quarantined, "drainer stopped"),
            Ok(Err(e)) => tracing::error!(error = %e, "drainer failed"),
            Err(e) => tracing::error!(error = %e, "drainer task failed"),
        }
    }
    let _ = http.await;
    let _ = cache_info.await;
    signals.abort();
    Ok(())
}

/// Starts the HTTP server (read proxy, landing page, API, health, metrics) on the listener `serve` bound
/// before READY=1.
fn start_http(
    config: &ServeConfig,
    listener: tokio::net::TcpListener,
    store: Arc<Storage>,
    db: Db,
    keys: Arc<Vec<niks3_nix::signing::SecretKey>>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let state = Arc::new(niks3_server::http::HttpState {
        store_dir: config.nix_store_dir.clone(),
        priority: config.priority,
        cache_url: config.cache_url.clone(),
        api_token: Some(config.api_token.clone()),
        private: config.private,
        oidc: config.oidc.clone(),
        api_rate: niks3_server::http::api::rate::ApiRate::new(config.api_requests_per_minute),
        limits: niks3_server::http::api::ApiLimits {
            lease_timeout: config.push_lease_timeout,
            max_sessions_per_token: config.max_upload_sessions,
            max_nar_size: config.max_nar_size,
            ..niks3_server::http::api::ApiLimits::default()
        },
        ..niks3_server::http::HttpState::new(store, db, keys, metrics)
    });
    tokio::spawn(niks3_server::http::serve_listener(state, listener, on_shutdown(stop)))
}
