//! The spool: a durable on-disk queue of store paths waiting to be uploaded, shared by `niks3-hook`
//! (which only enqueues) and the `niks3` daemon (which claims, acknowledges or quarantines).
//!
//! Layout under the spool directory: `tmp/` (being written), `new/` (queued), `claimed/` (being
//! processed; re-processed after a crash), `quarantine/` (could not be processed, with a `.reason` file).
//! An entry is made durable by write to `tmp/`, fsync, rename into `new/`, fsync of `new/`. Claiming is a
//! rename from `new/` to `claimed/`, atomic, so two drainers never process the same entry.
//!
//! Who may do what: the spool and its subdirectories belong to the daemon's account (the "spool owner";
//! systemd-tmpfiles or [`Spool::open`] creates them), while the hook runs as root. Root must never let
//! the spool owner steer it, so the hook creates no directories, chowns no paths, and reaches `tmp/` and
//! `new/` only through descriptors opened without following symlinks (see `nofollow`). Entries are
//! handed to the spool owner (mode 0640, owner and group of the spool dir) so that nobody else reads
//! them. The drainer's operations, too, go through subdirectory descriptors opened without following
//! symlinks (a daemon run as root in someone else's spool is steered by no one either); it reads entries
//! without following symlinks or blocking on FIFOs, and never quotes an entry's content in a reason.
//!
//! Entry files are named `<unix-nanos, 20 digits>-<pid, 10 digits>-<counter, 6 digits>`, so sorting
//! by name is sorting by age. Names starting with `.` are ignored (editors, tools).
//!
//! Entry format (text, one `key=value` per line, version first, `queued=` last), e.g.
//! ```text
//! niks3-spool-v1
//! drv=/nix/store/…-foo.drv
//! out=/nix/store/…-foo
//! out=/nix/store/…-foo-dev
//! realisation=out
//! queued=1764105600
//! ```
//! `realisation=<output>` (zero or more; needs `drv=`) names an output whose path the `.drv` does not give
//! (a floating content-addressed or deferred output): the daemon resolves it from Nix's realisation and
//! uploads the realisation too. Entries without such lines (all entries written before it existed) read
//! as before.
//! std only: the hook must stay tiny and start in well under a millisecond.

#![forbid(unsafe_code)]

use std::collections::BinaryHeap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub mod drv;
mod entry;
pub mod gcroots;
mod nofollow;
pub mod store_path;

use nofollow::{Dir, OpenError};

pub use entry::{VERSION_LINE, check_output_name};

/// Why a spool operation failed; every variant names the file it concerns.
#[derive(Debug)]
pub enum SpoolError {
    /// File system error at `path`.
    Io {
        /// What was being done (`"create"`, `"fsync"`, …).
        op: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A spool directory or entry is not the kind of file it must be (a symlink, a FIFO, … where a
    /// directory or a regular file belongs). It was neither followed nor read.
    WrongType {
        /// The file concerned.
        path: PathBuf,
        /// What it is (`"a symlink"`, `"a FIFO"`, …).
        found: &'static str,
        /// What it must be (`"a directory"`, `"a regular file"`).
        expected: &'static str,
    },
    /// A name given to [`Spool::requeue`] cannot be a quarantined entry.
    NotAnEntry {
        /// The name, joined to the quarantine directory.
        path: PathBuf,
        /// Why not.
        reason: &'static str,
    },
    /// An entry file is not in the format above; `reason` says why (never quoting the file's content).
    Malformed {
        /// The entry file (or, for an entry refused before writing, the directory it was meant for).
        path: PathBuf,
        /// What is wrong, with the line number where there is one.
        reason: String,
    },
}

impl std::fmt::Display for SpoolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SpoolError::Io { op, path, source } => write!(f, "{op} {}: {source}", path.display()),
            SpoolError::WrongType { path, found, expected } => {
                write!(f, "refusing {}: it is {found}, not {expected}", path.display())
            }
            SpoolError::NotAnEntry { path, reason } => {
                write!(f, "{} is not a quarantined entry: {reason}", path.display())
            }
            SpoolError::Malformed { path, reason } => write!(f, "malformed spool entry {}: {reason}", path.display()),
        }
    }
}

