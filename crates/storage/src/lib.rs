//! Object storage: the bucket layout as typed keys, and two backends with the same layout — S3 (through
//! rust-s3, multipart for large objects, presigned URLs for remote uploaders) and a local directory.
//!
//! Keys are built only from validated parts ([`ObjectKey`]); nothing here accepts a raw caller string as a
//! key. This crate knows nothing of PostgreSQL or HTTP routes: the server decides what to store, this
//! crate how. (Where an interrupted multipart upload is remembered, so that the next upload of its key
//! continues it, is the server's business too: it hands an [`UploadJournal`] in.)

#![forbid(unsafe_code)]

pub mod key;
pub mod local;
pub mod s3;
pub mod throttle;

pub use key::{ObjectKey, ObjectKind};

use bytes::Bytes;
use std::time::Duration;

/// What went wrong talking to a backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Local file system error at `path`.
    #[error("{op} {path:?}: {source}")]
    Io {
        /// What was being done (`write`, `rename into`, …).
        op: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// S3 request for `key` failed without an HTTP answer (connection refused or reset, timeout, TLS):
    /// transient, the server may be back later.
    #[error("S3 {op} {key}: {reason}")]
    S3 {
        /// The request (`PUT`, `HEAD`, `upload part`, …).
        op: &'static str,
        /// The object key.
        key: String,
        /// What failed, with the bucket and endpoint.
        reason: String,
    },
    /// The S3 server answered the request for `key` with an error status (`reason` carries its error code
    /// and message, never credentials). Transient only for 408, 429 and 5xx.
    #[error("S3 {op} {key}: HTTP {status}: {reason}")]
    S3Status {
        /// The request (`PUT`, `HEAD`, `upload part`, …).
        op: &'static str,
        /// The object key.
        key: String,
        /// The HTTP status.
        status: u16,
        /// The S3 error code and message (or a hint when the answer had no body), with the bucket.
        reason: String,
    },
    /// The S3 server refused the body of a request for `key` as other than what was sent (`BadDigest` and
    /// kin: a byte changed or went missing on the wire). Nothing was stored; transient: sending it again
    /// over a link that corrupts some requests succeeds, and an entry must not be quarantined for it.
    #[error("S3 {op} {key}: the body arrived corrupted: {reason}")]
    Corrupted {
        /// The request (`PUT`, `upload part`, …).
        op: &'static str,
        /// The object key.
        key: String,
        /// The S3 error code and message, with the bucket.
        reason: String,
    },
    /// The backend configuration is unusable (missing bucket, bad endpoint, unreadable key file, …).
    #[error("store configuration: {0}")]
    Config(String),
    /// The data source feeding an upload failed (e.g. the NAR could not be read).
    #[error("upload source for {key}: {reason}")]
    Source {
        /// The object key being uploaded.
        key: String,
        /// What the source reported.
        reason: String,
    },
    /// The object is larger than the store takes in one upload (more than its part limit can hold).
    #[error("object {key} too large: {reason}")]
    TooLarge {
        /// The object key being uploaded.
        key: String,
        /// How far it got, and the limit.
        reason: String,
    },
}

impl StorageError {
    /// True when retrying later may succeed (network, 5xx, throttling), false for configuration errors.
    pub fn is_transient(&self) -> bool {
        match self {
            StorageError::S3 { .. } | StorageError::Io { .. } | StorageError::Corrupted { .. } => true,
            StorageError::S3Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            StorageError::Config(_) | StorageError::Source { .. } | StorageError::TooLarge { .. } => false,
        }
    }
}

/// An object for [`Storage::put_many`].
#[derive(Clone, Debug)]
pub struct SmallObject {
    /// Where it goes.
    pub key: ObjectKey,
    /// All of it.
    pub body: Bytes,
    /// Its `Content-Type` (S3 serves it back).
    pub content_type: &'static str,
}

/// Metadata of a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Size in bytes of the whole object (also when a range of it is read, so callers can build
    /// `Content-Range`).
    pub size: u64,
}

