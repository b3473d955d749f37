//! PostgreSQL bookkeeping: the pool, the migration runner (embeds `migrations/*.sql`, each applied once in
//! its own transaction under an advisory lock), the queries the upload pipeline, the API and GC need, and
//! the embedded private cluster for the no-flags default.
//!
//! Concurrency contract with GC (see docs/architecture.md): an upload first claims keys ([`Db::claim`],
//! which also clears `marked_at` on them and on every marked row they reach through `refs`), then asks what
//! is missing; GC deletes only rows that are still marked when it deletes them, so a claim made at any
//! moment protects the object and, for a narinfo, its whole closure. The pipeline claims a level of its
//! closure at a time and stops at cached narinfos; the push API claims its whole closure at once.
//! Every function takes the current time from the caller so tests can move the clock.
//!
//! How that is made true, precisely:
//! - [`Db::claim`] holds the *shared* [`GC_LOCK`] for its transaction; GC's mark phase and each
//!   delete batch hold it *exclusively*. So a claim lands either before a mark/delete step (which then sees
//!   the claim or the cleared mark) or after it (the batch's rows are gone, so the keys read as missing and
//!   are uploaded again).
//! - GC deletes in two steps: a batch's rows move from `objects` into the tombstone table `gc_deleting`,
//!   the store objects are deleted, then the tombstones go (failures get their rows back). A key with a
//!   tombstone has no row, so it counts as missing. If GC dies in between, the tombstones stay: the next GC
//!   finishes them first, and a claim drops the tombstones of keys it claims (their objects are in
//!   an unknown state, so they must be uploaded again). Rows flagged `deleting` by older versions are
//!   treated the same way (missing; finished by GC; dropped by a claim).
//! - [`Db::record_object`] never clears `deleting`: an object must be claimed before it is written.
//! - [`Db::finish_upload`] fails with [`DbError::UploadExpired`] if GC dropped the upload as failed
//!   (older than `failed_uploads_older_than`); the path must then be uploaded again from the start.

pub mod audit;
pub mod embedded;
pub(crate) mod leases;
mod migrate;
pub mod pins;
pub mod tokens;
pub mod uploads;

use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use niks3_nix::hash::Sha256Hash;
use niks3_storage::ObjectKey;
use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::NoTls;

/// Advisory lock taken shared by uploads claiming keys and exclusively by GC while it marks or deletes.
pub const GC_LOCK: i64 = 0x6e69_6b73_0000_0002;
/// Advisory lock held for a whole GC run, so two runs never overlap.
pub const GC_RUN_LOCK: i64 = 0x6e69_6b73_0000_0003;
/// The SQLSTATE `niks3_claim` raises when the upload session is gone (GC dropped it as failed).
const UPLOAD_EXPIRED_SQLSTATE: &str = "NK001";
/// Advisory lock serialising migrations between servers starting together.
pub(crate) const MIGRATION_LOCK: i64 = 0x6e69_6b73_0000_0001;

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
    #[error("PostgreSQL {what}: {}", describe(source))]
    Query {
        /// The operation (e.g. `begin_upload: unmark`).
        what: &'static str,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// A migration failed; `name` is its file name.
    #[error("migration {name}: {}", describe(source))]
    Migration {
        /// The migration's file name.
        name: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The upload was dropped by GC as failed (it was older than `failed_uploads_older_than`) before it
    /// finished; its claims are gone, so the path must be uploaded again from the start.
    #[error("upload {0:?} expired: garbage collection dropped it as failed; upload the path again")]
    UploadExpired(UploadId),
}

impl DbError {
    /// True when retrying later may succeed (connection lost, server down), false for bugs/config.
    pub fn is_transient(&self) -> bool {
        match self {
            DbError::Config(_) => false,
            DbError::Pool(_) | DbError::UploadExpired(_) => true,
            DbError::Query { source, .. } | DbError::Migration { source, .. } => pg_error_is_transient(source),
        }
    }
}

/// The driver's error with what it hides behind "db error": the server's message, detail and SQLSTATE,
/// or the underlying cause (e.g. the socket error).
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(d) = db.detail() {
            s.push_str(": ");
            s.push_str(d);
        }
        return s;
    }
    match std::error::Error::source(e) {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Connection lost or refused, server shutting down or starting, serialization failure or deadlock.
fn pg_error_is_transient(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        let c = code.code();
        return c.starts_with("08") || c.starts_with("57P") || c == "40001" || c == "40P01" || c == "53300";
    }
    // No SQLSTATE: the failure was below SQL (socket, connect, timeout).
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some() {
            return true;
        }
        src = s.source();
    }
    let text = e.to_string();
    text.starts_with("error connecting") || text.starts_with("timeout") || text.starts_with("error communicating")
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