impl std::error::Error for SpoolError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            SpoolError::WrongType { .. } | SpoolError::NotAnEntry { .. } | SpoolError::Malformed { .. } => None,
        }
    }
}

/// One queued build: the derivation and its output paths (full paths, as Nix gave them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `DRV_PATH`, when Nix gave one.
    pub drv: Option<String>,
    /// Output paths; may be empty when Nix 2.8 passed an empty `OUT_PATHS` and the drv could not be read.
    pub outs: Vec<String>,
    /// Names of outputs of `drv` whose paths are not in the `.drv` (floating content-addressed or deferred
    /// outputs): the daemon finds their paths in Nix's realisations and uploads those realisations too.
    pub realisations: Vec<String>,
    /// Seconds since the Unix epoch when queued.
    pub queued: u64,
}

/// A claimed entry: its file in `claimed/` and its parsed content (or why it could not be parsed).
#[derive(Debug)]
pub struct Claimed {
    /// The file in `claimed/`.
    pub path: PathBuf,
    /// The entry, or the reason it is malformed.
    pub entry: Result<Entry, SpoolError>,
}

/// Entries are a few hundred bytes; anything past this is not ours and is reported malformed unread.
pub(crate) const MAX_ENTRY_BYTES: u64 = 1024 * 1024;

/// Attempts at finding an unused entry name before giving up (collisions need the same nanosecond).
const NAME_ATTEMPTS: u32 = 64;

/// The spool's subdirectories, in the order of an entry's life.
const SUBDIRS: [&str; 4] = ["tmp", "new", "claimed", "quarantine"];

/// Mode of a new entry: the spool owner (who gets the file) reads it, its group may, nobody else.
const ENTRY_MODE: u32 = 0o640;

/// Most a quarantined entry or a reason file may allow: what is in quarantine may not be ours at all.
const PRIVATE_MODE: u32 = 0o640;

/// What [`Spool::enqueue`] works through: open descriptors, never paths.
struct QueueDirs {
    /// Owner and group of the spool dir, which every entry is given.
    owner: (u32, u32),
    tmp: Dir,
    new: Dir,
}

/// A spool directory.
#[derive(Clone, Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Makes names unique among entries this handle (and its clones) write within one nanosecond.
    counter: Arc<AtomicU64>,
}

impl Spool {
    /// Opens a spool, creating the directory (with parents) and its subdirectories if needed, owned by
    /// the caller. The daemon uses this, as the spool owner; the hook uses [`Spool::open_existing`].
    pub fn open(dir: &Path) -> Result<Self, SpoolError> {
        fs::create_dir_all(dir).map_err(|source| io("create spool dir", dir, source))?;
        for sub in SUBDIRS {
            let p = dir.join(sub);
            if let Err(source) = fs::create_dir(&p) {
                // EEXIST is the normal case; on a read-only file system mkdir may report EROFS even for
                // an existing dir, so what matters is whether the directory is there.
                if !p.is_dir() {
                    return Err(io("create spool subdir", &p, source));
                }
            }
        }
        Self::open_existing(dir)
    }

    /// Opens a spool that must already be set up, creating nothing: a missing spool dir means niks3 is
    /// not set up here, and the hook must say so rather than fill a stray dir. Checks now what
    /// [`Spool::enqueue`] will need (the spool dir, `tmp/` and `new/`, none of them a symlink), so the
    /// hook can report an unusable spool before it adds GC roots.
    ///
    /// Why the hook creates no subdirectories (it used to, and chowned them to the spool owner): it runs
    /// as root in a directory the spool owner controls, and `mkdir` then `chown` by path let the owner
    /// swap a symlink in between and have root chown any file to them (review finding #1). The
    /// directories come from whoever owns the spool: systemd-tmpfiles on NixOS, [`Spool::open`] in the
    /// daemon otherwise.
    pub fn open_existing(dir: &Path) -> Result<Self, SpoolError> {
        // Rebuilt from its components: a trailing `/` would make the kernel follow a symlinked spool dir
        // despite `O_NOFOLLOW`.
        let dir: PathBuf = dir.components().collect();
        let spool = Spool { dir, counter: Arc::new(AtomicU64::new(0)) };
        spool.queue_dirs()?;
        Ok(spool)
    }

