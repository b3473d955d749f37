//! One pass over a store path on disk, in a blocking thread: NAR serialisation → SHA-256 (NarHash,
//! NarSize) → zstd (level 3 by default; on this thread through [`ZstdRingWriter`], or on zstd's worker
//! threads when cores are idle) → SHA-256 (FileHash, FileSize) → 1 MiB chunks over a bounded channel to
//! [`niks3_storage::Storage::put_stream`]. The `.ls` listing is the tree the NAR writer reports for the bytes
//! it wrote, so nothing is read or parsed twice and no NAR is ever held whole in memory.
//!
//! The promise that matters: the chunk stream ends cleanly (channel closed without an error) only after
//! the NarHash and NarSize we computed were found equal to Nix's record. On any failure — mismatch,
//! unreadable file, panic — an error is sent down the channel first, so the store aborts the object and
//! nothing partial becomes visible.

use crate::zstd_ring::ZstdRingWriter;
use bytes::{Bytes, BytesMut};
use niks3_nix::hash::{HashingWriter, Sha256Hash};
use niks3_nix::nar::{NarError, dump_path_tree};
use niks3_storage::{ObjectKey, StorageError};
use std::io::Write;
use std::path::Path;
use tokio::sync::mpsc;

/// Size of the chunks sent to the store.
pub(crate) const CHUNK_SIZE: usize = 1 << 20;
/// zstd level unless configured: 3 is zstd's and Nix's default (`nix copy --to '…?compression=zstd'`)
/// and compresses real binaries ~3:1 at ~270 MiB/s per core here.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Highest level accepted: up to 9 a NAR's compression context and ring stay ~30 MiB; above, zstd's
/// tables and window grow fast and cost far more CPU than a cache saves in bytes.
pub const MAX_ZSTD_LEVEL: i32 = 9;

/// How a NAR is encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NarEncoding {
    /// zstd level, 1..=[`MAX_ZSTD_LEVEL`]. Level 2 costs ~35% less CPU than 3 for ~5% more bytes
    /// (docs/benchmarks.md "Push").
    pub zstd_level: i32,
    /// Whether to build the `.ls` listing.
    pub with_listing: bool,
}

impl Default for NarEncoding {
    fn default() -> Self {
        Self { zstd_level: DEFAULT_ZSTD_LEVEL, with_listing: true }
    }
}

/// Why a pass over a store path produced no NAR.
#[derive(Debug, thiserror::Error)]
pub enum NarStreamError {
    /// The NAR serialised from disk does not match what Nix recorded when the path became valid: the
    /// path was modified after it was built.
    #[error(
        "NAR of {path} does not match Nix's record: Nix has {expected} ({expected_size} bytes), disk gives {actual} ({actual_size} bytes)"
    )]
    HashMismatch {
        /// The store path (full).
        path: String,
        /// NarHash Nix recorded.
        expected: Sha256Hash,
        /// NarSize Nix recorded.
        expected_size: u64,
        /// NarHash of what is on disk now.
        actual: Sha256Hash,
        /// NarSize of what is on disk now.
        actual_size: u64,
    },
    /// Serialising or compressing the path failed (it vanished, is unreadable, has an unsupported file
    /// type, or the receiver went away).
    #[error("serialising {path}: {reason}")]
    Nar {
        /// The store path (full).
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// What one pass produced.
#[derive(Debug)]
pub struct NarStreamed {
    /// NarHash we computed (equal to the expected one, or the pass would have failed).
    pub nar_hash: Sha256Hash,
    /// NarSize we computed.
    pub nar_size: u64,
    /// FileHash of the compressed bytes sent.
    pub file_hash: Sha256Hash,
    /// FileSize of the compressed bytes sent.
    pub file_size: u64,
    /// The `.ls` listing JSON, when asked for.
    pub listing: Option<serde_json::Value>,
}

/// Sends 1 MiB chunks down the bounded channel (blocking when the store is slower than we are).
/// Dropped without [`ChunkSender::finish`], it sends an error first so the store aborts the object.
struct ChunkSender {
    tx: Option<mpsc::Sender<Result<Bytes, StorageError>>>,
    buf: BytesMut,
    key: ObjectKey,
}

impl ChunkSender {
    fn new(tx: mpsc::Sender<Result<Bytes, StorageError>>, key: ObjectKey) -> Self {
        Self { tx: Some(tx), buf: BytesMut::with_capacity(CHUNK_SIZE), key }
    }

    fn send(&mut self, item: Result<Bytes, StorageError>) -> std::io::Result<()> {
        let Some(tx) = &self.tx else {
            return Err(std::io::Error::new(std::io::ErrorKind::BrokenPipe, "chunk channel already closed"));
        };
        tx.blocking_send(item)
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the store stopped receiving chunks"))
    }

    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = self.buf.split().freeze();
        self.buf.reserve(CHUNK_SIZE);
        self.send(Ok(chunk))
    }

    /// Sends what is buffered and closes the channel: the object is complete.
    fn finish(mut self) -> std::io::Result<()> {
        self.send_buffered()?;
        self.tx = None;
        Ok(())
    }

    /// Makes the store abort the object with `reason`.
    fn abort(&mut self, reason: String) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.blocking_send(Err(StorageError::Source { key: self.key.to_string(), reason }));
        }
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CHUNK_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ChunkSender {
    fn drop(&mut self) {
        self.abort("the NAR stream was abandoned before it was verified".to_owned());
    }
}