/// A stored file as the database knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StoredFile {
    /// Size in bytes as stored.
    pub size: u64,
    /// SHA-256 of the stored bytes, when recorded.
    pub file_hash: Option<Sha256Hash>,
}

/// Counts for the landing page, `/metrics` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Rows in `objects` (not being deleted).
    pub objects: u64,
    /// Sum of their sizes in bytes.
    pub bytes: u64,
    /// Of those, narinfos (store paths in the cache).
    pub narinfos: u64,
    /// Closures (pushed roots) remembered.
    pub closures: u64,
    /// Of those, closures pushed without some paths (over `--max-nar-size`).
    pub incomplete_closures: u64,
    /// Uploads in flight.
    pub uploads: u64,
    /// Objects marked unreachable, waiting for their grace period.
    pub marked: u64,
    /// Pins.
    pub pins: u64,
}

/// A pool of connections to the cache's database.
#[derive(Clone)]
pub struct Db {
    pool: deadpool_postgres::Pool,
}

/// Maps a tokio-postgres error of operation `what` into [`DbError::Query`].
fn q(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> DbError {
    move |source| DbError::Query { what, source }
}

/// The keys as `&str`, for `text[]` parameters.
fn strs(keys: &[ObjectKey]) -> Vec<&str> {
    keys.iter().map(ObjectKey::as_str).collect()
}

/// Records objects in one statement (one round trip, one commit): NAR files (`unnest` of `$6` keys, `$7`
/// kinds, `$8` sizes, `$9` `FileHash`es, NULL when unknown) whose recorded `FileHash` is kept (a stored
/// NAR is never replaced, so the first hash recorded is the file's), and objects (`unnest` of `$1` keys,
/// `$2` kinds, `$3` sizes, `$4` newline-joined refs), which get their size and refs. Every row gets
/// `last_pushed` = `$5` and loses its GC mark. No key may appear twice, nor a NAR among the objects (one
/// statement cannot touch a row twice): [`NarRows`] and [`ObjectRows`] keep the last of each key.
const RECORD: &str = "WITH nar AS (\
     INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed, file_hash) \
     SELECT k, kd, s, '{}', $5, $5, h FROM unnest($6::text[], $7::text[], $8::int8[], $9::text[]) AS n(k, kd, s, h) \
     ON CONFLICT (key) DO UPDATE SET size = EXCLUDED.size, last_pushed = EXCLUDED.last_pushed, \
     marked_at = NULL, file_hash = COALESCE(objects.file_hash, EXCLUDED.file_hash) RETURNING 1) \
     INSERT INTO objects (key, kind, size, refs, first_seen, last_pushed) \
     SELECT k, kd, s, CASE WHEN r = '' THEN '{}'::text[] ELSE string_to_array(r, E'\\n') END, $5, $5 \
     FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[]) AS u(k, kd, s, r) \
     ON CONFLICT (key) DO UPDATE SET size = EXCLUDED.size, refs = EXCLUDED.refs, \
     last_pushed = EXCLUDED.last_pushed, marked_at = NULL";

/// A stored NAR file to record: its key, size and `FileHash` when known.
pub(crate) type NarRecord<'a> = (&'a ObjectKey, u64, Option<&'a Sha256Hash>);

/// NAR files as the column arrays of [`RECORD`], the last record of each key only.
struct NarRows<'a> {
    keys: Vec<&'a str>,
    kinds: Vec<&'static str>,
    sizes: Vec<i64>,
    hashes: Vec<Option<String>>,
}

