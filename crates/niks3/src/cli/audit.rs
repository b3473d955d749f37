//! `niks3 audit [--since WHEN] [--who NAME] [--path /nix/store/…]`: the audit trail (who pushed which
//! closure, ran GC, pinned a path or changed a token, and when), read directly from the database
//! `niks3 serve` uses — so, like `niks3 token`, only for whoever may reach that database.

use anyhow::Context as _;
use niks3_server::config::DbArgs;
use niks3_server::db::audit::{AuditEntry, AuditQuery};
use niks3_server::gc::parse_duration;

/// Arguments of `niks3 audit`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only what happened since then: a date (`2026-12-01`), an RFC 3339 time, or a duration ago
    /// (`24h`, `7d`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only what this token (name), `seed`, `spool` or `local:<user>` did.
    #[arg(long)]
    pub who: Option<String>,
    /// Only the pushes and pins of this root store path (or what concerned this token name).
    #[arg(long)]
    pub path: Option<String>,
    /// At most this many rows, newest first.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Runs `niks3 audit`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let now = chrono::Utc::now();
    let since = args.since.as_deref().map(|s| parse_since(s, now)).transpose()?;
    let query = AuditQuery {
        since,
        who: args.who,
        subject: args.path.map(|p| p.trim_end_matches('/').to_owned()),
        limit: i64::from(args.limit),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    rt.block_on(async {
        let (db, _embedded) = super::open_db(&args.db.resolve()?).await?;
        print!("{}", render(&db.audit_log(&query).await?));
        anyhow::Ok(())
    })
}

/// Who runs a command against the database directly: `local:<login name>` (or the uid).
pub fn local_operator() -> String {
    let user = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).ok().filter(|u| !u.is_empty());
    format!("local:{}", user.unwrap_or_else(|| format!("uid {}", real_uid())))
}

/// The real uid, from /proc (no libc call needed for a label).
fn real_uid() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().next().unwrap_or("?").to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// `--since`: a date, an RFC 3339 time, or a duration before `now`.
fn parse_since(s: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&chrono::Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(d.and_time(chrono::NaiveTime::MIN).and_utc());
    }
    let ago = parse_duration(s).map_err(|e| {
        anyhow::anyhow!("--since {s:?}: not a date (2026-12-01), an RFC 3339 time nor a duration ({e})")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .with_context(|| format!("--since {s:?} is too far back"))
}

/// The rows as a table: time (UTC, to the second), who, action, subject, detail.
fn render(rows: &[AuditEntry]) -> String {
    use std::fmt::Write as _;
    if rows.is_empty() {
        return "no audit entries match\n".to_owned();
    }
    let who_w = rows.iter().map(|r| r.who.len()).max().unwrap_or(3).max(3);
    let mut out = format!("{:<19}  {:<who_w$}  {:<12}  {}\n", "TIME (UTC)", "WHO", "ACTION", "SUBJECT  DETAIL");
    for r in rows {
        let detail = if r.detail.as_object().is_some_and(serde_json::Map::is_empty) {
            String::new()
        } else {
            r.detail.to_string()
        };
        let _ = writeln!(
            out,
            "{:<19}  {:<who_w$}  {:<12}  {}  {detail}",
            r.at.format("%Y-%m-%d %H:%M:%S"),
            r.who,
            r.action,
            if r.subject.is_empty() { "-" } else { &r.subject },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_a_time_or_a_duration_ago() {
        let now =
            chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00Z").expect("time").with_timezone(&chrono::Utc);
        assert_eq!(parse_since("2026-12-01", now).expect("date").to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(parse_since("2026-12-06T10:30:00Z", now).expect("time").to_rfc3339(), "2026-12-06T10:30:00+00:00");
        assert_eq!(parse_since("36h", now).expect("ago").to_rfc3339(), "2026-12-06T00:00:00+00:00");
        let e = parse_since("last tuesday", now).expect_err("nonsense").to_string();
        assert!(e.contains("not a date"), "{e}");
    }
}
