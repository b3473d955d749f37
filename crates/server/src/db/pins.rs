//! The `pins` table: named roots GC never collects, managed with `niks3 pin add|remove|list`. A pin names
//! the narinfo of a store path the cache holds; that path's whole closure stays as long as the pin does,
//! however old its pushes get. Making and removing a pin write their audit row ([`AuditAction::Pin`],
//! [`AuditAction::Unpin`]) in the same transaction, so a pin exists exactly when the trail says so.

use super::audit::{self, AuditAction};
use super::{Db, DbError, GC_LOCK, q};
use chrono::{DateTime, Utc};
use niks3_storage::ObjectKey;

/// Longest pin name.
const MAX_NAME_LEN: usize = 64;

/// A pin as `niks3 pin list` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinInfo {
    /// Its name (unique).
    pub name: String,
    /// The narinfo key GC keeps alive, with everything it reaches.
    pub root: String,
    /// The store path it was made for (`None` for pins made before migration 0013).
    pub store_path: Option<String>,
    /// When it was made (or last pointed elsewhere).
    pub created_at: DateTime<Utc>,
    /// Who made it (`None` before migration 0013).
    pub created_by: Option<String>,
}

impl PinInfo {
    /// The store path, or the narinfo key when the path was not recorded.
    pub fn what(&self) -> &str {
        self.store_path.as_deref().unwrap_or(&self.root)
    }
}

/// Why a pin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PinDbError {
    /// The name is empty, too long or has characters that do not print plainly.
    #[error(
        "invalid pin name {0:?}: 1 to {MAX_NAME_LEN} characters among letters, digits, '.', '_', '@' and '-', starting with a letter or digit"
    )]
    BadName(String),
    /// The cache holds no narinfo for the path (never pushed, or collected since).
    #[error("{0} is not in the cache (no narinfo recorded for it): push it first, then pin it")]
    NotInCache(String),
    /// No pin has that name.
    #[error("no pin named {0:?}")]
    NoSuchPin(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// Checks a pin name: it shows up in `niks3 pin list` and the audit trail, so it stays short and printable
/// (the rule of token names).
pub fn validate_name(name: &str) -> Result<(), PinDbError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if ok { Ok(()) } else { Err(PinDbError::BadName(name.chars().take(MAX_NAME_LEN + 8).collect())) }
}

fn info(r: &tokio_postgres::Row) -> PinInfo {
    PinInfo {
        name: r.get("name"),
        root: r.get("root"),
        store_path: r.get("store_path"),
        created_at: r.get("created_at"),
        created_by: r.get("created_by"),
    }
}

impl Db {
    /// Pins the closure of `root` (the narinfo key of `store_path`) under `name` so GC never collects it,
    /// replacing a pin of the same name, and clears the marks on everything it reaches; records it in the
    /// audit trail as done by `who`. Returns the pin it replaced, if any.
    ///
    /// Refused with [`PinDbError::NotInCache`] unless `root` is recorded and not being deleted. The check
    /// and the pin happen under the shared GC lock uploads take, so a GC cannot delete the narinfo between
    /// them; once the pin commits, its closure is live to every later mark.
    pub async fn pin(
        &self,
        name: &str,
        root: &ObjectKey,
        store_path: &str,
        who: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<PinInfo>, PinDbError> {
        validate_name(name)?;
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(q("pin: begin"))?;
        t.execute("SELECT pg_advisory_xact_lock_shared($1)", &[&GC_LOCK]).await.map_err(q("pin: lock"))?;
        let present = t
            .query_opt("SELECT 1 FROM objects WHERE key = $1 AND NOT deleting", &[&root.as_str()])
            .await
            .map_err(q("pin: look up the root"))?
            .is_some();
        if !present {
            return Err(PinDbError::NotInCache(store_path.to_owned()));
        }
        let replaced = t
            .query_opt(
                "SELECT name, root, store_path, created_at, created_by FROM pins WHERE name = $1 FOR UPDATE",
                &[&name],
            )
            .await
            .map_err(q("pin: previous"))?
            .map(|r| info(&r));
        t.execute(
            "INSERT INTO pins (name, root, created_at, store_path, created_by) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (name) DO UPDATE SET root = EXCLUDED.root, created_at = EXCLUDED.created_at, \
               store_path = EXCLUDED.store_path, created_by = EXCLUDED.created_by",
            &[&name, &root.as_str(), &now, &store_path, &who],
        )
        .await
        .map_err(q("pin: insert"))?;
        t.execute(
            "WITH RECURSIVE r(key) AS (SELECT $1::text UNION \
               SELECT unnest(o.refs) FROM objects o JOIN r ON o.key = r.key) \
             UPDATE objects SET marked_at = NULL FROM r WHERE objects.key = r.key AND objects.marked_at IS NOT NULL",
            &[&root.as_str()],
        )
        .await
        .map_err(q("pin: unmark"))?;
        let mut detail = serde_json::json!({ "name": name });
        if let Some(p) = &replaced {
            detail["replaced"] = serde_json::json!(p.what());
        }
        audit::append(&t, who, AuditAction::Pin, store_path, &detail, now).await.map_err(q("pin: audit"))?;
        t.commit().await.map_err(q("pin: commit"))?;
        Ok(replaced)
    }

    /// Removes the pin `name` and records that `who` did; returns what it pinned. Its closure is then
    /// collected like any other once nothing else keeps it.
    pub async fn unpin(&self, name: &str, who: &str, now: DateTime<Utc>) -> Result<PinInfo, PinDbError> {
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(q("unpin: begin"))?;
        let row = t
            .query_opt(
                "DELETE FROM pins WHERE name = $1 RETURNING name, root, store_path, created_at, created_by",
                &[&name],
            )
            .await
            .map_err(q("unpin"))?;
        let Some(pin) = row.map(|r| info(&r)) else { return Err(PinDbError::NoSuchPin(name.to_owned())) };
        let detail = serde_json::json!({ "name": name });
        audit::append(&t, who, AuditAction::Unpin, pin.what(), &detail, now).await.map_err(q("unpin: audit"))?;
        t.commit().await.map_err(q("unpin: commit"))?;
        Ok(pin)
    }

    /// The pins, sorted by name.
    pub async fn pins(&self) -> Result<Vec<PinInfo>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT name, root, store_path, created_at, created_by FROM pins ORDER BY name", &[])
            .await
            .map_err(q("pins"))?;
        Ok(rows.iter().map(info).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_names_are_short_and_printable() {
        for ok in ["release", "v1.2.3", "team@2026-12", "a"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "has space", "slash/es", "ünï", &"n".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
