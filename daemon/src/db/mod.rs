//! PostgreSQL bookkeeping: the pool, the migration runner (embeds `migrations/*.sql`, each applied once in
//! its own transaction under an advisory lock), the queries the upload pipeline, the API and GC need, and
//! the embedded private cluster for the no-flags default.
//!
//! Concurrency contract with GC (see docs/architecture.md): an upload first claims every key of its closure
//! (`begin_upload`, which also clears `marked_at` on them), then asks what is missing; GC deletes only rows
//! that are still marked when it deletes them, so a claim made at any moment protects the object.
//! Every function takes the current time from the caller so tests can move the clock.

pub mod embedded;

use crate::store::ObjectKey;
use chrono::{DateTime, Utc};

/// What went wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The connection string is unusable.
    #[error("database configuration: {0}")]
    Config(String),
    /// No connection could be had from the pool.
    #[error("connecting to PostgreSQL: {0}")]
    Pool(String),
    /// A query failed; `what` names the operation.
    #[error("PostgreSQL {what}: {source}")]
    Query { what: &'static str, source: tokio_postgres::Error },
    /// A migration failed; `name` is its file name.
    #[error("migration {name}: {source}")]
    Migration { name: String, source: tokio_postgres::Error },
}

impl DbError {
    /// True when retrying later may succeed (connection lost, server down), false for bugs/config.
    pub fn is_transient(&self) -> bool {
        todo!()
    }
}

/// Identifies an upload in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UploadId(pub i64);

/// An object about to be (or just) written to the store.
#[derive(Clone, Debug)]
pub struct NewObject {
    /// Its key.
    pub key: ObjectKey,
    /// Size in bytes as stored.
    pub size: u64,
    /// Keys it keeps alive.
    pub refs: Vec<ObjectKey>,
}

/// A pool of connections to the cache's database.
#[derive(Clone)]
pub struct Db {
    pool: deadpool_postgres::Pool,
}

impl Db {
    /// Connects (a `postgres://` URL or `host=… dbname=…` string; `host` may be a socket directory) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        todo!("{url}")
    }
    /// The underlying pool (for GC and the API's own queries).
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }
    /// Cheap liveness check for `/health`.
    pub async fn ping(&self) -> Result<(), DbError> {
        todo!()
    }
    /// Registers an upload of the closure rooted at `root` that will write or rely on `claimed`; unmarks
    /// every claimed key that exists. One transaction.
    pub async fn begin_upload(&self, root: &ObjectKey, claimed: &[ObjectKey], now: DateTime<Utc>) -> Result<UploadId, DbError> {
        todo!("{root} {claimed:?} {now}")
    }
    /// Of `keys`, those with no row in `objects` (one round trip, whatever the count), in input order.
    pub async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DbError> {
        todo!("{keys:?}")
    }
    /// Records that `obj` is now in the store (upsert: sets size/refs, last_pushed = now, clears marked_at).
    pub async fn record_object(&self, obj: &NewObject, now: DateTime<Utc>) -> Result<(), DbError> {
        todo!("{obj:?} {now}")
    }
    /// Ends an upload successfully: the closure `root` gets pushed_at = now and the upload row goes. One
    /// transaction.
    pub async fn finish_upload(&self, id: UploadId, root: &ObjectKey, now: DateTime<Utc>) -> Result<(), DbError> {
        todo!("{id:?} {root} {now}")
    }
    /// Ends an upload that failed: drops the claim; the objects it wrote stay recorded (GC reclaims them
    /// if nothing reaches them).
    pub async fn abort_upload(&self, id: UploadId) -> Result<(), DbError> {
        todo!("{id:?}")
    }
}
