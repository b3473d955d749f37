//! Upload sessions as the push API's routes ask about them: which sessions a token owns, what a session
//! claimed, and the S3 multipart uploads a session started (recorded so `complete` can finish them and GC
//! abort them). Opening, claiming and finishing sessions is in `mod.rs` with the rest of the claim logic.
//!
//! A session's owner is the token that opened it ([`SessionOwner`]); another owner's session is treated
//! as unknown by every query here.

use super::tokens::TokenId;
use super::{Db, DbError, q};
use niks3_storage::ObjectKey;
use std::collections::{BTreeMap, HashMap};

/// Who opened an upload session, and so who alone may upload into, complete or abort it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOwner {
    /// The server's own pipeline, or the seed token (both columns NULL).
    Server,
    /// A scoped API token (`uploads.token_id`).
    Token(TokenId),
    /// An OIDC subject, by its name `oidc:<issuer>#<sub>` (`uploads.oidc_subject`, migration 0010): it
    /// has no row to point at, and must not share the seed token's NULLs.
    Oidc(String),
}

impl SessionOwner {
    /// The values of `uploads.token_id` and `uploads.oidc_subject` for this owner.
    pub(crate) fn columns(&self) -> (Option<i64>, Option<&str>) {
        match self {
            SessionOwner::Server => (None, None),
            SessionOwner::Token(t) => (Some(t.0), None),
            SessionOwner::Oidc(name) => (None, Some(name.as_str())),
        }
    }
}

impl Db {
    /// Of sessions `ids`, those `owner` opened, with the root each was opened for.
    pub(crate) async fn owned_sessions(
        &self,
        ids: &[i64],
        owner: &SessionOwner,
    ) -> Result<BTreeMap<i64, String>, DbError> {
        let c = self.client().await?;
        let (token, oidc) = owner.columns();
        let rows = c
            .query(
                "SELECT id, root FROM uploads WHERE id = ANY($1) AND token_id IS NOT DISTINCT FROM $2 \
                 AND oidc_subject IS NOT DISTINCT FROM $3",
                &[&ids, &token, &oidc],
            )
            .await
            .map_err(q("owned_sessions"))?;
        Ok(rows.iter().map(|r| (r.get::<_, i64>(0), r.get::<_, String>(1))).collect())
    }

    /// How many sessions `owner` has open.
    pub(crate) async fn open_sessions(&self, owner: &SessionOwner) -> Result<u64, DbError> {
        let c = self.client().await?;
        let (token, oidc) = owner.columns();
        let n: i64 = c
            .query_one(
                "SELECT count(*) FROM uploads WHERE token_id IS NOT DISTINCT FROM $1 \
                 AND oidc_subject IS NOT DISTINCT FROM $2",
                &[&token, &oidc],
            )
            .await
            .map_err(q("open_sessions"))?
            .get(0);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// True when session `id` exists, was opened by `owner` and claimed `key`.
    pub(crate) async fn session_claims(&self, id: i64, key: &ObjectKey, owner: &SessionOwner) -> Result<bool, DbError> {
        let c = self.client().await?;
        let (token, oidc) = owner.columns();
        let row = c
            .query_opt(
                "SELECT 1 FROM uploads WHERE id = $1 AND $2 = ANY(claimed) AND token_id IS NOT DISTINCT FROM $3 \
                 AND oidc_subject IS NOT DISTINCT FROM $4",
                &[&id, &key.as_str(), &token, &oidc],
            )
            .await
            .map_err(q("session_claims"))?;
        Ok(row.is_some())
    }

    /// Ends sessions `ids` (their claims go with them); how many there were.
    pub(crate) async fn end_sessions(&self, ids: &[i64]) -> Result<u64, DbError> {
        let c = self.client().await?;
        c.execute("DELETE FROM uploads WHERE id = ANY($1)", &[&ids]).await.map_err(q("end_sessions"))
    }

    /// Records the multipart uploads `started` (key, multipart id) by session `session`.
    pub(crate) async fn record_multiparts(&self, session: i64, started: &[(ObjectKey, String)]) -> Result<(), DbError> {
        let keys: Vec<&str> = started.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<&str> = started.iter().map(|(_, id)| id.as_str()).collect();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO upload_multiparts (upload_id, key, multipart_id) \
             SELECT $1, k, m FROM unnest($2::text[], $3::text[]) AS t(k, m)",
            &[&session, &keys, &ids],
        )
        .await
        .map_err(q("record_multiparts"))?;
        Ok(())
    }

    /// The multipart uploads recorded for sessions `ids`: key → multipart id.
    pub(crate) async fn multiparts_of(&self, ids: &[i64]) -> Result<HashMap<String, String>, DbError> {
        let c = self.client().await?;
        let rows = c
            .query("SELECT key, multipart_id FROM upload_multiparts WHERE upload_id = ANY($1)", &[&ids])
            .await
            .map_err(q("multiparts_of"))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
    }