impl<'a> NarRows<'a> {
    fn new(nars: &[NarRecord<'a>]) -> Self {
        let mut last = HashMap::with_capacity(nars.len());
        for (i, n) in nars.iter().enumerate() {
            last.insert(n.0.as_str(), i);
        }
        let nars: Vec<&NarRecord<'a>> =
            nars.iter().enumerate().filter(|(i, n)| last.get(n.0.as_str()) == Some(i)).map(|(_, n)| n).collect();
        NarRows {
            keys: nars.iter().map(|n| n.0.as_str()).collect(),
            kinds: nars.iter().map(|n| n.0.kind().as_str()).collect(),
            sizes: nars.iter().map(|n| i64::try_from(n.1).unwrap_or(i64::MAX)).collect(),
            hashes: nars.iter().map(|n| n.2.map(Sha256Hash::to_nix_string)).collect(),
        }
    }
}

/// [`NewObject`]s as the column arrays of [`RECORD`], the last record of each key only (one
/// INSERT cannot touch a row twice).
struct ObjectRows<'a> {
    keys: Vec<&'a str>,
    kinds: Vec<&'static str>,
    sizes: Vec<i64>,
    /// text[][] must be rectangular, so refs travel as one newline-joined string per object (keys never
    /// contain newlines: they are built from validated parts).
    refs: Vec<String>,
}

impl<'a> ObjectRows<'a> {
    fn new(objs: &'a [NewObject]) -> Self {
        let mut last = HashMap::with_capacity(objs.len());
        for (i, o) in objs.iter().enumerate() {
            last.insert(o.key.as_str(), i);
        }
        let objs: Vec<&NewObject> =
            objs.iter().enumerate().filter(|(i, o)| last.get(o.key.as_str()) == Some(i)).map(|(_, o)| o).collect();
        ObjectRows {
            keys: objs.iter().map(|o| o.key.as_str()).collect(),
            kinds: objs.iter().map(|o| o.key.kind().as_str()).collect(),
            sizes: objs.iter().map(|o| i64::try_from(o.size).unwrap_or(i64::MAX)).collect(),
            refs: objs.iter().map(|o| strs(&o.refs).join("\n")).collect(),
        }
    }
}

/// Bounds on waiting for a database that stopped answering, unless the connection string sets its own:
/// a host that does not answer a connection attempt is given up after [`CONNECT_TIMEOUT`] (then the next
/// host of a multi-host string is tried, so a failover to a promoted standby is found), and a connection
/// whose server vanished mid-query (power loss, network partition: no reset ever arrives) is dropped
/// after about [`DEAD_PEER_TIMEOUT`] instead of the kernel's two hours, so a request fails with a
/// transient error and is retried instead of hanging.
fn bound_waits(cfg: &mut tokio_postgres::Config) {
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(CONNECT_TIMEOUT);
    }
    if cfg.get_tcp_user_timeout().is_none() {
        cfg.tcp_user_timeout(DEAD_PEER_TIMEOUT);
    }
    if cfg.get_keepalives_idle() == Duration::from_hours(2) {
        cfg.keepalives_idle(DEAD_PEER_TIMEOUT / 2);
        cfg.keepalives_interval(Duration::from_secs(5));
        cfg.keepalives_retries(3);
    }
}

/// Parses a connection string (`--db`): a `postgres://`/`postgresql://` URL or `key=value` pairs, either
/// with several comma-separated hosts (a primary and its standbys, with `target_session_attrs=read-write`
/// to land on the writable one), with [`bound_waits`] applied.
fn parse_config(url: &str) -> Result<tokio_postgres::Config, DbError> {
    // The parse error never echoes the string (it may hold a password).
    let mut cfg = tokio_postgres::Config::from_str(url)
        .map_err(|e| DbError::Config(format!("unparsable connection string: {e}")))?;
    bound_waits(&mut cfg);
    Ok(cfg)
}

/// See [`bound_waits`].
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// See [`bound_waits`].
const DEAD_PEER_TIMEOUT: Duration = Duration::from_secs(30);

