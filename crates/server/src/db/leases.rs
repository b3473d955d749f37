//! Write leases: one writer per path across every server sharing the database (migration 0007).
//!
//! Claims keep what a push needs safe from GC; they do not stop two pushes of overlapping closures,
//! announced at the same moment through different servers, from both finding a path missing and both
//! uploading it. A lease does: the session that takes a path's narinfo key uploads the path (NAR,
//! listing, narinfo); the others wait for its publication (see `http/api/push/complete.rs`). A lease
//! ends with its session and can be taken over once its holder stopped touching it for longer than the
//! lease timeout (the pusher died, or its server did): then the next push uploads the path itself.

use super::{Db, DbError, UploadId, q, strs};
use chrono::{DateTime, Utc};
use niks3_storage::ObjectKey;
use std::collections::{HashMap, HashSet};

/// Who holds the lease of a key that is not published yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// The key has a row: it is published (or, for a log, stored).
    Published,
    /// A live session holds it (touched within the lease timeout).
    Session(i64),
    /// Nobody holds it, or its holder went quiet for longer than the lease timeout.
    Nobody,
}

/// The moment before which an untouched lease is stale, `timeout` before `now`.
pub(crate) fn stale_before(now: DateTime<Utc>, timeout: std::time::Duration) -> DateTime<Utc> {
    chrono::TimeDelta::from_std(timeout)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

impl Db {
    /// Takes the leases of `keys` for session `id` that are free, already `id`'s, or stale (untouched
    /// since `stale_before`), marks them touched at `now`, and returns the keys `id` holds afterwards.
    /// Keys are taken in sorted order, so two sessions taking overlapping sets never deadlock.
    pub(crate) async fn take_leases(
        &self,
        id: UploadId,
        keys: &[ObjectKey],
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<HashSet<ObjectKey>, DbError> {
        if keys.is_empty() {
            return Ok(HashSet::new());
        }
        let mut sorted: Vec<&str> = strs(keys);
        sorted.sort_unstable();
        sorted.dedup();
        let c = self.client().await?;
        let rows = c
            .query(
                "INSERT INTO upload_leases AS l (key, upload_id, touched) \
                 SELECT k, $2, $3 FROM unnest($1::text[]) WITH ORDINALITY AS t(k, n) ORDER BY n \
                 ON CONFLICT (key) DO UPDATE SET upload_id = EXCLUDED.upload_id, touched = EXCLUDED.touched \
                 WHERE l.upload_id = EXCLUDED.upload_id OR l.touched < $4 \
                 RETURNING key",
                &[&sorted, &id.0, &now, &stale_before],
            )
            .await
            .map_err(q("take_leases"))?;
        let held: HashSet<&str> = rows.iter().map(|r| r.get::<_, &str>(0)).collect();
        Ok(keys.iter().filter(|k| held.contains(k.as_str())).cloned().collect())
    }

    /// Of `keys`, those leased by one of `sessions`, marked touched at `now`. Takes nothing: a key whose
    /// lease is free or another's stays that way.
    pub(crate) async fn held_leases(
        &self,
        sessions: &[i64],
        keys: &[ObjectKey],
        now: DateTime<Utc>,
    ) -> Result<HashSet<ObjectKey>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "UPDATE upload_leases SET touched = $3 WHERE upload_id = ANY($1) AND key = ANY($2) RETURNING key",
                &[&sessions, &strs(keys), &now],
            )
            .await
            .map_err(q("held_leases"))?;
        let held: HashSet<&str> = rows.iter().map(|r| r.get::<_, &str>(0)).collect();
        Ok(keys.iter().filter(|k| held.contains(k.as_str())).cloned().collect())
    }

    /// Marks every lease of `sessions` touched at `now` (their pusher is alive); how many.
    pub(crate) async fn touch_leases(&self, sessions: &[i64], now: DateTime<Utc>) -> Result<u64, DbError> {
        let c = self.client().await?;
        c.execute("UPDATE upload_leases SET touched = $2 WHERE upload_id = ANY($1)", &[&sessions, &now])
            .await
            .map_err(q("touch_leases"))
    }

    /// For each of `keys`: published, held by a live session, or held by nobody — read in one snapshot,
    /// so a lease that ended because its path was just published reads as published, never as nobody's.
    pub(crate) async fn lease_holders(
        &self,
        keys: &[ObjectKey],
        stale_before: DateTime<Utc>,
    ) -> Result<HashMap<ObjectKey, Holder>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT k, EXISTS (SELECT 1 FROM objects o WHERE o.key = k AND NOT o.deleting), \
                        (SELECT l.upload_id FROM upload_leases l WHERE l.key = k AND l.touched >= $2) \
                 FROM unnest($1::text[]) AS k",
                &[&strs(keys), &stale_before],
            )
            .await
            .map_err(q("lease_holders"))?;
        let by_key: HashMap<&str, Holder> = rows
            .iter()
            .map(|row| {
                let holder = match (row.get::<_, bool>(1), row.get::<_, Option<i64>>(2)) {
                    (true, _) => Holder::Published,
                    (false, Some(id)) => Holder::Session(id),
                    (false, None) => Holder::Nobody,
                };
                (row.get::<_, &str>(0), holder)
            })
            .collect();
        Ok(keys.iter().map(|k| (k.clone(), by_key.get(k.as_str()).copied().unwrap_or(Holder::Nobody))).collect())
    }
}