    /// The spool dir, `tmp/` and `new/`, each opened without following a symlink and checked to be a
    /// directory; everything [`Spool::enqueue`] does goes through these descriptors.
    fn queue_dirs(&self) -> Result<QueueDirs, SpoolError> {
        let spool = self.root()?;
        Ok(QueueDirs { owner: spool.owner(), tmp: sub(&spool, "tmp")?, new: sub(&spool, "new")? })
    }

    /// The spool dir, opened without following a symlink. Every operation opens its subdirectories from
    /// it and works through them, so that the daemon, should it run as root in a spool someone else
    /// owns, cannot be steered either (a claim renamed into a symlinked `claimed/`, an ack or a stale-tmp
    /// sweep unlinking in a symlinked directory).
    fn root(&self) -> Result<Dir, SpoolError> {
        Dir::open(&self.dir).map_err(|e| open_error("open spool dir", &self.dir, "a directory", e))
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The directory the daemon watches for new entries.
    pub fn new_dir(&self) -> PathBuf {
        self.dir.join("new")
    }

    /// Durably queues `entry`; returns its file in `new/`. When this returns `Ok`, the entry survives a
    /// crash or power loss; on `Err` nothing was queued (a stray file may be left in `tmp/`).
    ///
    /// Safe to run as root in a spool owned by someone else: `tmp/` and `new/` are used through
    /// descriptors (see [`Spool::open_existing`]), so a symlink swapped in at any moment is either refused
    /// or not looked at; the entry is created with `O_EXCL|O_NOFOLLOW`, and only that new file is
    /// chowned (through its descriptor) to the spool dir's owner and group, mode 0640.
    pub fn enqueue(&self, entry: &Entry) -> Result<PathBuf, SpoolError> {
        entry.validate().map_err(|reason| SpoolError::Malformed { path: self.new_dir(), reason })?;
        let text = entry.to_text();
        let dirs = self.queue_dirs()?;
        for _ in 0..NAME_ATTEMPTS {
            let name = self.next_name();
            let tmp = dirs.tmp.shown(&name);
            let file = match dirs.tmp.create_new(&name, ENTRY_MODE) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(io("create", &tmp, source)),
            };
            let written = give_to(&file, dirs.owner)
                .map_err(|source| io("chown", &tmp, source))
                .and_then(|()| (&file).write_all(text.as_bytes()).map_err(|source| io("write", &tmp, source)))
                .and_then(|()| file.sync_data().map_err(|source| io("fsync", &tmp, source)));
            drop(file);
            let dest = dirs.new.shown(&name);
            let moved = written.and_then(|()| {
                if dirs.new.has(&name) {
                    return Ok(false); // taken by a writer with the same clock reading: pick another name
                }
                dirs.tmp
                    .rename(&name, &dirs.new, &name)
                    .map(|()| true)
                    .map_err(|source| io("rename into", &dest, source))
            });
            match moved {
                Ok(true) => {
                    dirs.new.sync().map_err(|source| io("fsync", dirs.new.path(), source))?;
                    return Ok(dest);
                }
                Ok(false) => {
                    let _ = dirs.tmp.remove(&name);
                }
                Err(e) => {
                    let _ = dirs.tmp.remove(&name);
                    return Err(e);
                }
            }
        }
        Err(io("find a free entry name in", &self.new_dir(), std::io::Error::from(ErrorKind::AlreadyExists)))
    }

