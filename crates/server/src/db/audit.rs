//! The audit trail (migrations 0009, 0013): who pushed which closure, ran GC, pinned a path or changed a
//! token, and when — the answer to "who published this path?". Pushes and pins are written in the
//! transaction that records them ([`super::Db::finish_uploads`], [`super::Db::pin`]), so they are in the
//! trail exactly when they are in the cache's books; the rest right after what they record.

use super::{Db, DbError, q};
use chrono::{DateTime, Utc};

/// What was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuditAction {
    /// A closure was pushed (one row per root; the subject is the root's store path).
    Push,
    /// GC ran (the subject is empty, the detail holds its five figures).
    Gc,
    /// A token was created (the subject is its name).
    TokenCreate,
    /// A token was revoked.
    TokenRevoke,
    /// A pin was made or pointed elsewhere (the subject is the store path; the detail holds its name).
    Pin,
    /// A pin was removed (the subject is the store path it pinned).
    Unpin,
}

impl AuditAction {
    /// The name stored and printed.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Push => "push",
            AuditAction::Gc => "gc",
            AuditAction::TokenCreate => "token-create",
            AuditAction::TokenRevoke => "token-revoke",
            AuditAction::Pin => "pin",
            AuditAction::Unpin => "unpin",
        }
    }
}

/// Who pushed a closure, for [`Db::finish_uploads`]: the caller's name, the roots' store paths (in the
/// order of the roots) and what to keep with each row.
#[derive(Clone, Debug)]
pub struct PushAudit<'a> {
    /// Token name, `seed`, or `spool`.
    pub who: &'a str,
    /// The roots' store paths.
    pub roots: Vec<String>,
    /// Kept with every row (e.g. how many paths were published).
    pub detail: serde_json::Value,
}

/// One row of the trail.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditEntry {
    /// When.
    pub at: DateTime<Utc>,
    /// Who (see migration 0009).
    pub who: String,
    /// What (an [`AuditAction`] name).
    pub action: String,
    /// On what: a store path, a token name, or empty.
    pub subject: String,
    /// The rest, as JSON.
    pub detail: serde_json::Value,
}

/// Which rows [`Db::audit_log`] returns.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    /// At or after this moment.
    pub since: Option<DateTime<Utc>>,
    /// Done by exactly this name.
    pub who: Option<String>,
    /// About exactly this subject (a store path, a token name).
    pub subject: Option<String>,
    /// At most this many, newest first.
    pub limit: i64,
}

/// Appends one row through `c`: a client, or the transaction of the change the row records (so the row
/// exists exactly when the change does).
pub(super) async fn append(
    c: &impl deadpool_postgres::GenericClient,
    who: &str,
    action: AuditAction,
    subject: &str,
    detail: &serde_json::Value,
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    c.execute(
        "INSERT INTO audit_log (at, who, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
        &[&now, &who, &action.as_str(), &subject, detail],
    )
    .await
    .map(drop)
}

impl Db {
    /// Appends one row.
    pub async fn audit(
        &self,
        who: &str,
        action: AuditAction,
        subject: &str,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        append(&c, who, action, subject, detail, now).await.map_err(q("audit"))
    }

    /// The rows `query` selects, newest first.
    pub async fn audit_log(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT at, who, action, subject, detail FROM audit_log \
                 WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::text IS NULL OR who = $2) \
                   AND ($3::text IS NULL OR subject = $3) \
                 ORDER BY at DESC, id DESC LIMIT $4",
                &[&query.since, &query.who, &query.subject, &query.limit],
            )
            .await
            .map_err(q("audit_log"))?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry { at: r.get(0), who: r.get(1), action: r.get(2), subject: r.get(3), detail: r.get(4) })
            .collect())
    }
}
