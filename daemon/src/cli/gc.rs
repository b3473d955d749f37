//! `niks3 gc --older-than=720h --failed-uploads-older-than=6h [--force] [--dry-run]`: asks a niks3 server
//! to collect garbage (`POST {server}/api/v1/gc` with the API token) and prints the five figures.

use anyhow::Context as _;
use niks3::gc::parse_duration;
use niks3::metrics::GcFigures;
use std::path::PathBuf;
use std::time::Duration;

/// Arguments of `niks3 gc`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Forget closures last pushed longer ago than this (Go-style: 720h, 30d, 6h, 1h30m).
    #[arg(long, default_value = "720h", value_parser = parse_duration)]
    pub older_than: Duration,
    /// Drop uploads in flight longer than this as failed; also how long an unreachable object stays
    /// marked before it is deleted (the grace period).
    #[arg(long, default_value = "6h", value_parser = parse_duration)]
    pub failed_uploads_older_than: Duration,
    /// Delete unreachable objects at once, without the grace period.
    #[arg(long)]
    pub force: bool,
    /// Only report what would be done.
    #[arg(long)]
    pub dry_run: bool,
    /// The niks3 server.
    #[arg(long, env = "NIKS3_SERVER_URL", default_value = "http://127.0.0.1:5751")]
    pub server: String,
    /// File holding the API token.
    #[arg(long, env = "NIKS3_AUTH_TOKEN_FILE")]
    pub auth_token_file: PathBuf,
}

/// The JSON body of `POST /api/v1/gc`.
#[derive(serde::Serialize, Debug, PartialEq, Eq)]
pub struct GcBody {
    /// `--older-than` in seconds.
    pub older_than_secs: u64,
    /// `--failed-uploads-older-than` in seconds.
    pub failed_uploads_older_than_secs: u64,
    /// `--force`.
    pub force: bool,
    /// `--dry-run`.
    pub dry_run: bool,
}

impl From<&Args> for GcBody {
    fn from(a: &Args) -> Self {
        GcBody {
            older_than_secs: a.older_than.as_secs(),
            failed_uploads_older_than_secs: a.failed_uploads_older_than.as_secs(),
            force: a.force,
            dry_run: a.dry_run,
        }
    }
}

/// Runs `niks3 gc`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = std::fs::read_to_string(&args.auth_token_file)
        .with_context(|| format!("reading the API token from {}", args.auth_token_file.display()))?;
    let token = token.trim();
    anyhow::ensure!(!token.is_empty(), "the API token file {} is empty", args.auth_token_file.display());
    let url = format!("{}/api/v1/gc", args.server.trim_end_matches('/'));
    let body = GcBody::from(&args);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let figures = rt.block_on(post(&url, token, &body))?;
    print!("{}", render(&figures, args.dry_run));
    Ok(())
}

/// Sends the request; the error carries the status and the server's message, never the token.
async fn post(url: &str, token: &str, body: &GcBody) -> anyhow::Result<GcFigures> {
    // A large cache can take minutes to collect; the server holds the connection until it is done.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(6 * 3600))
        .build()
        .context("building the HTTP client")?;
    let resp = client
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(300).collect::<String>().trim().to_owned());
        anyhow::bail!("POST {url}: {status}: {message}");
    }
    parse_figures(&text).with_context(|| format!("POST {url}: unexpected answer"))
}

/// The figures, whether the server answers them bare or inside a `figures` object.
fn parse_figures(text: &str) -> anyhow::Result<GcFigures> {
    let v: serde_json::Value = serde_json::from_str(text)?;
    let inner = v.get("figures").cloned().unwrap_or(v);
    Ok(serde_json::from_value(inner)?)
}

/// The five figures, one per line, named as in the server's log line.
fn render(f: &GcFigures, dry_run: bool) -> String {
    let head = if dry_run { "dry run, nothing changed; would be:\n" } else { "" };
    format!(
        "{head}failed-uploads-deleted: {}\nold-closures-deleted: {}\nobjects-marked-for-deletion: {}\n\
         objects-deleted-after-grace-period: {}\nobjects-failed-to-delete: {}\n",
        f.failed_uploads_deleted,
        f.old_closures_deleted,
        f.objects_marked_for_deletion,
        f.objects_deleted_after_grace_period,
        f.objects_failed_to_delete
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    #[test]
    fn flags_become_the_json_body() {
        let cli = Cli::try_parse_from([
            "gc",
            "--older-than=30d",
            "--failed-uploads-older-than",
            "1h30m",
            "--force",
            "--auth-token-file=/dev/null",
        ])
        .expect("valid flags");
        let body = GcBody::from(&cli.args);
        assert_eq!(
            body,
            GcBody { older_than_secs: 30 * 86_400, failed_uploads_older_than_secs: 5400, force: true, dry_run: false }
        );
        let json = serde_json::to_value(&body).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"older_than_secs": 2_592_000, "failed_uploads_older_than_secs": 5400, "force": true, "dry_run": false})
        );
    }

    #[test]
    fn defaults_are_the_seeds() {
        let cli = Cli::try_parse_from(["gc", "--auth-token-file=/dev/null"]).expect("valid flags");
        assert_eq!(cli.args.older_than, Duration::from_secs(720 * 3600));
        assert_eq!(cli.args.failed_uploads_older_than, Duration::from_secs(6 * 3600));
        assert!(!cli.args.force && !cli.args.dry_run);
    }

    #[test]
    fn a_bad_duration_is_rejected_with_examples() {
        let Err(e) = Cli::try_parse_from(["gc", "--older-than=12", "--auth-token-file=/dev/null"]) else {
            panic!("12 without a unit must be rejected");
        };
        assert!(e.to_string().contains("missing unit"), "{e}");
    }

    #[test]
    fn figures_parse_bare_or_wrapped_and_print_with_their_names() {
        let bare = r#"{"failed_uploads_deleted":1,"old_closures_deleted":2,"objects_marked_for_deletion":3,
            "objects_deleted_after_grace_period":4,"objects_failed_to_delete":5}"#;
        let f = parse_figures(bare).expect("bare");
        assert_eq!(parse_figures(&format!(r#"{{"figures":{bare}}}"#)).expect("wrapped"), f);
        let text = render(&f, false);
        assert!(text.contains("failed-uploads-deleted: 1\n"), "{text}");
        assert!(text.contains("objects-failed-to-delete: 5\n"), "{text}");
        assert!(parse_figures("{}").is_err());
    }
}