    fn next_name(&self) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:020}-{:010}-{n:06}", std::process::id())
    }

    /// Entries left in `claimed/` by a previous run (to re-process after a crash), oldest first.
    pub fn reclaim(&self) -> Result<Vec<Claimed>, SpoolError> {
        let claimed = sub(&self.root()?, "claimed")?;
        let mut names = list(&claimed)?;
        names.sort();
        Ok(names.into_iter().map(|n| read_claimed(&claimed, &n)).collect())
    }

    /// Atomically claims up to `max` queued entries, oldest first. An entry another drainer claimed in
    /// the meantime is skipped, so fewer than `max` may be returned while more are queued.
    /// Memory is bounded by `max`, however long the queue.
    pub fn claim(&self, max: usize) -> Result<Vec<Claimed>, SpoolError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let spool = self.root()?;
        let (new, claimed) = (sub(&spool, "new")?, sub(&spool, "claimed")?);
        // keep the `max` smallest names: a max-heap whose top is the first to drop
        let mut oldest = BinaryHeap::with_capacity(max.saturating_add(1).min(1024));
        for_each_name(&new, |name| {
            oldest.push(name);
            if oldest.len() > max {
                oldest.pop();
            }
        })?;
        let mut out = Vec::with_capacity(oldest.len());
        for name in oldest.into_sorted_vec() {
            match new.rename(&name, &claimed, &name) {
                Ok(()) => out.push(read_claimed(&claimed, &name)),
                Err(e) if e.kind() == ErrorKind::NotFound => {} // another drainer got it
                // what is already claimed is returned; the rest stays queued for the next call
                Err(_) if !out.is_empty() => break,
                Err(source) => return Err(io("claim", &new.shown(&name), source)),
            }
        }
        Ok(out)
    }

    /// Number of entries waiting in `new/` plus `claimed/` (for metrics).
    pub fn depth(&self) -> Result<usize, SpoolError> {
        let spool = self.root()?;
        let mut n = 0;
        for_each_name(&sub(&spool, "new")?, |_| n += 1)?;
        for_each_name(&sub(&spool, "claimed")?, |_| n += 1)?;
        Ok(n)
    }

    /// Removes a processed entry. Idempotent: an entry already gone is fine. Not fsynced: if the removal
    /// is lost in a crash, the entry is processed again, which uploads nothing new.
    pub fn ack(&self, claimed: &Claimed) -> Result<(), SpoolError> {
        let name = claimed_name(claimed)?;
        match sub(&self.root()?, "claimed")?.remove(name) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(io("remove", &claimed.path, source)),
        }
    }

    /// Moves an entry to `quarantine/` with a `.reason` file next to it; returns the entry's new path.
    /// The reason is written first, so a quarantined entry always has one. Neither is left readable by
    /// others (mode 0640 at most): an entry that is not ours may hold anything.
    pub fn quarantine(&self, claimed: &Claimed, reason: &str) -> Result<PathBuf, SpoolError> {
        let name = claimed_name(claimed)?;
        let spool = self.root()?;
        let (from, qdir) = (sub(&spool, "claimed")?, sub(&spool, "quarantine")?);
        let mut reason_name = name.to_owned();
        reason_name.push(REASON_SUFFIX);
        let reason_path = qdir.shown(&reason_name);
        let mut text = reason.to_owned();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let mut f = nofollow::create_or_truncate(&qdir.inside(&reason_name), PRIVATE_MODE)
            .map_err(|source| io("create", &reason_path, source))?;
        f.write_all(text.as_bytes()).map_err(|source| io("write", &reason_path, source))?;
        f.sync_data().map_err(|source| io("fsync", &reason_path, source))?;
        // Best effort: entries this hook wrote are already 0640, and only their owner may chmod them
        // (an older hook's root-owned 0644 entries hold nothing but store paths). A symlink or FIFO is
        // moved as it is, never opened for data.
        if let Ok(entry) = nofollow::open_regular(&from.inside(name))
            && let Ok(meta) = entry.metadata()
            && meta.mode() & 0o777 & !PRIVATE_MODE != 0
        {
            let _ = entry.set_permissions(fs::Permissions::from_mode(meta.mode() & PRIVATE_MODE));
        }
        from.rename(name, &qdir, name).map_err(|source| io("quarantine", &claimed.path, source))?;
        qdir.sync().map_err(|source| io("fsync", qdir.path(), source))?;
        Ok(qdir.shown(name))
    }

    /// Removes files in `tmp/` older than `age`: the remains of hooks killed between write and rename.
    /// Returns how many were removed. Meant for the daemon at start-up.
    pub fn remove_stale_tmp(&self, age: Duration) -> Result<usize, SpoolError> {
        let tmp = sub(&self.root()?, "tmp")?;
        let now = SystemTime::now();
        let mut removed = 0;
        for name in list(&tmp)? {
            let old = tmp
                .inside(&name)
                .symlink_metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| now.duration_since(t).is_ok_and(|d| d >= age));
            if old && tmp.remove(&name).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Moves quarantined entries back into `new/` for the drainer to try again (`niks3 spool requeue`),
    /// removing their `.reason` files; returns the entries' paths in `new/`, oldest first.
    ///
    /// `names` are entry names in `quarantine/` (file names, not paths or `.reason` files); empty means
    /// every quarantined entry. Everything is checked before anything moves: a name that is not there,
    /// an entry that is not a regular file (a symlink or FIFO, as [`Spool::quarantine`] receives them
    /// from [`Spool::claim`]) or one whose name is already taken in `new/` is an error and nothing is
    /// requeued; remove such files by hand. Each entry moves by one rename within the spool's file
    /// system, so the drainer never sees it half-written; `new/` and `quarantine/` are fsynced at the
    /// end. An I/O error part-way leaves the entries moved so far in `new/`, each complete.
    pub fn requeue(&self, names: &[OsString]) -> Result<Vec<PathBuf>, SpoolError> {
        let spool = self.root()?;
        let (qdir, new) = (sub(&spool, "quarantine")?, sub(&spool, "new")?);
        let mut picked = if names.is_empty() {
            let mut all = list(&qdir)?;
            all.retain(|n| !n.as_encoded_bytes().ends_with(REASON_SUFFIX.as_bytes()));
            all
        } else {
            for name in names {
                check_entry_name(name).map_err(|reason| SpoolError::NotAnEntry { path: qdir.shown(name), reason })?;
            }
            names.to_vec()
        };
        picked.sort();
        picked.dedup();
        for name in &picked {
            nofollow::open_regular(&qdir.inside(name))
                .map_err(|e| open_error("requeue", &qdir.shown(name), "a regular file", e))?;
            if new.has(name) {
                let taken = std::io::Error::from(ErrorKind::AlreadyExists);
                return Err(io("requeue into", &new.shown(name), taken));
            }
        }
        let mut moved = Vec::with_capacity(picked.len());
        for name in picked {
            qdir.rename(&name, &new, &name).map_err(|source| io("requeue", &qdir.shown(&name), source))?;
            let mut reason_name = name.clone();
            reason_name.push(REASON_SUFFIX);
            match qdir.remove(&reason_name) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => return Err(io("remove", &qdir.shown(&reason_name), source)),
            }
            moved.push(new.shown(&name));
        }
        if !moved.is_empty() {
            new.sync().map_err(|source| io("fsync", new.path(), source))?;
            qdir.sync().map_err(|source| io("fsync", qdir.path(), source))?;
        }
        Ok(moved)
    }
}

