//! What the drainer finds in `new/` or `claimed/` is not necessarily an entry: a FIFO must not hang
//! `claim` or `reclaim`, a symlink must not be followed (nor its target quoted into a reason), and what
//! ends up in `quarantine/` is not readable by others (security review 2026-12, finding #12).

use niks3_spool::{Claimed, Entry, Spool};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::Duration;

/// A line as /etc/shadow has them; it must never show up in a reason or a message.
const SECRET: &str = "root:$6$s3cr3tHunter2:20228:0:99999:7:::\n";
/// The oldest possible entry names, so these sort before anything `enqueue` writes.
const FIRST: &str = "00000000000000000001-0000000001-000001";
const SECOND: &str = "00000000000000000002-0000000001-000001";

fn entry(i: u64) -> Entry {
    Entry { drv: None, outs: vec![format!("/nix/store/{i:032}-p{i}")], realisations: vec![], queued: i }
}

fn mkfifo(path: &Path) {
    let st = Command::new("mkfifo").arg(path).status().expect("run mkfifo");
    assert!(st.success(), "mkfifo {}", path.display());
}

/// Runs `f` on another thread and fails the test (instead of hanging it) if it takes longer than 10 s.
fn promptly<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("{what} hung (still blocked after 10 s)"))
}

fn error_of(c: &Claimed) -> String {
    match &c.entry {
        Err(e) => e.to_string(),
        Ok(e) => panic!("{} was read as an entry: {e:?}", c.path.display()),
    }
}

fn reason_file(quarantined: &Path) -> PathBuf {
    PathBuf::from(format!("{}.reason", quarantined.display()))
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("metadata").mode() & 0o7777
}

#[test]
fn a_fifo_in_new_does_not_hang_claim_and_the_entry_behind_it_is_claimed_promptly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    mkfifo(&spool.new_dir().join(FIRST));
    let good = spool.enqueue(&entry(7)).expect("enqueue");

    let s = spool.clone();
    let claimed = promptly("claim", move || s.claim(10).expect("claim"));
    assert_eq!(claimed.len(), 2, "the FIFO and the entry queued behind it");
    let err = error_of(&claimed[0]);
    let fifo = dir.path().join("claimed").join(FIRST);
    assert_eq!(err, format!("refusing {}: it is a FIFO, not a regular file", fifo.display()));
    assert_eq!(claimed[1].entry.as_ref().expect("the entry behind the FIFO"), &entry(7));
    assert_eq!(claimed[1].path.file_name(), good.file_name());

    let q = spool.quarantine(&claimed[0], &err).expect("quarantine the FIFO");
    assert!(std::fs::symlink_metadata(&q).expect("quarantined").file_type().is_fifo(), "moved as it is");
    assert_eq!(std::fs::read_to_string(reason_file(&q)).expect("reason"), format!("{err}\n"));
}

#[test]
fn a_fifo_left_in_claimed_does_not_hang_reclaim() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    spool.enqueue(&entry(1)).expect("enqueue");
    assert_eq!(spool.claim(1).expect("claim").len(), 1);
    mkfifo(&dir.path().join("claimed").join(FIRST));

    let s = spool.clone();
    let again = promptly("reclaim", move || s.reclaim().expect("reclaim"));
    assert_eq!(again.len(), 2);
    assert!(error_of(&again[0]).contains("it is a FIFO, not a regular file"), "{}", error_of(&again[0]));
    assert_eq!(again[1].entry.as_ref().expect("the real entry"), &entry(1));
}

#[test]
fn a_symlink_to_a_secret_is_refused_unread_and_its_reason_does_not_leak_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&dir.path().join("spool")).expect("open");
    let secret = dir.path().join("shadow");
    std::fs::write(&secret, SECRET).expect("write secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::symlink(&secret, spool.new_dir().join(FIRST)).expect("symlink in new/");
    // and one the drainer finds in claimed/ after a restart
    std::os::unix::fs::symlink(&secret, dir.path().join("spool/claimed").join(SECOND)).expect("symlink in claimed/");

    let mut all = spool.reclaim().expect("reclaim");
    all.extend(spool.claim(10).expect("claim"));
    assert_eq!(all.len(), 2);
    for c in &all {
        let err = error_of(c);
        assert_eq!(err, format!("refusing {}: it is a symlink, not a regular file", c.path.display()));
        let q = spool.quarantine(c, &err).expect("quarantine");
        assert_eq!(std::fs::read_link(&q).expect("still a symlink, not a copy"), secret);
        let reason = std::fs::read_to_string(reason_file(&q)).expect("reason");
        assert!(!reason.contains("s3cr3t") && !reason.contains("root:"), "reason leaks the target: {reason}");
        assert_eq!(mode(&reason_file(&q)), 0o640, "reason not readable by others");
    }
    assert_eq!(std::fs::read_to_string(&secret).expect("secret"), SECRET, "the target is untouched");
    assert_eq!(mode(&secret), 0o600);
}

#[test]
fn a_regular_file_holding_a_secret_is_not_quoted_and_stays_private_in_quarantine() {
    // a hard link or a copy: a regular file, read (within the size limit) but never quoted
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let p = spool.new_dir().join(FIRST);
    std::fs::write(&p, SECRET).expect("write");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let claimed = spool.claim(1).expect("claim");
    let err = error_of(&claimed[0]);
    assert!(err.contains("line 1: is not the version line"), "{err}");
    assert!(!err.contains("s3cr3t") && !err.contains("root:"), "the reason quotes the file: {err}");
    // a stale, world-readable reason file from an earlier quarantine of the same name is replaced
    let stale = dir.path().join("quarantine").join(format!("{FIRST}.reason"));
    std::fs::write(&stale, "old\n").expect("write stale reason");
    std::fs::set_permissions(&stale, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let q = spool.quarantine(&claimed[0], &err).expect("quarantine");
    assert_eq!(mode(&q), 0o640, "the quarantined entry is not readable by others any more");
    assert_eq!(mode(&reason_file(&q)), 0o640);
    assert_eq!(std::fs::read_to_string(reason_file(&q)).expect("reason"), format!("{err}\n"));
}

#[test]
fn entries_the_hook_writes_are_not_readable_by_others() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let p = spool.enqueue(&entry(1)).expect("enqueue");
    assert_eq!(mode(&p) & 0o007, 0, "mode {:o}", mode(&p));
    assert_eq!(mode(&p) & 0o400, 0o400, "the owner reads it");
}
