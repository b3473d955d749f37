//! `niks3 push [--server URL] [--auth-token-file F | --oidc-token-file F | --oidc-audience AUD] [--dry-run] PATH…`: pushes the closures of local
//! store paths to a niks3 server ([`niks3_client::push::Pusher`]), with a progress bar on a TTY and plain
//! log lines otherwise, a one-line summary, and a non-zero exit with the reason on any failure.

use anyhow::Context as _;
use niks3_api::token::ApiToken;
use niks3_client::ApiClient;
use niks3_client::push::{Progress, Pusher};
use niks3_local::nix::LocalNix;
use std::io::IsTerminal;
use std::path::PathBuf;

/// Arguments of `niks3 push`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The niks3 server.
    #[arg(long, env = "NIKS3_SERVER_URL", default_value = "http://127.0.0.1:5751")]
    pub server: String,
    /// An API token or an OIDC token.
    #[command(flatten)]
    pub credentials: super::credentials::Credentials,
    /// Only list what would be uploaded.
    #[arg(long)]
    pub dry_run: bool,
    /// The store directory, jobs and zstd level.
    #[command(flatten)]
    pub nar: niks3_server::config::NarArgs,
    /// Store paths (or symlinks to them, like ./result) whose closures to push.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<String>,
}

/// Loads the API token for a client command: `--auth-token-file`, else `NIKS3_AUTH_TOKEN`, else the
/// file a local server generated (`/var/lib/niks3/api-token` for root, the XDG state dir otherwise).
pub fn load_token(file: Option<&std::path::Path>) -> anyhow::Result<ApiToken> {
    if let Some(f) = file {
        return Ok(ApiToken::from_file(f)?);
    }
    if let Ok(v) = std::env::var("NIKS3_AUTH_TOKEN") {
        return ApiToken::new(&v).context("NIKS3_AUTH_TOKEN");
    }
    for dir in default_state_dirs() {
        let f = dir.join("api-token");
        if f.exists() {
            return Ok(ApiToken::from_file(&f)?);
        }
    }
    anyhow::bail!("no API token: pass --auth-token-file (or set NIKS3_AUTH_TOKEN_FILE / NIKS3_AUTH_TOKEN)")
}

fn default_state_dirs() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("/var/lib/niks3")];
    if let Some(x) = std::env::var_os("XDG_STATE_HOME") {
        v.push(PathBuf::from(x).join("niks3"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".local/state/niks3"));
    }
    v
}

/// Runs `niks3 push`.
#[allow(clippy::needless_pass_by_value, reason = "every subcommand's run takes its Args by value")]
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = args.credentials.load()?;
    let store_dir = args.nar.store_dir()?;
    let jobs = args.nar.jobs();
    let api = ApiClient::new(&args.server, token)?;
    let pusher = Pusher::new(api, LocalNix::default(), store_dir, jobs)
        .with_compression_level(args.nar.compression_level)
        .with_max_nar_size(args.nar.max_nar_size);
    let mut roots = Vec::with_capacity(args.paths.len());
    for p in &args.paths {
        roots.push(pusher.resolve_arg(p)?);
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let progress: Box<dyn Progress> = if std::io::stderr().is_terminal() && !args.dry_run {
        Box::new(BarProgress::new())
    } else {
        Box::new(LineProgress)
    };
    let report = rt
        .block_on(pusher.push(&roots, args.dry_run, progress.as_ref()))
        .with_context(|| format!("pushing to {}", args.server))?;
    drop(progress);
    for p in &report.skipped_paths {
        eprintln!("niks3: skipped {p}: its NAR is over the size limit (--max-nar-size, this push's or the server's)");
    }
    if args.dry_run {
        for p in &report.missing_paths {
            println!("{p}");
        }
        eprintln!(
            "niks3: {} of {} paths would be uploaded to {} (dry run: nothing was sent)",
            report.missing_paths.len(),
            report.closure_paths,
            args.server
        );
        return Ok(());
    }
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "niks3: pushed {} paths ({} NARs, {} → {} compressed{}{}) in {:.1} s, {:.1} MiB/s; {} of {} paths were already cached",
        report.published,
        report.nars_uploaded,
        human(report.nar_bytes),
        human(report.file_bytes),
        if report.presigned_uploads > 0 {
            format!(", {} straight to S3", report.presigned_uploads)
        } else {
            String::new()
        },
        // Parts an interrupted push had uploaded, which the bucket kept and this push did not send again.
        if report.resumed_bytes > 0 {
            format!(
                ", {} ({} bytes) resumed from an interrupted push",
                human(report.resumed_bytes),
                report.resumed_bytes
            )
        } else {
            String::new()
        },
        secs,
        report.nar_bytes as f64 / 1_048_576.0 / secs.max(0.001),
        report.closure_paths - report.missing_paths.len() - report.skipped_paths.len(),
        report.closure_paths
    );
    Ok(())
}

fn human(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

/// A progress bar (bytes, rate, paths) for interactive use.
struct BarProgress {
    bar: indicatif::ProgressBar,
}

impl BarProgress {
    fn new() -> Self {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar.set_message("querying closure…");
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        BarProgress { bar }
    }
}

impl Drop for BarProgress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}

impl Progress for BarProgress {
    fn planned(&self, paths: usize, missing: usize, nars: usize, nar_bytes: u64) {
        self.bar.set_length(nar_bytes);
        self.bar.set_message(format!("0/{nars} NARs ({missing} of {paths} paths missing)"));
    }
    fn advanced(&self, n: u64) {
        self.bar.inc(n);
    }
    fn nar_done(&self, path: &str, _nar_size: u64, _file_size: u64) {
        let done = self.bar.message().split('/').next().and_then(|s| s.parse::<usize>().ok()).unwrap_or(0) + 1;
        let rest = self.bar.message().split_once('/').map(|(_, r)| r.to_owned()).unwrap_or_default();
        self.bar.set_message(format!("{done}/{rest}"));
        self.bar.println(format!("uploaded {path}"));
    }
}

/// One log line per event, for logs and CI.
struct LineProgress;

impl Progress for LineProgress {
    fn planned(&self, paths: usize, missing: usize, nars: usize, nar_bytes: u64) {
        eprintln!("niks3: {missing} of {paths} paths missing; uploading {nars} NARs ({})", human(nar_bytes));
    }
    fn advanced(&self, _n: u64) {}
    fn nar_done(&self, path: &str, nar_size: u64, file_size: u64) {
        eprintln!("niks3: uploaded {path} ({} → {})", human(nar_size), human(file_size));
    }
}
