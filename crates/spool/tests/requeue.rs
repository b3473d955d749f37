//! `Spool::requeue` (behind `niks3 spool requeue`): quarantined entries go back to `new/` whole, by one
//! rename each, without their reasons; anything that is not a regular file, or not there, is refused
//! before anything moves.

use niks3_spool::{Entry, Spool, SpoolError};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

fn entry(i: u64) -> Entry {
    Entry { drv: None, outs: vec![format!("/nix/store/{i:032}-p{i}")], realisations: vec![], queued: i }
}

/// A spool with `n` valid entries quarantined (as after an outage); returns their names, oldest first.
fn quarantined(dir: &Path, n: u64) -> (Spool, Vec<OsString>) {
    let spool = Spool::open(dir).expect("open");
    for i in 0..n {
        spool.enqueue(&entry(i)).expect("enqueue");
    }
    let mut names = Vec::new();
    for c in spool.claim(usize::MAX).expect("claim") {
        let q = spool.quarantine(&c, "upload failed: connection refused").expect("quarantine");
        names.push(q.file_name().expect("name").to_owned());
    }
    (spool, names)
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn names_of(paths: &[PathBuf]) -> Vec<OsString> {
    paths.iter().map(|p| p.file_name().expect("name").to_owned()).collect()
}

#[test]
fn requeue_with_no_names_moves_every_quarantined_entry_back_and_drops_the_reasons() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, names) = quarantined(dir.path(), 3);
    assert_eq!(listing(&dir.path().join("quarantine")).len(), 6, "3 entries, 3 reasons");

    let moved = spool.requeue(&[]).expect("requeue");
    assert_eq!(names_of(&moved), names, "all of them, oldest first");
    assert!(moved.iter().all(|p| p.parent() == Some(spool.new_dir().as_path())));
    assert!(listing(&dir.path().join("quarantine")).is_empty(), "no reason file left behind");
    let again: Vec<u64> =
        spool.claim(10).expect("claim").into_iter().map(|c| c.entry.expect("intact").queued).collect();
    assert_eq!(again, vec![0, 1, 2], "the drainer gets them back, oldest first, unchanged");
    assert!(spool.requeue(&[]).expect("requeue an empty quarantine").is_empty());
}

#[test]
fn requeue_with_names_moves_only_those() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, names) = quarantined(dir.path(), 3);
    let pick = vec![names[2].clone(), names[0].clone(), names[2].clone()];
    let moved = spool.requeue(&pick).expect("requeue");
    assert_eq!(names_of(&moved), vec![names[0].clone(), names[2].clone()], "sorted, each once");
    let left = names[1].to_string_lossy().into_owned();
    let q = listing(&dir.path().join("quarantine"));
    assert_eq!(q, vec![left.clone(), format!("{left}.reason")], "the other stays with its reason");
    assert_eq!(listing(&spool.new_dir()).len(), 2);
}

#[test]
fn requeue_refuses_symlinks_fifos_and_bad_names_before_moving_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, names) = quarantined(dir.path(), 2);
    let qdir = dir.path().join("quarantine");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "not an entry\n").expect("write");
    std::os::unix::fs::symlink(&secret, qdir.join("00000000000000000009-0000000001-000001")).expect("symlink");
    let fifo = qdir.join("00000000000000000008-0000000001-000001");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo").success());
    let before = listing(&qdir);

    // everything: the FIFO (first by name) stops it
    match spool.requeue(&[]) {
        Err(SpoolError::WrongType { path, found: "a FIFO", expected: "a regular file" }) => assert_eq!(path, fifo),
        other => panic!("expected the FIFO to be refused, got {other:?}"),
    }
    let link = OsString::from("00000000000000000009-0000000001-000001");
    match spool.requeue(&[names[0].clone(), link.clone()]) {
        Err(e @ SpoolError::WrongType { found: "a symlink", .. }) => {
            assert!(e.to_string().contains("it is a symlink, not a regular file"), "{e}");
        }
        other => panic!("expected the symlink to be refused, got {other:?}"),
    }
    let reason = OsString::from(format!("{}.reason", names[0].to_string_lossy()));
    for (bad, why) in [
        (reason, "reason file"),
        (OsString::from("../new/x"), "not a path"),
        (OsString::from(".hidden"), "starting with `.`"),
        (OsString::new(), "not a path"),
    ] {
        match spool.requeue(&[names[0].clone(), bad.clone()]) {
            Err(e @ SpoolError::NotAnEntry { .. }) => assert!(e.to_string().contains(why), "{bad:?}: {e}"),
            other => panic!("{bad:?}: expected NotAnEntry, got {other:?}"),
        }
    }
    match spool.requeue(&[names[0].clone(), OsString::from("00000000000000000003-0000000001-000001")]) {
        Err(e @ SpoolError::Io { op: "requeue", .. }) => assert!(e.to_string().contains("No such file"), "{e}"),
        other => panic!("expected a missing entry to be an error, got {other:?}"),
    }
    assert_eq!(listing(&qdir), before, "nothing moved");
    assert!(listing(&spool.new_dir()).is_empty());
    assert_eq!(std::fs::read_to_string(&secret).expect("secret"), "not an entry\n");

    // once the operator removes what cannot be an entry, the rest goes
    std::fs::remove_file(&fifo).expect("rm fifo");
    std::fs::remove_file(qdir.join(&link)).expect("rm symlink");
    assert_eq!(names_of(&spool.requeue(&[]).expect("requeue")), names);
}

#[test]
fn requeue_never_overwrites_an_entry_already_queued() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, names) = quarantined(dir.path(), 2);
    std::fs::write(spool.new_dir().join(&names[1]), entry(99).to_text()).expect("same name in new/");
    match spool.requeue(&[]) {
        Err(e @ SpoolError::Io { op: "requeue into", .. }) => assert!(e.to_string().contains("exists"), "{e}"),
        other => panic!("expected a name clash to be refused, got {other:?}"),
    }
    assert_eq!(listing(&dir.path().join("quarantine")).len(), 4, "nothing moved");
    let queued = spool.claim(10).expect("claim");
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].entry.as_ref().expect("parsed"), &entry(99), "the queued entry is untouched");
}
