//! The spool's queue promises: durable enqueue, claim oldest first, every entry claimed by exactly one
//! drainer, nothing lost across a crash, bad entries quarantined with their reason.

use niks3_spool::{Claimed, Entry, Spool, SpoolError, gcroots};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn entry(i: usize) -> Entry {
    Entry { drv: None, outs: vec![format!("/nix/store/{i:032}-p{i}")], realisations: vec![], queued: i as u64 }
}

fn names(c: &[Claimed]) -> Vec<String> {
    c.iter().map(|c| c.path.file_name().expect("name").to_string_lossy().into_owned()).collect()
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).expect("read_dir").count()
}

#[test]
fn enqueue_claim_ack_moves_an_entry_through_the_spool() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(&dir.path().join("a/b/spool")).expect("open creates the dir");
    let e = entry(1);
    let path = spool.enqueue(&e).expect("enqueue");
    assert_eq!(path.parent(), Some(spool.new_dir().as_path()));
    let name = path.file_name().expect("name").to_string_lossy().into_owned();
    let parts: Vec<&str> = name.split('-').collect();
    assert!(parts.len() == 3 && parts[0].len() == 20 && parts[1].len() == 10, "name {name}");
    assert_eq!(parts[1].parse::<u32>().expect("pid"), std::process::id());
    assert_eq!(std::fs::read_to_string(&path).expect("read"), e.to_text());
    assert_eq!(count(&spool.dir().join("tmp")), 0, "tmp/ is empty after enqueue");
    assert_eq!(spool.depth().expect("depth"), 1);

    let claimed = spool.claim(10).expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].path, spool.dir().join("claimed").join(&name));
    assert_eq!(claimed[0].entry.as_ref().expect("parsed"), &e);
    assert_eq!(count(&spool.new_dir()), 0);
    assert_eq!(spool.depth().expect("depth"), 1, "claimed entries still count");
    assert!(spool.claim(10).expect("claim again").is_empty(), "a claimed entry is not claimed twice");

    spool.ack(&claimed[0]).expect("ack");
    spool.ack(&claimed[0]).expect("ack is idempotent");
    assert_eq!(spool.depth().expect("depth"), 0);
    assert!(spool.reclaim().expect("reclaim").is_empty());
}

#[test]
fn claim_returns_oldest_first_and_at_most_max() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let paths: Vec<PathBuf> = (0..25).map(|i| spool.enqueue(&entry(i)).expect("enqueue")).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "names sort in enqueue order");
    assert!(spool.claim(0).expect("claim 0").is_empty());
    let mut got = Vec::new();
    loop {
        let batch = spool.claim(7).expect("claim");
        assert!(batch.len() <= 7);
        if batch.is_empty() {
            break;
        }
        got.extend(batch.into_iter().map(|c| c.entry.expect("parsed").queued));
    }
    assert_eq!(got, (0..25).map(|i| i as u64).collect::<Vec<_>>(), "oldest first, none lost");
}