/// Suffix of the file that says why the entry of the same name is in `quarantine/`.
const REASON_SUFFIX: &str = ".reason";

/// Whether `name` can be a quarantined entry: a plain file name in `quarantine/`, not hidden, not a
/// reason file.
fn check_entry_name(name: &OsString) -> Result<(), &'static str> {
    let bytes = name.as_encoded_bytes();
    if bytes.is_empty() || bytes.contains(&b'/') {
        return Err("an entry name is a file name, not a path");
    }
    if bytes.starts_with(b".") {
        return Err("names starting with `.` are not spool entries");
    }
    if bytes.ends_with(REASON_SUFFIX.as_bytes()) {
        return Err("this is a reason file; name the entry it belongs to");
    }
    Ok(())
}

/// The subdirectory `name` of the open spool dir, opened without following a symlink.
fn sub(spool: &Dir, name: &str) -> Result<Dir, SpoolError> {
    spool.open_sub(name).map_err(|e| open_error("open spool dir", &spool.shown(name), "a directory", e))
}

/// The entry's file name in `claimed/`.
fn claimed_name(claimed: &Claimed) -> Result<&OsStr, SpoolError> {
    claimed.path.file_name().ok_or_else(|| SpoolError::Malformed {
        path: claimed.path.clone(),
        reason: "claimed entry path has no file name".into(),
    })
}

