//! The S3 backend (rust-s3, rustls): path-style addressing for Garage/MinIO, SigV4, multipart uploads
//! in equal parts (R2 requires equal sizes) above a threshold, presigned PUT URLs.

use super::{ByteStream, ObjectKey, ObjectMeta, StoreError};
use bytes::Bytes;
use std::time::Duration;

/// How to reach a bucket. Secrets are held here only in memory and never printed (see `Debug`).
#[derive(Clone)]
pub struct S3Config {
    /// `http(s)://host:port`; empty for AWS's default endpoint for `region`.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Region (`garage`, `auto` for R2, `us-east-1`, …).
    pub region: String,
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Path-style addressing (`endpoint/bucket/key`); needed for Garage and MinIO.
    pub path_style: bool,
    /// Part size for multipart uploads (≥ 8 MiB); also the threshold above which multipart is used.
    pub part_size: usize,
}

impl std::fmt::Debug for S3Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Config")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("part_size", &self.part_size)
            .finish_non_exhaustive()
    }
}

/// A connected bucket.
pub struct S3Store {
    config: S3Config,
}

impl S3Store {
    /// Builds the client; does no network I/O.
    pub fn new(config: S3Config) -> Result<Self, StoreError> {
        todo!("{config:?}")
    }
    /// The configuration (for logging; secrets are redacted by `Debug`).
    pub fn config(&self) -> &S3Config {
        &self.config
    }
    pub(super) async fn put(&self, key: &ObjectKey, body: Bytes, content_type: &str) -> Result<(), StoreError> {
        todo!("{key} {} {content_type}", body.len())
    }
    pub(super) async fn put_stream(
        &self,
        key: &ObjectKey,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
        content_type: &str,
    ) -> Result<u64, StoreError> {
        todo!("{key} {} {content_type}", chunks.len())
    }
    pub(super) async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StoreError> {
        todo!("{key}")
    }
    pub(super) async fn get_stream(
        &self,
        key: &ObjectKey,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StoreError> {
        todo!("{key} {range:?}")
    }
    pub(super) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StoreError> {
        todo!("{key}")
    }
    pub(super) async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<(ObjectKey, StoreError)> {
        todo!("{keys:?}")
    }
    pub(super) async fn presign_put(&self, key: &ObjectKey, expiry: Duration) -> Result<String, StoreError> {
        todo!("{key} {expiry:?}")
    }
    pub(super) async fn abort_stale_uploads(&self, older_than: Duration) -> Result<u64, StoreError> {
        todo!("{older_than:?}")
    }
}
