//! Phase 0: narinfos whose record a database failover lost.
//!
//! With asynchronous streaming replication, promoting the standby loses the last commits the old primary
//! acknowledged but had not streamed yet. A push whose `complete` fell in that window published narinfos
//! in the bucket and answered 200 (so its drainer forgot the entry), and their records are gone: the
//! narinfo rows, the closure. The paths they refer to are recorded (published earlier) but nothing known
//! holds them any more; once their own closures expire, GC would delete them under narinfos it serves.
//!
//! Promotion starts a new PostgreSQL timeline, and every run records the timeline it saw. A run that sees
//! another timeline than the last run's (or that is the first) lists the bucket and records again every
//! narinfo that has no row — from its own text: its NAR and the narinfos of its references, as the
//! publish step records them — kept as a closure from now on, like a fresh push. So a served narinfo's
//! references are never collected, whatever a failover lost. Listing costs one request per 1 000 objects
//! (S3), once per failover. A narinfo written by a push still in flight is recorded a moment early; its
//! own record then lands on the same row.

use super::{GcError, q};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use niks3_storage::{ObjectKey, Storage};

/// A published narinfo to record again: its key, size and what it refers to.
struct Adopted {
    key: ObjectKey,
    size: u64,
    refs: Vec<String>,
}

/// Narinfos fetched from the bucket at once.
const CONCURRENCY: usize = 16;

/// The current timeline, and whether it differs from the one the last run recorded (always true for the
/// first run).
pub(super) async fn timeline(client: &deadpool_postgres::ClientWrapper) -> Result<(i64, bool), GcError> {
    let row = client
        .query_one(
            "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::bigint, \
                    (SELECT timeline FROM gc_runs ORDER BY id DESC LIMIT 1)",
            &[],
        )
        .await
        .map_err(q("gc: timeline"))?;
    let (now, last): (i64, Option<i64>) = (row.get(0), row.get(1));
    Ok((now, last != Some(now)))
}

/// Records every narinfo of the bucket that has no row (see the module doc); returns how many. In a dry
/// run only counts them.
pub(super) async fn run(
    client: &deadpool_postgres::ClientWrapper,
    store: &Storage,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, GcError> {
    let listed =
        store.list("").await.map_err(|e| GcError::Storage { key: "(the bucket)".to_owned(), reason: e.to_string() })?;
    let narinfos: Vec<&str> = listed.iter().map(String::as_str).filter(|k| k.ends_with(".narinfo")).collect();
    let mut unrecorded = Vec::new();
    for chunk in narinfos.chunks(10_000) {
        let rows = client
            .query(
                "SELECT k FROM unnest($1::text[]) AS k WHERE NOT EXISTS (SELECT 1 FROM objects o WHERE o.key = k)",
                &[&chunk],
            )
            .await
            .map_err(q("gc adopt: unrecorded narinfos"))?;
        unrecorded.extend(rows.iter().filter_map(|r| ObjectKey::parse(r.get::<_, &str>(0)).ok()).map(|(_, k)| k));
    }
    if unrecorded.is_empty() {
        return Ok(0);
    }
    let looked: Vec<Result<Option<Adopted>, GcError>> = futures::stream::iter(unrecorded)
        .map(|key| async move {
            match store.get(&key).await {
                Ok(Some(body)) => {
                    let refs = refs_of(&body);
                    if refs.is_none() {
                        tracing::warn!(%key, "gc: a narinfo in the bucket that does not parse; left unrecorded");
                    }
                    Ok(refs.map(|refs| Adopted { key, size: body.len() as u64, refs }))
                }
                // Deleted since the listing (by nothing of ours: GC is this run): nothing to record.
                Ok(None) => Ok(None),
                Err(e) => Err(GcError::Storage { key: key.as_str().to_owned(), reason: e.to_string() }),
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let found: Vec<Adopted> = looked.into_iter().filter_map(Result::transpose).collect::<Result<_, _>>()?;
    if found.is_empty() || dry_run {
        return Ok(found.len() as u64);
    }
    for a in &found {
        tracing::warn!(key = %a.key, "gc: recording a published narinfo the database had lost (a failover?)");
    }
    let keys: Vec<&str> = found.iter().map(|a| a.key.as_str()).collect();
    let sizes: Vec<i64> = found.iter().map(|a| i64::try_from(a.size).unwrap_or(i64::MAX)).collect();
    // Arrays of arrays must be rectangular in PostgreSQL: the refs travel as one text each, split there.
    let refs: Vec<String> = found.iter().map(|a| a.refs.join(" ")).collect();
    client
        .execute(
            "WITH adopted AS ( \
               INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed) \
               SELECT k, 'narinfo', s, string_to_array(r, ' '), $4, $4 \
               FROM unnest($1::text[], $2::bigint[], $3::text[]) AS t(k, s, r) \
               ON CONFLICT (key) DO NOTHING RETURNING key) \
             INSERT INTO closures (root, pushed_at) SELECT key, $4 FROM adopted \
             ON CONFLICT (root) DO UPDATE SET pushed_at = EXCLUDED.pushed_at",
            &[&keys, &sizes, &refs, &now],
        )
        .await
        .map_err(q("gc adopt: record"))?;
    Ok(found.len() as u64)
}

/// The keys a narinfo refers to, as the publish step records them: its NAR (`URL:`) and the narinfos of
/// its references other than itself. `None` when the text is not a narinfo niks3 could have written.
fn refs_of(body: &[u8]) -> Option<Vec<String>> {
    let text = std::str::from_utf8(body).ok()?;
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let own = field("StorePath:")?.rsplit('/').next()?.get(..32)?.to_owned();
    let (_, nar) = ObjectKey::parse(field("URL:")?).ok()?;
    let mut refs = vec![nar.as_str().to_owned()];
    for r in field("References:").unwrap_or("").split_whitespace() {
        let hash = r.get(..32)?;
        if hash != own {
            let (_, k) = ObjectKey::parse(&format!("{hash}.narinfo")).ok()?;
            refs.push(k.as_str().to_owned());
        }
    }
    Some(refs)
}

#[cfg(test)]
mod tests {
    use super::refs_of;

    #[test]
    fn a_narinfo_refers_to_its_nar_and_its_references_narinfos_not_itself() {
        let text = "StorePath: /nix/store/0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl-app\n\
                    URL: nar/1b2mpgl1gnmr5m2q2f5k0vp6s1g9z8y6mw3jq2gkpbyxfhdk9m4h.nar.zst\n\
                    Compression: zstd\n\
                    References: 0c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl-app 1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl-lib\n";
        assert_eq!(
            refs_of(text.as_bytes()).expect("parses"),
            [
                "nar/1b2mpgl1gnmr5m2q2f5k0vp6s1g9z8y6mw3jq2gkpbyxfhdk9m4h.nar.zst",
                "1c0pcvxgzbblkhq7cwcs8z4vgp6xfjkl.narinfo"
            ]
        );
        assert_eq!(refs_of(b"not a narinfo"), None);
        assert_eq!(refs_of(b"StorePath: /nix/store/x\nURL: ../../etc/passwd\n"), None);
    }
}