/// Where the multipart uploads of streamed objects are remembered, so that an upload cut short (its
/// process killed) can be continued by the next upload of the same key instead of started over: the
/// server keeps this in PostgreSQL, next to the upload session (this crate knows nothing of sessions).
/// Both methods are best effort: a journal that cannot answer means a fresh upload, never a failure.
pub trait UploadJournal: Send + Sync {
    /// The unfinished multipart upload of `key` that an earlier upload recorded and nobody continues any
    /// more, taken over (so no other upload continues it too); `None` when there is none.
    fn take_over<'a>(&'a self, key: &'a ObjectKey) -> futures::future::BoxFuture<'a, Option<String>>;
    /// Records that multipart upload `upload_id` of `key` was started (before its first part is sent).
    fn started<'a>(&'a self, key: &'a ObjectKey, upload_id: &'a str) -> futures::future::BoxFuture<'a, ()>;
}

/// What [`Storage::put_stream_resumable`] stored, and what it had to send for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streamed {
    /// Bytes stored (the object's size).
    pub size: u64,
    /// Bytes sent to the store: `size`, less the parts an earlier, interrupted upload had already sent.
    pub sent: u64,
    /// Parts of an earlier upload reused (each checked to hold exactly the bytes it would have sent).
    pub reused_parts: u32,
}

/// A byte stream read from the store (for serving NARs without buffering them).
pub type ByteStream = futures::stream::BoxStream<'static, Result<Bytes, StorageError>>;

/// A configured backend.
pub enum Storage {
    /// A local directory with the bucket layout.
    Local(local::LocalStore),
    /// An S3 bucket.
    S3(s3::S3Store),
}