/// Bytes per job when zstd's own worker threads compress. zstd's default at level 3 (8 MiB) keeps
/// ~46 MiB of job buffers per NAR; 1 MiB keeps one big NAR pushed to S3 with two workers at 88 MiB peak
/// RSS (2 MiB jobs: 105 MiB, over the 100 MiB budget), same speed, output +0.3% (`zstd -3 -T2 -B1M`).
const ZSTD_JOB_SIZE: u32 = 1 << 20;

/// zstd and FileHash in front of the chunk sender: what ends (or aborts) the stored object.
enum Compressing {
    /// On the NAR's own thread, through our ring: the cheapest per byte.
    Ring(ZstdRingWriter<HashingWriter<ChunkSender>>),
    /// On zstd's worker threads (the NAR's thread only serialises, hashes and hands over).
    Workers(zstd::stream::write::Encoder<'static, HashingWriter<ChunkSender>>),
}

impl Compressing {
    /// `size`: the NAR's expected size (zstd's window and tables are sized to it).
    fn new(sender: ChunkSender, level: i32, workers: u32, size: u64) -> Result<Self, String> {
        let out = HashingWriter::new(sender);
        let start = |e: std::io::Error| format!("starting zstd: {e}");
        if workers == 0 {
            return ZstdRingWriter::new(out, level, size).map(Self::Ring).map_err(start);
        }
        let mut encoder = zstd::stream::write::Encoder::new(out, level).map_err(start)?;
        encoder.multithread(workers).map_err(start)?;
        encoder.set_parameter(zstd::zstd_safe::CParameter::JobSize(ZSTD_JOB_SIZE)).map_err(start)?;
        Ok(Self::Workers(encoder))
    }

    /// The NAR was verified: ends the frame and the object; FileHash and FileSize.
    fn finish(self) -> Result<(Sha256Hash, u64), String> {
        let out = match self {
            Self::Ring(e) => e.finish(),
            Self::Workers(e) => e.finish(),
        };
        let (file_hash, file_size, sender) = out.map_err(|e| format!("finishing zstd: {e}"))?.finish();
        sender.finish().map_err(|e| format!("sending the last chunk: {e}"))?;
        Ok((file_hash, file_size))
    }