impl Db {
    /// Connects (a `postgres://` URL or `host=… dbname=…` string; `host` may be a socket directory) and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let db = Self::connect_without_migrating(url)?;
        let mut client = db.client().await?;
        migrate::run(&mut client).await?;
        Ok(db)
    }

    /// Builds the pool without touching the server (connections are made on first use) and without
    /// migrating; for tools that must not change the schema.
    pub(crate) fn connect_without_migrating(url: &str) -> Result<Self, DbError> {
        let cfg = parse_config(url)?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let mgr = Manager::from_config(cfg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr)
            .max_size((2 * cores).max(4))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| DbError::Config(format!("building the connection pool: {e}")))?;
        Ok(Db { pool })
    }

    /// The underlying pool (for GC and the API's own queries).
    pub fn pool(&self) -> &deadpool_postgres::Pool {
        &self.pool
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, DbError> {
        self.pool.get().await.map_err(|e| DbError::Pool(e.to_string()))
    }

    /// Cheap liveness check for `/health`.
    pub async fn ping(&self) -> Result<(), DbError> {
        let c = self.client().await?;
        c.simple_query("SELECT 1").await.map_err(q("ping"))?;
        Ok(())
    }

    /// Opens an upload session for the closure rooted at `root` and claims `claimed` in it (see
    /// [`Db::claim`]). The session belongs to the server (or the seed token); see [`Db::begin_upload_for`].
    pub async fn begin_upload(
        &self,
        root: &ObjectKey,
        claimed: &[ObjectKey],
        now: DateTime<Utc>,
    ) -> Result<UploadId, DbError> {
        self.begin_upload_for(&uploads::SessionOwner::Server, root, claimed, now).await
    }

    /// [`Db::begin_upload`] for a session opened by `owner` (an API token, an OIDC subject, or the server's
    /// own pipeline and the seed token): the push API lets only that owner upload into, complete or abort it.
    pub(crate) async fn begin_upload_for(
        &self,
        owner: &uploads::SessionOwner,
        root: &ObjectKey,
        claimed: &[ObjectKey],
        now: DateTime<Utc>,
    ) -> Result<UploadId, DbError> {
        let id = {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "INSERT INTO uploads (root, claimed, started_at, token_id, oidc_subject) \
                     VALUES ($1, '{}', $2, $3, $4) RETURNING id",
                )
                .await
                .map_err(q("begin_upload"))?;
            let (token, oidc) = owner.columns();
            let row = c.query_one(&stmt, &[&root.as_str(), &now, &token, &oidc]).await.map_err(q("begin_upload"))?;
            UploadId(row.get(0))
        };
        if !claimed.is_empty()
            && let Err(e) = self.claim(id, claimed).await
        {
            if let Err(abort) = self.abort_upload(id).await {
                tracing::debug!(error = %abort, "could not drop a session whose claim failed; GC expires it");
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Claims `keys` for upload `id` and returns those the cache lacks (in input order): claim first,
    /// then look, in one round trip (the `niks3_claim` function of migration 0006, under the shared
    /// [`GC_LOCK`]). A claimed key, and everything it refers to, is safe from GC until the session ends;
    /// rows and tombstones a crashed GC left for these keys are dropped (they read as missing). Fails with
    /// [`DbError::UploadExpired`] when GC dropped the session as failed.
    pub async fn claim(&self, id: UploadId, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DbError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c.prepare_cached("SELECT niks3_claim($1, $2, $3)").await.map_err(q("claim"))?;
        let rows = match c.query(&stmt, &[&id.0, &strs(keys), &GC_LOCK]).await {
            Ok(rows) => rows,
            Err(e) if e.code().is_some_and(|c| c.code() == UPLOAD_EXPIRED_SQLSTATE) => {
                return Err(DbError::UploadExpired(id));
            }
            Err(e) => return Err(q("claim")(e)),
        };
        let absent: HashSet<&str> = rows.iter().map(|r| r.get::<_, &str>(0)).collect();
        Ok(keys.iter().filter(|k| absent.contains(k.as_str())).cloned().collect())
    }

    /// Of `keys`, those with no row in `objects` (one round trip, whatever the count), in input order.
    pub async fn missing(&self, keys: &[ObjectKey]) -> Result<Vec<ObjectKey>, DbError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let stmt = c
            .prepare_cached("SELECT key FROM objects WHERE key = ANY($1) AND NOT deleting")
            .await
            .map_err(q("missing"))?;
        let rows = c.query(&stmt, &[&strs(keys)]).await.map_err(q("missing"))?;
        let present: HashSet<&str> = rows.iter().map(|r| r.get::<_, &str>(0)).collect();
        Ok(keys.iter().filter(|k| !present.contains(k.as_str())).cloned().collect())
    }

    /// True when `key` has a row (and is not being deleted).
    pub async fn object_exists(&self, key: &ObjectKey) -> Result<bool, DbError> {
        Ok(self.missing(std::slice::from_ref(key)).await?.is_empty())
    }

    /// Records that `obj` is now in the store (upsert: sets size/refs, last_pushed = now, clears marked_at).
    pub async fn record_object(&self, obj: &NewObject, now: DateTime<Utc>) -> Result<(), DbError> {
        self.record_objects(std::slice::from_ref(obj), now).await
    }

    /// [`Db::record_object`] for many objects in one round trip.
    pub async fn record_objects(&self, objs: &[NewObject], now: DateTime<Utc>) -> Result<(), DbError> {
        if objs.is_empty() {
            return Ok(());
        }
        self.record("record_object", &[], objs, now).await
    }

    /// Records what a publish wrote, in one statement (one round trip, one commit): the NAR files `nars`
    /// (as [`Db::record_nar`]) and `objs` (as [`Db::record_objects`]; the narinfos among them, never a
    /// NAR). Several paths published together go in one call.
    pub(crate) async fn record_published(
        &self,
        nars: &[NarRecord<'_>],
        objs: &[NewObject],
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.record("record_published", nars, objs, now).await
    }

    /// Runs [`RECORD`] for NAR files and `objs`.
    async fn record(
        &self,
        what: &'static str,
        nars: &[NarRecord<'_>],
        objs: &[NewObject],
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let c = self.client().await?;
        let stmt = c.prepare_cached(RECORD).await.map_err(q(what))?;
        let rows = ObjectRows::new(objs);
        let n = NarRows::new(nars);
        c.execute(
            &stmt,
            &[&rows.keys, &rows.kinds, &rows.sizes, &rows.refs, &now, &n.keys, &n.kinds, &n.sizes, &n.hashes],
        )
        .await
        .map_err(q(what))?;
        Ok(())
    }

    /// Ends an upload successfully: the closure `root` gets pushed_at = now and the upload row goes. One
    /// transaction. Fails with [`DbError::UploadExpired`] if GC dropped the upload meanwhile.
    pub async fn finish_upload(&self, id: UploadId, root: &ObjectKey, now: DateTime<Utc>) -> Result<(), DbError> {
        self.finish_uploads(&[id], std::slice::from_ref(root), &[], None, now).await
    }

    /// Ends the upload sessions `ids` of one push successfully: every root in `roots` becomes a closure
    /// pushed at `now`, incomplete by the store paths in `skipped` (left out by the size policy), and the
    /// sessions go. One transaction. Fails with [`DbError::UploadExpired`] (naming
    /// the first id) when GC dropped any of them meanwhile: then nothing is recorded.
    pub(crate) async fn finish_uploads(
        &self,
        ids: &[UploadId],
        roots: &[ObjectKey],
        skipped: &[String],
        audit: Option<&audit::PushAudit<'_>>,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        let Some(first) = ids.first() else { return Ok(()) };
        let mut raw: Vec<i64> = ids.iter().map(|i| i.0).collect();
        raw.sort_unstable();
        raw.dedup();
        let mut c = self.client().await?;
        let t = c.transaction().await.map_err(q("finish_upload: begin"))?;
        let n =
            t.execute("DELETE FROM uploads WHERE id = ANY($1)", &[&raw]).await.map_err(q("finish_upload: delete"))?;
        if usize::try_from(n).ok() != Some(raw.len()) {
            return Err(DbError::UploadExpired(*first));
        }
        t.execute(
            "INSERT INTO closures (root, pushed_at, skipped) \
             SELECT DISTINCT r, $2::timestamptz, $3::text[] FROM unnest($1::text[]) r \
             ON CONFLICT (root) DO UPDATE SET pushed_at = GREATEST(closures.pushed_at, EXCLUDED.pushed_at), \
             skipped = EXCLUDED.skipped",
            &[&strs(roots), &now, &skipped],
        )
        .await
        .map_err(q("finish_upload: closures"))?;
        if let Some(a) = audit {
            t.execute(
                "INSERT INTO audit_log (at, who, action, subject, detail) \
                 SELECT $1, $2, 'push', r, $4 FROM unnest($3::text[]) r",
                &[&now, &a.who, &a.roots, &a.detail],
            )
            .await
            .map_err(q("finish_upload: audit"))?;
        }
        t.commit().await.map_err(q("finish_upload: commit"))?;
        Ok(())
    }

    /// Records a NAR file now in the store, with its `FileHash` when known (upsert like
    /// [`Db::record_object`]; a `FileHash` already recorded is kept: a stored NAR is never replaced, so
    /// the first hash recorded is the file's).
    pub(crate) async fn record_nar(
        &self,
        key: &ObjectKey,
        size: u64,
        file_hash: Option<&Sha256Hash>,
        now: DateTime<Utc>,
    ) -> Result<(), DbError> {
        self.record("record_nar", &[(key, size, file_hash)], &[], now).await
    }

    /// The stored NAR files among `keys` (rows not being deleted): key → (size, `FileHash` when known).
    pub(crate) async fn nar_files(&self, keys: &[ObjectKey]) -> Result<HashMap<String, StoredFile>, DbError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let c = self.client().await?;
        let rows = c
            .query("SELECT key, size, file_hash FROM objects WHERE key = ANY($1) AND NOT deleting", &[&strs(keys)])
            .await
            .map_err(q("nar_files"))?;
        Ok(rows
            .iter()
            .map(|r| {
                let file_hash = r.get::<_, Option<&str>>(2).and_then(|h| Sha256Hash::parse(h).ok());
                let size = u64::try_from(r.get::<_, i64>(1)).unwrap_or(0);
                (r.get::<_, String>(0), StoredFile { size, file_hash })
            })
            .collect())
    }

    /// For the narinfos among `keys` that are in the cache: key → the key of the NAR it points to (the
    /// first of its refs, as [`crate::upload::publish::Publisher::publish`] records them; `None` for a row
    /// without refs, which no publish writes).
    pub(crate) async fn published_nars(&self, keys: &[ObjectKey]) -> Result<HashMap<String, Option<String>>, DbError> {
        if keys.is_empty() {
            return Ok(HashMap::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT key, refs[1] FROM objects WHERE key = ANY($1) AND kind = 'narinfo' AND NOT deleting",
                &[&strs(keys)],
            )
            .await
            .map_err(q("published_nars"))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, Option<String>>(1))).collect())
    }

    /// For each NAR among `nars` that some narinfo points to: (NAR key, the key of one such narinfo). One
    /// scan of the narinfos (there is no index on refs): only for NAR rows older than `file_hash`.
    pub(crate) async fn narinfos_referring_to(&self, nars: &[ObjectKey]) -> Result<Vec<(String, String)>, DbError> {
        if nars.is_empty() {
            return Ok(Vec::new());
        }
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT DISTINCT ON (refs[1]) refs[1], key FROM objects \
                 WHERE kind = 'narinfo' AND NOT deleting AND refs[1] = ANY($1) ORDER BY refs[1], key",
                &[&strs(nars)],
            )
            .await
            .map_err(q("narinfos_referring_to"))?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect())
    }

    /// Lets session `id` upload the NARs `nars` (key, announced NarSize): through the relay route, or
    /// with a presigned PUT bound to the file.
    pub(crate) async fn allow_nar_uploads(&self, id: UploadId, nars: &[(ObjectKey, u64)]) -> Result<(), DbError> {
        if nars.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = nars.iter().map(|(k, _)| k.as_str()).collect();
        let sizes: Vec<i64> = nars.iter().map(|(_, s)| i64::try_from(*s).unwrap_or(i64::MAX)).collect();
        let c = self.client().await?;
        c.execute(
            "INSERT INTO upload_nars (upload_id, key, nar_size) \
             SELECT $1, k, s FROM unnest($2::text[], $3::int8[]) AS t(k, s) ON CONFLICT DO NOTHING",
            &[&id.0, &keys, &sizes],
        )
        .await
        .map_err(q("allow_nar_uploads"))?;
        Ok(())
    }

    /// The NarSize session `id` announced for the NAR `key`; `None` when the session does not exist, is not
    /// `owner`'s or may not upload that NAR.
    pub(crate) async fn planned_nar_size(
        &self,
        id: UploadId,
        owner: &uploads::SessionOwner,
        key: &ObjectKey,
    ) -> Result<Option<u64>, DbError> {
        let c = self.client().await?;
        let row = c
            .query_opt(
                "SELECT n.nar_size FROM upload_nars n JOIN uploads u ON u.id = n.upload_id \
                 WHERE n.upload_id = $1 AND n.key = $2 AND u.token_id IS NOT DISTINCT FROM $3 \
                 AND u.oidc_subject IS NOT DISTINCT FROM $4",
                &[&id.0, &key.as_str(), &owner.columns().0, &owner.columns().1],
            )
            .await
            .map_err(q("planned_nar_size"))?;
        Ok(row.map(|r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)))
    }

    /// Ends an upload that failed: drops the claim; the objects it wrote stay recorded (GC reclaims them
    /// if nothing reaches them).
    pub async fn abort_upload(&self, id: UploadId) -> Result<(), DbError> {
        let c = self.client().await?;
        c.execute("DELETE FROM uploads WHERE id = $1", &[&id.0]).await.map_err(q("abort_upload"))?;
        Ok(())
    }

    /// Number of closures remembered.
    pub async fn closure_count(&self) -> Result<u64, DbError> {
        Ok(self.stats().await?.closures)
    }

    /// Counts over the whole cache (one round trip).
    pub async fn stats(&self) -> Result<Stats, DbError> {
        let c = self.client().await?;
        let r = c
            .query_one(
                "SELECT \
                   (SELECT count(*) FROM objects WHERE NOT deleting), \
                   (SELECT coalesce(sum(size), 0)::int8 FROM objects WHERE NOT deleting), \
                   (SELECT count(*) FROM objects WHERE kind = 'narinfo' AND NOT deleting), \
                   (SELECT count(*) FROM closures), \
                   (SELECT count(*) FROM uploads), \
                   (SELECT count(*) FROM objects WHERE marked_at IS NOT NULL), \
                   (SELECT count(*) FROM pins), \
                   (SELECT count(*) FROM closures WHERE cardinality(skipped) > 0)",
                &[],
            )
            .await
            .map_err(q("stats"))?;
        let n = |i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
        Ok(Stats {
            objects: n(0),
            bytes: n(1),
            narinfos: n(2),
            closures: n(3),
            uploads: n(4),
            marked: n(5),
            pins: n(6),
            incomplete_closures: n(7),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_postgres::config::{Host, TargetSessionAttrs};

    /// `--db` with several hosts, in both forms docs/configuration.md shows: TCP hosts in a URL, socket
    /// directories as `host=/a,/b`, and socket directories in a URL (percent-encoded, as the URL's path
    /// is the database name).
    #[test]
    fn multi_host_connection_strings_in_url_and_key_value_form_parse_to_the_same_hosts() {
        let tcp = |h: &str| Host::Tcp(h.to_owned());
        let unix = |p: &str| Host::Unix(p.into());
        let cases = [
            (
                "postgresql://niks3:secret@db-a.example.org:5432,db-b.example.org:5433/niks3?target_session_attrs=read-write",
                vec![tcp("db-a.example.org"), tcp("db-b.example.org")],
                vec![5432, 5433],
            ),
            ("postgresql://h1,h2/niks3?target_session_attrs=read-write", vec![tcp("h1"), tcp("h2")], vec![]),
            (
                "host=db-a.example.org,db-b.example.org port=5432,5433 user=niks3 password=secret dbname=niks3 \
                 target_session_attrs=read-write",
                vec![tcp("db-a.example.org"), tcp("db-b.example.org")],
                vec![5432, 5433],
            ),
            (
                "host=/run/pg-a,/run/pg-b user=niks3 dbname=niks3 target_session_attrs=read-write",
                vec![unix("/run/pg-a"), unix("/run/pg-b")],
                vec![],
            ),
            (
                "postgresql://niks3@%2Frun%2Fpg-a,%2Frun%2Fpg-b/niks3?target_session_attrs=read-write",
                vec![unix("/run/pg-a"), unix("/run/pg-b")],
                vec![],
            ),
        ];
        for (url, hosts, ports) in cases {
            let cfg = parse_config(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(cfg.get_hosts(), hosts.as_slice(), "{url}");
            if !ports.is_empty() {
                assert_eq!(cfg.get_ports(), ports.as_slice(), "{url}");
            }
            assert_eq!(cfg.get_dbname(), Some("niks3"), "{url}");
            assert_eq!(cfg.get_target_session_attrs(), TargetSessionAttrs::ReadWrite, "{url}");
            // A host that does not answer is given up, so the next one is tried.
            assert_eq!(cfg.get_connect_timeout(), Some(&CONNECT_TIMEOUT), "{url}");
            Db::connect_without_migrating(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn an_unparsable_connection_string_is_a_configuration_error_without_the_secret() {
        let e = parse_config("postgresql://niks3:hunter2@h1,h2/niks3?target_session_attrs=sometimes").expect_err("bad");
        assert!(matches!(e, DbError::Config(_)), "{e:?}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
