//! The local directory backend: the bucket layout as files, written atomically (temp file, fsync,
//! rename) so a reader never sees a partial object.
//!
//! Temporary files live in `<root>/.tmp/` (same file system as the objects, so `rename` is atomic); a
//! crashed writer leaves only a temp file there, which [`LocalStore::abort_stale_uploads`] removes later.
//! Every object key maps to `<root>/<key>`: keys are validated ([`ObjectKey`]), so none escapes the root.

use super::{ByteStream, ObjectKey, ObjectMeta, StorageError};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Size of the chunks a read stream yields.
const READ_CHUNK: usize = 64 * 1024;

/// Name of the directory holding temporary files, inside the root.
const TMP_DIR: &str = ".tmp";

/// Files removed by one blocking task in [`LocalStore::delete_many`].
const DELETE_CHUNK: usize = 250;

/// Blocking tasks of [`LocalStore::delete_many`] in flight at once.
const DELETE_PARALLEL: usize = 4;

/// Sub-directories of the layout, created up front so writers only ever rename into existing directories.
const LAYOUT_DIRS: [&str; 3] = ["nar", "log", "realisations"];

/// A complete file in `.tmp/` written by [`LocalStore::stage_stream`], not yet an object; removed when
/// dropped unless [`LocalStore::promote`]d.
#[derive(Debug)]
pub struct Staged {
    path: PathBuf,
    size: u64,
    promoted: bool,
}

impl Staged {
    /// Bytes written.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.promoted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A directory holding the cache layout.
pub struct LocalStore {
    root: PathBuf,
    dirs: std::sync::Arc<DirSyncs>,
}

/// Group commit of directory fsyncs: a rename is made durable by fsyncing its directory, and one fsync
/// that starts after several renames covers them all. Many small objects written at once (the drain of a
/// queue: four files per store path, into four directories) then share fsyncs instead of each waiting
/// for its own journal commit; every write still returns only once its rename is durable.
#[derive(Default)]
struct DirSyncs {
    by_dir: std::sync::Mutex<std::collections::HashMap<PathBuf, std::sync::Arc<DirSync>>>,
}

/// The fsync state of one directory.
#[derive(Default)]
struct DirSync {
    /// (renames registered, renames known durable), counted.
    counts: std::sync::Mutex<(u64, u64)>,
    /// Held while fsyncing the directory: one fsync of it at a time.
    syncing: std::sync::Mutex<()>,
    /// fsyncs done (what the group commit saves is visible in tests).
    fsyncs: std::sync::atomic::AtomicU64,
}

impl DirSyncs {
    /// Makes a rename into `dir` that has completed durable (blocking): returns once an fsync of `dir`
    /// that started after the rename has completed, ours or another writer's.
    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        self.of(dir).sync(dir)
    }

    fn of(&self, dir: &Path) -> std::sync::Arc<DirSync> {
        let mut by_dir = self.by_dir.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        std::sync::Arc::clone(by_dir.entry(dir.to_owned()).or_default())
    }
}

impl DirSync {
    fn counts(&self) -> std::sync::MutexGuard<'_, (u64, u64)> {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// See [`DirSyncs::sync`]. A failed fsync records nothing: the writers waiting try their own.
    fn sync(&self, dir: &Path) -> std::io::Result<()> {
        let mine = {
            let mut c = self.counts();
            c.0 += 1;
            c.0
        };
        let _syncing = self.syncing.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let covered = {
            let c = self.counts();
            if c.1 >= mine {
                return Ok(());
            }
            c.0
        };
        std::fs::File::open(dir)?.sync_all()?;
        self.fsyncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut c = self.counts();
        c.1 = c.1.max(covered);
        Ok(())
    }
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Io { op, path: path.to_owned(), source }
}

impl LocalStore {
    /// Opens (creating if needed) the directory.
    pub fn open(root: PathBuf) -> Result<Self, StorageError> {
        for dir in std::iter::once(TMP_DIR).chain(LAYOUT_DIRS) {
            let path = root.join(dir);
            std::fs::create_dir_all(&path).map_err(io_err("create directory", &path))?;
        }
        Ok(LocalStore { root, dirs: std::sync::Arc::default() })
    }
    /// The root directory.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    /// Where `key` lives on disk.
    pub fn path_of(&self, key: &ObjectKey) -> PathBuf {
        self.root.join(key.as_str())
    }

    /// A fresh temporary file path in `.tmp/`.
    fn temp_path(&self) -> PathBuf {
        let n: u64 = rand::random();
        self.root.join(TMP_DIR).join(format!("{n:016x}.part"))
    }