#[test]
fn two_concurrent_claimers_never_get_the_same_entry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let total = 300;
    for i in 0..total {
        spool.enqueue(&entry(i)).expect("enqueue");
    }
    let claimers: Vec<_> = (0..4)
        .map(|_| {
            let dir = dir.path().to_owned();
            std::thread::spawn(move || {
                let own = Spool::open(&dir).expect("each drainer opens the spool itself");
                let mut got = Vec::new();
                loop {
                    // an empty batch means the queue is empty or others took what this one picked;
                    // whoever took them keeps going, so the last drainer standing sees new/ empty
                    let batch = own.claim(5).expect("claim");
                    if batch.is_empty() {
                        break;
                    }
                    got.extend(names(&batch));
                }
                got
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut per_thread = Vec::new();
    for c in claimers {
        let got = c.join().expect("claimer thread");
        per_thread.push(got.len());
        for n in got {
            assert!(seen.insert(n.clone()), "{n} was claimed twice");
        }
    }
    assert_eq!(seen.len(), total, "every entry was claimed by someone");
    assert_eq!(count(&dir.path().join("claimed")), total);
    assert_eq!(count(&spool.new_dir()), 0);
    eprintln!("claims per drainer: {per_thread:?}");
}

#[test]
fn concurrent_enqueuers_never_overwrite_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let shared = Spool::open(dir.path()).expect("open");
    let writers: Vec<_> = (0..6)
        .map(|t| {
            // half share one handle (clones), half open their own: both must give unique names
            let spool = if t % 2 == 0 { shared.clone() } else { Spool::open(dir.path()).expect("open") };
            std::thread::spawn(move || {
                for i in 0..100 {
                    spool.enqueue(&entry(t * 1000 + i)).expect("enqueue");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer thread");
    }
    let mut queued: Vec<u64> =
        shared.claim(usize::MAX).expect("claim").into_iter().map(|c| c.entry.expect("parsed").queued).collect();
    queued.sort_unstable();
    let mut want: Vec<u64> = (0..6).flat_map(|t| (0..100).map(move |i| (t * 1000 + i) as u64)).collect();
    want.sort_unstable();
    assert_eq!(queued, want);
}

#[test]
fn entries_claimed_before_a_crash_are_reclaimed_oldest_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let before = Spool::open(dir.path()).expect("open");
        for i in 0..5 {
            before.enqueue(&entry(i)).expect("enqueue");
        }
        let claimed = before.claim(3).expect("claim");
        assert_eq!(claimed.len(), 3);
        // the drainer "crashes": no ack, the handle is simply dropped
    }
    let after = Spool::open(dir.path()).expect("reopen");
    assert_eq!(after.depth().expect("depth"), 5, "nothing lost");
    let again = after.reclaim().expect("reclaim");
    let q: Vec<u64> = again.iter().map(|c| c.entry.as_ref().expect("parsed").queued).collect();
    assert_eq!(q, vec![0, 1, 2]);
    let rest: Vec<u64> = after.claim(10).expect("claim").into_iter().map(|c| c.entry.expect("parsed").queued).collect();
    assert_eq!(rest, vec![3, 4]);
}

#[test]
fn malformed_entries_are_claimed_with_their_reason_and_quarantined() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    let good = spool.enqueue(&entry(7)).expect("enqueue");
    std::fs::write(spool.new_dir().join("00000000000000000001-garbage"), b"\x00\xffnot an entry").expect("write");
    std::fs::write(spool.new_dir().join("00000000000000000002-truncated"), "niks3-spool-v1\nout=/nix/st")
        .expect("write");
    let big = format!("niks3-spool-v1\n{}", "x".repeat(2 * 1024 * 1024));
    std::fs::write(spool.new_dir().join("00000000000000000003-huge"), big).expect("write");
    std::fs::write(spool.new_dir().join(".hidden"), "editor swap file").expect("write");

    let claimed = spool.claim(10).expect("claim");
    assert_eq!(
        names(&claimed)[..3],
        ["00000000000000000001-garbage", "00000000000000000002-truncated", "00000000000000000003-huge"]
    );
    assert_eq!(claimed.len(), 4, "hidden files are ignored");
    let reasons: Vec<String> = claimed[..3]
        .iter()
        .map(|c| match &c.entry {
            Err(e @ SpoolError::Malformed { path, .. }) => {
                assert_eq!(path, &c.path, "the error names the file");
                e.to_string()
            }
            other => panic!("expected Malformed, got {other:?}"),
        })
        .collect();
    assert!(reasons[0].contains("not UTF-8"), "{}", reasons[0]);
    assert!(reasons[1].contains("does not end with a newline"), "{}", reasons[1]);
    assert!(reasons[2].contains("larger than"), "{}", reasons[2]);

    for (c, r) in claimed[..3].iter().zip(&reasons) {
        let q = spool.quarantine(c, r).expect("quarantine");
        assert_eq!(q.parent(), Some(dir.path().join("quarantine").as_path()));
        assert!(q.exists());
        let reason_file = PathBuf::from(format!("{}.reason", q.display()));
        assert_eq!(std::fs::read_to_string(reason_file).expect("reason"), format!("{r}\n"));
    }
    assert_eq!(
        std::fs::read(dir.path().join("quarantine/00000000000000000001-garbage")).expect("kept"),
        b"\x00\xffnot an entry"
    );
    assert_eq!(claimed[3].entry.as_ref().expect("the good one parses"), &entry(7));
    assert_eq!(claimed[3].path.file_name(), good.file_name());
    spool.ack(&claimed[3]).expect("ack");
    assert_eq!(spool.depth().expect("depth"), 0);
    assert!(spool.reclaim().expect("reclaim").is_empty());
}

#[test]
fn open_existing_refuses_a_missing_spool_dir_and_creates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = Spool::open_existing(&missing).expect_err("missing dir");
    assert!(err.to_string().contains(&missing.display().to_string()), "{err}");
    assert!(!missing.exists());
    let file = dir.path().join("file");
    std::fs::write(&file, "").expect("write");
    assert!(Spool::open_existing(&file).is_err());
    assert!(Spool::open(&file.join("spool")).is_err(), "a path under a file cannot be created");
}

#[test]
fn stale_tmp_files_are_removed_only_when_old() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Spool::open(dir.path()).expect("open");
    std::fs::write(dir.path().join("tmp/leftover"), "half").expect("write");
    assert_eq!(spool.remove_stale_tmp(std::time::Duration::from_hours(1)).expect("clean"), 0);
    assert_eq!(spool.remove_stale_tmp(std::time::Duration::ZERO).expect("clean"), 1);
    assert_eq!(count(&dir.path().join("tmp")), 0);
}

#[test]
fn gcroots_are_idempotent_symlinks_to_the_store_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = dir.path().join("gcroots/niks3");
    let p = "/nix/store/mszzps44c0d8dq4928m9byf3l2g64409-hk-test";
    gcroots::add(&roots, p).expect("add creates the dir");
    gcroots::add(&roots, p).expect("add again");
    assert!(!gcroots::ensure(&roots, p).expect("ensure"), "already there");
    let link = roots.join("mszzps44c0d8dq4928m9byf3l2g64409-hk-test");
    assert_eq!(std::fs::read_link(&link).expect("link"), PathBuf::from(p));
    // a wrong link with the same name is replaced
    std::fs::remove_file(&link).expect("rm");
    std::os::unix::fs::symlink("/elsewhere", &link).expect("symlink");
    assert!(gcroots::ensure(&roots, p).expect("ensure"));
    assert_eq!(std::fs::read_link(&link).expect("link"), PathBuf::from(p));
    gcroots::remove(&roots, p).expect("remove");
    gcroots::remove(&roots, p).expect("remove absent");
    assert_eq!(count(&roots), 0);
    for bad in ["relative", "/nix/store/..", "/"] {
        assert!(gcroots::add(&roots, bad).is_err(), "{bad}");
    }
}
