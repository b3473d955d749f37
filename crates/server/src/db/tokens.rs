//! The `api_tokens` table: creating, listing, revoking and looking up the scoped tokens of
//! `niks3 token` (see [`crate::token`]). Only SHA-256 digests of secrets ever reach the database.
//!
//! Every server sharing the database looks a token up on each API request, so a revocation or an expiry
//! takes effect on all of them at the next request; there is no cache to wait for.

use super::{Db, DbError, q};
use chrono::{DateTime, Utc};
use niks3_api::token::{Scopes, TokenError};

/// Identifies a row of `api_tokens` (recorded on the upload sessions the token opens).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenId(pub i64);

/// What `niks3 token list` shows of a token: everything but the secret, which is not stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Its name (unique).
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last presented (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A token that may be used now, as found by [`Db::authenticate_token`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ValidToken {
    /// Its row.
    pub id: TokenId,
    /// Its name, for logs.
    pub name: String,
    /// What it may do.
    pub scopes: Scopes,
}

/// Why a token operation failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenDbError {
    /// A token of that name exists (revoked ones keep their name).
    #[error("a token named {0:?} already exists (names stay taken after revocation); choose another name")]
    NameTaken(String),
    /// No token has that name.
    #[error("no token named {0:?}")]
    NoSuchToken(String),
    /// A row holds something [`crate::token`] does not accept (edited by hand).
    #[error("token {name:?} in the database: {source}")]
    BadRow {
        /// The token's name.
        name: String,
        /// What is wrong with it.
        source: TokenError,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
}

fn info(r: &tokio_postgres::Row) -> Result<TokenInfo, TokenDbError> {
    let name: String = r.get("name");
    let names: Vec<String> = r.get("scopes");
    let scopes = Scopes::parse(&names).map_err(|source| TokenDbError::BadRow { name: name.clone(), source })?;
    Ok(TokenInfo {
        name,
        scopes,
        created_at: r.get("created_at"),
        expires_at: r.get("expires_at"),
        last_used_at: r.get("last_used_at"),
        revoked_at: r.get("revoked_at"),
    })
}

impl Db {
    /// Stores a new token: its name, the SHA-256 of its secret, its scopes and expiry.
    pub async fn create_token(
        &self,
        name: &str,
        digest: &[u8; 32],
        scopes: &Scopes,
        expires_at: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Result<TokenId, TokenDbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "INSERT INTO api_tokens (name, sha256, scopes, created_at, expires_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (name) DO NOTHING RETURNING id",
                &[&name, &digest.as_slice(), &scopes.names(), &now, &expires_at],
            )
            .await
            .map_err(q("create_token"))?;
        row.map(|r| TokenId(r.get(0))).ok_or_else(|| TokenDbError::NameTaken(name.to_owned()))
    }

    /// Every token, revoked and expired ones included, by name.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>, TokenDbError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT name, scopes, created_at, expires_at, last_used_at, revoked_at FROM api_tokens ORDER BY name",
                &[],
            )
            .await
            .map_err(q("list_tokens"))?;
        rows.iter().map(info).collect()
    }

    /// Revokes the token `name` (at once, for every server sharing the database). Revoking a revoked
    /// token keeps its first revocation time and succeeds.
    pub async fn revoke_token(&self, name: &str, now: DateTime<Utc>) -> Result<TokenInfo, TokenDbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, $2) WHERE name = $1 \
                 RETURNING name, scopes, created_at, expires_at, last_used_at, revoked_at",
                &[&name, &now],
            )
            .await
            .map_err(q("revoke_token"))?;
        match row {
            Some(r) => info(&r),
            None => Err(TokenDbError::NoSuchToken(name.to_owned())),
        }
    }

    /// The token whose secret has SHA-256 `digest`, if it exists, is not revoked and has not expired at
    /// `now`; notes its use (at most once a minute, so a busy push does not write on every request).
    /// One round trip.
    pub(crate) async fn authenticate_token(
        &self,
        digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<Option<ValidToken>, TokenDbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "WITH t AS (SELECT id, name, scopes FROM api_tokens \
                   WHERE sha256 = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)), \
                 used AS (UPDATE api_tokens a SET last_used_at = $2 FROM t WHERE a.id = t.id \
                   AND (a.last_used_at IS NULL OR a.last_used_at < $2 - interval '1 minute')) \
                 SELECT id, name, scopes FROM t",
                &[&digest.as_slice(), &now],
            )
            .await
            .map_err(q("authenticate_token"))?;
        let Some(r) = row else { return Ok(None) };
        let name: String = r.get(1);
        let names: Vec<String> = r.get(2);
        let scopes = Scopes::parse(&names).map_err(|source| TokenDbError::BadRow { name: name.clone(), source })?;
        Ok(Some(ValidToken { id: TokenId(r.get(0)), name, scopes }))
    }
}