    /// Writes the objects in one blocking task: every temp file written and fsynced, then all renamed
    /// into place and the renames made durable (one fsync per directory, shared with other writers).
    /// A path's NAR, listing and log go together: one hand-off to a blocking thread instead of three,
    /// and the three file fsyncs back to back join one journal commit. On failure the temp files go;
    /// objects already renamed stay (each is complete).
    pub(super) async fn put_many(&self, objects: Vec<(ObjectKey, Bytes)>) -> Result<(), StorageError> {
        let staged: Vec<(PathBuf, PathBuf, Bytes)> =
            objects.into_iter().map(|(key, body)| (self.temp_path(), self.path_of(&key), body)).collect();
        let first = staged.first().map_or_else(|| self.root.join(TMP_DIR), |(tmp, ..)| tmp.clone());
        let dirs = std::sync::Arc::clone(&self.dirs);
        tokio::task::spawn_blocking(move || {
            let result = write_and_publish(&dirs, &staged);
            if result.is_err() {
                for (tmp, ..) in &staged {
                    let _ = std::fs::remove_file(tmp);
                }
            }
            result
        })
        .await
        .map_err(|e| StorageError::Io { op: "write", path: first, source: std::io::Error::other(e) })?
    }

    /// Writes `chunks` under `key`: a temp file, fsynced, renamed into place, the rename made durable;
    /// all in one blocking task (a small NAR is one chunk: going through `tokio::fs` cost a thread
    /// hand-off per call, several per path).
    pub(super) async fn put_stream(
        &self,
        key: &ObjectKey,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
        _content_type: &str,
    ) -> Result<u64, StorageError> {
        let mut staged = Staged { path: self.temp_path(), size: 0, promoted: false };
        let (tmp, dest, dirs) = (staged.path.clone(), self.path_of(key), std::sync::Arc::clone(&self.dirs));
        let written = tokio::task::spawn_blocking(move || {
            let size = write_chunks(&tmp, chunks)?;
            publish(&dirs, &tmp, &dest).map(|()| size)
        })
        .await
        .map_err(|e| StorageError::Io {
            op: "write",
            path: staged.path.clone(),
            source: std::io::Error::other(e),
        });
        // Dropping `staged` removes the temp file unless it was renamed into place.
        let size = written??;
        staged.promoted = true;
        Ok(size)
    }

    /// Writes `chunks` to a fresh fsynced file in `.tmp/`, visible under no key: the caller checks it
    /// (e.g. that a relayed NAR decompresses to its NarHash) before [`LocalStore::promote`] puts it in
    /// place. An `Err` from `chunks` fails the write; the file goes when the [`Staged`] is dropped.
    pub async fn stage_stream(
        &self,
        chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
    ) -> Result<Staged, StorageError> {
        let mut staged = Staged { path: self.temp_path(), size: 0, promoted: false };
        let tmp = staged.path.clone();
        let written = tokio::task::spawn_blocking(move || write_chunks(&tmp, chunks))
            .await
            .map_err(|e| StorageError::Io { op: "write", path: staged.path.clone(), source: std::io::Error::other(e) });
        staged.size = written??;
        Ok(staged)
    }

    /// Moves a staged file into place under `key` (atomically; replacing what was there) and makes the
    /// rename durable.
    pub async fn promote(&self, mut staged: Staged, key: &ObjectKey) -> Result<(), StorageError> {
        let dest = self.path_of(key);
        let tmp = staged.path.clone();
        let dirs = std::sync::Arc::clone(&self.dirs);
        tokio::task::spawn_blocking(move || publish(&dirs, &tmp, &dest)).await.map_err(|e| StorageError::Io {
            op: "rename",
            path: self.path_of(key),
            source: std::io::Error::other(e),
        })??;
        staged.promoted = true;
        Ok(())
    }