    /// Records multipart upload `multipart_id` of `key`, started by the server's own pipeline in session
    /// `session`, as one a later upload may continue (migration 0012). Replaces the session's earlier
    /// record for `key`, if any.
    pub(crate) async fn record_resumable_multipart(
        &self,
        session: i64,
        key: &ObjectKey,
        multipart_id: &str,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute(
            "INSERT INTO upload_multiparts (upload_id, key, multipart_id, resumable) VALUES ($1, $2, $3, true) \
             ON CONFLICT (upload_id, key) DO UPDATE SET multipart_id = EXCLUDED.multipart_id, resumable = true",
            &[&session, &key.as_str(), &multipart_id],
        )
        .await
        .map_err(q("record_resumable_multipart"))?;
        Ok(())
    }

    /// Takes over the resumable multipart upload of `key` another session recorded (the newest, if
    /// several): moves its row into `session`, in one statement, so two uploads never both continue it;
    /// returns its multipart id. Rows of `session` itself are left alone.
    ///
    /// Whether the other session's process is dead is not known here: sessions have no heartbeat. A
    /// live one (another server uploading the same NAR at this moment) loses the race at worst: both
    /// send the same deterministic parts, the first to complete wins, the other's completion fails and
    /// its retry starts afresh (it finds the NAR stored meanwhile only through the next claim).
    pub(crate) async fn take_over_multipart(&self, session: i64, key: &ObjectKey) -> Result<Option<String>, DbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "WITH old AS ( \
                   SELECT m.upload_id FROM upload_multiparts m JOIN uploads u ON u.id = m.upload_id \
                   WHERE m.key = $2 AND m.resumable AND m.upload_id <> $1 \
                   AND NOT EXISTS (SELECT 1 FROM upload_multiparts s WHERE s.upload_id = $1 AND s.key = $2) \
                   ORDER BY u.started_at DESC LIMIT 1 FOR UPDATE OF m SKIP LOCKED) \
                 UPDATE upload_multiparts m SET upload_id = $1 FROM old \
                 WHERE m.upload_id = old.upload_id AND m.key = $2 RETURNING m.multipart_id",
                &[&session, &key.as_str()],
            )
            .await
            .map_err(q("take_over_multipart"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Takes over the multipart upload of `key` that an earlier push of `owner` started and never finished
    /// (the newest, if several): moves its row into `session`, in one statement, so two pushes never both
    /// continue it; returns its multipart id. Only a push row (not `resumable`: the daemon's are taken
    /// over by [`Db::take_over_multipart`]) of a session `owner` opened qualifies — another token's
    /// upload is never handed out — and only when that session looks dead: none of its leases was
    /// touched since `stale_before` (a live pusher touches them every 30 s). Rows of `session` itself are
    /// left alone.
    pub(crate) async fn take_over_push_multipart(
        &self,
        session: i64,
        owner: &SessionOwner,
        key: &ObjectKey,
        stale_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<String>, DbError> {
        let c = self.client().await?;
        let (token, oidc) = owner.columns();
        let row = c
            .query_opt(
                "WITH old AS ( \
                   SELECT m.upload_id FROM upload_multiparts m JOIN uploads u ON u.id = m.upload_id \
                   WHERE m.key = $2 AND NOT m.resumable AND m.upload_id <> $1 \
                   AND u.token_id IS NOT DISTINCT FROM $3 AND u.oidc_subject IS NOT DISTINCT FROM $4 \
                   AND NOT EXISTS (SELECT 1 FROM upload_leases l WHERE l.upload_id = m.upload_id \
                                   AND l.touched >= $5) \
                   AND NOT EXISTS (SELECT 1 FROM upload_multiparts s WHERE s.upload_id = $1 AND s.key = $2) \
                   ORDER BY u.started_at DESC LIMIT 1 FOR UPDATE OF m SKIP LOCKED) \
                 UPDATE upload_multiparts m SET upload_id = $1 FROM old \
                 WHERE m.upload_id = old.upload_id AND m.key = $2 RETURNING m.multipart_id",
                &[&session, &key.as_str(), &token, &oidc, &stale_before],
            )
            .await
            .map_err(q("take_over_push_multipart"))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Drops the record of the multipart upload of `key` by sessions `ids` (completed or aborted).
    pub(crate) async fn forget_multipart(&self, ids: &[i64], key: &ObjectKey) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute("DELETE FROM upload_multiparts WHERE upload_id = ANY($1) AND key = $2", &[&ids, &key.as_str()])
            .await
            .map_err(q("forget_multipart"))?;
        Ok(())
    }
}
