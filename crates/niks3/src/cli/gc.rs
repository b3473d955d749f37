//! `niks3 gc --older-than=720h --failed-uploads-older-than=6h [--force] [--dry-run]`: asks a niks3 server
//! to collect garbage (`POST {server}/api/v1/gc` with an API token) and prints the five figures.

use anyhow::Context as _;
use niks3_api::protocol::GcFigures;
use niks3_api::protocol::GcRequest;
use niks3_client::{ApiClient, ClientError};
use niks3_server::gc::parse_duration;
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
    /// File holding an API token with the `gc` scope (or the admin token); without it, as for `niks3
    /// push`: `NIKS3_AUTH_TOKEN`, then a local server's generated token file.
    #[arg(long, env = "NIKS3_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,
}

impl Args {
    /// The request body of `POST /api/v1/gc`.
    fn request(&self) -> GcRequest {
        GcRequest {
            older_than_secs: self.older_than.as_secs(),
            failed_uploads_older_than_secs: self.failed_uploads_older_than.as_secs(),
            force: self.force,
            dry_run: self.dry_run,
        }
    }
}

/// Runs `niks3 gc`: one request through the same API client as `niks3 push` (errors carry the status and
/// the server's message, never the token).
#[allow(clippy::needless_pass_by_value, reason = "the dispatcher hands every subcommand its Args by value")]
pub fn run(args: Args) -> anyhow::Result<()> {
    let token = super::push::load_token(args.auth_token_file.as_deref())?;
    let client = ApiClient::new(&args.server, token)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    match rt.block_on(client.gc(&args.request())) {
        Ok(figures) => print!("{}", render(&figures, args.dry_run)),
        // The only conflict of the GC route: a run is in progress, started through this server or
        // another sharing the database (GC timers on every server of a fleet). The cache is being
        // collected, which is what was asked, so this is not a failure.
        Err(ClientError::Status { status: 409, message, .. }) => println!("not started: {message}"),
        Err(e) => return Err(e.into()),
    }
    Ok(())
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
        let json = serde_json::to_value(cli.args.request()).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"older_than_secs": 2_592_000, "failed_uploads_older_than_secs": 5400, "force": true, "dry_run": false})
        );
    }

    #[test]
    fn defaults_are_the_seeds() {
        let cli = Cli::try_parse_from(["gc", "--auth-token-file=/dev/null"]).expect("valid flags");
        assert_eq!(cli.args.older_than, Duration::from_hours(720));
        assert_eq!(cli.args.failed_uploads_older_than, Duration::from_hours(6));
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
    fn figures_print_with_their_names() {
        let f: GcFigures = serde_json::from_str(
            r#"{"failed_uploads_deleted":1,"old_closures_deleted":2,"objects_marked_for_deletion":3,
            "objects_deleted_after_grace_period":4,"objects_failed_to_delete":5}"#,
        )
        .expect("figures");
        let text = render(&f, false);
        assert!(text.contains("failed-uploads-deleted: 1\n"), "{text}");
        assert!(text.contains("objects-failed-to-delete: 5\n"), "{text}");
        assert!(render(&f, true).starts_with("dry run"));
    }
}