    /// The NAR failed: the store aborts the object with `reason` (the frame is left unfinished).
    fn fail(self, reason: String) {
        match self {
            Self::Ring(e) => e.into_inner().finish().2.abort(reason),
            Self::Workers(mut e) => e.get_mut().get_mut().abort(reason),
        }
    }
}

impl Write for Compressing {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            Self::Ring(e) => e.write(data),
            Self::Workers(e) => e.write(data),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Streams the NAR of `fs_path` into `tx` as zstd chunks for `key`, checking it against
/// `expected_hash`/`expected_size` (Nix's record). Blocking: call from `spawn_blocking`.
/// `display_path` is the store path as shown in errors.
///
/// `zstd_workers`: 0 compresses on this thread (the cheapest per byte: use it when every core has a
/// NAR of its own); N > 0 hands compression to N zstd worker threads, so one big NAR uses the cores
/// that would otherwise idle — at ~10% more CPU per byte when cores are contended
/// (docs/benchmarks.md "Push").
#[allow(clippy::too_many_arguments)]
pub fn stream_nar(
    fs_path: &Path,
    display_path: &str,
    expected_hash: Sha256Hash,
    expected_size: u64,
    key: ObjectKey,
    tx: mpsc::Sender<Result<Bytes, StorageError>>,
    encoding: NarEncoding,
    zstd_workers: u32,
) -> Result<NarStreamed, NarStreamError> {
    let nar_err = |reason: String| NarStreamError::Nar { path: display_path.to_owned(), reason };
    let mut compressing = Compressing::new(ChunkSender::new(tx, key), encoding.zstd_level, zstd_workers, expected_size)
        .map_err(nar_err)?;
    let mut nar_hashing = HashingWriter::new(&mut compressing);
    let dumped = dump_path_tree(fs_path, &mut nar_hashing);
    let (nar_hash, nar_size, _) = nar_hashing.finish();
    let verdict = match dumped {
        Err(NarError::Write(io)) => Err(nar_err(format!("compressing or sending: {io}"))),
        Err(other) => Err(nar_err(other.to_string())),
        Ok(_) if nar_hash != expected_hash || nar_size != expected_size => Err(NarStreamError::HashMismatch {
            path: display_path.to_owned(),
            expected: expected_hash,
            expected_size,
            actual: nar_hash,
            actual_size: nar_size,
        }),
        Ok((_, tree)) => Ok(tree),
    };
    match verdict {
        Ok(tree) => {
            let (file_hash, file_size) = compressing.finish().map_err(nar_err)?;
            let listing = if encoding.with_listing { niks3_nix::listing::listing_json(&tree) } else { None };
            Ok(NarStreamed { nar_hash, nar_size, file_hash, file_size, listing })
        }
        Err(e) => {
            compressing.fail(e.to_string());
            Err(e)
        }
    }
}

/// The largest a zstd-compressed NAR of `nar_size` bytes can be: zstd's `ZSTD_compressBound` (incompressible
/// data is stored in raw blocks, 3 header bytes per 128 KiB) plus room for frame headers and checksum.
pub fn max_compressed_size(nar_size: u64) -> u64 {
    const BLOCK: u64 = 128 << 10;
    let small_input_margin = if nar_size < BLOCK { (BLOCK - nar_size) >> 11 } else { 0 };
    nar_size.saturating_add(nar_size >> 8).saturating_add(small_input_margin).saturating_add(64 << 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use niks3_nix::nar::dump_path;
    use niks3_storage::Storage;
    use niks3_storage::local::LocalStore;

    /// A small tree: a file, an executable, a symlink, a nested directory.
    fn sample_tree(root: &Path) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join("tree");
        std::fs::create_dir_all(p.join("bin")).expect("mkdir");
        std::fs::write(p.join("README"), "hello\n".repeat(1000)).expect("write");
        std::fs::write(p.join("bin/tool"), "#!/bin/sh\necho tool\n").expect("write");
        std::fs::set_permissions(p.join("bin/tool"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::symlink("README", p.join("link")).expect("symlink");
        p
    }

    fn nar_of(path: &Path) -> (Sha256Hash, u64, Vec<u8>) {
        let mut w = HashingWriter::new(Vec::new());
        dump_path(path, &mut w).expect("dump");
        w.finish()
    }

    async fn run(
        store: &Storage,
        path: std::path::PathBuf,
        hash: Sha256Hash,
        size: u64,
        zstd_workers: u32,
    ) -> (Result<NarStreamed, NarStreamError>, Result<u64, StorageError>, ObjectKey) {
        let key = ObjectKey::nar(&hash);
        let (tx, rx) = mpsc::channel(4);
        let k = key.clone();
        let producer = tokio::task::spawn_blocking(move || {
            stream_nar(&path, "/nix/store/x-test", hash, size, k, tx, NarEncoding::default(), zstd_workers)
        });
        let stored = store.put_stream(&key, rx, "application/x-nix-archive", None).await;
        (producer.await.expect("join"), stored, key)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stream_stores_compressed_nar_with_listing_and_hashes() {
        for zstd_workers in [0, 2] {
            stores_compressed_nar_with_listing_and_hashes(zstd_workers).await;
        }
    }

    async fn stores_compressed_nar_with_listing_and_hashes(zstd_workers: u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let (hash, size, nar) = nar_of(&tree);
        let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store"));
        let (produced, stored, key) = run(&store, tree, hash, size, zstd_workers).await;
        let streamed = produced.expect("stream");
        let stored_size = stored.expect("stored");
        assert_eq!((streamed.nar_hash, streamed.nar_size), (hash, size));
        assert_eq!(stored_size, streamed.file_size);
        let body = store.get(&key).await.expect("get").expect("object present");
        assert_eq!(body.len() as u64, streamed.file_size);
        let (fh, _, ()) = {
            let mut w = HashingWriter::new(std::io::sink());
            w.write_all(&body).expect("hash");
            let (h, n, _) = w.finish();
            (h, n, ())
        };
        assert_eq!(fh, streamed.file_hash);
        assert_eq!(zstd::decode_all(&body[..]).expect("zstd"), nar);
        let listing = streamed.listing.expect("listing");
        assert_eq!(listing["root"]["entries"]["bin"]["entries"]["tool"]["executable"], true);
        assert_eq!(listing["root"]["entries"]["link"]["target"], "README");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hash_mismatch_leaves_nothing_visible() {
        for zstd_workers in [0, 2] {
            mismatch_leaves_nothing_visible(zstd_workers).await;
        }
    }

    async fn mismatch_leaves_nothing_visible(zstd_workers: u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tree = sample_tree(dir.path());
        let (_, size, _) = nar_of(&tree);
        let wrong = Sha256Hash([7; 32]);
        let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store"));
        let (produced, stored, key) = run(&store, tree, wrong, size, zstd_workers).await;
        let err = produced.expect_err("mismatch");
        assert!(matches!(err, NarStreamError::HashMismatch { .. }), "{err}");
        assert!(err.to_string().contains("does not match Nix's record"), "{err}");
        assert!(stored.is_err(), "the store must refuse the stream");
        assert!(store.head(&key).await.expect("head").is_none(), "no object may be visible");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn vanished_path_aborts_the_object() {
        for zstd_workers in [0, 2] {
            vanished_aborts_the_object(zstd_workers).await;
        }
    }

    async fn vanished_aborts_the_object(zstd_workers: u32) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Storage::Local(LocalStore::open(dir.path().join("cache")).expect("store"));
        let (produced, stored, key) = run(&store, dir.path().join("gone"), Sha256Hash([1; 32]), 8, zstd_workers).await;
        let err = produced.expect_err("vanished");
        assert!(matches!(err, NarStreamError::Nar { .. }), "{err}");
        assert!(stored.is_err());
        assert!(store.head(&key).await.expect("head").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_store_that_stops_receiving_is_the_reported_cause() {
        for zstd_workers in [0, 2] {
            let dir = tempfile::tempdir().expect("tempdir");
            let tree = dir.path().join("big");
            // 12 MiB that zstd cannot shrink: more than the chunk channel holds.
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let noise: Vec<u8> = (0..12 << 20)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            std::fs::write(&tree, noise).expect("write");
            let (hash, size, _) = nar_of(&tree);
            let (tx, rx) = mpsc::channel(4);
            drop(rx);
            let key = ObjectKey::nar(&hash);
            let err = tokio::task::spawn_blocking(move || {
                stream_nar(&tree, "/nix/store/x-big", hash, size, key, tx, NarEncoding::default(), zstd_workers)
            })
            .await
            .expect("join")
            .expect_err("nobody receives");
            assert!(
                err.to_string().contains("the store stopped receiving chunks"),
                "zstd_workers={zstd_workers}: {err}"
            );
        }
    }
}