impl Storage {
    /// Writes a small object in one request (narinfo, listing, log, nix-cache-info).
    pub async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.put_many(vec![(key.clone(), body)]).await,
            Storage::S3(s) => s.put(key, body, content_type).await,
        }
    }

    /// Aborts the multipart upload `upload_id` of `key` (one already gone is fine). A local directory has
    /// no multipart uploads: nothing to do.
    pub async fn abort_multipart(&self, key: &ObjectKey, upload_id: &str) -> Result<(), StorageError> {
        match self {
            Storage::Local(_) => Ok(()),
            Storage::S3(s) => s.abort_multipart(key, upload_id).await,
        }
    }

    /// Completes the multipart upload `upload_id` of `key` from its parts' ETags: the object appears. A
    /// local directory has no multipart uploads to complete (a configuration error if asked).
    pub async fn complete_multipart(
        &self,
        key: &ObjectKey,
        upload_id: &str,
        etags: Vec<String>,
    ) -> Result<(), StorageError> {
        match self {
            Storage::Local(_) => {
                Err(StorageError::Config(format!("{key}: a local directory has no multipart uploads")))
            }
            Storage::S3(s) => s.complete_multipart(key, upload_id, etags).await,
        }
    }

    /// Writes several small objects (a path's NAR, listing and log): all at once, each in one request
    /// to S3; in one blocking task for a local directory. Returns when all are stored; on an error some
    /// may be stored, each complete.
    pub async fn put_many(&self, objects: Vec<SmallObject>) -> Result<(), StorageError> {
        match self {
            Storage::Local(s) => s.put_many(objects.into_iter().map(|o| (o.key, o.body)).collect()).await,
            Storage::S3(s) => {
                futures::future::try_join_all(objects.iter().map(|o| s.put(&o.key, o.body.clone(), o.content_type)))
                    .await
                    .map(drop)
            }
        }
    }

    /// Streams an object from `chunks` (a bounded channel, so memory stays bounded): one PUT when it ends
    /// up small, a multipart upload otherwise, with parts sized so that `max_size` (an upper bound of the
    /// length, when known) fits S3's part limit. The object becomes visible only when complete; on error
    /// nothing partial is left visible (an unfinished multipart upload is aborted). Returns the number of
    /// bytes stored.
    pub async fn put_stream(
        &self,
        key: &ObjectKey,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
        content_type: &str,
        max_size: Option<u64>,
    ) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.put_stream(key, chunks, content_type).await,
            Storage::S3(s) => s.put_stream(key, chunks, content_type, max_size, None).await.map(|s| s.size),
        }
    }

    /// [`Storage::put_stream`] that continues the multipart upload of `key` an earlier, interrupted upload
    /// left (found through `journal`) and records the one it starts there: a part the bucket already holds
    /// is not sent again when its size and MD5 (its ETag) match the bytes this stream has for it, so a
    /// deterministic stream (a NAR compressed with the same settings) sends only what is missing. A part
    /// that differs is sent again; an earlier upload that is gone (completed, or aborted by GC) means a
    /// fresh one. A local directory has nothing to continue: it writes the whole stream.
    pub async fn put_stream_resumable(
        &self,
        key: &ObjectKey,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
        content_type: &str,
        max_size: Option<u64>,
        journal: &dyn UploadJournal,
    ) -> Result<Streamed, StorageError> {
        match self {
            Storage::Local(s) => {
                let size = s.put_stream(key, chunks, content_type).await?;
                Ok(Streamed { size, sent: size, reused_parts: 0 })
            }
            Storage::S3(s) => s.put_stream(key, chunks, content_type, max_size, Some(journal)).await,
        }
    }

    /// Reads a whole small object; `None` when absent.
    pub async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        match self {
            Storage::Local(s) => s.get(key).await,
            Storage::S3(s) => s.get(key).await,
        }
    }

    /// Streams an object, optionally a byte range `(start, end_inclusive)`; `None` when absent.
    /// The range is clamped to the object: a range starting at or past the end yields an empty stream
    /// (the caller answers 416 by comparing `start` with `meta.size`).
    pub async fn get_stream(
        &self,
        key: &ObjectKey,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        match self {
            Storage::Local(s) => s.get_stream(key, range).await,
            Storage::S3(s) => s.get_stream(key, range).await,
        }
    }

    /// Size of an object, `None` when absent.
    pub async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        match self {
            Storage::Local(s) => s.head(key).await,
            Storage::S3(s) => s.head(key).await,
        }
    }

    /// Deletes objects (absent ones count as deleted); returns the keys that could not be deleted, with why.
    pub async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<(ObjectKey, StorageError)> {
        match self {
            Storage::Local(s) => s.delete_many(keys).await,
            Storage::S3(s) => s.delete_many(keys).await,
        }
    }

    /// A presigned PUT URL for `key`, valid for `expiry`, so a remote client can upload straight to the
    /// bucket. `None` for the local backend (clients then upload through the server).
    pub async fn presign_put(&self, key: &ObjectKey, expiry: Duration) -> Result<Option<String>, StorageError> {
        match self {
            Storage::Local(_) => Ok(None),
            Storage::S3(s) => s.presign_put(key, expiry).await.map(Some),
        }
    }

    /// Aborts unfinished multipart uploads started more than `older_than` ago (GC phase 1); returns how
    /// many were aborted. A no-op for the local backend beyond removing stale temporary files.
    pub async fn abort_stale_uploads(&self, older_than: Duration) -> Result<u64, StorageError> {
        self.abort_stale_uploads_except(older_than, &std::collections::HashSet::new()).await
    }

    /// [`Storage::abort_stale_uploads`], leaving alone the multipart uploads whose ids are in `keep`:
    /// those the uploads in flight recorded (one a restarted daemon is continuing was started long ago,
    /// yet is not stale).
    pub async fn abort_stale_uploads_except(
        &self,
        older_than: Duration,
        keep: &std::collections::HashSet<String>,
    ) -> Result<u64, StorageError> {
        match self {
            Storage::Local(s) => s.abort_stale_uploads(older_than).await,
            Storage::S3(s) => s.abort_stale_uploads(older_than, keep).await,
        }
    }

    /// Keys of the stored objects starting with `prefix`, sorted (for tests, audits and the GC's sweep of
    /// objects the database does not know). Lists the whole prefix: use narrow prefixes on big buckets.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Local(s) => s.list(prefix).await,
            Storage::S3(s) => s.list(prefix).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// The pipeline and the HTTP server run these futures on a multi-threaded runtime.
    #[test]
    fn futures_and_streams_are_send() {
        fn check(store: &Storage, key: &ObjectKey) {
            let (_tx, rx) = tokio::sync::mpsc::channel(1);
            assert_send(&store.put(key, Bytes::new(), "x"));
            assert_send(&store.put_stream(key, rx, "x", None));
            assert_send(&store.get(key));
            assert_send(&store.get_stream(key, None));
            assert_send(&store.head(key));
            assert_send(&store.delete_many(std::slice::from_ref(key)));
            assert_send(&store.presign_put(key, Duration::from_secs(1)));
            assert_send(&store.abort_stale_uploads(Duration::from_secs(1)));
            assert_send(&store.list(""));
        }
        fn sync_store<T: Send + Sync>() {}
        sync_store::<Storage>();
        let _ = check;
    }
}