    pub(super) async fn get(&self, key: &ObjectKey) -> Result<Option<Bytes>, StorageError> {
        let path = self.path_of(key);
        match tokio::fs::read(&path).await {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("read", &path)(e)),
        }
    }

    /// Streams the object; `meta.size` is the whole object's size also for range reads, so a caller can
    /// build `Content-Range`. A range starting at or beyond the end yields an empty stream.
    pub(super) async fn get_stream(
        &self,
        key: &ObjectKey,
        range: Option<(u64, Option<u64>)>,
    ) -> Result<Option<(ObjectMeta, ByteStream)>, StorageError> {
        let path = self.path_of(key);
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if is_absent(&e) => return Ok(None),
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let size = file.metadata().await.map_err(io_err("stat", &path))?.len();
        let (start, end_exclusive) = match range {
            None => (0, size),
            Some((start, end)) => {
                let end = end.map_or(size, |e| e.saturating_add(1).min(size));
                (start.min(size), end.max(start.min(size)))
            }
        };
        if start > 0 {
            file.seek(std::io::SeekFrom::Start(start)).await.map_err(io_err("seek", &path))?;
        }
        let remaining = end_exclusive - start;
        let stream = futures::stream::unfold((file, remaining, path), |(mut file, remaining, path)| async move {
            if remaining == 0 {
                return None;
            }
            let want = usize::try_from(remaining).unwrap_or(usize::MAX).min(READ_CHUNK);
            let mut buf = BytesMut::with_capacity(want);
            loop {
                match file.read_buf(&mut buf).await {
                    Ok(0) if buf.is_empty() => {
                        let e = std::io::Error::new(ErrorKind::UnexpectedEof, "object shrank while being read");
                        return Some((Err(io_err("read", &path)(e)), (file, 0, path)));
                    }
                    Ok(0) => break,
                    Ok(_) if buf.len() >= want => break,
                    Ok(_) => {}
                    Err(e) => return Some((Err(io_err("read", &path)(e)), (file, 0, path))),
                }
            }
            buf.truncate(want);
            let n = buf.len() as u64;
            Some((Ok(buf.freeze()), (file, remaining - n, path)))
        });
        Ok(Some((ObjectMeta { size }, stream.boxed())))
    }

    pub(super) async fn head(&self, key: &ObjectKey) -> Result<Option<ObjectMeta>, StorageError> {
        let path = self.path_of(key);
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta { size: m.len() })),
            Ok(_) => Ok(None),
            Err(e) if is_absent(&e) => Ok(None),
            Err(e) => Err(io_err("stat", &path)(e)),
        }
    }

    pub(super) async fn delete_many(&self, keys: &[ObjectKey]) -> Vec<(ObjectKey, StorageError)> {
        // One blocking task per chunk of files, not one per file (a `tokio::fs` call is a blocking-pool
        // round trip each), with a few chunks in flight at once. The caller passes keys that may be
        // deleted in any order (GC splits narinfos from what they refer to before calling).
        let chunks: Vec<Vec<(ObjectKey, PathBuf)>> = keys
            .chunks(DELETE_CHUNK)
            .map(|c: &[ObjectKey]| c.iter().map(|k| (k.clone(), self.path_of(k))).collect())
            .collect();
        let mut failed = Vec::new();
        futures::stream::iter(chunks)
            .map(|chunk: Vec<(ObjectKey, PathBuf)>| async move {
                let keys: Vec<ObjectKey> = chunk.iter().map(|(k, _)| k.clone()).collect();
                match tokio::task::spawn_blocking(move || remove_files(chunk)).await {
                    Ok(failed) => failed,
                    // The task panicked or was cancelled: which files went is unknown, so report every key
                    // of the chunk as failed (the caller keeps them; deleting an absent file later is fine).
                    Err(e) => keys
                        .into_iter()
                        .map(|k| {
                            let path = self.path_of(&k);
                            (k, StorageError::Io { op: "delete", path, source: std::io::Error::other(e.to_string()) })
                        })
                        .collect(),
                }
            })
            .buffer_unordered(DELETE_PARALLEL)
            .for_each(|f| {
                failed.extend(f);
                std::future::ready(())
            })
            .await;
        failed
    }

    pub(super) async fn abort_stale_uploads(&self, older_than: Duration) -> Result<u64, StorageError> {
        let dir = self.root.join(TMP_DIR);
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(SystemTime::UNIX_EPOCH);
        let mut entries = tokio::fs::read_dir(&dir).await.map_err(io_err("list", &dir))?;
        let mut removed = 0;
        while let Some(entry) = entries.next_entry().await.map_err(io_err("list", &dir))? {
            let path = entry.path();
            let modified = match entry.metadata().await.and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err("stat", &path)(e)),
            };
            if modified <= cutoff {
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("delete", &path)(e)),
                }
            }
        }
        Ok(removed)
    }

    /// Keys of all stored objects starting with `prefix`, sorted (temporary files are not objects).
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let root = self.root.clone();
        let prefix = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            list_dir(&root, "", &mut keys)?;
            keys.retain(|k| k.starts_with(&prefix));
            keys.sort();
            Ok(keys)
        })
        .await
        .map_err(|e| StorageError::Io {
            op: "list",
            path: self.root.clone(),
            source: std::io::Error::other(e),
        })?
    }
}

