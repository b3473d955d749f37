//! The local directory backend: atomic writes (nothing partial visible, no temp files left after a failed
//! stream), streaming and range reads, deletes of present and absent keys, stale temp file cleanup.

use crate::support::objects::{data, nar_key, narinfo_key};
use bytes::Bytes;
use futures::StreamExt;
use niks3_storage::local::LocalStore;
use niks3_storage::{ObjectKey, Storage, StorageError};
use sha2::Digest;
use std::time::Duration;

fn setup() -> (tempfile::TempDir, Storage) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("open"));
    (dir, store)
}

fn feed(
    data: Vec<u8>,
    chunk: usize,
    fail_after: Option<usize>,
) -> tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let data = Bytes::from(data);
        for (i, start) in (0..data.len()).step_by(chunk).enumerate() {
            if fail_after.is_some_and(|f| i * chunk >= f) {
                let _ =
                    tx.send(Err(StorageError::Source { key: "test".into(), reason: "NAR read failed".into() })).await;
                return;
            }
            if tx.send(Ok(data.slice(start..(start + chunk).min(data.len())))).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn read_all(store: &Storage, key: &ObjectKey, range: Option<(u64, Option<u64>)>) -> (u64, Vec<u8>) {
    let (meta, mut stream) = store.get_stream(key, range).await.expect("get_stream").expect("object exists");
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= 64 * 1024, "chunks are bounded");
        out.extend_from_slice(&chunk);
    }
    (meta.size, out)
}

fn tmp_files(dir: &tempfile::TempDir) -> usize {
    std::fs::read_dir(dir.path().join("cache/.tmp")).expect("tmp dir").count()
}

#[tokio::test]
async fn put_get_head_delete_round_trip() {
    let (dir, store) = setup();
    let key = narinfo_key(1);
    assert_eq!(store.get(&key).await.expect("get"), None);
    assert_eq!(store.head(&key).await.expect("head"), None);
    assert!(store.get_stream(&key, None).await.expect("stream").is_none());
    store.put(&key, Bytes::from_static(b"hello"), "text/plain").await.expect("put");
    store.put(&key, Bytes::from_static(b"hello!"), "text/plain").await.expect("overwrite");
    assert_eq!(store.get(&key).await.expect("get"), Some(Bytes::from_static(b"hello!")));
    assert_eq!(store.head(&key).await.expect("head").map(|m| m.size), Some(6));
    assert_eq!(tmp_files(&dir), 0);
    assert!(store.presign_put(&key, Duration::from_mins(1)).await.expect("presign").is_none());
    assert!(store.delete_many(&[key.clone(), narinfo_key(2)]).await.is_empty());
    assert_eq!(store.get(&key).await.expect("get"), None);
}

#[tokio::test]
async fn streams_and_ranges() {
    let (dir, store) = setup();
    let d = data(3 * 1024 * 1024 + 17, 1);
    let key = nar_key(&d);
    assert_eq!(store.put_stream(&key, feed(d.clone(), 100_000, None), "x", None).await.expect("put"), d.len() as u64);
    assert_eq!(tmp_files(&dir), 0);
    let len = d.len() as u64;
    let (size, back) = read_all(&store, &key, None).await;
    assert_eq!(size, len);
    assert_eq!(sha2::Sha256::digest(&back), sha2::Sha256::digest(&d));
    assert_eq!(read_all(&store, &key, Some((10, Some(19)))).await, (len, d[10..20].to_vec()));
    assert_eq!(read_all(&store, &key, Some((70_000, Some(200_000)))).await, (len, d[70_000..=200_000].to_vec()));
    assert_eq!(read_all(&store, &key, Some((len - 5, None))).await, (len, d[d.len() - 5..].to_vec()));
    assert_eq!(read_all(&store, &key, Some((len - 5, Some(len + 100)))).await, (len, d[d.len() - 5..].to_vec()));
    assert_eq!(read_all(&store, &key, Some((len, None))).await, (len, Vec::new()));
    assert_eq!(read_all(&store, &key, Some((20, Some(10)))).await, (len, Vec::new()));
    assert_eq!(store.list("nar/").await.expect("list"), vec![key.to_string()]);
}

#[tokio::test]
async fn failed_stream_leaves_nothing() {
    let (dir, store) = setup();
    let d = data(1024 * 1024, 2);
    let key = nar_key(&d);
    let err = store.put_stream(&key, feed(d, 64 * 1024, Some(512 * 1024)), "x", None).await.expect_err("must fail");
    assert!(matches!(err, StorageError::Source { .. }), "{err}");
    assert_eq!(store.head(&key).await.expect("head"), None);
    assert!(store.list("").await.expect("list").is_empty());
    assert_eq!(tmp_files(&dir), 0, "temp file left behind");
}

#[tokio::test]
async fn abort_stale_uploads_removes_old_temp_files_only() {
    let (dir, store) = setup();
    let tmp = dir.path().join("cache/.tmp/crashed.part");
    std::fs::write(&tmp, b"partial").expect("write");
    assert_eq!(store.abort_stale_uploads(Duration::from_hours(1)).await.expect("abort"), 0);
    assert_eq!(store.abort_stale_uploads(Duration::MAX).await.expect("absurd age"), 0);
    assert!(tmp.exists());
    assert_eq!(store.abort_stale_uploads(Duration::ZERO).await.expect("abort"), 1);
    assert!(!tmp.exists());
    assert!(store.list("").await.expect("list").is_empty(), "temp files are not objects");
}

#[tokio::test]
async fn unusable_root_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").expect("write");
    let err = LocalStore::open(file.clone()).err().expect("must fail");
    assert!(err.to_string().contains("not-a-dir"), "{err}");
}

#[tokio::test]
async fn every_layout_kind_is_stored_in_its_place() {
    let (dir, store) = setup();
    let rhash = "ab".repeat(32);
    for key in
        ["nix-cache-info".to_owned(), format!("realisations/sha256:{rhash}!out.doi"), format!("{}.ls", "1".repeat(32))]
    {
        let (_, key) = ObjectKey::parse(&key).expect("valid");
        store.put(&key, Bytes::from_static(b"{}"), "application/json").await.expect("put");
        assert!(dir.path().join("cache").join(key.as_str()).is_file(), "{key}");
        assert_eq!(store.get(&key).await.expect("get"), Some(Bytes::from_static(b"{}")));
    }
}

/// Many keys at once (several chunks deleted concurrently): every deletable object goes, absent keys count
/// as deleted, and exactly the one that cannot be removed (a directory sits at its path) is reported.
#[tokio::test]
async fn delete_many_in_chunks_reports_exactly_the_failures() {
    let (dir, store) = setup();
    let mut keys = Vec::new();
    for i in 0..1100u32 {
        let d = i.to_le_bytes().to_vec();
        let key = nar_key(&d);
        if i % 3 != 0 {
            store.put(&key, Bytes::from(d), "x").await.expect("put");
        }
        keys.push(key);
    }
    let stuck = keys[1000].clone();
    let stuck_path = dir.path().join("cache").join(stuck.as_str());
    std::fs::remove_file(&stuck_path).ok();
    std::fs::create_dir(&stuck_path).expect("a directory where the object was");
    let failed = store.delete_many(&keys).await;
    assert_eq!(failed.len(), 1, "only the directory fails: {failed:?}");
    assert_eq!(failed[0].0, stuck);
    for key in keys.iter().filter(|k| **k != stuck) {
        assert_eq!(store.get(key).await.expect("get"), None, "{key} deleted");
    }
    assert!(stuck_path.is_dir(), "the failed one is left alone");
}