/// Reads and parses the entry `name` in `claimed/`, never more than [`MAX_ENTRY_BYTES`].
fn read_claimed(claimed: &Dir, name: &OsStr) -> Claimed {
    let path = claimed.shown(name);
    let entry = read_entry_through(&claimed.inside(name), &path);
    Claimed { path, entry }
}

/// Reads and parses one entry file.
///
/// Only a regular file is read: a symlink is refused unfollowed (it could point at any file the drainer
/// may read, e.g. a secret) and a FIFO is refused without waiting for a writer (which would hang the
/// drainer), both as [`SpoolError::WrongType`], so the daemon quarantines them like any bad entry.
pub fn read_entry(path: &Path) -> Result<Entry, SpoolError> {
    read_entry_through(path, path)
}

/// [`read_entry`] of the file opened as `open`, called `path` in errors.
fn read_entry_through(open: &Path, path: &Path) -> Result<Entry, SpoolError> {
    let bytes =
        nofollow::read_regular(open, MAX_ENTRY_BYTES).map_err(|e| open_error("read", path, "a regular file", e))?;
    if bytes.len() as u64 > MAX_ENTRY_BYTES {
        return Err(SpoolError::Malformed {
            path: path.to_owned(),
            reason: format!("larger than {MAX_ENTRY_BYTES} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|e| SpoolError::Malformed {
        path: path.to_owned(),
        reason: format!("not UTF-8 (byte {})", e.utf8_error().valid_up_to()),
    })?;
    Entry::parse(&text, path)
}

/// Calls `f` with every entry name in `dir` (names starting with `.` are skipped).
fn for_each_name(dir: &Dir, mut f: impl FnMut(OsString)) -> Result<(), SpoolError> {
    for item in fs::read_dir(dir.fd_path()).map_err(|source| io("list", dir.path(), source))? {
        let item = item.map_err(|source| io("list", dir.path(), source))?;
        let name = item.file_name();
        if !name.as_encoded_bytes().starts_with(b".") {
            f(name);
        }
    }
    Ok(())
}

fn list(dir: &Dir) -> Result<Vec<OsString>, SpoolError> {
    let mut names = Vec::new();
    for_each_name(dir, |n| names.push(n))?;
    Ok(names)
}

fn io(op: &'static str, path: &Path, source: std::io::Error) -> SpoolError {
    SpoolError::Io { op, path: path.to_owned(), source }
}

/// `path` could not be opened as `expected`: the wrong kind of file, or an OS error during `op`.
fn open_error(op: &'static str, path: &Path, expected: &'static str, e: OpenError) -> SpoolError {
    match e {
        OpenError::WrongType { found } => SpoolError::WrongType { path: path.to_owned(), found, expected },
        OpenError::Io(source) => io(op, path, source),
    }
}

/// Hands a file the hook just created to the spool owner, through its descriptor (nothing to redirect):
/// the daemon can then read it while others cannot, and chmod it if it quarantines it.
fn give_to(file: &File, (uid, gid): (u32, u32)) -> std::io::Result<()> {
    let meta = file.metadata()?;
    if (meta.uid(), meta.gid()) == (uid, gid) {
        return Ok(());
    }
    std::os::unix::fs::fchown(file, Some(uid), Some(gid))
}
