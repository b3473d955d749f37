//! `niks3 token create|list|revoke`: scoped, revocable API tokens, managed directly in the database that
//! `niks3 serve` uses (same `--db`, `--db-file` or embedded `--state-dir`), so every server sharing it
//! sees a new or revoked token at its next request.

use anyhow::Context as _;
use niks3_api::token::{NewSecret, Scope, Scopes, validate_name};
use niks3_server::config::DbArgs;
use niks3_server::db::audit::AuditAction;
use niks3_server::db::tokens::TokenInfo;
use niks3_server::gc::parse_duration;
use std::time::Duration;

/// `niks3 token …`
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Create a token and print its secret on stdout, once (only its SHA-256 is stored).
    Create {
        /// A unique name saying who holds it, e.g. `builder-1` or `gc-timer` (names stay taken after
        /// revocation).
        #[arg(long)]
        name: String,
        /// What it may do: read, push, gc, admin (admin implies all). Repeat or separate with commas.
        #[arg(long = "scope", value_name = "SCOPE", required = true, value_delimiter = ',')]
        scopes: Vec<Scope>,
        /// Let it expire after this long (Go-style: 720h, 30d, 1h30m). Default: never.
        #[arg(long, value_parser = parse_duration)]
        expires_in: Option<Duration>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the tokens (names, scopes, dates, status; never secrets).
    List {
        #[command(flatten)]
        db: DbArgs,
    },
    /// Revoke a token: every server sharing the database refuses it from its next request on.
    Revoke {
        /// The token's name.
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Runs `niks3 token …`.
pub fn run(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let now = chrono::Utc::now();
        match cmd {
            Command::Create { name, scopes, expires_in, db } => {
                validate_name(&name)?;
                let scopes = Scopes::new(scopes)?;
                let expires_at = match expires_in {
                    Some(d) => Some(
                        chrono::Duration::from_std(d)
                            .ok()
                            .and_then(|d| now.checked_add_signed(d))
                            .with_context(|| format!("--expires-in {d:?} is too large"))?,
                    ),
                    None => None,
                };
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                let secret = NewSecret::generate();
                db.create_token(&name, &secret.digest(), &scopes, expires_at, now).await?;
                let detail =
                    serde_json::json!({ "scopes": scopes.names(), "expires_at": expires_at.map(|t| t.to_rfc3339()) });
                db.audit(&super::audit::local_operator(), AuditAction::TokenCreate, &name, &detail, now).await?;
                let until = expires_at.map_or_else(|| "never expires".to_owned(), |t| format!("expires {}", day(t)));
                eprintln!(
                    "created token {name:?} (scopes: {scopes}; {until}); its secret follows, shown only this once:"
                );
                println!("{}", secret.expose());
                Ok(())
            }
            Command::List { db } => {
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                print!("{}", render(&db.list_tokens().await?, now));
                Ok(())
            }
            Command::Revoke { name, db } => {
                let (db, _embedded) = super::open_db(&db.resolve()?).await?;
                let t = db.revoke_token(&name, now).await?;
                let detail = serde_json::json!({});
                db.audit(&super::audit::local_operator(), AuditAction::TokenRevoke, &name, &detail, now).await?;
                let when = t.revoked_at.map_or_else(String::new, |r| format!(" (since {})", minute(r)));
                println!("revoked token {:?}{when}; every server sharing the database now refuses it", t.name);
                Ok(())
            }
        }
    })
}

/// A time to the minute, UTC.
fn minute(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

/// A time to the minute with its zone, for one-line messages.
fn day(t: chrono::DateTime<chrono::Utc>) -> String {
    format!("{} UTC", minute(t))
}

/// The table `niks3 token list` prints (UTC times, `-` for none).
fn render(tokens: &[TokenInfo], now: chrono::DateTime<chrono::Utc>) -> String {
    let opt = |t: Option<chrono::DateTime<chrono::Utc>>| t.map_or_else(|| "-".to_owned(), minute);
    let rows: Vec<[String; 6]> = tokens
        .iter()
        .map(|t| {
            let status = if t.revoked_at.is_some() {
                "revoked"
            } else if t.expires_at.is_some_and(|e| e <= now) {
                "expired"
            } else {
                "active"
            };
            [
                t.name.clone(),
                t.scopes.to_string(),
                status.to_owned(),
                minute(t.created_at),
                opt(t.expires_at),
                opt(t.last_used_at),
            ]
        })
        .collect();
    super::table(["NAME", "SCOPES", "STATUS", "CREATED (UTC)", "EXPIRES", "LAST USED"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Command,
    }

    #[test]
    fn scopes_repeat_or_split_on_commas_and_unknown_ones_are_refused() {
        let cli = Cli::try_parse_from([
            "token",
            "create",
            "--name",
            "b1",
            "--scope",
            "push",
            "--scope",
            "gc,read",
            "--expires-in",
            "30d",
        ])
        .expect("valid flags");
        let Command::Create { scopes, expires_in, .. } = cli.cmd else { panic!("create") };
        assert_eq!(scopes, vec![Scope::Push, Scope::Gc, Scope::Read]);
        assert_eq!(expires_in, Some(Duration::from_hours(720)));
        assert!(Cli::try_parse_from(["token", "create", "--name", "b1", "--scope", "root"]).is_err());
        assert!(Cli::try_parse_from(["token", "create", "--name", "b1"]).is_err(), "a scope is required");
    }

    #[test]
    fn the_list_shows_status_and_never_a_secret_column() {
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").expect("time").to_utc();
        let info = |name: &str, expires, revoked| TokenInfo {
            name: name.to_owned(),
            scopes: Scopes::new(vec![Scope::Push]).expect("scopes"),
            created_at: t0,
            expires_at: expires,
            last_used_at: None,
            revoked_at: revoked,
        };
        let text = render(
            &[info("a", None, None), info("b", Some(t0), None), info("c", None, Some(t0))],
            t0 + chrono::Duration::hours(1),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("NAME  SCOPES  STATUS"), "{text}");
        assert!(lines[1].starts_with("a     push    active"), "{text}");
        assert!(lines[2].contains("expired") && lines[3].contains("revoked"), "{text}");
    }
}