/// Collects the files under `dir` (relative names joined with `/`), skipping the temp directory.
fn list_dir(dir: &Path, rel: &str, keys: &mut Vec<String>) -> Result<(), StorageError> {
    let entries = std::fs::read_dir(dir).map_err(io_err("list", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("list", dir))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if rel.is_empty() && name == TMP_DIR {
            continue;
        }
        let key = if rel.is_empty() { name } else { format!("{rel}/{name}") };
        let ty = entry.file_type().map_err(io_err("stat", &entry.path()))?;
        if ty.is_dir() {
            list_dir(&entry.path(), &key, keys)?;
        } else if ty.is_file() {
            keys.push(key);
        }
    }
    Ok(())
}

/// Writes `chunks` to a new file at `tmp` and fsyncs it (blocking); its size. An `Err` chunk fails it.
fn write_chunks(
    tmp: &Path,
    mut chunks: tokio::sync::mpsc::Receiver<Result<Bytes, StorageError>>,
) -> Result<u64, StorageError> {
    let mut f = std::fs::File::create(tmp).map_err(io_err("create", tmp))?;
    let mut size = 0u64;
    while let Some(chunk) = chunks.blocking_recv() {
        let chunk = chunk?;
        f.write_all(&chunk).map_err(io_err("write", tmp))?;
        size += chunk.len() as u64;
    }
    f.sync_all().map_err(io_err("fsync", tmp))?;
    Ok(size)
}

/// Writes each `(temp, destination, body)`, fsyncs them all, then renames them all into place and
/// makes the renames durable, each directory once.
fn write_and_publish(dirs: &DirSyncs, staged: &[(PathBuf, PathBuf, Bytes)]) -> Result<(), StorageError> {
    let mut files = Vec::with_capacity(staged.len());
    for (tmp, _, body) in staged {
        let mut f = std::fs::File::create(tmp).map_err(io_err("create", tmp))?;
        f.write_all(body).map_err(io_err("write", tmp))?;
        files.push(f);
    }
    // All written before the first fsync: its journal commit takes every file along (ext4 and XFS
    // commit the whole running transaction), and the fsyncs after it find little left to do.
    for (f, (tmp, ..)) in files.iter().zip(staged) {
        f.sync_all().map_err(io_err("fsync", tmp))?;
    }
    drop(files);
    for (tmp, dest, _) in staged {
        std::fs::rename(tmp, dest).map_err(io_err("rename into", dest))?;
    }
    let mut synced: Vec<&Path> = Vec::new();
    for (_, dest, _) in staged {
        let dir = dest.parent().unwrap_or(Path::new("."));
        if !synced.contains(&dir) {
            dirs.sync(dir).map_err(io_err("fsync directory", dir))?;
            synced.push(dir);
        }
    }
    Ok(())
}

/// Moves a complete, fsynced temp file into place and makes the rename durable.
fn publish(dirs: &DirSyncs, tmp: &Path, dest: &Path) -> Result<(), StorageError> {
    std::fs::rename(tmp, dest).map_err(io_err("rename into", dest))?;
    let dir = dest.parent().unwrap_or(Path::new("."));
    dirs.sync(dir).map_err(io_err("fsync directory", dir))
}

/// Absent, or a path component that is not a directory (e.g. a key under a file): either way, no object.
/// Removes the files (absent ones count as removed); returns those that could not be removed, with why.
fn remove_files(files: Vec<(ObjectKey, PathBuf)>) -> Vec<(ObjectKey, StorageError)> {
    let mut failed = Vec::new();
    for (key, path) in files {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => failed.push((key, io_err("delete", &path)(e))),
        }
    }
    failed
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_fsync_started_after_renames_covers_them_all_and_only_those() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncs = DirSyncs::default();
        let d = syncs.of(dir.path());
        // One after another: each rename needs an fsync of its own.
        for _ in 0..3 {
            syncs.sync(dir.path()).expect("sync");
        }
        assert_eq!(d.fsyncs.load(std::sync::atomic::Ordering::Relaxed), 3);
        // Eight writers arrive while an fsync is in progress (held here): the one after it covers all.
        let held = d.syncing.lock().expect("lock");
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..8).map(|_| s.spawn(|| syncs.sync(dir.path()))).collect();
            while d.counts().0 < 3 + 8 {
                std::thread::yield_now();
            }
            drop(held);
            for w in waiters {
                w.join().expect("thread").expect("sync");
            }
        });
        assert_eq!(d.fsyncs.load(std::sync::atomic::Ordering::Relaxed), 4, "one fsync for the eight");
        assert_eq!(*d.counts(), (11, 11));
    }
}
