//! The local directory backend: the bucket layout as files, written atomically (temp file, fsync,
//! rename) so a reader never sees a partial object.

use super::{ByteStream, ObjectKey, ObjectMeta, StoreError};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

/// A directory holding the cache layout.
pub struct LocalStore {
    root: PathBuf,
}

impl LocalStore {
    /// Opens (creating if needed) the directory.
    pub fn open(root: PathBuf) -> Result<Self, StoreError> {
        todo!("{root:?}")
    }
    /// The root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }
    pub(super) async fn put(&self, key: &ObjectKey, body: Bytes, _content_type: &str) -> Result<(), StoreError> {
        todo!("{key} {}", body.len())
    }
    pub(super) async fn put_stream(
        &self,
        key: &ObjectKey,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StoreError>>,
        _content_type: &str,
    ) -> Result<u64, StoreError> {
        todo!("{key} {}", chunks.len())
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
    pub(super) async fn abort_stale_uploads(&self, older_than: Duration) -> Result<u64, StoreError> {
        todo!("{older_than:?}")
    }
}
